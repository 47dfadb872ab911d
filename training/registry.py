"""The models topic: which version of a model is champion, candidate and previous champion.

The topic (``settings.kafka.topic("models-v1")``) is compacted and keyed by model name; every record carries the full
current state of its model, so the latest record per key is the truth::

    {"model": "classifier", "champion": 3, "candidate": 4, "previous_champion": 2,
     "event": "published", "at": "2026-11-27T10:00:00Z", "reason": "trained on ... ; trigger drift-17"}

``event`` says what changed: ``published`` (a new candidate), ``promoted`` (a new champion), ``rolled_back`` (the
champion went back to an earlier version) or ``rejected`` (a version failed to load or to smoke-infer; the roles did
not change; ``reason`` starts with ``version <n>:``).

:class:`ModelState` is the record of :class:`streams.schemas.ModelState` (what the inference worker reads), plus the
state transitions; every record written here parses there.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import Literal

from pydantic import Field

from foundation.settings import Settings
from streams.client import KafkaProducer, Record
from streams.exceptions import StreamsError
from streams.schemas import InvalidRecord, parse_model_state
from streams.schemas import ModelState as ModelStateRecord
from streams.skips import SkippedRecords
from training.exceptions import RegistryError
from training.snapshot import SnapshotError, read_topic

log = logging.getLogger(__name__)

MODELS_TOPIC = "models-v1"

Event = Literal["published", "promoted", "rolled_back", "rejected"]


class ModelState(ModelStateRecord):
    """The roles of one model's versions: one record of the models topic (key: ``model``).

    ``event`` is ``None`` only for a model that has no record yet (such a state is never written).
    """

    event: Event | None = None  # type: ignore[assignment]
    at: datetime = Field(default_factory=lambda: datetime.now(UTC))

    def to_bytes(self) -> bytes:
        """The record's JSON value, nulls included (the full state, as the topic's contract says)."""
        return self.model_dump_json().encode()

    def serving(self) -> list[int]:
        """The versions Triton must serve for this state: champion, candidate and previous champion (for rollback)."""
        return sorted({v for v in (self.champion, self.candidate, self.previous_champion) if v is not None})

    def role(self, version: int) -> str | None:
        """``"champion"``, ``"candidate"``, ``"previous_champion"`` or None."""
        for role in ("champion", "candidate", "previous_champion"):
            if getattr(self, role) == version:
                return role
        return None

    def _next(self, event: Event, reason: str, **roles: int | None) -> ModelState:
        return self.model_copy(update={**roles, "event": event, "reason": reason, "at": _now()})

    def published(self, version: int, reason: str = "") -> ModelState:
        """``version`` is the new candidate (it replaces the previous candidate)."""
        return self._next("published", reason, candidate=version)

    def promoted(self, version: int | None = None, reason: str = "") -> ModelState:
        """``version`` (default: the candidate) becomes champion; the old champion becomes previous champion.

        Raises:
            RegistryError: no version given and no candidate, or the version already is champion.
        """
        target = version if version is not None else self.candidate
        if target is None:
            raise RegistryError(f"model {self.model} has no candidate to promote")
        if target == self.champion:
            raise RegistryError(f"version {target} of {self.model} already is the champion")
        return self._next(
            "promoted",
            reason,
            champion=target,
            previous_champion=self.champion if self.champion is not None else self.previous_champion,
            candidate=None if self.candidate == target else self.candidate,
        )

    def rolled_back(self, to: int | None = None, reason: str = "") -> ModelState:
        """The champion goes back to ``to`` (default: the previous champion); the replaced champion is dropped.

        Raises:
            RegistryError: no target given and no previous champion, or the target already is champion.
        """
        target = to if to is not None else self.previous_champion
        if target is None:
            raise RegistryError(f"model {self.model} has no previous champion to roll back to")
        if target == self.champion:
            raise RegistryError(f"version {target} of {self.model} already is the champion")
        return self._next(
            "rolled_back",
            reason,
            champion=target,
            previous_champion=None,
            candidate=None if self.candidate == target else self.candidate,
        )

    def withdrawn(self, version: int | None = None, reason: str = "") -> ModelState:
        """The candidate (``version``, default: the current one) is dropped, e.g. after a failed canary.

        Recorded as ``rejected``; the champion does not change.

        Raises:
            RegistryError: there is no candidate, or ``version`` is not the candidate.
        """
        target = version if version is not None else self.candidate
        if target is None or target != self.candidate:
            raise RegistryError(f"version {target} is not the candidate of {self.model} (candidate: {self.candidate})")
        return self._next("rejected", f"version {target}: {reason}", candidate=None)

    def rejected(self, version: int, reason: str) -> ModelState:
        """A record saying ``version`` was rejected (``reason`` starts with ``version <n>:``); roles unchanged."""
        return self._next("rejected", f"version {version}: {reason}")


def _now() -> datetime:
    return datetime.now(UTC)


_SKIPPED = SkippedRecords()  # one per process, so that its log stays at most once a minute per reason


def read_states(settings: Settings, timeout_s: float = 15.0) -> dict[str, ModelState]:
    """The latest state of every model on the models topic (reads the topic from its start to its end).

    Records that are not valid states (whatever their bytes) are skipped and counted
    (``driftloop_skipped_records_total{topic="models-v1"}``); a tombstone (null value) forgets its model.

    Raises:
        RegistryError: the topic does not exist or the broker does not answer within ``timeout_s``.
    """
    topic = settings.kafka.topic(MODELS_TOPIC)
    states: dict[str, ModelState] = {}
    try:
        for msg in read_topic(settings, topic, timeout_s=timeout_s):
            key = msg.key().decode(errors="replace") if msg.key() is not None else ""
            if msg.value() is None:
                states.pop(key, None)
                continue
            try:
                state = ModelState.model_validate(parse_model_state(msg.value()).model_dump())
                if key and key != state.model:  # a record keyed for one model must not change another's roles
                    raise InvalidRecord(f"keyed {key[:64]!r} but names model {state.model!r}")
            except InvalidRecord as exc:
                _SKIPPED.skip(
                    MODELS_TOPIC, exc.reason, topic_name=topic, partition=msg.partition(), offset=msg.offset()
                )
                continue
            states[state.model] = state
    except SnapshotError as exc:
        raise RegistryError(str(exc)) from exc
    return states


def read_state(settings: Settings, model: str | None = None, timeout_s: float = 15.0) -> ModelState:
    """The latest state of ``model`` (default ``settings.triton.model_name``); an empty state when it has none.

    Raises:
        RegistryError: see :func:`read_states`.
    """
    name = model or settings.triton.model_name
    return read_states(settings, timeout_s).get(name) or ModelState(model=name)


def announce(settings: Settings, state: ModelState, timeout_s: float = 30.0) -> None:
    """Write ``state`` to the models topic (key: the model name) and wait for the broker's acknowledgement.

    Raises:
        RegistryError: the record was not acknowledged.
    """
    topic = settings.kafka.topic(MODELS_TOPIC)
    try:
        with KafkaProducer(settings) as producer:
            producer.produce_batch([Record(topic, state.to_bytes(), key=state.model.encode())], timeout_s=timeout_s)
    except StreamsError as exc:
        what = f"{state.event} of {state.model}"
        raise RegistryError(f"cannot announce {what} on {topic}: {exc}") from exc
    log.info(
        "models topic: %s %s",
        state.model,
        state.event,
        extra={"champion": state.champion, "candidate": state.candidate, "previous_champion": state.previous_champion},
    )
