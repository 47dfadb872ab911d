"""Kafka reads of the monitor that are not a consumer group's: the models topic's current state and a topic's tail.

Both assign partitions directly (no group membership, nothing committed), so they start at once and never move a
group's offsets. A models-topic record that breaks the contract (``streams.schemas.ModelState``), a tombstone, or a
state of a model or version that has no folder in the model repository is skipped and counted
(``driftloop_skipped_records_total{topic="models-v1"}``), never raised.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, KafkaException, Message, TopicPartition

from foundation.settings import Settings
from monitoring.exceptions import MonitoringError
from streams.client import client_config
from streams.schemas import InvalidRecord, ModelState, parse_model_state
from streams.skips import SkippedRecords

log = logging.getLogger(__name__)

# A read that got nothing for this long after it started is at the end of what it can get.
_SETTLE_S = 3.0
MODELS_TOPIC = "models-v1"


def unusable_state(repository: Path, state: ModelState) -> str | None:
    """Why a valid model state cannot be followed, or None.

    A model is published into the model repository before the models topic announces it, so a state whose model (or
    champion version) has no folder there is not one the monitor can check: following it would empty the window and
    wait for a reference that never comes.
    """
    model_dir = repository / state.model
    if not model_dir.is_dir():
        return f"unknown model: {state.model!r} has no folder in the model repository {repository}"
    if state.champion is not None and not (model_dir / str(state.champion)).is_dir():
        return f"unknown version: {state.model} v{state.champion} has no folder in {model_dir}"
    return None


def followed_state(msg: Message, repository: Path, skipped: SkippedRecords) -> ModelState | None:
    """The model state of one models-topic record, or None (counted and logged as skipped) when it cannot be followed:
    it breaks the contract, is a tombstone, names an unknown model or version (``unusable_state``), or raised."""
    try:
        state = parse_model_state(msg.value())
        reason = unusable_state(repository, state)
    except InvalidRecord as exc:
        reason = exc.reason
    except Exception as exc:  # noqa: BLE001 - no record may stop the reader
        reason = f"unexpected {type(exc).__name__}: {str(exc)[:200]}"
    if reason is None:
        return state
    skipped.skip(MODELS_TOPIC, reason, partition=msg.partition(), offset=msg.offset())
    return None


class _AssignedReader:
    def __init__(self, settings: Settings, topic: str) -> None:
        self.topic = topic
        config = client_config(
            settings,
            {
                "group.id": f"driftloop-monitor-reader-{uuid.uuid4().hex[:8]}",
                "enable.auto.commit": False,
                "enable.auto.offset.store": False,
                "auto.offset.reset": "earliest",
            },
        )
        self._consumer = Consumer(config)
        try:
            metadata = self._consumer.list_topics(topic, timeout=10)
        except KafkaException as exc:
            self._consumer.close()
            raise MonitoringError(f"cannot read the metadata of {topic}: {exc}") from exc
        topic_md = metadata.topics.get(topic)
        if topic_md is None or topic_md.error is not None or not topic_md.partitions:
            self._consumer.close()
            raise MonitoringError(f"topic {topic} does not exist (run `driftloop stack up` or create the topics)")
        self.partitions = sorted(topic_md.partitions)

    def watermarks(self, partition: int, timeout_s: float) -> tuple[int, int]:
        """``(low, high)`` offsets of a partition, retrying while the broker elects a leader (a new topic)."""
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                return self._consumer.get_watermark_offsets(TopicPartition(self.topic, partition), timeout=timeout_s)
            except KafkaException as exc:
                if not _transient(exc.args[0]) or time.monotonic() > deadline:
                    raise
                time.sleep(0.2)

    def _messages(self, max_records: int, timeout_s: float) -> list[Message]:
        batch = []
        for msg in self._consumer.consume(num_messages=max_records, timeout=timeout_s):
            if msg.error() is None:
                batch.append(msg)
            else:
                log.warning("reader: %s", msg.error(), extra={"topic": self.topic})
        return batch

    def close(self) -> None:
        self._consumer.close()


class ModelStatesReader(_AssignedReader):
    """Follows the compacted models topic from its beginning: the latest champion per model.

    Args:
        settings: root settings (the topic, ``triton.model_repository``).
        skipped: where skipped records are counted (default: a counter on prometheus_client's registry).
    """

    def __init__(self, settings: Settings, skipped: SkippedRecords | None = None) -> None:
        super().__init__(settings, settings.kafka.topic(MODELS_TOPIC))
        self._repository = settings.triton.model_repository
        self._skipped = skipped or SkippedRecords()
        self._consumer.assign([TopicPartition(self.topic, p, OFFSET_BEGINNING) for p in self.partitions])

    def poll(self, timeout_s: float = 0.0, max_records: int = 500) -> dict[str, int | None]:
        """The records that arrived since the last call, folded: model -> champion (the latest record wins)."""
        states: dict[str, int | None] = {}
        for msg in self._messages(max_records, timeout_s):
            self._fold(msg, states)
        return states

    def _fold(self, msg: Message, states: dict[str, int | None]) -> None:
        state = followed_state(msg, self._repository, self._skipped)
        if state is not None:
            states[state.model] = state.champion

    def read_all(self, timeout_s: float = 10.0) -> dict[str, int | None]:
        """Everything from the reader's position up to the current end of the topic."""
        ends = {p: self.watermarks(p, timeout_s) for p in self.partitions}
        states: dict[str, int | None] = {}
        positions = {p: low for p, (low, _high) in ends.items()}
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline and any(positions[p] < high for p, (_low, high) in ends.items()):
            batch = self._messages(500, 0.2)
            if not batch and time.monotonic() > deadline - timeout_s + _SETTLE_S:
                break  # the rest are offsets compaction or transaction markers left empty
            for msg in batch:
                positions[msg.partition()] = msg.offset() + 1
                self._fold(msg, states)
        return states


def read_tail(settings: Settings, logical_topic: str, per_partition: int, timeout_s: float = 15.0) -> Iterator[bytes]:
    """The values of the last ``per_partition`` records of each partition of a topic (tombstones left out).

    Raises:
        MonitoringError: the topic does not exist or the broker does not answer.
    """
    reader = _AssignedReader(settings, settings.kafka.topic(logical_topic))
    try:
        assignments, ends = [], {}
        for p in reader.partitions:
            low, high = reader.watermarks(p, timeout_s)
            if high > low:
                assignments.append(TopicPartition(reader.topic, p, max(low, high - per_partition)))
                ends[p] = high
        if not assignments:
            return
        reader._consumer.assign(assignments)
        positions = {tp.partition: tp.offset for tp in assignments}
        started = time.monotonic()
        while time.monotonic() - started < timeout_s and any(positions[p] < ends[p] for p in ends):
            batch = reader._messages(1000, 0.5)
            if not batch and time.monotonic() - started > _SETTLE_S:
                break
            for msg in batch:
                positions[msg.partition()] = msg.offset() + 1
                if msg.value() is not None:
                    yield msg.value()
    except KafkaException as exc:
        raise MonitoringError(f"cannot read {reader.topic}: {exc}") from exc
    finally:
        reader.close()


def read_model_states(
    settings: Settings, timeout_s: float = 10.0, skipped: SkippedRecords | None = None
) -> dict[str, int | None]:
    """The current champion of every model on the models topic (records it cannot follow skipped)."""
    reader = ModelStatesReader(settings, skipped)
    try:
        return reader.read_all(timeout_s)
    finally:
        reader.close()


_LEADERLESS = (KafkaError.NOT_LEADER_FOR_PARTITION, KafkaError.LEADER_NOT_AVAILABLE, KafkaError._TIMED_OUT)


def _transient(error: object) -> bool:
    return isinstance(error, KafkaError) and (error.retriable() or error.code() in _LEADERLESS)
