"""The alert rules (deploy/prometheus/rules) under ``promtool test rules``: tests/deploy/rules/*.test.yml give each
alert series over time and the alerts expected to fire (or not) at given times."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest
import yaml

from foundation.settings import WorkerSettings
from tests.deploy.support import DEPLOY, ROLE_COMMANDS, load_yaml, require_tool

pytestmark = pytest.mark.unit

RULE_TESTS = sorted((Path(__file__).parent / "rules").glob("*.test.yml"))
SERVING_RULE_TESTS = Path(__file__).parent / "rules" / "driftloop.test.yml"
RULES = sorted((DEPLOY / "prometheus" / "rules").glob("*.yml"))


def alerts() -> dict[str, dict]:
    return {rule["alert"]: rule for path in RULES for group in load_yaml(path)["groups"] for rule in group["rules"]}


def promtool_test(path: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [require_tool("promtool"), "test", "rules", str(path)], capture_output=True, text=True, timeout=120, check=False
    )


@pytest.mark.parametrize("path", RULE_TESTS, ids=lambda p: p.name)
def test_promtool_rule_unit_tests_pass(path: Path) -> None:
    result = promtool_test(path)

    assert result.returncode == 0, result.stdout + result.stderr


def test_rule_tests_load_every_rule_file() -> None:
    loaded = {(path.parent / entry).resolve() for path in RULE_TESTS for entry in load_yaml(path)["rule_files"]}

    assert RULE_TESTS
    assert loaded == {path.resolve() for path in RULES}


def test_every_alert_is_tested_firing_and_quiet() -> None:
    cases = [case for path in RULE_TESTS for test in load_yaml(path)["tests"] for case in test["alert_rule_test"]]
    firing = {case["alertname"] for case in cases if case["exp_alerts"]}
    quiet = {case["alertname"] for case in cases if not case["exp_alerts"]}

    assert set(alerts()) == firing == quiet


def test_worker_down_expects_every_role_the_deployments_run() -> None:
    expression = alerts()["DriftloopWorkerDown"]["expr"]

    absent_roles = re.findall(r'absent\(up\{job="driftloop-workers", role="([a-z]+)"\}\)', expression)
    assert sorted(absent_roles) == sorted(ROLE_COMMANDS)


def test_lag_alert_watches_the_inference_consumer_group() -> None:
    expression = alerts()["DriftloopInferenceLagHigh"]["expr"]

    assert f'consumergroup="{WorkerSettings.model_fields["inference_group"].default}"' in expression


def test_the_tests_catch_a_worker_down_rule_blind_to_a_disappeared_worker(tmp_path: Path) -> None:
    """The rule as it was first written (``up == 0``) never fires for a worker whose target is gone: the tests fail."""
    rules = []
    for path in RULES:
        data = load_yaml(path)
        for group in data["groups"]:
            for rule in group["rules"]:
                if rule["alert"] == "DriftloopWorkerDown":
                    rule["expr"] = 'up{job="driftloop-workers"} == 0'
        rules.append(tmp_path / path.name)
        rules[-1].write_text(yaml.safe_dump(data))
    test = load_yaml(SERVING_RULE_TESTS)
    test["rule_files"] = [str(rule) for rule in rules]
    (tmp_path / SERVING_RULE_TESTS.name).write_text(yaml.safe_dump(test))

    result = promtool_test(tmp_path / SERVING_RULE_TESTS.name)

    output = result.stdout + result.stderr
    assert result.returncode != 0
    assert "alertname: DriftloopWorkerDown" in output
    assert 'role="features"' in output


def test_a_missing_tool_fails_with_its_install_command(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setattr("sys.executable", str(tmp_path / "python"))

    with pytest.raises(pytest.fail.Exception, match="apt-get install prometheus$"):
        require_tool("promtool")
