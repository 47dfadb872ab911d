"""Both stream workers scale out in one consumer group each (real broker, Triton, Feast):

- three inference replicas share the events topic's partitions, every event is answered once while the group is
  stable, and a replica that leaves loses nothing;
- three feature replicas share them too: every event's feature row is written to the offline store exactly once and
  equals what one process folding every event would write; when one leaves, the others take its entities' windows
  over from the changelog and go on counting where it stopped.
"""

from __future__ import annotations

import json
import signal
import time
import uuid
from collections import Counter
from datetime import UTC, datetime

import numpy as np
import pyarrow.parquet as pq
import pytest
from confluent_kafka import OFFSET_BEGINNING, Consumer, ConsumerGroupState, TopicPartition
from confluent_kafka.admin import AdminClient

from foundation.settings import Settings
from streams import KafkaProducer
from streams.client import Record, client_config
from streams.feature_app import fold
from streams.generator import produce, synthetic_records
from tests.streams.support import collect, group_caught_up, produce_synthetic

pytestmark = pytest.mark.integration

REPLICAS = 3
FLOAT_FEATURES = ("mean_text_length", "seconds_since_last_event")  # float32 offline: compared as float32


def _assignment(settings: Settings, group: str | None = None) -> dict[str, set[int]] | None:
    """Member id -> partitions of the events topic, once ``group`` (the inference group unless given) is stable;
    else None."""
    admin = AdminClient(client_config(settings))
    group = group or settings.workers.inference_group
    try:
        description = admin.describe_consumer_groups([group], request_timeout=10)[group].result()
    except Exception:  # noqa: BLE001 - e.g. the coordinator is still loading: not stable yet
        return None
    if description.state != ConsumerGroupState.STABLE:
        return None
    topic = settings.kafka.topic("events-v1")
    return {
        member.member_id: {tp.partition for tp in member.assignment.topic_partitions if tp.topic == topic}
        for member in description.members
    }


def _balanced(settings: Settings, members: int, group: str | None = None) -> bool:
    assignment = _assignment(settings, group)
    if assignment is None or len(assignment) != members:
        return False
    partitions = settings.kafka.topics["events-v1"].partitions
    owned = [p for parts in assignment.values() for p in parts]
    return sorted(owned) == list(range(partitions)) and all(assignment.values())


def _read_to_the_end(settings: Settings, topic: str, timeout_s: float = 60.0) -> list[bytes]:
    """Every record of ``topic`` up to its end offsets as of now."""
    name = settings.kafka.topic(topic)
    consumer = Consumer(client_config(settings, {"group.id": f"check-{uuid.uuid4().hex[:6]}"}))
    try:
        partitions = consumer.list_topics(name, timeout=10).topics[name].partitions
        ends = {p: consumer.get_watermark_offsets(TopicPartition(name, p), timeout=10)[1] for p in partitions}
        consumer.assign([TopicPartition(name, p, OFFSET_BEGINNING) for p in partitions])
        pending, values = {p for p, end in ends.items() if end > 0}, []
        deadline = time.monotonic() + timeout_s
        while pending:
            assert time.monotonic() < deadline, f"{name}: partitions {sorted(pending)} not read to their end"
            msg = consumer.poll(1.0)
            if msg is None or msg.error():
                continue
            values.append(msg.value())
            if msg.offset() + 1 >= ends[msg.partition()]:
                pending.discard(msg.partition())
        return values
    finally:
        consumer.close()


def test_three_replicas_share_the_partitions_and_answer_every_event_once(pipeline):
    settings, start = pipeline.settings, pipeline.start
    workers = [start("run", "--role", "inference", "--replica", str(i)) for i in range(REPLICAS)]
    pipeline.wait(lambda: _balanced(settings, REPLICAS), 120, f"{REPLICAS} replicas sharing every partition")
    assignment = _assignment(settings)
    share = settings.kafka.topics["events-v1"].partitions // REPLICAS
    assert assignment is not None and sorted(len(parts) for parts in assignment.values()) == [share] * REPLICAS

    # A stable group: no rebalance while these are answered, so each event is answered exactly once.
    stable, _ = produce_synthetic(settings, 900, malformed_share=0.0, seed=41)
    events = settings.kafka.topic("events-v1")
    pipeline.wait(lambda: group_caught_up(settings, settings.workers.inference_group, events), 120, "commits")
    # Predictions are produced before their events are committed: every one, duplicates included, is there now.
    seen = _read_to_the_end(settings, "predictions-v1")
    counts = Counter(json.loads(v)["event_id"] for v in seen)
    assert set(counts) == set(stable)
    assert max(counts.values()) == 1, [event for event, n in counts.items() if n > 1][:5]
    assert _balanced(settings, REPLICAS)  # still the same three: the exactly-once above was not luck of timing

    # One replica leaves mid-stream (SIGTERM: it finishes its batches and leaves the group): nothing is lost;
    # its partitions move to the other two (a duplicate is allowed there: at-least-once across a rebalance).
    more, _ = produce_synthetic(settings, 900, malformed_share=0.0, seed=42, rate=300)
    pipeline.killed.add(workers[0].pid)  # its exit is expected: pipeline.wait must not take it for a crash
    workers[0].send_signal(signal.SIGTERM)
    assert workers[0].wait(timeout=60) == 0
    expected = set(stable) | set(more)
    seen = collect(settings, "predictions-v1", lambda r: {json.loads(v)["event_id"] for v in r} >= expected)
    assert {json.loads(v)["event_id"] for v in seen} >= expected
    pipeline.wait(lambda: _balanced(settings, REPLICAS - 1), 60, "the two replicas left sharing every partition")


def _offline_rows(settings: Settings) -> Counter:
    """The offline store's stream feature rows, as a multiset of comparable tuples."""
    table = pq.read_table(settings.feast_dir / "data" / "entity_stream_stats").to_pylist()
    return Counter(_row_key(row) for row in table)


def _row_key(row: dict) -> tuple:
    timestamp = row["event_timestamp"]
    return (
        row["entity_id"],
        int(timestamp.timestamp() * 1_000_000),
        *(row[name] for name in ("msg_count_1h", "msg_count_24h")),
        *(None if row[name] is None else float(np.float32(row[name])) for name in FLOAT_FEATURES),
    )


def _reference(records: list[list[Record]]) -> Counter:
    """The feature rows one process folding every event in order would write."""
    windows: dict[bytes, dict] = {}
    rows = (fold(windows, batch[0].key, batch[0].value) for batch in records)
    return Counter(_row_key(row) for row in rows if row is not None)


def _produce(settings: Settings, records: list[list[Record]]) -> None:
    with KafkaProducer(settings) as producer:
        produce(producer, records)


def test_three_feature_replicas_write_every_entity_features_exactly_once(pipeline):
    settings, start = pipeline.settings, pipeline.start
    group, events = settings.workers.features_group, settings.kafka.topic("events-v1")
    workers = [start("run", "--role", "features", "--replica", str(i)) for i in range(REPLICAS)]
    pipeline.wait(lambda: _balanced(settings, REPLICAS, group), 120, f"{REPLICAS} feature replicas sharing partitions")

    first = list(synthetic_records(settings, 900, seed=51, labels=False))
    _produce(settings, first)
    pipeline.wait(lambda: group_caught_up(settings, group, events), 120, "the feature replicas' commits")

    # A stable group: every event folded once, by the replica owning its entity; rows equal one process's fold.
    assert _offline_rows(settings) == _reference(first)
    assert _balanced(settings, REPLICAS, group)

    # One replica leaves: the two others restore its entities' windows from the changelog and count on from there
    # (a row may be written twice across the rebalance; none is missing and none is counted from an empty window).
    pipeline.killed.add(workers[0].pid)
    workers[0].send_signal(signal.SIGTERM)
    assert workers[0].wait(timeout=60) == 0
    pipeline.wait(lambda: _balanced(settings, REPLICAS - 1, group), 120, "two feature replicas sharing partitions")
    second = list(synthetic_records(settings, 600, seed=51, labels=False, start=datetime.now(UTC), id_seed=52))
    _produce(settings, second)
    pipeline.wait(lambda: group_caught_up(settings, group, events), 120, "the two replicas' commits")

    written, expected = _offline_rows(settings), _reference(first + second)
    assert set(written) == set(expected), sorted(set(expected) ^ set(written))[:5]
