"""The monitoring worker end to end: real Kafka broker, real Alertmanager, real webhook receivers.

A stream whose numeric features and text shift after event K gives drift events and an alert that Alertmanager holds;
the stable stream of the same length gives nothing; the drift clearing resolves everything.
"""

from __future__ import annotations

import json
import time
import urllib.request
import uuid

import pytest

from monitoring import MonitorWorker
from monitoring.drift import KINDS
from monitoring.sources import oldest_record_at, read_tail
from streams import KafkaProducer, Record, ensure_topics
from streams.schemas import DeadLetter
from tests.helpers import free_port, wait_until
from tests.monitoring.kafka_helpers import (
    SMALL_WINDOW,
    DriftTopic,
    produce_champion,
    produce_labels,
    produce_predictions,
    running,
)

pytestmark = pytest.mark.integration

K = 400  # events before the shift
DRIFTED = 600
CLEARING = 800
# Windows of 300 checked every 100 events overlap; the calibrated thresholds keep the stable phases quiet.
SMALL = {
    **SMALL_WINDOW,
    "reports_keep": 10,
    "retry_backoff_s": 0.05,
    "delivery_timeout_s": 2.0,
    "cooldown_s": 3600,
}


@pytest.fixture
def monitored(settings_factory, tmp_path, alertmanager, recorder_factory, synthetic_factory):
    """Settings of a worker that alerts the session's Alertmanager and two local webhooks; a model with v1 served."""
    model = f"clf-{uuid.uuid4().hex[:8]}"
    hooks = recorder_factory()
    settings = settings_factory(
        triton={"model_repository": tmp_path / "repo"},
        monitoring={
            **SMALL,
            "reports_dir": tmp_path / "reports",
            "metrics_port": free_port(),
            "group_id": f"monitor-{model}",
            "alertmanager_url": alertmanager.url,
            "pagerduty_url": hooks.url + "/v2/enqueue",
            "pagerduty_routing_key": "routing-key-secret",
            "slack_webhook_url": hooks.url + "/slack/T0/B0/secret",
        },
    )
    ensure_topics(settings)
    setup = synthetic_factory(name=model)
    setup.write(settings.triton.model_repository)
    produce_champion(settings, model, 1)
    return settings, setup, model, hooks


def _get(port: int, path: str) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as response:
        return response.read().decode()


def test_drift_after_event_k_fires_alerts_and_clearing_resolves_them(monitored, alertmanager):
    settings, setup, model, hooks = monitored
    drift = DriftTopic(settings)
    worker = MonitorWorker(settings)
    try:
        with running(worker):
            assert worker.monitor.tracks[model].serving_version == 1  # from the models topic
            produce_predictions(settings, setup.predictions(K, seed=17))
            wait_until(lambda: worker.monitor.observed["labels"] >= K, what="stable phase consumed")
            assert drift.poll() == []

            produce_predictions(settings, setup.predictions(DRIFTED, seed=12, drift_at=0))
            events = drift.wait_for(lambda ev: {e.kind for e in ev} == {"data", "prediction", "performance"})
            firing = {e.kind: e for e in events}
            data = firing["data"]
            assert all(e.status == "firing" for e in events) and set(drift.keys) == {model.encode()}
            assert (data.model, data.version, data.severity) == (model, 1, "critical")
            assert {"amount", "items", "oov_share"} <= set(data.drifted_columns)
            assert data.window.size == 300 and data.window.start <= data.window.end
            assert data.metrics["drift_share"] >= 0.5 and data.scores["amount"].drifted
            assert (
                data.report_path and (settings.monitoring.reports_dir / data.report_path.rsplit("/", 1)[-1]).is_file()
            )
            assert firing["performance"].metrics["accuracy"] < 0.7

            # Alertmanager holds the alerts (queried through its API) and notifies its own receiver.
            alerts = alertmanager.wait_alerts(lambda a: len(a) == 3, model=model)
            assert {a["labels"]["kind"] for a in alerts} == {"data", "prediction", "performance"}
            data_alert = next(a for a in alerts if a["labels"]["kind"] == "data")
            assert data_alert["labels"]["severity"] == "critical" and data_alert["status"]["state"] == "active"
            assert data_alert["annotations"]["event_id"] == data.id
            alertmanager.notifications.wait_for(
                lambda bodies: any(b["commonLabels"].get("model") == model for b in bodies), path="/alertmanager"
            )

            # PagerDuty and Slack got one trigger per kind: repeats while open are inside the cooldown.
            triggers = hooks.wait_for(lambda b: len(b) == 3, path="/v2/enqueue")
            assert {t["dedup_key"] for t in triggers} == {f"driftloop/{model}/{k}" for k in firing}
            assert all(t["event_action"] == "trigger" for t in triggers)
            assert len(hooks.bodies("/slack/T0/B0/secret")) == 3

            port = settings.monitoring.metrics_port
            assert json.loads(_get(port, "/readyz"))["status"] == "ready"
            assert json.loads(_get(port, "/healthz"))["status"] == "alive"
            metrics = _get(port, "/metrics")
            assert f'driftloop_drift_alert_firing{{kind="data",model="{model}"}} 1.0' in metrics
            assert f'driftloop_drift_window_size{{model="{model}"}} 300.0' in metrics
            assert f'driftloop_live_accuracy{{model="{model}"}}' in metrics

            # The drift clears: every alert resolves, on the topic, in Alertmanager and at the webhooks.
            wait_until(lambda: worker.monitor.observed["labels"] >= K + DRIFTED, what="drifted phase consumed")
            produce_predictions(settings, setup.predictions(CLEARING, seed=13))
            events = drift.wait_for(lambda ev: sum(e.status == "resolved" for e in ev) == 3)
            resolved = {e.kind: e for e in events if e.status == "resolved"}
            assert resolved["data"].firing_event_id == data.id and resolved["data"].drifted_columns == []
            alertmanager.wait_alerts(lambda a: a == [], model=model)
            alertmanager.notifications.wait_for(
                lambda bodies: any(
                    b["commonLabels"].get("model") == model and b["status"] == "resolved" for b in bodies
                ),
                path="/alertmanager",
            )
            resolves = hooks.wait_for(lambda b: sum(x["event_action"] == "resolve" for x in b) == 3, path="/v2/enqueue")
            assert {r["dedup_key"] for r in resolves if r["event_action"] == "resolve"} == {
                t["dedup_key"] for t in triggers
            }
            assert sum(b["text"].startswith("[RESOLVED]") for b in hooks.bodies("/slack/T0/B0/secret")) == 3
            wait_until(lambda: worker.monitor.observed["labels"] >= K + DRIFTED + CLEARING, what="all consumed")
        assert len(drift.poll()) == 6
    finally:
        drift.close()


def test_a_stable_stream_of_the_same_length_alerts_nobody(monitored, alertmanager):
    settings, setup, model, hooks = monitored
    worker = MonitorWorker(settings)
    total = K + DRIFTED + CLEARING
    with running(worker):
        with KafkaProducer(settings) as producer:  # a record that breaks the contract goes to the DLQ
            producer.produce_batch([Record(settings.kafka.topic("predictions-v1"), b'{"event_id": 1}', key=b"bad")])
        produce_predictions(settings, setup.predictions(total, seed=22))
        observed = worker.monitor.observed
        wait_until(lambda: observed["labels"] >= total and observed["predictions"] >= total, what="stream consumed")
        checks = worker.metrics.registry.get_sample_value("driftloop_drift_checks_total", {"model": model})
        assert checks >= 15
        assert all(not s.firing and s.drift_streak == 0 for s in worker.monitor.tracks[model].states.values())
    drift = DriftTopic(settings)
    try:
        assert drift.poll() == [] and drift.poll() == []
    finally:
        drift.close()
    assert alertmanager.alerts(model=model) == []
    (dead,) = [DeadLetter.model_validate_json(raw) for raw in read_tail(settings, "dlq-v1", per_partition=10)]
    assert dead.stage == "monitoring" and dead.original() == b'{"event_id": 1}' and "event_id" in dead.error
    assert dead.source.topic == settings.kafka.topic("predictions-v1")
    assert hooks.bodies() == []
    assert not settings.monitoring.reports_dir.exists()


def test_with_late_partial_labels_it_pages_on_a_real_drift_and_not_before(monitored):
    """Labels come after their predictions and for half of them: data and prediction drift page on the shift alone,
    performance once the late labels of the drifted events are in and traffic goes on; nothing pages before."""
    settings, setup, model, hooks = monitored
    monitoring = settings.monitoring.model_copy(update={"window_size": 600, "check_interval_s": 1.0})
    settings = settings.model_copy(update={"monitoring": monitoring})  # late labels alone also start a check
    drift = DriftTopic(settings)
    worker = MonitorWorker(settings)
    stable = setup.predictions(600, seed=21)
    shifted = setup.predictions(800, seed=22, drift_at=0)
    try:
        with running(worker):
            produce_predictions(settings, stable, labels=False)
            wait_until(lambda: worker.monitor.observed["predictions"] >= 600, what="stable predictions consumed")
            produce_labels(settings, stable[::2])
            track = worker.monitor.tracks[model]
            wait_until(
                lambda: track.last_result is not None and track.last_result.window.labelled == 300,
                what="a check of the stable window with its late labels",
            )
            assert track.last_result.kinds["performance"].detected is False
            assert drift.poll() == [] and hooks.bodies("/v2/enqueue") == []

            produce_predictions(settings, shifted[:600], labels=False)
            events = drift.wait_for(lambda ev: {"data", "prediction"} <= {e.kind for e in ev})
            assert "performance" not in {e.kind for e in events}  # no label of a drifted event yet
            produce_labels(settings, shifted[:600:2])
            produce_predictions(settings, shifted[600:], labels=False)  # the drifted traffic goes on
            events = drift.wait_for(lambda ev: "performance" in {e.kind for e in ev})
            performance = next(e for e in events if e.kind == "performance")
            assert performance.status == "firing" and 100 <= performance.window.labelled < performance.window.size
            assert performance.metrics["accuracy_upper_bound"] < performance.metrics["accuracy_floor"]
            triggers = hooks.wait_for(lambda b: len(b) == 3, path="/v2/enqueue")
            assert {t["dedup_key"] for t in triggers} == {f"driftloop/{model}/{k}" for k in KINDS}
    finally:
        drift.close()


def test_the_predictions_topics_oldest_record_dates_how_long_predictions_were_served(
    settings_factory, synthetic_factory
):
    settings = settings_factory()
    ensure_topics(settings)
    setup = synthetic_factory()
    assert oldest_record_at(settings, "predictions-v1") is None  # nothing served yet
    before = time.time()
    produce_predictions(settings, setup.predictions(60, seed=1), labels=False)
    oldest = oldest_record_at(settings, "predictions-v1")
    assert oldest is not None and before - 1 <= oldest <= time.time()
    produce_predictions(settings, setup.predictions(60, seed=2), labels=False)
    assert oldest_record_at(settings, "predictions-v1") == oldest  # newer records do not move it
