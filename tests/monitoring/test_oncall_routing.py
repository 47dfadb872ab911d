"""The shipped Alertmanager configuration pages someone: deploy/alertmanager/alertmanager.yml run by a real
Alertmanager, its PagerDuty (Events v2) and Slack receivers pointed at local HTTP recorders, secrets read from files.

Only what a test cannot wait for is changed in the copy: the secret file paths, the receivers' URLs, and the group
timings (seconds instead of minutes). Routing, grouping, inhibition and payload templates are the shipped ones.
"""

from __future__ import annotations

import json
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import pytest
import yaml

from foundation.paths import DEPLOY_DIR
from tests.monitoring.conftest import Recorder, running_alertmanager

pytestmark = pytest.mark.integration

CONFIG = DEPLOY_DIR / "alertmanager" / "alertmanager.yml"
ROUTING_KEY = "R0UTINGKEY0123456789abcdef012345"


@dataclass
class OnCall:
    url: str
    pagerduty: Recorder
    slack: Recorder

    def post(self, *alerts: dict[str, str], resolved: bool = False) -> None:
        now = datetime.now(UTC)
        body = [
            {
                "labels": labels,
                "annotations": {"summary": f"{labels['alertname']} on {labels.get('model', '-')}"},
                "startsAt": (now - timedelta(minutes=1)).isoformat(),
                **({"endsAt": now.isoformat()} if resolved else {}),
            }
            for labels in alerts
        ]
        request = urllib.request.Request(
            f"{self.url}/api/v2/alerts", json.dumps(body).encode(), {"Content-Type": "application/json"}
        )
        with urllib.request.urlopen(request, timeout=5) as response:
            assert response.status == 200

    def slack_titles(self) -> list[str]:
        return [body["attachments"][0]["title"] for body in self.slack.bodies()]

    def settle(self, marker: str) -> None:
        """Wait until a warning sent after everything else has reached Slack: by then Alertmanager has flushed
        every group it had (same group timings), so what was not delivered is not coming."""
        self.post({"alertname": "Marker", "model": marker, "kind": "data", "severity": "warning"})
        self.slack.wait_for(lambda bodies: any(marker in b["attachments"][0]["title"] for b in bodies), timeout_s=30)


@pytest.fixture
def on_call(tmp_path, recorder_factory) -> Iterator[OnCall]:
    pagerduty, slack = recorder_factory(), recorder_factory()
    (tmp_path / "pagerduty-routing-key").write_text(ROUTING_KEY + "\n")
    slack_url = tmp_path / "slack-webhook-url"
    slack_url.write_text(f"{slack.url}/slack")
    config = yaml.safe_load(CONFIG.read_text())
    config["route"].update(group_wait="1s", group_interval="1s")
    for receiver in config["receivers"]:
        for pd in receiver.get("pagerduty_configs", []):
            assert pd["routing_key_file"] == "/etc/alertmanager/secrets/pagerduty-routing-key"
            pd.update(routing_key_file=str(tmp_path / "pagerduty-routing-key"), url=f"{pagerduty.url}/enqueue")
        for slack_config in receiver.get("slack_configs", []):  # one list shared by both receivers (a YAML alias)
            assert slack_config["api_url_file"] in ("/etc/alertmanager/secrets/slack-webhook-url", str(slack_url))
            slack_config["api_url_file"] = str(slack_url)
    with running_alertmanager(tmp_path, yaml.safe_dump(config)) as url:
        yield OnCall(url, pagerduty, slack)


def drift(kind: str, severity: str, model: str = "classifier") -> dict[str, str]:
    return {"alertname": "ModelDrift", "model": model, "kind": kind, "severity": severity, "service": "driftloop"}


def test_a_critical_drift_is_one_pagerduty_incident_and_one_slack_message(on_call: OnCall) -> None:
    for _ in range(3):  # the monitor re-sends a firing alert; it stays one incident
        on_call.post(drift("data", "critical"))
    events = on_call.pagerduty.wait_for(lambda bodies: len(bodies) >= 1, timeout_s=30)
    on_call.settle("m1")

    events = on_call.pagerduty.bodies()
    assert len(events) == 1, events
    event = events[0]
    assert event["routing_key"] == ROUTING_KEY  # read from the secret file, stripped
    assert event["event_action"] == "trigger"
    assert event["payload"]["severity"] == "critical"
    assert "ModelDrift classifier data" in event["payload"]["summary"]
    assert [t for t in on_call.slack_titles() if "m1" not in t] == ["[FIRING] ModelDrift classifier data"]

    on_call.post(drift("data", "critical"), resolved=True)
    resolved = on_call.pagerduty.wait_for(lambda bodies: len(bodies) == 2, timeout_s=30)[1]
    assert resolved["event_action"] == "resolve"
    assert resolved["dedup_key"] == event["dedup_key"]


def test_a_warning_goes_to_slack_only(on_call: OnCall) -> None:
    on_call.post(drift("prediction", "warning"))
    on_call.slack.wait_for(lambda bodies: len(bodies) >= 1, timeout_s=30)
    on_call.settle("m2")
    assert on_call.pagerduty.bodies() == []
    assert "[FIRING] ModelDrift classifier prediction" in on_call.slack_titles()


def test_a_critical_alert_silences_the_warning_of_its_group_and_an_outage_its_symptoms(on_call: OnCall) -> None:
    on_call.post(drift("performance", "critical"))
    on_call.pagerduty.wait_for(lambda bodies: len(bodies) >= 1, timeout_s=30)
    on_call.post(drift("performance", "warning"))
    on_call.post({"alertname": "DriftloopWorkerDown", "role": "inference", "severity": "critical"})
    on_call.pagerduty.wait_for(lambda bodies: len(bodies) >= 2, timeout_s=30)
    on_call.post({"alertname": "DriftloopPredictionsStalled", "severity": "critical"})
    on_call.settle("m3")

    summaries = [e["payload"]["summary"] for e in on_call.pagerduty.bodies()]
    assert len(summaries) == 2, summaries
    assert not any("PredictionsStalled" in s for s in summaries)
    titles = on_call.slack_titles()
    assert not any("PredictionsStalled" in t for t in titles), titles
    # The warning of the paged group is inhibited: Slack only has the critical message of that group.
    assert [t for t in titles if "performance" in t] == ["[FIRING] ModelDrift classifier performance"]
