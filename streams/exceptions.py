"""Errors of the streams stage.

StreamsError
├── KafkaClientError    (the client reported a fatal error, or the broker is unreachable)
├── DeliveryError       (a produced record was not acknowledged by the broker)
├── TopicError          (a topic is missing or has the wrong shape)
└── CatchUpTimeout      (a reader did not reach the end of its topics in time)
"""


class StreamsError(Exception):
    """Root of the streams stage's errors."""


class KafkaClientError(StreamsError):
    """The Kafka client failed in a way a retry of the same call will not fix."""


class DeliveryError(StreamsError):
    """One or more records were not acknowledged by the broker; nothing may be committed for them."""


class TopicError(StreamsError):
    """A topic does not exist or has fewer partitions than the settings ask for."""


class CatchUpTimeout(StreamsError):
    """A topic reader did not reach the end of its partitions in time; ``left`` names those it did not."""

    def __init__(self, left: list[tuple[str, int]], timeout_s: float) -> None:
        super().__init__(f"reading took longer than {timeout_s:.0f}s; partitions left {left}")
        self.left = left
