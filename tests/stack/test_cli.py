"""`driftloop stack up | status | down` end to end: real broker, real tritonserver, real Feast store."""

from __future__ import annotations

import json
import os

import pytest
from click.testing import CliRunner

from driftloop.cli import main
from driftloop.stack import kafka as local_kafka
from foundation.settings import load_settings
from tests.helpers import free_port

pytestmark = pytest.mark.integration


@pytest.fixture
def stack_env(tmp_path, stack_settings, monkeypatch):
    for var in ("KAFKA_BOOTSTRAP_SERVERS", "TRITON_URL", "DRIFTLOOP_CONFIG"):
        monkeypatch.delenv(var, raising=False)
    env = {
        "DRIFTLOOP_STACK__RUN_DIR": str(tmp_path / "run"),
        "DRIFTLOOP_STACK__SERVING_VENV": str(stack_settings.stack.serving_venv),
        "DRIFTLOOP_STACK__KAFKA_HEAP": "512m",
        "DRIFTLOOP_TRITON__MODEL_REPOSITORY": str(tmp_path / "repo"),
        **{
            f"DRIFTLOOP_STACK__{name}": str(free_port())
            for name in (
                "KAFKA_PORT",
                "KAFKA_CONTROLLER_PORT",
                "TRITON_HTTP_PORT",
                "TRITON_GRPC_PORT",
                "TRITON_METRICS_PORT",
            )
        },
    }
    (tmp_path / "repo").mkdir()
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    monkeypatch.chdir(tmp_path)
    yield env
    CliRunner().invoke(main, ["stack", "down"])


def _status(runner: CliRunner) -> tuple[int, dict]:
    result = runner.invoke(main, ["stack", "status", "--json"])
    return result.exit_code, {d["name"]: d for d in map(json.loads, result.stdout.splitlines())}


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return not open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[0] == "Z"


def test_up_status_restart_down(stack_env):
    runner = CliRunner()
    down_code, before = _status(runner)
    assert down_code == 1 and not before["kafka"]["healthy"] and before["kafka"]["detail"] == "not running"

    up = runner.invoke(main, ["stack", "up"])
    assert up.exit_code == 0, up.output
    for name in ("kafka", "triton", "feast"):
        assert f"{name}: ready in" in up.output

    code, report = _status(runner)
    assert code == 0, report
    assert all(item["healthy"] for item in report.values())
    assert "6 driftloop topic(s)" in report["kafka"]["detail"]
    assert "(ready)" in report["triton"]["detail"]
    pids = [report["kafka"]["pid"], report["triton"]["pid"]]
    assert all(_alive(pid) for pid in pids)

    # A second start reuses the broker jars resolved into the cache: no second Maven run.
    settings = load_settings()
    marker = local_kafka.resolve_jars(settings) / ".complete"
    stamp = marker.stat().st_mtime_ns
    assert runner.invoke(main, ["stack", "down"]).exit_code == 0
    again = runner.invoke(main, ["stack", "up"])
    assert again.exit_code == 0, again.output
    assert marker.stat().st_mtime_ns == stamp
    assert "6 topics (0 created)" in again.output  # storage survived the restart

    code, report = _status(runner)
    pids += [report["kafka"]["pid"], report["triton"]["pid"]]
    down = runner.invoke(main, ["stack", "down"])
    assert down.exit_code == 0 and "kafka" in down.output and "triton" in down.output
    assert not any(_alive(pid) for pid in pids)
    assert _status(runner)[0] == 1


def test_external_servers_are_used_not_started(stack_env, kafka_bootstrap, monkeypatch):
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", kafka_bootstrap)
    runner = CliRunner()
    up = runner.invoke(main, ["stack", "up", "--only", "kafka"])
    assert up.exit_code == 0, up.output
    assert "kafka: external, not started" in up.output
    code, report = _status(runner)
    assert report["kafka"]["mode"] == "external" and report["kafka"]["healthy"] and report["kafka"]["pid"] is None
    assert not (local_kafka.server(load_settings()).pid_file).exists()


def test_unknown_component_is_refused(stack_env):
    result = CliRunner().invoke(main, ["stack", "up", "--only", "kafka,zookeeper"])
    assert result.exit_code == 2 and "zookeeper" in result.output
