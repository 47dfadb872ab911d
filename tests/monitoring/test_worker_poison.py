"""Poison on every topic the monitor reads, against a real broker: the worker keeps running, then still alerts.

Before the worker starts, the drift topic (read back at start) and the models topic (followed from its beginning) hold
garbage, tombstones, out-of-range times and states of unknown models and versions; while it runs, hostile predictions
and labels are mixed into a stable stream and more garbage reaches the models topic. The worker must not stop,
must keep following v1 (a state naming v99, which has no folder, is skipped), must dead-letter exactly the hostile
predictions, count the skipped labels, drift events and model states, and then detect a real drift.
"""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime

import pytest

from monitoring import MonitorWorker
from monitoring.sources import read_tail
from streams import KafkaProducer, Record, ensure_topics
from streams.schemas import DeadLetter
from tests.helpers import wait_until
from tests.monitoring.kafka_helpers import DriftTopic, produce_champion, produce_predictions, running

pytestmark = pytest.mark.integration

K = 400
DRIFTED = 600
SMALL = {
    "window_size": 300,
    "min_window": 200,
    "check_every_events": 100,
    "check_interval_s": 3600,
    "num_threshold": 0.01,
    "hysteresis_checks": 2,
    "resolve_checks": 2,
    "min_labelled": 100,
    "cooldown_s": 3600,
    "metrics_port": 0,
}
YEAR_ONE = "0001-01-01T00:00:00+01:00"
GARBAGE = [b"\xff\xfe\x00binary", b"not json", b"[1, 2]", b"{" * 5000, b'{"a": NaN}', b""]


def _json(record: object) -> bytes:
    return json.dumps(record).encode()


def _state(model: str, champion: int | None, at: str | None = None) -> bytes:
    return _json({"model": model, "champion": champion, "event": "promoted", "at": at or datetime.now(UTC).isoformat()})


def _drift_event(model: str, when: str | None = None) -> bytes:
    now = datetime.now(UTC).isoformat()
    return _json(
        {
            "id": uuid.uuid4().hex,
            "kind": "data",
            "status": "firing",
            "severity": "critical",
            "model": model,
            "version": 1,
            "dedup_key": f"driftloop/{model}/data",
            "metrics": {"drift_share": 0.9},
            "window": {"start": now, "end": now, "size": 300, "labelled": 0},
            "drifted_columns": ["amount"],
            "started_at": when or now,
            "detected_at": when or now,
        }
    )


@pytest.fixture
def poisoned(settings_factory, tmp_path, synthetic_factory):
    """A model with v1 served, and poison already waiting on the drift and models topics."""
    model = f"clf-{uuid.uuid4().hex[:8]}"
    settings = settings_factory(
        triton={"model_repository": tmp_path / "repo"},
        monitoring={**SMALL, "reports_dir": tmp_path / "reports", "group_id": f"monitor-{model}"},
    )
    ensure_topics(settings)
    setup = synthetic_factory(name=model)
    setup.write(settings.triton.model_repository)
    produce_champion(settings, model, 1)
    drift, models = settings.kafka.topic("drift-v1"), settings.kafka.topic("models-v1")
    records = [Record(drift, g, key=model.encode()) for g in GARBAGE]
    records += [
        Record(drift, None, key=model.encode()),
        Record(drift, _drift_event("nobody"), key=b"nobody"),
        Record(drift, _drift_event(model, YEAR_ONE), key=model.encode()),
    ]
    records += _models_poison(models, model)
    with KafkaProducer(settings) as producer:
        producer.produce_batch(records)
    return settings, setup, model


def _models_poison(topic: str, model: str) -> list[Record]:
    """Model states nobody can follow: garbage, a tombstone, unknown model and version, out-of-range times."""
    return [
        *(Record(topic, g, key=model.encode()) for g in GARBAGE),
        Record(topic, None, key=b"nobody"),
        Record(topic, _state("nobody", 1), key=b"nobody"),
        Record(topic, _state(model, 99), key=model.encode()),
        Record(topic, _state(model, 2, YEAR_ONE), key=model.encode()),
        Record(topic, _json({"model": model, "champion": 10**400}), key=model.encode()),
    ]


def _hostile_predictions(valid: dict) -> list[bytes]:
    return [
        *GARBAGE,
        _json({**valid, "event_id": "p-year-one", "event_time": YEAR_ONE}),
        _json({**valid, "event_id": "p-naive", "event_time": "2026-11-27T10:00:00"}),
        _json({**valid, "event_id": "p-label", "label": "x" * 200_000}),
        _json({**valid, "event_id": "p-unknown", "label": "not-a-label"}),
        _json({**valid, "event_id": "e" * 100_000}),
    ]


def _hostile_labels(event_id: str) -> list[bytes]:
    now = datetime.now(UTC).isoformat()
    return [
        *GARBAGE,
        _json({"event_id": event_id, "label": "positive", "labelled_at": YEAR_ONE}),
        _json({"event_id": event_id, "label": "positive", "labelled_at": "2026-11-27T10:00:00"}),
        _json({"event_id": event_id, "label": "x" * 200_000, "labelled_at": now}),
        _json({"event_id": event_id, "label": "not-a-label", "labelled_at": now}),
        _json({"event_id": "never-seen", "label": "not-a-label", "labelled_at": now}),
    ]


def test_poison_on_every_topic_stops_nothing_and_a_real_drift_still_alerts(poisoned):
    settings, setup, model = poisoned
    worker = MonitorWorker(settings)
    skipped = worker.metrics.skipped
    drift = DriftTopic(settings)
    stable = setup.predictions(K, seed=41)
    hostile_predictions = _hostile_predictions(json.loads(stable[0][0].to_bytes()))
    hostile_labels = _hostile_labels(stable[0][0].event_id)
    try:
        with running(worker):
            assert worker.monitor.tracks[model].serving_version == 1  # v99 and the year-one state were skipped
            assert set(worker.monitor.tracks) == {model}  # nothing of "nobody" (drift event, model state)
            assert skipped.count("models-v1", "unknown version") >= 1 and skipped.count("drift-v1", "unknown model")

            produce_predictions(settings, stable[: K // 2])
            with KafkaProducer(settings) as producer:
                producer.produce_batch(
                    [Record(settings.kafka.topic("predictions-v1"), v, key=b"e" * 5000) for v in hostile_predictions]
                    + [Record(settings.kafka.topic("labels-v1"), v, key=b"x") for v in hostile_labels]
                    + [Record(settings.kafka.topic("labels-v1"), None, key=b"x")]
                    + _models_poison(settings.kafka.topic("models-v1"), model)
                )
            produce_predictions(settings, stable[K // 2 :])
            observed = worker.monitor.observed
            # Labels that parse reach the monitor: the K valid ones and the two with an unknown label.
            wait_until(lambda: observed["labels"] >= K + 2, what="stable phase consumed")
            assert worker.monitor.tracks[model].serving_version == 1

            def ours(events: list) -> list:  # the poison put a valid event of "nobody" on the topic
                return [e for e in events if e.model == model]

            assert ours(drift.poll()) == []

            produce_predictions(settings, setup.predictions(DRIFTED, seed=42, drift_at=0))
            events = ours(
                drift.wait_for(lambda ev: {e.kind for e in ours(ev)} == {"data", "prediction", "performance"})
            )
            assert all(e.status == "firing" and e.version == 1 for e in events) and len(events) == 3
            assert {"amount", "items"} <= set(next(e for e in events if e.kind == "data").drifted_columns)

            letters = []

            def dead_letters() -> list[DeadLetter]:
                letters[:] = [DeadLetter.model_validate_json(v) for v in read_tail(settings, "dlq-v1", 100)]
                return letters

            wait_until(lambda: len(dead_letters()) >= len(hostile_predictions), what="dead letters")
            assert len(letters) == len(hostile_predictions)
            assert sorted(d.original() for d in letters) == sorted(hostile_predictions)
            assert all(
                d.stage == "monitoring" and d.source.topic == settings.kafka.topic("predictions-v1") for d in letters
            )
            assert skipped.count("labels-v1", "unknown label") == 2
            assert skipped.count("labels-v1", "labelled_at") == 2
            assert skipped.count("labels-v1", "empty value") == 1  # the tombstone (b"" is an empty value: not JSON)
            assert skipped.count("models-v1", "unknown version") >= 2  # at start, and while running
    finally:
        drift.close()
