"""The project's Kafka wrappers against a real broker: topics, round trip, commit, resume, redelivery."""

from __future__ import annotations

import time
import uuid

import pytest
from confluent_kafka.admin import AdminClient, ConfigResource

from streams import DeliveryError, KafkaConsumer, KafkaProducer, Record, client_config, ensure_topics
from streams.client import fetch_window
from streams.exceptions import TopicError

pytestmark = pytest.mark.integration


def _drain(consumer: KafkaConsumer, expected: int, timeout_s: float = 30.0) -> list:
    messages: list = []
    deadline = time.monotonic() + timeout_s
    while len(messages) < expected and time.monotonic() < deadline:
        messages += consumer.consume_batch(max_records=500, timeout_s=0.5)
    return messages


def _records(topic: str, n: int, start: int = 0) -> list[Record]:
    return [
        Record(topic, f"value-{i}".encode(), key=f"entity-{i % 7}".encode(), headers=[("trace-id", b"t%d" % i)])
        for i in range(start, start + n)
    ]


def test_ensure_topics_creates_configured_partitions_and_compaction(settings_factory):
    settings = settings_factory()
    first = ensure_topics(settings)
    assert set(first.values()) == {"created"}
    assert set(ensure_topics(settings).values()) == {"exists"}

    admin = AdminClient(client_config(settings))
    topics = admin.list_topics(timeout=10).topics
    for name, spec in settings.kafka.topics.items():
        assert len(topics[settings.kafka.topic(name)].partitions) == spec.partitions
    models = ConfigResource(ConfigResource.Type.TOPIC, settings.kafka.topic("models-v1"))
    config = admin.describe_configs([models])[models].result()
    assert config["cleanup.policy"].value == "compact"


def test_a_topic_with_fewer_partitions_than_asked_is_refused_with_the_way_out(settings_factory):
    """An events topic made with the old default (6) is never used as if it had 12: keys would land elsewhere."""
    old = settings_factory(kafka={"topics": {"events-v1": {"partitions": 6}}})
    ensure_topics(old)
    settings = settings_factory()
    assert settings.kafka.topics["events-v1"].partitions > 6

    with pytest.raises(TopicError, match=r"has 6 partitions, .*\[kafka.topics.events-v1\] partitions = 6"):
        ensure_topics(settings)

    assert set(ensure_topics(old).values()) == {"exists"}  # the way out the message names works


def test_a_topic_created_elsewhere_after_the_listing_is_checked_as_well(settings_factory, monkeypatch):
    """Another process (or metadata lagging behind a creation) makes creating a topic answer "already exists": its
    partitions are checked all the same, never taken as they come."""
    ensure_topics(settings_factory(kafka={"topics": {"events-v1": {"partitions": 6}}}))
    listing = AdminClient.list_topics
    listings = []

    def first_listing_without_them(self, *args, **kwargs):
        metadata = listing(self, *args, **kwargs)
        if not listings:
            metadata.topics = {}  # listed before the other process created them
        listings.append(metadata)
        return metadata

    monkeypatch.setattr(AdminClient, "list_topics", first_listing_without_them)
    with pytest.raises(TopicError, match=r"has 6 partitions, .*\[kafka.topics.events-v1\] partitions = 6"):
        ensure_topics(settings_factory())
    assert len(listings) >= 2


def test_round_trip_commit_and_resume_from_committed_offset(settings_factory):
    settings = settings_factory()
    ensure_topics(settings)
    topic = settings.kafka.topic("events-v1")
    group = f"g-{uuid.uuid4().hex[:6]}"

    with KafkaProducer(settings) as producer:
        assert producer.produce_batch(_records(topic, 50)) == 50

    with KafkaConsumer(settings, group, [topic]) as consumer:
        first = _drain(consumer, 50)
        assert sorted(m.value() for m in first) == sorted(f"value-{i}".encode() for i in range(50))
        assert {m.key() for m in first} == {f"entity-{i}".encode() for i in range(7)}
        assert all(dict(m.headers())["trace-id"].startswith(b"t") for m in first)
        consumer.commit(first)
        committed = consumer.committed(topic, range(settings.kafka.topics["events-v1"].partitions))
        assert sum(o for o in committed.values() if o > 0) == 50

    with KafkaProducer(settings) as producer:
        producer.produce_batch(_records(topic, 20, start=50))

    # A new member of the same group starts at the committed offsets: only the 20 new records.
    with KafkaConsumer(settings, group, [topic]) as consumer:
        resumed = _drain(consumer, 20)
        time.sleep(1.0)
        resumed += consumer.consume_batch(timeout_s=0.5)
        assert sorted(m.value() for m in resumed) == sorted(f"value-{i}".encode() for i in range(50, 70))


def test_uncommitted_messages_are_redelivered(settings_factory):
    settings = settings_factory()
    ensure_topics(settings)
    topic = settings.kafka.topic("labels-v1")
    group = f"g-{uuid.uuid4().hex[:6]}"
    with KafkaProducer(settings) as producer:
        producer.produce_batch(_records(topic, 10))

    with KafkaConsumer(settings, group, [topic]) as consumer:
        assert len(_drain(consumer, 10)) == 10  # read, never committed: a crash here loses nothing
    with KafkaConsumer(settings, group, [topic]) as consumer:
        assert len(_drain(consumer, 10)) == 10


def test_unacknowledged_records_raise_delivery_error(settings_factory):
    settings = settings_factory()  # its topics were never created, and the broker does not auto-create
    producer = KafkaProducer(settings, {"message.timeout.ms": 3000})
    with pytest.raises(DeliveryError, match="not acknowledged"):
        producer.produce_batch(_records(settings.kafka.topic("events-v1"), 3), timeout_s=10)


def test_consume_available_returns_what_has_come_and_full_batches_under_a_backlog(settings_factory):
    settings = settings_factory()
    ensure_topics(settings)
    topic = settings.kafka.topic("labels-v1")
    with KafkaProducer(settings) as producer:
        producer.produce_batch(_records(topic, 3))
    window = fetch_window(50)
    with KafkaConsumer(settings, f"g-{uuid.uuid4().hex[:6]}", [topic], window) as consumer:
        began, got = time.monotonic(), []
        while len(got) < 3 and time.monotonic() - began < 60:
            got += consumer.consume_available(64, timeout_s=60)
        # Each call ended as soon as something had come, far from its 60 s: 3 records are not waited on to fill 64.
        assert len(got) == 3
        assert time.monotonic() - began < 60

        with KafkaProducer(settings) as producer:
            producer.produce_batch(_records(topic, 200, start=3))
        time.sleep(3.0)  # fetched meanwhile: the broker answers a fetch within fetch.wait.max.ms (50 ms)
        sizes = [len(consumer.consume_available(64, timeout_s=5)) for _ in range(4)]
        assert sizes == [64, 64, 64, 8]
        assert consumer.consume_available(64, timeout_s=0.2) == []
