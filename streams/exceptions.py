"""Errors of the streams stage.

    StreamsError
    ├── KafkaClientError    (the client reported a fatal error, or the broker is unreachable)
    ├── DeliveryError       (a produced record was not acknowledged by the broker)
    └── TopicError          (a topic is missing or has the wrong shape)
"""


class StreamsError(Exception):
    """Root of the streams stage's errors."""


class KafkaClientError(StreamsError):
    """The Kafka client failed in a way a retry of the same call will not fix."""


class DeliveryError(StreamsError):
    """One or more records were not acknowledged by the broker; nothing may be committed for them."""


class TopicError(StreamsError):
    """A topic does not exist or has fewer partitions than the settings ask for."""
