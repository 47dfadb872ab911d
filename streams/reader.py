"""The one reader of Kafka topics without a consumer group.

A :class:`TopicReader` assigns every partition of its topics itself: no group to join, nothing committed, so it starts
at once and never moves anyone's offsets. Each topic starts at one of:

- ``BEGINNING``: the oldest record still on the broker (a compacted topic's current state);
- ``END``: only records produced after the reader opened;
- a ``datetime``: the first record whose broker timestamp is at or after it (``offsets_for_times``; a partition with
  none starts at its end; a time before 1970 means the beginning);
- ``Last(n)``: the last ``n`` records of each partition (a tail).

Then it either catches up (:meth:`TopicReader.catch_up`: every record up to the high watermarks at the time of the
call, then stops; later records are left for the next read) or keeps following (:meth:`TopicReader.poll`,
:meth:`TopicReader.follow`); the two mix on one reader, which keeps its position. Usage::

    with TopicReader(settings, settings.kafka.topic("models-v1")) as reader:
        for msg in reader.catch_up(timeout_s=15):
            ...

    reader = TopicReader(settings, {predictions: since, models: BEGINNING})
    for msg in reader.follow(stopping):  # a threading.Event or any () -> bool
        ...

Opening looks up metadata and offsets; transient broker errors there (a leader being elected, a new topic's
partition not known yet, a timeout) are retried with :func:`foundation.retry.policy` until ``timeout_s``. A partition
counts as caught up on its end-of-partition event, so offsets left empty by compaction or transaction markers never
hold a read up.

Raises (all :class:`streams.exceptions.StreamsError`): ``TopicError`` (a topic does not exist),
``KafkaClientError`` (the broker does not answer, or a fetch failed for good), ``CatchUpTimeout`` (a catch-up took
longer than its timeout; ``.left`` names the partitions not read to their end).
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal, TypeVar

from confluent_kafka import Consumer, KafkaError, KafkaException, Message, TopicPartition

from foundation.retry import policy
from foundation.settings import Settings
from streams.client import client_config
from streams.exceptions import CatchUpTimeout, KafkaClientError, TopicError

log = logging.getLogger(__name__)

T = TypeVar("T")

BEGINNING: Literal["beginning"] = "beginning"
END: Literal["end"] = "end"


@dataclass(frozen=True)
class Last:
    """Start at the last ``records`` records of each partition."""

    records: int


Start = Literal["beginning", "end"] | datetime | Last

# Errors a new topic or a leader election answer for a moment; librdkafka marks most others retriable itself.
_TRANSIENT = frozenset(
    {
        KafkaError.LEADER_NOT_AVAILABLE,
        KafkaError.NOT_LEADER_FOR_PARTITION,
        KafkaError.UNKNOWN_TOPIC_OR_PART,
        KafkaError._TIMED_OUT,
        KafkaError._TRANSPORT,
    }
)


def transient(exc: BaseException) -> bool:
    """Whether a client call that raised ``exc`` is worth trying again (``KafkaException`` of a passing state)."""
    error = exc.args[0] if isinstance(exc, KafkaException) and exc.args else None
    return isinstance(error, KafkaError) and (error.retriable() or error.code() in _TRANSIENT)


class TopicReader:
    """Reads topics without a consumer group, from where ``start`` says (see the module docstring).

    Args:
        settings: Kafka connection (``settings.kafka``).
        topics: full topic names sharing ``start``, or a mapping of topic name -> its own start.
        start: ``BEGINNING`` (default), ``END``, a ``datetime`` or ``Last(n)``.
        timeout_s: how long opening (metadata, watermarks, offsets for a time) may retry transient errors.
        name: names the client (``driftloop-<name>-<random>``) in the broker's logs.
        overrides: librdkafka properties for its consumer, e.g. a fetch window (``fetch.wait.max.ms``,
            ``fetch.min.bytes``) for a reader that need not see each record the moment it is written.

    Raises:
        TopicError: a topic does not exist.
        KafkaClientError: the broker did not answer within ``timeout_s``.
    """

    def __init__(
        self,
        settings: Settings,
        topics: str | Sequence[str] | Mapping[str, Start],
        start: Start = BEGINNING,
        *,
        timeout_s: float = 10.0,
        name: str = "reader",
        overrides: Mapping[str, Any] | None = None,
    ) -> None:
        if isinstance(topics, str):
            topics = [topics]
        self.starts: dict[str, Start] = dict(topics) if isinstance(topics, Mapping) else dict.fromkeys(topics, start)
        self._timeout_s = timeout_s
        self._consumer = Consumer(
            client_config(
                settings,
                {
                    "group.id": f"driftloop-{name}-{uuid.uuid4().hex[:12]}",
                    "enable.auto.commit": False,
                    "enable.auto.offset.store": False,
                    "enable.partition.eof": True,
                    "auto.offset.reset": "earliest",  # an assigned offset that retention removed: the oldest left
                    **(overrides or {}),
                },
            )
        )
        # (topic, partition) -> the next offset to read: where the reader starts, then after each record it returns.
        self.positions: dict[tuple[str, int], int] = {}
        try:
            self._assign()
        except BaseException:
            self._consumer.close()
            raise

    def __enter__(self) -> TopicReader:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._consumer.close()

    def poll(self, timeout_s: float = 0.0, max_records: int = 500) -> list[Message]:
        """The records that arrived since the last call, waiting up to ``timeout_s`` for the first; fetch errors are
        logged and left to the client to retry."""
        return [msg for msg in self._consume(max_records, timeout_s) if self._take(msg, raise_errors=False)]

    def follow(self, stop: threading.Event | Callable[[], bool], poll_s: float = 0.5) -> Iterator[Message]:
        """Every record from the start on, for as long as ``stop`` (an event or a callable) is not set."""
        stopped = stop.is_set if isinstance(stop, threading.Event) else stop
        while not stopped():
            yield from self.poll(poll_s)

    def catch_up(self, timeout_s: float = 30.0) -> Iterator[Message]:
        """Every record from the reader's position up to the partitions' high watermarks at the time of the call;
        records produced meanwhile are left for the next read.

        Raises:
            CatchUpTimeout: the end was not reached within ``timeout_s`` (the records read so far were yielded).
            KafkaClientError: the watermarks could not be read, or a fetch failed with a non-retriable error.
        """
        deadline = time.monotonic() + timeout_s
        ends = {tp: self._watermarks(tp, deadline)[1] for tp in self.positions}
        left = {tp for tp, end in ends.items() if self.positions[tp] < end}
        beyond: set[tuple[str, int]] = set()  # partitions the client fetched past their end
        try:
            while left:
                if time.monotonic() > deadline:
                    raise CatchUpTimeout(sorted(left), timeout_s)
                for msg in self._consume(1000, 0.2):
                    where = (msg.topic(), msg.partition())
                    if msg.error() is None and where in ends and msg.offset() >= ends[where]:
                        beyond.add(where)  # produced after the call: left for the next read
                        self.positions[where] = max(self.positions[where], ends[where])
                    elif self._take(msg, raise_errors=True):
                        yield msg
                    if where in left and self.positions[where] >= ends[where]:
                        left.discard(where)
        finally:
            for where in beyond:  # fetch them again from the end, for a poll or catch-up after this one
                self._seek(where, self.positions[where])

    def _seek(self, where: tuple[str, int], offset: int) -> None:
        try:
            self._consumer.seek(TopicPartition(*where, offset))
        except KafkaException as exc:
            raise KafkaClientError(f"cannot seek {where[0]} [{where[1]}] back to {offset}: {exc}") from exc

    def _consume(self, max_records: int, timeout_s: float) -> list[Message]:
        return self._consumer.consume(num_messages=max_records, timeout=timeout_s)

    def _take(self, msg: Message, raise_errors: bool) -> bool:
        """Advance the position past ``msg``; True when it is a record to hand out."""
        error = msg.error()
        where = (msg.topic(), msg.partition())
        if error is None:
            self.positions[where] = msg.offset() + 1
            return True
        if error.code() == KafkaError._PARTITION_EOF:
            self.positions[where] = max(self.positions.get(where, 0), msg.offset())
        elif raise_errors and not (error.retriable() or error.code() in _TRANSIENT):
            raise KafkaClientError(f"cannot read {msg.topic()} [{msg.partition()}]: {error.str()}")
        else:
            log.warning("topic reader: %s", error.str(), extra={"topic": msg.topic(), "partition": msg.partition()})
        return False

    def _assign(self) -> None:
        deadline = time.monotonic() + self._timeout_s
        assignment = []
        for topic, start in self.starts.items():
            for partition, offset in self._start_offsets(topic, start, deadline).items():
                self.positions[(topic, partition)] = offset
                assignment.append(TopicPartition(topic, partition, offset))
        self._consumer.assign(assignment)

    def _start_offsets(self, topic: str, start: Start, deadline: float) -> dict[int, int]:
        partitions = self._partitions(topic, deadline)
        marks = {p: self._watermarks((topic, p), deadline) for p in partitions}
        if isinstance(start, datetime) and start.timestamp() <= 0:
            start = BEGINNING  # broker timestamps are all later; and -1/-2 would mean "latest"/"earliest" to it
        if start == BEGINNING:
            return {p: low for p, (low, _high) in marks.items()}
        if start == END:
            return {p: high for p, (_low, high) in marks.items()}
        if isinstance(start, Last):
            return {p: max(low, high - start.records) for p, (low, high) in marks.items()}
        millis = int(start.timestamp() * 1000)
        wanted = [TopicPartition(topic, p, millis) for p in partitions]
        found = self._retrying(
            lambda: self._consumer.offsets_for_times(wanted, timeout=_left(deadline)),
            deadline,
            f"offsets of {topic} at {start.isoformat()}",
        )
        # No record at or after the time: start at the end (later records are the ones wanted).
        return {tp.partition: tp.offset if tp.offset >= 0 else marks[tp.partition][1] for tp in found}

    def _partitions(self, topic: str, deadline: float) -> list[int]:
        def lookup() -> list[int]:
            info = self._consumer.list_topics(topic, timeout=_left(deadline)).topics.get(topic)
            error = info.error if info is not None else None
            if (
                info is None
                or (error is None and not info.partitions)
                or (error is not None and error.code() == KafkaError.UNKNOWN_TOPIC_OR_PART)
            ):
                raise TopicError(f"topic {topic} does not exist ({error.str() if error else 'no partitions'})")
            if error is not None:
                raise KafkaException(error)  # retried while transient (a leader being elected)
            return sorted(info.partitions)

        return self._retrying(lookup, deadline, f"metadata of {topic}")

    def _watermarks(self, where: tuple[str, int], deadline: float) -> tuple[int, int]:
        tp = TopicPartition(*where)
        return self._retrying(
            lambda: self._consumer.get_watermark_offsets(tp, timeout=_left(deadline)),
            deadline,
            f"watermarks of {where[0]} [{where[1]}]",
        )

    def _retrying(self, call: Callable[[], T], deadline: float, what: str) -> T:
        try:
            return policy(retry_on=transient, deadline_s=_left(deadline), initial_s=0.1, max_s=1.0, what=what)(call)
        except KafkaException as exc:
            raise KafkaClientError(f"cannot read the {what}: {exc.args[0] if exc.args else exc}") from exc


def _left(deadline: float) -> float:
    return max(0.1, deadline - time.monotonic())


def read_to_end(
    settings: Settings,
    topics: str | Sequence[str] | Mapping[str, Start],
    start: Start = BEGINNING,
    timeout_s: float = 30.0,
    name: str = "reader",
) -> Iterator[Message]:
    """Open a :class:`TopicReader`, :meth:`~TopicReader.catch_up` within ``timeout_s`` (opening included), close it.

    Raises:
        see :class:`TopicReader` and :meth:`TopicReader.catch_up`.
    """
    deadline = time.monotonic() + timeout_s
    with TopicReader(settings, topics, start, timeout_s=timeout_s, name=name) as reader:
        yield from reader.catch_up(_left(deadline))
