"""bench/gpu_bundle.py and bench/triton_gpu.py: the GPU benchmark's carry, and one run of it on this machine's CPU
against the serving environment's real tritonserver (the same script a GPU machine runs)."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

from driftloop.stack.exceptions import ComponentNotFound
from driftloop.stack.triton import serving_python
from foundation.paths import REPO_ROOT
from foundation.settings import load_settings

BENCH = REPO_ROOT / "bench"


def _load(name: str):
    spec = importlib.util.spec_from_file_location(f"bench_{name}", BENCH / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


gpu_bundle = _load("gpu_bundle")


@pytest.fixture(scope="module")
def site() -> Path:
    try:
        folder = gpu_bundle.serving_site()
    except ComponentNotFound as exc:
        pytest.skip(str(exc))
    if not (folder / "pytriton" / "tritonserver" / "bin" / "tritonserver").is_file():
        pytest.skip("the serving environment has no nvidia-pytriton wheel (`make setup` installs it)")
    return folder


@pytest.mark.unit
def test_server_files_carry_one_stub_and_no_libpython(site: Path) -> None:
    names = [name for _, name in gpu_bundle.server_files(site, "3.12")]
    assert "tritonserver/bin/tritonserver" in names
    assert "tritonserver/backends/python/libtriton_python.so" in names
    assert "tritonserver/backends/python/triton_python_backend_utils.py" in names
    stubs = [name for name in names if "python_backend_stubs" in name]
    assert stubs == ["tritonserver/python_backend_stubs/3.12/triton_python_backend_stub"]
    assert any(name.startswith("libs/libtritonserver") for name in names)
    assert not [name for name in names if "libpython" in name]
    with pytest.raises(SystemExit, match="no python backend stub for Python 2.7"):
        gpu_bundle.server_files(site, "2.7")


@pytest.mark.integration
@pytest.mark.timeout(600)
def test_one_run_on_the_cpu_serves_the_versions_answers(site: Path, tmp_path: Path) -> None:
    bundle, out = tmp_path / "bundle", tmp_path / "out"
    python = sys.executable
    subprocess.run(  # noqa: S603
        [python, str(BENCH / "gpu_bundle.py"), "--out", str(bundle), "--encoder", "tiny", "--no-server"],
        check=True,
        cwd=REPO_ROOT,
        capture_output=True,
    )
    assert (bundle / "repo" / "classifier" / "config.pbtxt").read_text().count("KIND_AUTO") == 1
    assert not (bundle / "repo" / "classifier" / "1" / "model.safetensors").exists()  # drawn there, not carried

    serving = serving_python(load_settings())
    run = subprocess.run(  # noqa: S603
        [
            python,
            str(BENCH / "triton_gpu.py"),
            "--bundle",
            str(bundle),
            "--out",
            str(out),
            "--server",
            str(site / "pytriton" / "tritonserver"),
            "--server-libs",
            str(site / "nvidia_pytriton.libs"),
            "--serving-python",
            str(serving),
            "--seconds",
            "1",
            "--workers",
            "1,2",
            "--instances",
            "2,1",
        ],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=540,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    result = json.loads(run.stdout.strip().splitlines()[-1])
    assert result == json.loads((out / "triton_gpu.json").read_text())
    assert result["device"] == "cpu" and result["encoder"] == "tiny"
    # The published config's two instances, then one (Triton reloads the version or removes an instance in place).
    assert result["ready"][:2] == ["cpu (torch)"] * 2 and set(result["ready"]) == {"cpu (torch)"}
    assert result["instance_groups"] == {
        "2": [{"kind": "KIND_CPU", "count": 2, "gpus": []}],
        "1": [{"kind": "KIND_CPU", "count": 1, "gpus": []}],
    }
    assert set(result["load_s"]) == {"2", "1"}
    assert [(p["instances"], p["workers"]) for p in result["triton"]] == [(2, 1), (2, 2), (1, 1), (1, 2)]
    assert all(p["seq_per_s"] > 0 and p["p99_ms"] >= p["p50_ms"] > 0 for p in result["triton"])
    assert set(result["raw"]) == {"seq_per_s", "model_only_seq_per_s", "model_only_256_seq_per_s"}
    assert all(value > 0 for value in result["raw"].values())
    # Triton answered what the process computes, on answers that differ enough across inputs for that to tell.
    assert result["probs_std"] > 0.1
    assert result["max_abs_diff"] <= result["atol"] and result["max_abs_diff_fp32"] <= result["atol"]
    assert "ready on cpu" in (out / "tritonserver.log").read_text()
    assert (out / "triton_gpu.png").stat().st_size > 0
