"""What ``driftloop produce`` sends: synthetic labelled events (with malformed ones on request) or a JSONL/CSV file;
labels on time, or held back and thinned out as ground truth arrives in practice (``LabelSchedule``)."""

from __future__ import annotations

import csv
import dataclasses
import heapq
import itertools
import json
import random
import time
from collections.abc import Callable, Iterable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

from foundation.settings import Settings
from streams.client import KafkaProducer, Record
from streams.schemas import InvalidRecord, parse_label
from streams.synthetic import SyntheticStream

PACE_TICK_S = 0.005  # at a set rate, events due within this are sent in one request

_CSV_FIELDS = {"event_id", "entity_id", "event_time", "text", "schema_version"}

#: How far apart synthetic events are dated unless told otherwise.
EVENT_SPACING = timedelta(milliseconds=100)


def dated_as_sent(count: int, rate: float | None) -> dict[str, datetime | timedelta]:
    """``start`` and ``interval`` for :func:`synthetic_records` whose events are dated as they are sent: ``1 / rate``
    apart from now, or, sent at once, a backlog that ends now. Dated ahead of the clock, a long run would pass
    ``workers.max_event_ahead_s`` and its later events would be dead-lettered."""
    if rate:
        return {"start": datetime.now(UTC), "interval": timedelta(seconds=1 / rate)}
    return {"start": datetime.now(UTC) - count * EVENT_SPACING, "interval": EVENT_SPACING}


def synthetic_records(
    settings: Settings,
    count: int,
    seed: int = 0,
    malformed_share: float = 0.0,
    drift_at: int | None = None,
    labels: bool = True,
    start: datetime | None = None,
    interval: timedelta = EVENT_SPACING,
    id_seed: int | None = None,
) -> Iterator[list[Record]]:
    """Per generated event, the records to send: the event, and its label unless ``labels`` is off.

    A ``malformed_share`` of the values are broken on purpose (they must reach the dead-letter topic). The event ids
    follow ``seed`` unless ``id_seed`` is given (see :class:`~streams.synthetic.SyntheticStream`).
    """
    stream = SyntheticStream(seed=seed, labels=settings.training.labels, id_seed=id_seed)
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


class LabelSchedule:
    """When the labels go out: ``delay_s`` after their event, for a random ``share`` of the events (the others never
    get one). Plain logic: the caller passes the time (``time.monotonic()`` seconds) and sends what is due.

    A label sent late carries the time it is sent as ``labelled_at``.

    Args:
        topic: the labels topic; records on other topics are not held.
        delay_s: seconds from an event to its label (default 0: with the event).
        share: share of the events that get a label, from 0 to 1 (default 1: all).
        seed: seed of the draw that picks the labelled events.

    Raises:
        ValueError: ``delay_s`` below 0, or ``share`` outside 0..1.
    """

    def __init__(self, topic: str, delay_s: float = 0.0, share: float = 1.0, seed: int = 0) -> None:
        if delay_s < 0:
            raise ValueError(f"label delay must be >= 0 s, got {delay_s}")
        if not 0.0 <= share <= 1.0:
            raise ValueError(f"label share must lie in 0..1, got {share}")
        self.topic, self.delay_s, self.share = topic, delay_s, share
        self.dropped = 0  # labels left out by the share
        self._pick = random.Random(f"label-share-{seed}")  # not the stream's own draw, which uses the seed
        self._held: list[tuple[float, int, Record]] = []  # heap of (due, arrival order, record)
        self._order = itertools.count()

    def __len__(self) -> int:
        return len(self._held)

    def split(self, records: Iterable[Record], now: float) -> list[Record]:
        """Hold the labels among ``records`` (or leave them out); return the others, to send now."""
        others = []
        for record in records:
            if record.topic == self.topic:
                self.hold(record, now)
            else:
                others.append(record)
        return others

    def hold(self, label: Record, now: float) -> None:
        """Take the label of an event sent at ``now``: held until ``now + delay_s``, or left out (share)."""
        if self.share < 1.0 and self._pick.random() >= self.share:
            self.dropped += 1
            return
        heapq.heappush(self._held, (now + self.delay_s, next(self._order), label))

    def due(self, now: float) -> list[Record]:
        """The held labels due at ``now``, oldest first, no longer held."""
        out = []
        while self._held and self._held[0][0] <= now:
            out.append(heapq.heappop(self._held)[2])
        if out and self.delay_s > 0:
            at = datetime.now(UTC)
            out = [_labelled_at(record, at) for record in out]
        return out

    def next_due(self) -> float | None:
        """When the next held label is due (None: none held)."""
        return self._held[0][0] if self._held else None

    def drain(
        self,
        send: Callable[[list[Record]], object],
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> int:
        """Send every held label once it is due, waiting for them; returns how many were sent."""
        sent = 0
        while (due_at := self.next_due()) is not None:
            sleep(max(0.0, due_at - clock()))
            records = self.due(clock())
            if records:
                send(records)
                sent += len(records)
        return sent


def _labelled_at(record: Record, at: datetime) -> Record:
    """The label record stamped as labelled ``at``; a value that is not a label goes as it is."""
    try:
        label = parse_label(record.value)
    except InvalidRecord:
        return record
    return dataclasses.replace(record, value=label.model_copy(update={"labelled_at": at}).to_bytes())


def produce(
    producer: KafkaProducer,
    batches: Iterable[list[Record]],
    rate: float | None = None,
    chunk: int = 200,
    progress=None,
    labels: LabelSchedule | None = None,
) -> int:
    """Send at ``rate`` events per second (None: as fast as possible), in acknowledged chunks. Returns events sent.

    With ``labels``, the records on its topic go out when it says, the last ones after the events, once due: none
    is lost when the stream ends before them.
    """
    started = time.monotonic()
    pending: list[Record] = []
    sent = 0
    for records in batches:
        if rate:
            # Events due within a tick go out together, one request per tick as a producer lingering that long
            # sends them; the next event not due yet: send what is, and wait for it.
            ahead = started + sent / rate - time.monotonic()
            if ahead > PACE_TICK_S:
                producer.produce_batch(pending)
                pending = []
                time.sleep(ahead)
        if labels is not None:
            now = time.monotonic()
            records = labels.split(records, now) + labels.due(now)
        pending += records
        sent += 1
        if len(pending) >= chunk:
            producer.produce_batch(pending)
            pending = []
        if progress is not None:
            progress.update(1)
    producer.produce_batch(pending)
    if labels is not None:
        labels.drain(producer.produce_batch)
    return sent
