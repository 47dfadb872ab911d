"""A second local tritonserver on the same model repository: its own ports, run folder, and an empty start."""

from __future__ import annotations

from pathlib import Path

import pytest

from driftloop.stack import triton as local_triton
from foundation.settings import load_settings

pytestmark = pytest.mark.unit


def test_a_replica_has_its_own_ports_and_folder_on_the_same_repository(tmp_path: Path) -> None:
    settings = load_settings(
        stack={"run_dir": tmp_path, "triton_http_port": 8000, "triton_grpc_port": 8001, "triton_metrics_port": 8002},
        triton={"url": "elsewhere:8000", "model_repository": tmp_path / "repo"},
    )
    assert local_triton.replica_settings(settings, 0) is settings
    second = local_triton.replica_settings(settings, 1)
    assert (second.triton_http, second.triton_grpc) == ("127.0.0.1:8010", "127.0.0.1:8011")
    assert second.stack.triton_metrics_port == 8012
    assert second.triton.model_repository == settings.triton.model_repository
    assert local_triton.server(settings).run_dir == tmp_path / "triton"
    assert local_triton.server(second, 1).run_dir == tmp_path / "triton-1"


def test_a_replica_can_start_with_nothing_loaded(tmp_path: Path) -> None:
    repository = tmp_path / "repo"
    (repository / "classifier").mkdir(parents=True)
    (repository / "classifier" / "config.pbtxt").write_text('name: "classifier"\n')
    settings = load_settings(stack={"run_dir": tmp_path}, triton={"model_repository": repository})
    install = local_triton.TritonInstall(Path("/opt/tritonserver/bin/tritonserver"), None, ())

    argv, _ = local_triton.argv_and_env(settings, install)
    assert "--load-model=classifier" in argv
    argv, _ = local_triton.argv_and_env(settings, install, load=False)
    assert not [arg for arg in argv if arg.startswith("--load-model")]
    assert "--model-control-mode=explicit" in argv
