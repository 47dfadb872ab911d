"""Prepare what ``bench/triton_gpu.py`` needs on a GPU machine that has none of driftloop's environment.

    .venv/bin/python bench/gpu_bundle.py [--out .gpu] [--encoder minilm] [--python 3.12]

The GPU machine lent to some sessions (``../shared/DESIGN.md``) has torch, tokenizers, numpy and safetensors but no
tritonserver, no tritonclient and no network, and a run there carries at most 64 MiB beside the working tree. This
writes that carry into ``--out`` (git-ignored ``.gpu/``, about 35 MB):

- ``server.tar.xz``: tritonserver from the serving environment's nvidia-pytriton wheel (``bin/``, ``backends/``,
  ``caches/``, the python backend stub for ``--python`` and the libraries, less the wheel's own libpython: the stub
  links the machine's);
- ``wheels/``: tritonclient and what its gRPC client needs beyond that machine's packages, as installed here, built
  for ``--python``;
- ``repo/``: a model repository as the training stage writes it, ``classifier/config.pbtxt`` and the version ``1/``
  (the servable code, ``encoder_config.json``, ``tokenizer/``, ``metadata.json``) without its weights and graph.
  MiniLM's weights take 91 MB: ``triton_gpu.py`` draws random ones of the same shape there, which costs what trained
  ones do;
- ``inputs.json``: texts from the event generator with a feature row each.

Then, with the device tool (``carry: [".gpu"]``)::

    python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .gpu/wheels/*.whl &&
    PYTHONPATH=/tmp/site PYTHONUNBUFFERED=1 python3 bench/triton_gpu.py --bundle .gpu --out $OUT --instances 2,4
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import lzma
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np

from driftloop.stack.triton import python_info, serving_python
from foundation.settings import load_settings
from streams.generator import synthetic_records
from training.encoders import initial_model
from training.export import VersionMetadata, write_version_files
from training.repository import ModelRepository
from training.servable import runtime

MODEL_NAME = "classifier"
# Beyond the GPU machine's own packages, tritonclient's gRPC client needs these (its generated code asks for a
# protobuf at least as new as the one it was generated with, so the versions installed here travel with it).
CLIENT_WHEELS = ("tritonclient", "python-rapidjson", "grpcio", "protobuf")
PLATFORMS = (
    "manylinux_2_28_x86_64",
    "manylinux_2_27_x86_64",
    "manylinux_2_17_x86_64",
    "manylinux2014_x86_64",
    "manylinux1_x86_64",
)
CARRY_LIMIT_MB = 64
INPUTS = 4096


def serving_site() -> Path:
    """The serving environment's site-packages (where the nvidia-pytriton wheel put tritonserver)."""
    return Path(python_info(serving_python(load_settings()))["site"])


def server_files(site: Path, python: str) -> list[tuple[Path, str]]:
    """(file, name in the archive) of tritonserver in the nvidia-pytriton wheel at ``site``, for one stub Python."""
    wheel = site / "pytriton" / "tritonserver"
    stub = wheel / "python_backend_stubs" / python / "triton_python_backend_stub"
    if not stub.is_file():
        raise SystemExit(f"the nvidia-pytriton wheel in {site} has no python backend stub for Python {python}")
    files = [(stub, f"tritonserver/python_backend_stubs/{python}/{stub.name}")]
    for part in ("bin", "backends", "caches"):
        files += [(p, f"tritonserver/{p.relative_to(wheel)}") for p in sorted((wheel / part).rglob("*")) if p.is_file()]
    libs = site / "nvidia_pytriton.libs"
    files += [(p, f"libs/{p.name}") for p in sorted(libs.iterdir()) if p.is_file() and "libpython" not in p.name]
    return files


def write_server(site: Path, python: str, dest: Path) -> None:
    with tarfile.open(dest, "w:xz", preset=6 | lzma.PRESET_EXTREME) as archive:
        for path, name in server_files(site, python):
            archive.add(path, arcname=name)


def download_wheels(python: str, dest: Path) -> None:
    dest.mkdir(parents=True, exist_ok=True)
    pins = [f"{name}=={importlib.metadata.version(name)}" for name in CLIENT_WHEELS]
    platforms = [arg for platform in PLATFORMS for arg in ("--platform", platform)]
    subprocess.run(  # noqa: S603
        [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--quiet",
            "--no-deps",
            "--only-binary=:all:",
            "--implementation",
            "cp",
            "--python-version",
            python,
            *platforms,
            "--dest",
            str(dest),
            *pins,
        ],
        check=True,
    )


def write_repository(encoder: str, root: Path) -> None:
    """A Triton model repository at ``root`` as the training stage writes one: ``classifier/config.pbtxt`` and the
    version ``1/``, less its weights and graph."""
    settings = load_settings(triton={"model_repository": root, "model_name": MODEL_NAME})
    labels = settings.training.labels
    init = initial_model(encoder, len(labels), seed=0)
    max_len = min(settings.training.max_seq_len, int(init.encoder_config["max_position_embeddings"]))
    metadata = VersionMetadata(
        model=MODEL_NAME, version=1, labels=list(labels), max_seq_len=max_len, encoder={"kind": encoder}
    )
    repository = ModelRepository(settings)
    write_version_files(
        repository.version_dir(1),
        encoder_config=init.encoder_config,
        tokenizer_dir=init.tokenizer_dir,
        metadata=metadata,
    )
    repository.write_config([1], len(labels))


def write_inputs(dest: Path, count: int = INPUTS) -> None:
    """Texts of generated events and a plausible feature row each (counts, lengths, ages; never NaN)."""
    settings = load_settings()
    texts = [
        json.loads(record.value)["text"]
        for batch in synthetic_records(settings, count, seed=7, labels=False)
        for record in batch
    ]
    rng = np.random.default_rng(7)
    features = rng.gamma(2.0, 20.0, size=(len(texts), len(runtime.FEATURE_NAMES))).round(2)
    dest.write_text(json.dumps({"texts": texts, "features": features.tolist()}) + "\n", encoding="utf-8")


def working_tree_mb() -> float:
    """What travels beside the carry: the checkout's tracked files and untracked ones git does not ignore."""
    root = Path(__file__).resolve().parents[1]
    listed = subprocess.run(  # noqa: S603
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],  # noqa: S607
        capture_output=True,
        check=True,
        cwd=root,
    ).stdout.decode()
    files = [root / name for name in listed.split("\0") if name]
    return sum(path.stat().st_size for path in files if path.is_file()) / 2**20


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path(".gpu"))
    parser.add_argument("--encoder", choices=["minilm", "tiny"], default="minilm")
    parser.add_argument("--python", default="3.12", help="the Python of the GPU machine (its stub and wheels)")
    parser.add_argument("--no-server", action="store_true", help="leave out server.tar.xz and wheels/ (a CPU check)")
    args = parser.parse_args()

    if args.out.exists():
        shutil.rmtree(args.out)
    args.out.mkdir(parents=True)
    write_repository(args.encoder, args.out / "repo")
    write_inputs(args.out / "inputs.json")
    if not args.no_server:
        write_server(serving_site(), args.python, args.out / "server.tar.xz")
        download_wheels(args.python, args.out / "wheels")
    size_mb = sum(p.stat().st_size for p in args.out.rglob("*") if p.is_file()) / 2**20
    tree_mb = working_tree_mb()
    print(
        json.dumps(
            {
                "bundle": str(args.out),
                "size_mb": round(size_mb, 1),
                "encoder": args.encoder,
                "python": args.python,
                "working_tree_mb": round(tree_mb, 1),
                "fits": size_mb + tree_mb < CARRY_LIMIT_MB,
            }
        )
    )


if __name__ == "__main__":
    main()
