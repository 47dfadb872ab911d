"""Events faust drops after a rebalance hold its commits up for good; the feature worker reads them again.

The drop is made the way faust makes it (faust-streaming issue 596): the consumer's read position is moved past
events it has not delivered, so it discards them when they arrive, acknowledges the ones after them, and its
committed offset stops at the first dropped one. The worker's check must seek the partition back, after which every
event is folded once and the group commits up to the end of the partition.
"""

from __future__ import annotations

import asyncio
import time
import uuid

import pytest
from confluent_kafka import Consumer, TopicPartition

from features import apply_repo
from streams import KafkaProducer, Record, ensure_topics
from streams.client import client_config
from streams.feature_app import create_app
from streams.metrics import COMMIT_GAP_REREADS
from streams.synthetic import SyntheticStream

pytestmark = pytest.mark.integration

WARMUP, DROPPED, AFTER = 20, 5, 15


def _committed(settings, topic: str, partition: int) -> int:
    consumer = Consumer(client_config(settings, {"group.id": settings.workers.features_group}))
    try:
        return consumer.committed([TopicPartition(topic, partition)], timeout=10)[0].offset
    finally:
        consumer.close()


def _produce(settings, topic: str, events) -> None:
    records = [Record(topic, e.to_bytes(), key=e.entity_id.encode(), partition=0) for e in events]
    with KafkaProducer(settings) as producer:
        producer.produce_batch(records)


async def _until(condition, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.2)


def test_dropped_events_are_read_again_and_commits_reach_the_end(settings_factory, tmp_path):
    settings = settings_factory(
        feast={"data_dir": tmp_path / "feast"},
        workers={
            "features_group": f"features-{uuid.uuid4().hex[:6]}",
            "faust_data_dir": tmp_path / "faust",
            "feature_push_interval_s": 0.2,
            "commit_stall_s": 2.0,
            "metrics_port": 0,
        },
    )
    ensure_topics(settings)
    apply_repo(settings)
    topic = settings.kafka.topic("events-v1")
    events = [e.event for e in SyntheticStream(seed=5).stream(WARMUP + DROPPED + AFTER)]
    rereads_before = COMMIT_GAP_REREADS.labels("features")._value.get()

    async def scenario() -> None:
        app = create_app(settings)
        await app.start()
        try:
            _produce(settings, topic, events[:WARMUP])
            await _until(lambda: _committed(settings, topic, 0) == WARMUP, 90, "the warm-up to be committed")
            tp = next(tp for tp in app.consumer.assignment() if tp.topic == topic and tp.partition == 0)
            app.consumer._read_offset[tp] = WARMUP + DROPPED  # the next DROPPED events arrive behind it: dropped
            _produce(settings, topic, events[WARMUP:])
            await _until(lambda: _committed(settings, topic, 0) == len(events), 60, "commits to reach the end")
        finally:
            await app.stop()
        table = app.windows_table
        counted = {e.entity_id: len(table[e.entity_id.encode()]["ids"]) for e in events}
        expected = {entity: sum(e.entity_id == entity for e in events) for entity in counted}
        assert counted == expected, "every event folded once"

    asyncio.run(scenario())
    assert COMMIT_GAP_REREADS.labels("features")._value.get() == rereads_before + 1
