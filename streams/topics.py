"""The topics driftloop uses, created up front with explicit partition counts (never auto-created)."""

from __future__ import annotations

import logging
import time

from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import AdminClient, NewTopic

from foundation.settings import Settings
from streams.client import client_config
from streams.exceptions import KafkaClientError, TopicError

log = logging.getLogger(__name__)


def topic_names(settings: Settings) -> dict[str, str]:
    """Logical name -> full topic name, e.g. ``{"events-v1": "driftloop-events-v1", ...}``."""
    return {name: settings.kafka.topic(name) for name in settings.kafka.topics}


def ensure_topics(settings: Settings, timeout_s: float = 30.0) -> dict[str, str]:
    """Create the missing topics of ``settings.kafka.topics``; check the partition counts of existing ones.

    Returns:
        Full topic name -> ``"created"`` or ``"exists"``.

    Raises:
        TopicError: an existing topic has fewer partitions than configured.
        KafkaClientError: the broker did not answer.
    """
    admin = AdminClient(client_config(settings))
    existing = _listing(admin, settings, timeout_s)
    result: dict[str, str] = {}
    names: dict[str, str] = {}  # full -> logical name of each topic to create
    to_create: list[NewTopic] = []
    for name, spec in settings.kafka.topics.items():
        full = settings.kafka.topic(name)
        if full in existing:
            _check_partitions(settings, name, len(existing[full].partitions))
            result[full] = "exists"
            continue
        config = {"cleanup.policy": "compact"} if spec.compacted else {}
        names[full] = name
        to_create.append(NewTopic(full, num_partitions=spec.partitions, replication_factor=-1, config=config))

    raced: list[str] = []
    if to_create:
        futures = admin.create_topics(to_create, operation_timeout=timeout_s, request_timeout=timeout_s)
        for full, future in futures.items():
            try:
                future.result()
                result[full] = "created"
            except KafkaException as exc:
                if exc.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:
                    raise KafkaClientError(f"cannot create topic {full}: {exc}") from exc
                raced.append(full)
                result[full] = "exists"
        log.info("topics created", extra={"topics": [t.topic for t in to_create]})
    if raced:
        # Created by someone else since the listing (another process, or a broker whose metadata lagged behind its
        # own creation): checked like any existing topic, once the metadata shows it.
        for full, have in _partition_counts(admin, settings, raced, timeout_s).items():
            _check_partitions(settings, names[full], have)
    return result


def _listing(admin: AdminClient, settings: Settings, timeout_s: float) -> dict:
    """The broker's topics by full name. Raises: KafkaClientError when it does not answer."""
    try:
        return admin.list_topics(timeout=timeout_s).topics
    except KafkaException as exc:
        raise KafkaClientError(f"cannot list topics on {settings.kafka_bootstrap}: {exc}") from exc


def _partition_counts(admin: AdminClient, settings: Settings, topics: list[str], timeout_s: float) -> dict[str, int]:
    """Partitions of each of ``topics``, waiting for the broker's metadata to show them all."""
    deadline = time.monotonic() + timeout_s
    while True:
        listed = _listing(admin, settings, timeout_s)
        counts = {t: len(listed[t].partitions) for t in topics if t in listed and listed[t].partitions}
        if len(counts) == len(topics):
            return counts
        if time.monotonic() > deadline:
            raise KafkaClientError(f"topics {sorted(set(topics) - set(counts))} exist but their metadata never came")
        time.sleep(0.2)


def _check_partitions(settings: Settings, name: str, have: int) -> None:
    """Raises: TopicError when the topic ``name`` has fewer partitions than the settings ask for."""
    want = settings.kafka.topics[name].partitions
    if have < want:
        full = settings.kafka.topic(name)
        raise TopicError(
            f"topic {full} has {have} partitions, settings ask for {want}. A keyed topic cannot "
            "gain partitions without moving keys to other partitions (faust's changelog topics must match it "
            f"too): keep {have} with [kafka.topics.{name}] partitions = {have} in driftloop.toml, or delete "
            "the topic (and the feature group's changelog topics) before its first event"
        )
