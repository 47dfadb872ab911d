"""Kafka helpers of the monitoring integration tests: produce predictions and labels, run a worker, read drift."""

from __future__ import annotations

import asyncio
import json
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime

from foundation.settings import Settings
from monitoring import DriftEvent, MonitorWorker
from streams import KafkaConsumer, KafkaProducer, Record
from streams.schemas import InvalidRecord, Label, Prediction

#: A small monitor: windows of 300 checked every 100 events (not by time), firing after 2 checks, 100 labels.
SMALL_WINDOW = {
    "window_size": 300,
    "min_window": 200,
    "check_every_events": 100,
    "check_interval_s": 3600,
    "hysteresis_checks": 2,
    "resolve_checks": 2,
    "min_labelled": 100,
}


def produce_predictions(settings: Settings, pairs: list[tuple[Prediction, str]], labels: bool = True) -> None:
    predictions = settings.kafka.topic("predictions-v1")
    label_topic = settings.kafka.topic("labels-v1")
    records = [Record(predictions, p.to_bytes(), key=p.entity_id.encode()) for p, _ in pairs]
    if labels:
        now = datetime.now(UTC)
        records += [
            Record(
                label_topic,
                Label(event_id=p.event_id, label=label, labelled_at=now).to_bytes(),
                key=p.event_id.encode(),
            )
            for p, label in pairs
        ]
    with KafkaProducer(settings) as producer:
        producer.produce_batch(records)


def produce_labels(settings: Settings, pairs: list[tuple[Prediction, str]]) -> None:
    """The ground truth of ``pairs`` alone, sent after their predictions (late labels)."""
    now = datetime.now(UTC)
    records = [
        Record(
            settings.kafka.topic("labels-v1"),
            Label(event_id=p.event_id, label=label, labelled_at=now).to_bytes(),
            key=p.event_id.encode(),
        )
        for p, label in pairs
    ]
    with KafkaProducer(settings) as producer:
        producer.produce_batch(records)


def produce_champion(settings: Settings, model: str, champion: int) -> None:
    value = {
        "model": model,
        "champion": champion,
        "candidate": None,
        "previous_champion": None,
        "event": "promoted",
        "at": datetime.now(UTC).isoformat(),
        "reason": "test",
    }
    with KafkaProducer(settings) as producer:
        producer.produce_batch(
            [Record(settings.kafka.topic("models-v1"), json.dumps(value).encode(), key=model.encode())]
        )


@contextmanager
def running(worker: MonitorWorker, ready_timeout_s: float = 60.0) -> Iterator[MonitorWorker]:
    """Run the worker's loop in a thread for the block; re-raise what it raised."""
    errors: list[BaseException] = []

    def target() -> None:
        try:
            asyncio.run(worker.run())
        except BaseException as exc:  # noqa: BLE001 - handed to the test
            errors.append(exc)
            worker.ready.set()

    thread = threading.Thread(target=target, name="monitor-worker", daemon=True)
    thread.start()
    assert worker.ready.wait(ready_timeout_s), "the worker did not start"
    try:
        if errors:
            raise errors[0]
        yield worker
    finally:
        worker.stop()
        thread.join(30)
        assert not thread.is_alive(), "the worker did not stop"
    if errors:
        raise errors[0]


class DriftTopic:
    """Reads the drift topic as a consumer group of its own; records that break the contract are kept aside."""

    def __init__(self, settings: Settings) -> None:
        self._consumer = KafkaConsumer(
            settings, f"drift-reader-{uuid.uuid4().hex[:6]}", [settings.kafka.topic("drift-v1")]
        )
        self.events: list[DriftEvent] = []
        self.keys: list[bytes] = []
        self.invalid: list[bytes | None] = []

    def poll(self) -> list[DriftEvent]:
        for msg in self._consumer.consume_batch(timeout_s=0.2):
            try:
                self.events.append(DriftEvent.from_bytes(msg.value()))
            except InvalidRecord:
                self.invalid.append(msg.value())
                continue
            self.keys.append(msg.key())
        return self.events

    def wait_for(self, predicate: Callable[[list[DriftEvent]], bool], timeout_s: float = 60.0) -> list[DriftEvent]:
        deadline = time.monotonic() + timeout_s
        while not predicate(self.poll()):
            if time.monotonic() > deadline:
                raise AssertionError(f"drift topic: condition not met in {timeout_s}s; got {self.events}")
        return self.events

    def close(self) -> None:
        self._consumer.close()
