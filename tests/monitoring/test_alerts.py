"""On-call delivery: payload shapes, retries with backoff, cooldown, resolve, secrets never logged.

Unit tests inject a transport; the integration tests deliver to real local HTTP servers and a real Alertmanager.
"""

from __future__ import annotations

import json
import logging
import uuid
from datetime import UTC, datetime, timedelta

import pytest

from foundation.settings import MonitoringSettings
from monitoring import (
    AlertDispatcher,
    AlertmanagerReceiver,
    DeliveryFailed,
    DriftEvent,
    MonitorMetrics,
    PagerDutyReceiver,
    RetryPolicy,
    SlackReceiver,
    build_dispatcher,
    build_receivers,
)
from monitoring.alerts import HttpResponse, deliver
from streams.schemas import ColumnScore, WindowInfo

ROUTING_KEY = "R0UT1NGKEY-secret-0123456789abcdef"
SLACK_PATH = "/services/T000/B000/XXXXsecretXXXX"


def make_event(status="firing", model="classifier", kind="data", severity="critical", **extra) -> DriftEvent:
    now = datetime.now(UTC)
    return DriftEvent(
        id=str(uuid.uuid4()),
        kind=kind,
        status=status,
        severity=severity,
        model=model,
        version=3,
        dedup_key=f"driftloop/{model}/{kind}",
        window=WindowInfo(start=now - timedelta(minutes=5), end=now, size=5000, labelled=800),
        metrics={"drift_share": 0.8, "drifted_count": 4.0, "column_count": 5.0},
        drifted_columns=["amount", "oov_share"] if status == "firing" else [],
        scores={"amount": ColumnScore(method="ks", score=0.0, threshold=0.05, drifted=True)},
        started_at=now - timedelta(seconds=30),
        detected_at=now,
        report_path="/reports/drift-classifier-v3.html",
        **extra,
    )


class FakeTransport:
    """Answers from a script (responses or exceptions), then 200; records each call."""

    def __init__(self, *script):
        self.script = list(script)
        self.calls: list[tuple[str, dict]] = []

    def __call__(self, url, body, headers, timeout_s):
        self.calls.append((url, json.loads(body)))
        item = self.script.pop(0) if self.script else HttpResponse(200)
        if isinstance(item, Exception):
            raise item
        return item


class Sleeps(list):
    def __call__(self, seconds):
        self.append(seconds)


RETRY = RetryPolicy(retries=3, backoff_s=0.1, backoff_max_s=0.25, timeout_s=1)


# -- unit --------------------------------------------------------------------------------------------------------


@pytest.mark.unit
def test_transient_failures_are_retried_with_growing_capped_backoff():
    transport, sleeps = (
        FakeTransport(ConnectionRefusedError("refused"), HttpResponse(503), HttpResponse(429), HttpResponse(202)),
        Sleeps(),
    )
    assert deliver(SlackReceiver("http://hooks.test" + SLACK_PATH), make_event(), RETRY, transport, sleeps) == 4
    assert len(transport.calls) == 4 and len(sleeps) == 3
    # backoff_s * 2**n plus up to backoff_s of jitter, capped at backoff_max_s (foundation.retry's one policy)
    assert 0.1 <= sleeps[0] <= 0.2 and 0.2 <= sleeps[1] <= 0.25 and sleeps[2] == 0.25


@pytest.mark.unit
def test_a_rejection_is_not_retried_and_exhaustion_fails():
    transport, sleeps = FakeTransport(HttpResponse(400)), Sleeps()
    with pytest.raises(DeliveryFailed, match=r"slack: HTTP 400 \(after 1 attempt\)"):
        deliver(SlackReceiver("http://hooks.test" + SLACK_PATH), make_event(), RETRY, transport, sleeps)
    assert sleeps == []
    transport = FakeTransport(*[HttpResponse(500)] * 4)
    with pytest.raises(DeliveryFailed, match=r"HTTP 500 \(after 4 attempts\)"):
        deliver(SlackReceiver("http://hooks.test" + SLACK_PATH), make_event(), RETRY, transport, Sleeps())
    assert len(transport.calls) == 4


class Clock:
    now = 100.0

    def __call__(self):
        return self.now


@pytest.mark.unit
def test_cooldown_limits_webhook_pages_while_alertmanager_gets_every_check():
    clock, transport = Clock(), FakeTransport()
    receivers = [AlertmanagerReceiver("http://am.test:9093/"), SlackReceiver("http://hooks.test" + SLACK_PATH)]
    dispatcher = AlertDispatcher(receivers, RETRY, cooldown_s=600, transport=transport, sleep=Sleeps(), clock=clock)
    fired = make_event()
    assert dispatcher.dispatch(fired) == {"alertmanager": "sent", "slack": "sent"}
    clock.now += 60
    assert dispatcher.dispatch(make_event()) == {"alertmanager": "sent", "slack": "cooldown"}  # a repeat
    clock.now += 600
    assert dispatcher.dispatch(make_event()) == {"alertmanager": "sent", "slack": "sent"}  # a reminder
    resolved = make_event("resolved", firing_event_id=fired.id)
    assert dispatcher.dispatch(resolved) == {"alertmanager": "sent", "slack": "sent"}
    assert dispatcher.dispatch(resolved) == {"alertmanager": "sent", "slack": "not_fired"}
    clock.now += 10
    assert dispatcher.dispatch(make_event()) == {"alertmanager": "sent", "slack": "cooldown"}  # flapping
    # Another model or kind is another alert.
    assert dispatcher.dispatch(make_event(kind="performance")) == {"alertmanager": "sent", "slack": "sent"}
    assert transport.calls[0][0] == "http://am.test:9093/api/v2/alerts"


@pytest.mark.unit
def test_a_failing_receiver_does_not_stop_the_others_and_is_counted():
    metrics = MonitorMetrics()
    transport = FakeTransport(*[HttpResponse(500)] * 4)
    receivers = [PagerDutyReceiver(ROUTING_KEY, "http://pd.test/v2/enqueue"), SlackReceiver("http://hooks.test/x")]
    dispatcher = AlertDispatcher(receivers, RETRY, transport=transport, sleep=Sleeps(), metrics=metrics)
    assert dispatcher.dispatch(make_event()) == {"pagerduty": "failed", "slack": "sent"}
    assert (
        metrics.registry.get_sample_value(
            "driftloop_alert_deliveries_total", {"receiver": "pagerduty", "outcome": "failed"}
        )
        == 1
    )
    # The failed receiver was never sent the firing, so it gets no resolve.
    assert dispatcher.dispatch(make_event("resolved")) == {"pagerduty": "not_fired", "slack": "sent"}


@pytest.mark.unit
def test_secrets_never_reach_the_logs(caplog):
    slack_url = "http://hooks.test" + SLACK_PATH
    pd_url = "http://pd.test/v2/enqueue?token=URLSECRET"
    transport = FakeTransport(
        HttpResponse(503), OSError(f"cannot reach {slack_url}"), HttpResponse(202), HttpResponse(200)
    )
    receivers = [SlackReceiver(slack_url), PagerDutyReceiver(ROUTING_KEY, pd_url)]
    dispatcher = AlertDispatcher(receivers, RetryPolicy(retries=1, backoff_s=0), transport=transport, sleep=Sleeps())
    with caplog.at_level(logging.DEBUG):
        dispatcher.dispatch(make_event())
        dispatcher.dispatch(make_event(kind="prediction"))
    text = "\n".join(f"{r.getMessage()} {r.__dict__}" for r in caplog.records)
    assert "alert delivery failed" in text and "alert delivered" in text
    for secret in (SLACK_PATH, "URLSECRET", ROUTING_KEY):
        assert secret not in text
    failed = next(r for r in caplog.records if r.getMessage() == "alert delivery failed")
    assert failed.receiver == "slack" and "***" in failed.reason


@pytest.mark.unit
def test_receivers_come_from_settings_and_secrets_stay_hidden():
    assert build_receivers(MonitoringSettings()) == []
    settings = MonitoringSettings(
        alertmanager_url="http://am:9093",
        pagerduty_routing_key=ROUTING_KEY,
        slack_webhook_url="https://hooks.slack.com" + SLACK_PATH,
        cooldown_s=5,
        delivery_retries=1,
    )
    dispatcher = build_dispatcher(settings)
    assert [r.name for r in dispatcher.receivers] == ["alertmanager", "pagerduty", "slack"]
    assert dispatcher.cooldown_s == 5 and dispatcher.retry.retries == 1
    assert ROUTING_KEY not in repr(settings) and SLACK_PATH not in repr(settings) and SLACK_PATH not in str(settings)
    assert dispatcher.receivers[1].request(make_event())[0] == "https://events.pagerduty.com/v2/enqueue"


@pytest.mark.unit
def test_alertmanager_alert_shape():
    receiver = AlertmanagerReceiver("http://am:9093", alert_ttl_s=600, generator_url="http://grafana/d/drift")
    firing = receiver.alert(make_event())
    assert firing["labels"] == {
        "alertname": "ModelDrift",
        "model": "classifier",
        "kind": "data",
        "severity": "critical",
        "service": "driftloop",
    }
    assert firing["generatorURL"] == "http://grafana/d/drift"
    ends = datetime.fromisoformat(firing["endsAt"])
    assert timedelta(seconds=590) < ends - datetime.now(UTC) <= timedelta(seconds=600)
    event = make_event("resolved")
    resolved = receiver.alert(event)
    assert datetime.fromisoformat(resolved["endsAt"]) == event.detected_at.replace(
        microsecond=event.detected_at.microsecond // 1000 * 1000
    )
    assert resolved["labels"] == firing["labels"]


# -- integration: real local HTTP servers, real Alertmanager ----------------------------------------------------


@pytest.mark.integration
def test_pagerduty_events_v2_trigger_and_resolve_reach_a_real_server(recorder_factory):
    server = recorder_factory()
    receiver = PagerDutyReceiver(ROUTING_KEY, server.url + "/v2/enqueue", generator_url="http://grafana/d/drift")
    dispatcher = AlertDispatcher([receiver], RETRY, sleep=Sleeps())
    fired = make_event()
    assert dispatcher.dispatch(fired) == {"pagerduty": "sent"}
    assert dispatcher.dispatch(make_event("resolved", firing_event_id=fired.id)) == {"pagerduty": "sent"}
    trigger, resolve = server.bodies("/v2/enqueue")
    assert trigger["routing_key"] == ROUTING_KEY and trigger["event_action"] == "trigger"
    assert trigger["dedup_key"] == "driftloop/classifier/data" and trigger["client"] == "driftloop"
    payload = trigger["payload"]
    assert set(payload) == {
        "summary",
        "source",
        "severity",
        "timestamp",
        "component",
        "group",
        "class",
        "custom_details",
    }
    assert payload["severity"] == "critical" and payload["component"] == "classifier"
    assert payload["group"] == "classifier v3" and payload["class"] == "data drift"
    assert "amount" in payload["summary"] and len(payload["summary"]) <= 1024
    assert payload["custom_details"]["drifted_columns"] == ["amount", "oov_share"]
    assert payload["custom_details"]["window"]["size"] == 5000
    assert datetime.fromisoformat(payload["timestamp"]).tzinfo is not None
    assert trigger["links"] == [{"href": "http://grafana/d/drift", "text": "driftloop"}]
    assert resolve == {"routing_key": ROUTING_KEY, "event_action": "resolve", "dedup_key": "driftloop/classifier/data"}
    assert server.requests[0].headers["Content-Type"] == "application/json"


@pytest.mark.integration
def test_slack_messages_and_retries_against_a_real_server(recorder_factory):
    server = recorder_factory()
    server.statuses = [500, 503]
    dispatcher = AlertDispatcher([SlackReceiver(server.url + SLACK_PATH)], RETRY, sleep=Sleeps())
    assert dispatcher.dispatch(make_event(severity="warning")) == {"slack": "sent"}
    assert dispatcher.dispatch(make_event("resolved")) == {"slack": "sent"}
    bodies = server.bodies(SLACK_PATH)
    assert len(bodies) == 4  # two failed attempts, the firing, the resolve
    firing, resolved = bodies[2], bodies[3]
    assert firing["text"].startswith("[WARNING] data drift of classifier v3 in amount, oov_share")
    attachment = firing["attachments"][0]
    assert attachment["color"] == "#f2a900" and attachment["title"] == "data drift detected: classifier"
    assert {f["title"] for f in attachment["fields"]} == {
        "Model",
        "Kind",
        "Window",
        "Metrics",
        "Drifted columns",
        "Report",
    }
    assert resolved["text"].startswith("[RESOLVED] data drift of classifier v3 cleared")
    assert resolved["attachments"][0]["color"] == "#2eb886"


@pytest.mark.integration
def test_alertmanager_holds_a_firing_alert_and_drops_it_on_resolve(alertmanager):
    model = f"am-{uuid.uuid4().hex[:8]}"
    dispatcher = AlertDispatcher([AlertmanagerReceiver(alertmanager.url, alert_ttl_s=300)], RETRY, sleep=Sleeps())
    fired = make_event(model=model)
    assert dispatcher.dispatch(fired) == {"alertmanager": "sent"}
    alerts = alertmanager.wait_alerts(lambda a: len(a) == 1, model=model)
    alert = alerts[0]
    assert alert["labels"] == {
        "alertname": "ModelDrift",
        "model": model,
        "kind": "data",
        "severity": "critical",
        "service": "driftloop",
    }
    assert alert["status"]["state"] == "active"
    assert (
        alert["annotations"]["event_id"] == fired.id and alert["annotations"]["drifted_columns"] == "amount,oov_share"
    )
    assert dispatcher.dispatch(make_event(model=model)) == {"alertmanager": "sent"}  # keep-alive: still one alert
    assert len(alertmanager.alerts(model=model)) == 1

    notified = alertmanager.notifications.wait_for(
        lambda bodies: any(b["commonLabels"].get("model") == model for b in bodies), path="/alertmanager"
    )
    assert next(b for b in notified if b["commonLabels"].get("model") == model)["status"] == "firing"

    assert dispatcher.dispatch(make_event("resolved", model=model)) == {"alertmanager": "sent"}
    alertmanager.wait_alerts(lambda a: a == [], model=model)
    resolved = alertmanager.notifications.wait_for(
        lambda bodies: any(b["commonLabels"].get("model") == model and b["status"] == "resolved" for b in bodies),
        path="/alertmanager",
    )
    assert resolved
