"""``driftloop drift report`` and ``driftloop monitor`` against a real broker."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
import uuid

import click
import pytest
from click.testing import CliRunner

from driftloop.commands.context import CommandContext
from driftloop.commands.monitor import drift_group, monitor_command
from foundation.paths import REPO_ROOT
from streams import ensure_topics
from tests.helpers import free_port
from tests.monitoring.kafka_helpers import produce_champion, produce_predictions

pytestmark = pytest.mark.integration


@click.group()
@click.pass_context
def cli(ctx: click.Context) -> None:
    """The two commands as ``driftloop`` registers them."""
    ctx.obj = CommandContext(None, None, None)


cli.add_command(monitor_command)
cli.add_command(drift_group)

_ENV_CLEAN = ("KAFKA_BOOTSTRAP_SERVERS", "TRITON_URL", "KAFKA_HOME", "DRIFTLOOP_CONFIG")


def _env(settings, tmp_path, **monitoring) -> dict[str, str]:
    env = {
        "DRIFTLOOP_KAFKA__BOOTSTRAP_SERVERS": settings.kafka_bootstrap,
        "DRIFTLOOP_KAFKA__TOPIC_PREFIX": settings.kafka.topic_prefix,
        "DRIFTLOOP_KAFKA__SESSION_TIMEOUT_MS": "6000",
        "DRIFTLOOP_TRITON__MODEL_REPOSITORY": str(settings.triton.model_repository),
        "DRIFTLOOP_MONITORING__REPORTS_DIR": str(tmp_path / "reports"),
    }
    env.update({f"DRIFTLOOP_MONITORING__{k.upper()}": str(v) for k, v in monitoring.items()})
    return env


@pytest.fixture
def served(settings_factory, tmp_path, synthetic_factory, monkeypatch):
    for var in _ENV_CLEAN:
        monkeypatch.delenv(var, raising=False)
    monkeypatch.chdir(tmp_path)
    model = f"clf-{uuid.uuid4().hex[:8]}"
    settings = settings_factory(triton={"model_repository": tmp_path / "repo"})
    ensure_topics(settings)
    setup = synthetic_factory(name=model)
    setup.write(settings.triton.model_repository)
    return settings, setup, model


def test_drift_report_checks_the_latest_predictions_and_saves_the_html(served, tmp_path):
    settings, setup, model = served
    produce_champion(settings, model, 1)
    produce_predictions(settings, setup.predictions(300, seed=31))
    produce_predictions(settings, setup.predictions(400, seed=32, drift_at=0))
    runner = CliRunner()
    env = _env(settings, tmp_path)

    result = runner.invoke(cli, ["drift", "report", "--model", model, "--window", "400", "--json"], env=env)
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output.strip().splitlines()[-1])
    assert summary["model"] == model and summary["version"] == 1
    assert summary["window"]["size"] == 400 and summary["window"]["labelled"] == 400
    assert summary["kinds"]["data"]["detected"] is True and summary["kinds"]["performance"]["detected"] is True
    assert {"amount", "items", "oov_share"} <= set(summary["kinds"]["data"]["drifted_columns"])
    report = summary["report_path"]
    assert report.startswith(str(tmp_path / "reports")) and os.path.isfile(report)

    text = runner.invoke(
        cli, ["drift", "report", "--model", model, "--window", "300", "--out", str(tmp_path / "x")], env=env
    )
    assert text.exit_code == 0, text.output
    assert f"{model} v1: window of 300 predictions (300 labelled) vs 600 reference rows" in text.output
    assert "report: " + str(tmp_path / "x") in text.output


def test_drift_report_errors_are_one_line_and_exit_1(served, tmp_path):
    settings, setup, model = served
    runner = CliRunner()
    env = _env(settings, tmp_path)
    none = runner.invoke(cli, ["drift", "report", "--model", model, "--window", "50", "--no-html"], env=env)
    assert none.exit_code == 1 and "no champion predictions of" in none.output
    produce_predictions(settings, setup.predictions(50, seed=33), labels=False)
    missing = runner.invoke(cli, ["drift", "report", "--model", model, "--version", "9"], env=env)
    assert missing.exit_code == 1 and "no champion predictions of " + model + " v9" in missing.output
    (settings.triton.model_repository / model / "1" / "metadata.json").unlink()
    no_ref = runner.invoke(cli, ["drift", "report", "--model", model], env=env)
    assert no_ref.exit_code == 1 and "metadata.json does not exist" in no_ref.output


def test_monitor_runs_until_sigterm_and_serves_metrics(served, tmp_path):
    settings, _, model = served
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k not in _ENV_CLEAN}
    env.update(_env(settings, tmp_path, metrics_port=port, group_id=f"monitor-{model}"))
    script = tmp_path / "cli.py"
    script.write_text("from tests.monitoring.test_cli import cli\ncli(['monitor'])\n")
    env["PYTHONPATH"] = str(REPO_ROOT)
    proc = subprocess.Popen([sys.executable, str(script)], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None, proc.stdout.read().decode()
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=1) as response:
                    assert b"driftloop_drift_checks" in response.read()
                    break
            except OSError:
                assert time.monotonic() < deadline, "no /metrics within 60s"
                time.sleep(0.3)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
        output = proc.stdout.read().decode()
        assert "monitor running" in output and "monitor stopped" in output
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
