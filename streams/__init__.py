"""Kafka I/O of driftloop: client configuration, topics, batched producer and consumer."""

from streams.client import KafkaConsumer, KafkaProducer, Record, client_config, redacted
from streams.exceptions import DeliveryError, KafkaClientError, StreamsError, TopicError
from streams.topics import ensure_topics, topic_names

__all__ = [
    "DeliveryError",
    "KafkaClientError",
    "KafkaConsumer",
    "KafkaProducer",
    "Record",
    "StreamsError",
    "TopicError",
    "client_config",
    "ensure_topics",
    "redacted",
    "topic_names",
]
