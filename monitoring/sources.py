"""Kafka reads of the monitor that are not a consumer group's: the models topic's current state and a topic's tail.

Both go through ``streams.reader.TopicReader`` (partitions assigned directly, nothing committed), so they start at
once and never move a group's offsets. A models-topic record that breaks the contract (``streams.schemas.ModelState``),
a tombstone, or a state of a model or version that has no folder in the model repository is skipped and counted
(``driftloop_skipped_records_total{topic="models-v1"}``), never raised.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

from confluent_kafka import TIMESTAMP_NOT_AVAILABLE, Message

from foundation.settings import Settings
from monitoring.exceptions import MonitoringError
from streams.exceptions import CatchUpTimeout, StreamsError, TopicError
from streams.reader import BEGINNING, Last, Start, TopicReader
from streams.schemas import InvalidRecord, ModelState, parse_model_state
from streams.skips import SkippedRecords

log = logging.getLogger(__name__)

MODELS_TOPIC = "models-v1"
HEAD_RECORDS = 1000  # per partition: how far oldest_record_at reads before it gives up on a partition's head


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


def _open(settings: Settings, topic: str, start: Start, timeout_s: float) -> TopicReader:
    try:
        return TopicReader(settings, topic, start, timeout_s=timeout_s, name="monitor-reader")
    except TopicError as exc:
        raise MonitoringError(f"{exc} (run `driftloop stack up` or create the topics)") from exc
    except StreamsError as exc:
        raise MonitoringError(f"cannot read {topic}: {exc}") from exc


class ModelStatesReader:
    """Follows the compacted models topic from its beginning: the latest champion per model.

    Args:
        settings: root settings (the topic, ``triton.model_repository``).
        skipped: where skipped records are counted (default: a counter on prometheus_client's registry).

    Raises:
        MonitoringError: the topic does not exist or the broker does not answer.
    """

    def __init__(self, settings: Settings, skipped: SkippedRecords | None = None) -> None:
        self.topic = settings.kafka.topic(MODELS_TOPIC)
        self._reader = _open(settings, self.topic, BEGINNING, timeout_s=10.0)
        self._repository = settings.triton.model_repository
        self._skipped = skipped or SkippedRecords()

    def poll(self, timeout_s: float = 0.0, max_records: int = 500) -> dict[str, int | None]:
        """The records that arrived since the last call, folded: model -> champion (the latest record wins)."""
        states: dict[str, int | None] = {}
        for msg in self._reader.poll(timeout_s, max_records):
            self._fold(msg, states)
        return states

    def _fold(self, msg: Message, states: dict[str, int | None]) -> None:
        state = followed_state(msg, self._repository, self._skipped)
        if state is not None:
            states[state.model] = state.champion

    def read_all(self, timeout_s: float = 10.0) -> dict[str, int | None]:
        """Everything from the reader's position up to the current end of the topic (what it read within
        ``timeout_s`` when the broker is slower than that)."""
        states: dict[str, int | None] = {}
        try:
            for msg in self._reader.catch_up(timeout_s):
                self._fold(msg, states)
        except CatchUpTimeout as exc:
            log.warning("models topic not read to its end: %s", exc, extra={"topic": self.topic})
        except StreamsError as exc:
            raise MonitoringError(f"cannot read {self.topic}: {exc}") from exc
        return states

    def close(self) -> None:
        self._reader.close()


def read_tail(settings: Settings, logical_topic: str, per_partition: int, timeout_s: float = 15.0) -> Iterator[bytes]:
    """The values of the last ``per_partition`` records of each partition of a topic (tombstones left out); what was
    read within ``timeout_s`` when the broker is slower than that.

    Raises:
        MonitoringError: the topic does not exist or the broker does not answer.
    """
    topic = settings.kafka.topic(logical_topic)
    reader = _open(settings, topic, Last(per_partition), timeout_s)
    try:
        for msg in reader.catch_up(timeout_s):
            value = msg.value()
            if value is not None:
                yield value
    except CatchUpTimeout as exc:
        log.warning("tail of %s not read to its end: %s", topic, exc, extra={"topic": topic})
    except StreamsError as exc:
        raise MonitoringError(f"cannot read {topic}: {exc}") from exc
    finally:
        reader.close()


def oldest_record_at(settings: Settings, logical_topic: str, timeout_s: float = 15.0) -> float | None:
    """The broker timestamp (epoch s) of the oldest record still on a topic; None when it holds none.

    Reads only the head of each partition (a bounded number of records), never the whole topic.

    Raises:
        MonitoringError: the topic does not exist or the broker does not answer.
    """
    topic = settings.kafka.topic(logical_topic)
    reader = _open(settings, topic, BEGINNING, timeout_s)
    oldest: float | None = None
    seen: set[int] = set()
    budget = HEAD_RECORDS * max(1, len(reader.positions))  # an empty partition must not make it read everything
    try:
        for read, msg in enumerate(reader.catch_up(timeout_s), start=1):
            kind, at_ms = msg.timestamp()
            if kind != TIMESTAMP_NOT_AVAILABLE and msg.partition() not in seen:
                seen.add(msg.partition())
                oldest = at_ms / 1000 if oldest is None else min(oldest, at_ms / 1000)
            if len(seen) == len(reader.positions) or read >= budget:
                break
    except CatchUpTimeout as exc:
        log.warning("head of %s not read to its end: %s", topic, exc, extra={"topic": topic})
    except StreamsError as exc:
        raise MonitoringError(f"cannot read {topic}: {exc}") from exc
    finally:
        reader.close()
    return oldest


def read_model_states(
    settings: Settings, timeout_s: float = 10.0, skipped: SkippedRecords | None = None
) -> dict[str, int | None]:
    """The current champion of every model on the models topic (records it cannot follow skipped).

    Raises:
        MonitoringError: the topic does not exist or the broker does not answer.
    """
    reader = ModelStatesReader(settings, skipped)
    try:
        return reader.read_all(timeout_s)
    finally:
        reader.close()
