"""Bounded reads of a Kafka topic: every record from a start up to the end offsets at the time of the call.

Training reads the events and labels topics this way, and the models topic for the latest model state. No consumer
group offsets are committed: a snapshot read leaves no trace on the broker.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator
from datetime import datetime
from typing import TypeVar

from confluent_kafka import Consumer, KafkaError, KafkaException, Message, TopicPartition

from foundation.settings import Settings
from streams.client import client_config
from training.exceptions import TrainingError

T = TypeVar("T")
_TRANSIENT = (
    KafkaError.NOT_LEADER_FOR_PARTITION,
    KafkaError.LEADER_NOT_AVAILABLE,
    KafkaError.UNKNOWN_TOPIC_OR_PART,
    KafkaError._TIMED_OUT,
    KafkaError._TRANSPORT,
)


class SnapshotError(TrainingError):
    """A topic could not be read to its end (missing topic, broker down, timeout)."""


def read_topic(
    settings: Settings, topic: str, *, since: datetime | None = None, timeout_s: float = 60.0
) -> Iterator[Message]:
    """Yield the records of ``topic`` from ``since`` (broker timestamp; default: the start) to the current end.

    Args:
        settings: Kafka connection (``settings.kafka``).
        topic: the full topic name.
        since: skip records whose broker timestamp is earlier (looked up with ``offsets_for_times``).
        timeout_s: the whole read must finish within this time.

    Raises:
        SnapshotError: the topic does not exist, the broker does not answer, or the read times out.
    """
    consumer = Consumer(
        client_config(
            settings,
            {
                "group.id": f"driftloop-snapshot-{uuid.uuid4().hex[:12]}",
                "enable.auto.commit": False,
                "auto.offset.reset": "earliest",
                "log_level": 3,
            },
        )
    )
    try:
        yield from _read(consumer, topic, since, timeout_s)
    except KafkaException as exc:
        raise SnapshotError(f"cannot read {topic} on {settings.kafka_bootstrap}: {exc}") from exc
    finally:
        consumer.close()


def _retrying(call: Callable[[], T], deadline: float) -> T:
    """Call ``call``, retrying retriable broker errors (a new topic's leader not known yet) until ``deadline``."""
    while True:
        try:
            return call()
        except KafkaException as exc:
            error = exc.args[0] if exc.args and isinstance(exc.args[0], KafkaError) else None
            retriable = error is not None and (error.retriable() or error.code() in _TRANSIENT)
            if not retriable or time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def _read(consumer: Consumer, topic: str, since: datetime | None, timeout_s: float) -> Iterator[Message]:
    deadline = time.monotonic() + timeout_s
    info = consumer.list_topics(topic, timeout=timeout_s).topics.get(topic)
    if info is None or info.error is not None:
        raise SnapshotError(f"topic {topic} does not exist ({info.error if info else 'not found'})")
    ends: dict[int, int] = {}
    starts: dict[int, int] = {}
    for partition in info.partitions:
        low, high = _retrying(
            lambda p=partition: consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=timeout_s), deadline
        )
        if high > low:
            ends[partition], starts[partition] = high, low
    if since is not None and since.timestamp() <= 0:  # before 1970: every record (broker timestamps are later)
        since = None
    if since is not None and ends:
        millis = int(since.timestamp() * 1000)
        found = _retrying(
            lambda: consumer.offsets_for_times([TopicPartition(topic, p, millis) for p in ends], timeout=timeout_s),
            deadline,
        )
        for tp in found:
            if tp.offset < 0:  # no record at or after `since`
                ends.pop(tp.partition)
            else:
                starts[tp.partition] = max(starts[tp.partition], tp.offset)
    remaining = {p: end for p, end in ends.items() if starts[p] < end}
    if not remaining:
        return
    consumer.assign([TopicPartition(topic, p, starts[p]) for p in remaining])
    while remaining:
        if time.monotonic() > deadline:
            left = sorted(remaining)
            raise SnapshotError(f"reading {topic} took longer than {timeout_s:.0f}s; partitions left {left}")
        batch = consumer.consume(num_messages=1000, timeout=0.5)
        for msg in batch:
            err = msg.error()
            if err is not None:
                if err.code() == KafkaError._PARTITION_EOF:
                    continue
                raise KafkaException(err)
            end = remaining.get(msg.partition())
            if end is None or msg.offset() >= end:
                continue
            yield msg
            if msg.offset() >= end - 1:
                del remaining[msg.partition()]
        if not batch:
            # Compaction or transaction markers can leave the last offsets without a record: trust the position.
            for tp in consumer.position([TopicPartition(topic, p) for p in list(remaining)]):
                if tp.offset >= remaining[tp.partition]:
                    del remaining[tp.partition]
