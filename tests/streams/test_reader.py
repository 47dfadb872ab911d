"""The topic reader against the real broker: where it starts, where a catch-up stops, following, missing topics."""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime, timedelta

import pytest
from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient, NewTopic

from foundation.settings import Settings
from streams.client import client_config
from streams.exceptions import TopicError
from streams.reader import BEGINNING, END, Last, TopicReader, read_to_end
from tests.helpers import wait_until

pytestmark = pytest.mark.integration

PARTITIONS = 3


def create_topic(settings: Settings, name: str, partitions: int = PARTITIONS) -> str:
    topic = settings.kafka.topic_prefix + name
    admin = AdminClient(client_config(settings))
    for future in admin.create_topics([NewTopic(topic, num_partitions=partitions, replication_factor=1)]).values():
        future.result(timeout=30)
    return topic


def produce(settings: Settings, topic: str, values: list[str], at: datetime | None = None, **config) -> None:
    """``values[i]`` to partition ``i % PARTITIONS``, with broker timestamp ``at`` when given."""
    producer = Producer(client_config(settings, config))
    if "transactional.id" in config:
        producer.init_transactions(30)
        producer.begin_transaction()
    for i, value in enumerate(values):
        stamp = {"timestamp": int(at.timestamp() * 1000)} if at else {}
        producer.produce(topic, value.encode(), partition=i % PARTITIONS, **stamp)
    if "transactional.id" in config:
        producer.commit_transaction(30)
    assert producer.flush(30) == 0


def values(messages) -> list[str]:
    return sorted(msg.value().decode() for msg in messages)


@pytest.fixture
def settings(settings_factory) -> Settings:
    return settings_factory()


def test_catch_up_reads_from_the_beginning_to_the_ends_seen_at_the_call(settings):
    topic = create_topic(settings, "read")  # read at once: a new topic's partitions may not be known yet
    with TopicReader(settings, topic) as reader:
        assert values(reader.catch_up(10)) == []
        produce(settings, topic, [f"v{i}" for i in range(10)])
        assert values(reader.catch_up(10)) == sorted(f"v{i}" for i in range(10))
        produce(settings, topic, ["late"])
        assert values(reader.catch_up(10)) == ["late"]  # from its position on, not again from the start
    assert values(read_to_end(settings, topic, timeout_s=10)) == sorted([f"v{i}" for i in range(10)] + ["late"])


def test_a_start_at_a_time_skips_older_records_and_an_empty_partition_starts_at_its_end(settings):
    topic = create_topic(settings, "timed")
    since = datetime.now(UTC)
    produce(settings, topic, ["old0", "old1", "old2"], at=since - timedelta(minutes=5))
    produce(settings, topic, ["new0", "new1"], at=since + timedelta(seconds=1))  # partition 2 has nothing new
    with TopicReader(settings, topic, since) as reader:
        assert reader.positions[(topic, 2)] == 1  # at its end: nothing at or after `since`
        assert values(reader.catch_up(10)) == ["new0", "new1"]
    before_1970 = datetime(1960, 1, 1, tzinfo=UTC)
    assert len(values(read_to_end(settings, topic, before_1970, timeout_s=10))) == 5


def test_last_n_reads_the_tail_of_each_partition(settings):
    topic = create_topic(settings, "tail")
    produce(settings, topic, [f"v{i}" for i in range(9)])  # partition p holds v(p), v(p+3), v(p+6)
    assert values(read_to_end(settings, topic, Last(1), timeout_s=10)) == ["v6", "v7", "v8"]
    assert len(values(read_to_end(settings, topic, Last(100), timeout_s=10))) == 9


def test_transaction_markers_do_not_hold_a_catch_up(settings):
    topic = create_topic(settings, "txn")
    produce(settings, topic, ["a", "b", "c"], **{"transactional.id": f"{topic}-tx"})  # each partition: record + marker
    started = time.monotonic()
    assert values(read_to_end(settings, topic, timeout_s=20)) == ["a", "b", "c"]
    assert time.monotonic() - started < 10


def test_following_from_the_end_sees_only_later_records_until_stopped(settings):
    topic, other = create_topic(settings, "follow"), create_topic(settings, "other")
    produce(settings, topic, ["before"])
    produce(settings, other, ["state"])
    stop, seen = threading.Event(), []
    reader = TopicReader(settings, {topic: END, other: BEGINNING})

    def follow() -> None:
        seen.extend(msg.value().decode() for msg in reader.follow(stop, poll_s=0.2))

    thread = threading.Thread(target=follow)
    thread.start()
    try:
        produce(settings, topic, ["after0", "after1"])
        wait_until(lambda: len(seen) >= 3, 30, "the followed records")
    finally:
        stop.set()
        thread.join(10)
        reader.close()
    assert not thread.is_alive()
    assert sorted(seen) == ["after0", "after1", "state"]


def test_a_missing_topic_fails_at_once(settings):
    started = time.monotonic()
    with pytest.raises(TopicError, match="does not exist"):
        TopicReader(settings, settings.kafka.topic_prefix + "nowhere", timeout_s=20)
    assert time.monotonic() - started < 10


def test_records_produced_during_a_catch_up_are_left_for_the_next_read(settings):
    topic = create_topic(settings, "during")
    produce(settings, topic, [f"v{i}" for i in range(300)])
    with TopicReader(settings, topic) as reader:
        reading = reader.catch_up(20)
        first = [next(reading).value().decode()]  # the ends are fixed now
        produce(settings, topic, [f"late{i}" for i in range(30)])
        seen = first + values(reading)
        assert sorted(seen) == sorted(f"v{i}" for i in range(300))
        assert values(reader.catch_up(20)) == sorted(f"late{i}" for i in range(30))
