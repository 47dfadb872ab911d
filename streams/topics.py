"""The topics driftloop uses, created up front with explicit partition counts (never auto-created)."""

from __future__ import annotations

import logging

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
    try:
        existing = admin.list_topics(timeout=timeout_s).topics
    except KafkaException as exc:
        raise KafkaClientError(f"cannot list topics on {settings.kafka_bootstrap}: {exc}") from exc

    result: dict[str, str] = {}
    to_create: list[NewTopic] = []
    for name, spec in settings.kafka.topics.items():
        full = settings.kafka.topic(name)
        if full in existing:
            have = len(existing[full].partitions)
            if have < spec.partitions:
                raise TopicError(
                    f"topic {full} has {have} partitions, settings ask for {spec.partitions}. A keyed topic cannot "
                    "gain partitions without moving keys to other partitions (faust's changelog topics must match it "
                    f"too): keep {have} with [kafka.topics.{name}] partitions = {have} in driftloop.toml, or delete "
                    "the topic (and the feature group's changelog topics) before its first event"
                )
            result[full] = "exists"
            continue
        config = {"cleanup.policy": "compact"} if spec.compacted else {}
        to_create.append(NewTopic(full, num_partitions=spec.partitions, replication_factor=-1, config=config))

    if to_create:
        futures = admin.create_topics(to_create, operation_timeout=timeout_s, request_timeout=timeout_s)
        for full, future in futures.items():
            try:
                future.result()
                result[full] = "created"
            except KafkaException as exc:
                if exc.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:
                    raise KafkaClientError(f"cannot create topic {full}: {exc}") from exc
                result[full] = "exists"
        log.info("topics created", extra={"topics": [t.topic for t in to_create]})
    return result
