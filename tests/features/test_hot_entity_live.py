"""A busy entity with the longest ids the contract takes never stops the feature worker (real broker, Feast store).

An entity's whole window is one changelog record. Before windows kept id fingerprints, 10,000 events of one entity
in a day with 128-character ids made that record 1.2 MB: faust's producer refused it, the worker crashed, and it
crashed again on the same events after every restart.
"""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime, timedelta

import pytest
from confluent_kafka import Consumer, TopicPartition

from streams import KafkaProducer, Record
from streams.client import client_config
from streams.feature_app import create_app
from streams.schemas import Event
from streams.windows import MAX_EVENTS
from tests.streams.support import table_state

pytestmark = pytest.mark.integration

ENTITY = "busy-entity"


def _committed(settings, topic: str) -> int:
    consumer = Consumer(client_config(settings, {"group.id": settings.workers.features_group}))
    try:
        partitions = consumer.list_topics(topic, timeout=10).topics[topic].partitions
        committed = consumer.committed([TopicPartition(topic, p) for p in partitions], timeout=10)
        return sum(max(tp.offset, 0) for tp in committed)
    finally:
        consumer.close()


def test_a_full_window_of_long_ids_is_folded_and_written_to_the_changelog(feature_worker_settings):
    settings = feature_worker_settings()
    topic = settings.kafka.topic("events-v1")
    count = MAX_EVENTS + 500
    start = datetime.now(UTC) - timedelta(hours=12)
    events = [
        Event(
            event_id=f"{i:08d}-".ljust(128, "x"),
            entity_id=ENTITY,
            event_time=start + timedelta(seconds=3 * i),
            text="a busy entity's text",
        )
        for i in range(count)
    ]
    with KafkaProducer(settings) as producer:
        producer.produce_batch([Record(topic, e.to_bytes(), key=ENTITY.encode()) for e in events])

    async def scenario() -> None:
        app = create_app(settings)
        await app.start()
        try:
            deadline = time.monotonic() + 180
            while _committed(settings, topic) < count:
                assert not app.crashed, f"the feature worker crashed: {app.crash_reason!r}"
                assert time.monotonic() < deadline, f"{_committed(settings, topic)} of {count} events committed"
                await asyncio.sleep(0.5)
        finally:
            await app.stop()

    asyncio.run(scenario())
    window = table_state(settings)[ENTITY]  # read back from the changelog topic
    assert len(window["ids"]) == len(set(window["ids"])) == MAX_EVENTS
    assert window["times"][-1] == events[-1].event_time.timestamp()
