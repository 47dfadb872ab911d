"""Hostile records on the topics training reads: the data read and the canary skip and count them, never fail.

Against the real broker: naive and out-of-range times, garbage, unknown labels and labels of unknown events on the
events, labels and predictions topics.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest

from streams import KafkaProducer, Record, ensure_topics
from streams.schemas import Event, Label, ModelRef, Prediction, Timings
from streams.skips import SkippedRecords
from tests.helpers import wait_until
from training.canary import CanaryWatch
from training.dataset import DataWindow, read_labelled_events

pytestmark = pytest.mark.integration

GARBAGE = [b"", b"\xff\xfe\x00", b"null", b"[]", b'{"event_id": 1}', b"{" * 5000, b'{"a": 1e999999}']


def _label_json(event_id: str, labelled_at: str, label: str = "neutral") -> bytes:
    return json.dumps({"event_id": event_id, "label": label, "labelled_at": labelled_at}).encode()


def test_a_training_read_skips_hostile_events_and_labels(settings_factory) -> None:
    settings = settings_factory()
    ensure_topics(settings)
    events_topic, labels_topic = settings.kafka.topic("events-v1"), settings.kafka.topic("labels-v1")
    t0 = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=30)
    good = [
        Event(event_id=f"e{i}", entity_id="c1", event_time=t0 + timedelta(minutes=i), text=f"text {i}")
        for i in range(5)
    ]
    records = [Record(events_topic, e.to_bytes(), key=b"c1") for e in good]
    far_future = json.loads(good[0].to_bytes()) | {"event_id": "future", "event_time": "2300-01-01T00:00:00Z"}
    records += [Record(events_topic, json.dumps(far_future).encode(), key=b"c1")]
    records += [Record(events_topic, raw, key=b"c1") for raw in GARBAGE]
    labels = [Label(event_id=e.event_id, label="positive", labelled_at=t0 + timedelta(hours=1)) for e in good]
    records += [Record(labels_topic, label.to_bytes(), key=label.event_id.encode()) for label in labels]
    records += [
        # a naive labelled_at (it made `driftloop train` fail with TypeError), and one of year 1 (OverflowError)
        Record(labels_topic, _label_json("e0", (t0 + timedelta(hours=2)).replace(tzinfo=None).isoformat())),
        Record(labels_topic, _label_json("e1", "0001-01-01T00:00:00+01:00")),
        Record(labels_topic, _label_json("e2", (t0 + timedelta(hours=3)).isoformat(), label="sarcastic")),
        Record(labels_topic, _label_json("no-such-event", (t0 + timedelta(hours=1)).isoformat())),
        Record(labels_topic, _label_json("future", (t0 + timedelta(hours=1)).isoformat())),
        *[Record(labels_topic, raw) for raw in GARBAGE],
    ]
    with KafkaProducer(settings) as producer:
        producer.produce_batch(records)
    skipped = SkippedRecords()
    labels_before = skipped.count("labels-v1", "labelled_at")

    frame, stats = read_labelled_events(settings, DataWindow(t0 - timedelta(hours=1), t0 + timedelta(hours=1)))

    # e2's label was corrected to one the model does not know: the latest label wins, and it is dropped
    assert frame[["event_id", "label"]].values.tolist() == [[f"e{i}", "positive"] for i in (0, 1, 3, 4)]
    assert stats["invalid_events"] == 1 + len(GARBAGE)
    assert stats["invalid_labels"] == 2 + len(GARBAGE)
    assert stats["unknown_label"] == 1 and stats["labels_without_event"] == 2
    assert skipped.count("labels-v1", "labelled_at") == labels_before + 2


def _prediction(event_id: str, role: str, version: int, label: str) -> Prediction:
    now = datetime.now(UTC)
    return Prediction(
        event_id=event_id,
        entity_id="c1",
        event_time=now,
        label=label,
        scores={label: 1.0},
        model=ModelRef(name="classifier", version=version),
        role=role,
        features={},
        timings_ms=Timings(queue=1, features=1, inference=1, end_to_end=3),
        predicted_at=now,
    )


def test_the_canary_watch_skips_hostile_predictions_and_labels(settings_factory) -> None:
    settings = settings_factory()
    ensure_topics(settings)
    predictions_topic, labels_topic = settings.kafka.topic("predictions-v1"), settings.kafka.topic("labels-v1")
    since = datetime.now(UTC) - timedelta(seconds=5)
    records = []
    for i in range(6):
        role, version = ("candidate", 2) if i % 2 else ("champion", 1)
        records.append(Record(predictions_topic, _prediction(f"e{i}", role, version, "positive").to_bytes()))
        records.append(
            Record(
                labels_topic,
                Label(
                    event_id=f"e{i}", label="positive" if i < 4 else "negative", labelled_at=datetime.now(UTC)
                ).to_bytes(),
            )
        )
    bad_time = json.loads(_prediction("x", "champion", 1, "positive").to_bytes()) | {"event_time": "0001-01-01T00:00Z"}
    records += [Record(predictions_topic, json.dumps(bad_time).encode())]
    records += [Record(predictions_topic, raw) for raw in GARBAGE] + [Record(labels_topic, raw) for raw in GARBAGE]
    records += [Record(labels_topic, _label_json("e0", "2026-11-27T10:00:00"))]  # naive: skipped
    with KafkaProducer(settings) as producer:
        producer.produce_batch(records)
    skipped = SkippedRecords()
    before = skipped.count("predictions-v1", "not JSON") + skipped.count("labels-v1", "not JSON")

    watch = CanaryWatch(settings, candidate=2, since=since)
    try:
        wait_until(
            lambda: watch.poll(0.5) or watch.champion.labelled + watch.candidate_tally.labelled >= 6,
            60,
            "six labelled answers",
        )
    finally:
        watch.close()

    assert (watch.champion.labelled, watch.champion.correct) == (3, 2)  # e0, e2 right; e4 relabelled negative
    assert (watch.candidate_tally.labelled, watch.candidate_tally.correct) == (3, 2)  # e1, e3 right; e5 wrong
    assert skipped.count("predictions-v1", "not JSON") + skipped.count("labels-v1", "not JSON") > before
