"""The models-topic follower against the real broker: the latest state of its model, hostile records skipped, and a
follower that fails (no topic yet) restarting until it follows."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest
from prometheus_client import CollectorRegistry

from streams import KafkaProducer, Record, ensure_topics
from streams.models_topic import ModelTracker
from streams.skips import SkippedRecords
from tests.helpers import wait_until

pytestmark = pytest.mark.integration


def state(model: str, champion: int) -> bytes:
    value = {"model": model, "champion": champion, "candidate": None, "previous_champion": None}
    return json.dumps({**value, "event": "promoted", "at": datetime.now(UTC).isoformat(), "reason": "test"}).encode()


def produce(settings, *records: tuple[bytes, bytes | None]) -> None:
    topic = settings.kafka.topic("models-v1")
    with KafkaProducer(settings) as producer:
        producer.produce_batch([Record(topic, value, key=key) for key, value in records])


def skipped(registry: CollectorRegistry) -> float:
    samples = [sample for metric in registry.collect() for sample in metric.samples]
    counted = [s for s in samples if s.name == "driftloop_skipped_records_total" and s.labels["topic"] == "models-v1"]
    return sum(s.value for s in counted)


def test_the_tracker_follows_its_model_and_skips_what_breaks_the_contract(settings_factory):
    settings = settings_factory()
    ensure_topics(settings)
    produce(settings, (b"classifier", state("classifier", 1)), (b"other", state("other", 7)))
    registry = CollectorRegistry()
    tracker = ModelTracker(settings, "classifier", SkippedRecords(registry=registry))
    tracker.start()
    try:
        wait_until(lambda: tracker.current() and tracker.current().champion == 1, 30, "the first state")
        assert tracker.check().startswith("following")
        produce(settings, (b"classifier", b"{not json"), (b"classifier", state("impostor", 9)))
        produce(settings, (b"classifier", state("classifier", 2)))
        wait_until(lambda: tracker.current().champion == 2, 30, "the later state")
        assert skipped(registry) == 2
    finally:
        tracker.stop()
    assert tracker.restarts == 0


def test_a_follower_without_its_topic_restarts_until_the_topic_exists(settings_factory):
    settings = settings_factory()
    tracker = ModelTracker(settings, "classifier", SkippedRecords(registry=CollectorRegistry()))
    tracker.start()
    try:
        wait_until(lambda: tracker.restarts >= 1, 30, "a failed start")
        with pytest.raises(RuntimeError, match="not following .*does not exist"):
            tracker.check()
        ensure_topics(settings)
        produce(settings, (b"classifier", state("classifier", 3)))
        wait_until(lambda: tracker.current() and tracker.current().champion == 3, 60, "the state after a restart")
        assert tracker.check().startswith("following")
    finally:
        tracker.stop()
