"""What ``driftloop produce`` sends: synthetic labelled events (with malformed ones on request) or a JSONL/CSV file."""

from __future__ import annotations

import csv
import json
import random
import time
from collections.abc import Iterable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

from foundation.settings import Settings
from streams.client import KafkaProducer, Record
from streams.synthetic import SyntheticStream

_CSV_FIELDS = {"event_id", "entity_id", "event_time", "text", "schema_version"}


def synthetic_records(
    settings: Settings,
    count: int,
    seed: int = 0,
    malformed_share: float = 0.0,
    drift_at: int | None = None,
    labels: bool = True,
    start: datetime | None = None,
    interval: timedelta = timedelta(milliseconds=100),
) -> Iterator[list[Record]]:
    """Per generated event, the records to send: the event, and its label unless ``labels`` is off.

    A ``malformed_share`` of the values are broken on purpose (they must reach the dead-letter topic).
    """
    stream = SyntheticStream(seed=seed, labels=settings.training.labels)
    pick = random.Random(seed + 7)
    events, label_topic = settings.kafka.topic("events-v1"), settings.kafka.topic("labels-v1")
    start = start or datetime.now(UTC)
    for i in range(count):
        if malformed_share and pick.random() < malformed_share:
            value, _why = stream.malformed()
            yield [Record(events, value, key=f"malformed-{i}".encode())]
            continue
        labelled = stream.one(start + i * interval, drifted=drift_at is not None and i >= drift_at)
        event = labelled.event
        records = [Record(events, event.to_bytes(), key=event.entity_id.encode())]
        if labels:
            records.append(Record(label_topic, labelled.label_record().to_bytes(), key=event.event_id.encode()))
        yield records


def file_records(settings: Settings, path: Path) -> Iterator[list[Record]]:
    """Events from a JSONL file (one event object per line, sent as is) or a CSV file (columns of the event;
    other numeric columns become attributes). A line that does not parse is still sent: the DLQ reports it."""
    topic = settings.kafka.topic("events-v1")
    if path.suffix.lower() == ".csv":
        with path.open(newline="") as fh:
            for row in csv.DictReader(fh):
                event = {k: v for k, v in row.items() if k in _CSV_FIELDS}
                event["schema_version"] = int(event.get("schema_version") or 1)
                event["attributes"] = {k: float(v) for k, v in row.items() if k not in _CSV_FIELDS and v != ""}
                yield [Record(topic, json.dumps(event).encode(), key=str(row.get("entity_id", "")).encode())]
        return
    with path.open("rb") as fh:
        for line in fh:
            line = line.rstrip(b"\r\n")
            if not line:
                continue
            try:
                key = str(json.loads(line).get("entity_id", "")).encode()
            except (ValueError, AttributeError):
                key = None
            yield [Record(topic, line, key=key)]


def produce(
    producer: KafkaProducer, batches: Iterable[list[Record]], rate: float | None = None, chunk: int = 200,
    progress=None,
) -> int:  # fmt: skip
    """Send at ``rate`` events per second (None: as fast as possible), in acknowledged chunks. Returns events sent."""
    started = time.monotonic()
    pending: list[Record] = []
    sent = 0
    for records in batches:
        pending += records
        sent += 1
        if rate:
            ahead = started + sent / rate - time.monotonic()
            if ahead > 0:
                producer.produce_batch(pending)
                pending = []
                time.sleep(ahead)
        if len(pending) >= chunk:
            producer.produce_batch(pending)
            pending = []
        if progress is not None:
            progress.update(1)
    producer.produce_batch(pending)
    return sent
