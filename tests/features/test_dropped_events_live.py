"""Events faust fetches and drops after a rebalance are folded all the same (real broker and Feast store).

The drop is made the way faust makes it (faust-streaming issue 596): the consumer's read position is moved past
events it has not delivered, so it discards them when they arrive. With events after them, the fetch ledger hands them
to the agent with the first of those (folded first, no re-read); with none after them, the worker reads the partition
again once it has waited ``workers.commit_stall_s``. Either way every event is folded once, in offset order, and the
group commits up to the end of the partition.
"""

from __future__ import annotations

import asyncio
import time

import pytest
from confluent_kafka import Consumer, TopicPartition

from streams import KafkaProducer, Record
from streams.client import client_config
from streams.feature_app import create_app
from streams.metrics import COMMIT_GAP_REREADS, DROPPED_EVENTS_RECOVERED
from streams.synthetic import SyntheticStream
from streams.windows import fingerprint

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


def _count(metric) -> float:
    return metric.labels("features")._value.get()


@pytest.mark.parametrize(("after", "recovered", "rereads"), [(AFTER, DROPPED, 0), (0, 0, 1)], ids=["middle", "tail"])
def test_dropped_events_are_folded_once_and_commits_reach_the_end(feature_worker_settings, after, recovered, rereads):
    settings = feature_worker_settings(feature_push_interval_s=0.2, commit_stall_s=2.0)
    topic = settings.kafka.topic("events-v1")
    events = [e.event for e in SyntheticStream(seed=5, entities=4).stream(WARMUP + DROPPED + after)]
    before = _count(DROPPED_EVENTS_RECOVERED), _count(COMMIT_GAP_REREADS)

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
        folded = {e.entity_id: table[e.entity_id.encode()]["ids"] for e in events}
        in_order: dict[str, list[int]] = {}
        for e in sorted(events, key=lambda e: e.event_time):
            in_order.setdefault(e.entity_id, []).append(fingerprint(e.event_id))
        assert folded == in_order, "every event folded once"

    asyncio.run(scenario())
    assert _count(DROPPED_EVENTS_RECOVERED) == before[0] + recovered
    assert _count(COMMIT_GAP_REREADS) == before[1] + rereads
