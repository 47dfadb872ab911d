"""Bounded reads of a Kafka topic: every record from a start up to the end offsets at the time of the call.

Training reads the events and labels topics this way, and the models topic for the latest model state. It is
``streams.reader``'s catch-up (no consumer group, nothing committed: a snapshot read leaves no trace on the broker),
with its errors as :class:`SnapshotError`.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime

from confluent_kafka import Message

from foundation.settings import Settings
from streams.exceptions import CatchUpTimeout, StreamsError, TopicError
from streams.reader import BEGINNING, read_to_end
from training.exceptions import TrainingError


class SnapshotError(TrainingError):
    """A topic could not be read to its end (missing topic, broker down, timeout)."""


def read_topic(
    settings: Settings, topic: str, *, since: datetime | None = None, timeout_s: float = 60.0
) -> Iterator[Message]:
    """Yield the records of ``topic`` from ``since`` (broker timestamp; default: the start) to the current end.

    Args:
        settings: Kafka connection (``settings.kafka``).
        topic: the full topic name.
        since: skip records whose broker timestamp is earlier (looked up with ``offsets_for_times``).
        timeout_s: the whole read must finish within this time.

    Raises:
        SnapshotError: the topic does not exist, the broker does not answer, or the read times out.
    """
    try:
        yield from read_to_end(settings, topic, since or BEGINNING, timeout_s=timeout_s, name="snapshot")
    except TopicError as exc:
        raise SnapshotError(str(exc)) from exc
    except CatchUpTimeout as exc:
        raise SnapshotError(f"reading {topic}: {exc}") from exc
    except StreamsError as exc:
        raise SnapshotError(f"cannot read {topic} on {settings.kafka_bootstrap}: {exc}") from exc
