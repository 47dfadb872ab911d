"""Wire contracts (JSON, UTF-8) of the topics: events, labels, predictions, dead letters.

Any Kafka client can speak them; the README documents each with an example.
"""

from __future__ import annotations

import base64
import hashlib
import json
import math
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from streams.exceptions import StreamsError

SCHEMA_VERSION = 1
MAX_EVENT_BYTES = 64 * 1024
MAX_TEXT_CHARS = 10_000
MAX_JSON_DEPTH = 8
MAX_DEAD_LETTER_BYTES = 256 * 1024

Id = Annotated[str, Field(min_length=1, max_length=128)]


class InvalidEvent(StreamsError):
    """An event that breaks the contract; ``reason`` says how, in one line."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class _Contract(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    def to_bytes(self) -> bytes:
        return self.model_dump_json(exclude_none=True).encode()


class Event(_Contract):
    """An input event (key on the topic: ``entity_id``)."""

    schema_version: Literal[1] = SCHEMA_VERSION
    event_id: Id
    entity_id: Id
    event_time: datetime
    text: Annotated[str, Field(max_length=MAX_TEXT_CHARS)]
    attributes: dict[Annotated[str, Field(max_length=64)], float] = Field(default_factory=dict, max_length=32)

    @field_validator("event_time")
    @classmethod
    def _aware(cls, value: datetime) -> datetime:
        if value.tzinfo is None:
            raise ValueError("event_time needs a time zone (e.g. 2026-11-27T10:00:00Z)")
        return value.astimezone(UTC)

    @field_validator("attributes")
    @classmethod
    def _finite(cls, value: dict[str, float]) -> dict[str, float]:
        bad = [k for k, v in value.items() if not math.isfinite(v)]
        if bad:
            raise ValueError(f"attributes must be finite numbers: {bad}")
        return value


class Label(_Contract):
    """Delayed ground truth for an event (key: ``event_id``)."""

    event_id: Id
    label: Id
    labelled_at: datetime


class ModelRef(_Contract):
    name: str
    version: int


class Timings(_Contract):
    """Milliseconds spent in each stage; ``end_to_end`` runs from the event's broker timestamp to production."""

    queue: float
    features: float
    inference: float
    end_to_end: float


class Prediction(_Contract):
    """One prediction per event (key: ``entity_id``). Consumers dedupe by ``event_id`` (at-least-once)."""

    event_id: Id
    entity_id: Id
    event_time: datetime
    label: str
    scores: dict[str, float]
    model: ModelRef
    role: Literal["champion", "candidate", "shadow"] = "champion"
    features: dict[str, float | None]
    timings_ms: Timings
    trace_id: str | None = None
    predicted_at: datetime
    # Text descriptors of the event's text for drift monitoring (``length``, ``word_count``, ``oov_share``),
    # computed by the inference worker with ``monitoring.text_stats``; the text itself is not carried.
    text_stats: dict[str, float] | None = None


class ModelState(_Contract):
    """The models topic (compacted, key: model name): the whole current state in every record."""

    model: str
    champion: int | None = None
    candidate: int | None = None
    previous_champion: int | None = None
    event: Literal["published", "promoted", "rolled_back", "rejected"]
    at: datetime
    reason: str = ""


class Source(_Contract):
    topic: str
    partition: int
    offset: int


class DeadLetter(_Contract):
    """A record that could not be processed: the original bytes (base64), where it came from, and why.

    Values and keys over ``MAX_DEAD_LETTER_BYTES`` are cut (base64 grows them by a third, and the dead letter must
    fit the broker's record limit); ``value_size`` and ``value_sha256`` then identify the whole original.
    """

    stage: str
    error: str
    source: Source
    key_b64: str | None = None
    value_b64: str
    failed_at: datetime
    key_truncated: bool = False
    value_truncated: bool = False
    value_size: int | None = None
    value_sha256: str | None = None

    @classmethod
    def of(cls, stage: str, error: str, source: Source, key: bytes | None, value: bytes | None) -> DeadLetter:
        raw = value or b""
        cut = len(raw) > MAX_DEAD_LETTER_BYTES
        return cls(
            stage=stage,
            error=error if len(error) <= 1000 else error[:1000] + "...",
            source=source,
            key_b64=base64.b64encode(key[:MAX_DEAD_LETTER_BYTES]).decode() if key is not None else None,
            key_truncated=key is not None and len(key) > MAX_DEAD_LETTER_BYTES,
            value_b64=base64.b64encode(raw[:MAX_DEAD_LETTER_BYTES]).decode(),
            value_truncated=cut,
            value_size=len(raw) if cut else None,
            value_sha256=hashlib.sha256(raw).hexdigest() if cut else None,
            failed_at=datetime.now(UTC),
        )

    def original(self) -> bytes:
        return base64.b64decode(self.value_b64)


def parse_event(raw: bytes | None) -> Event:
    """Decode and validate one event.

    Raises:
        InvalidEvent: with a one-line reason (size, encoding, JSON, nesting, schema version, or field errors).
    """
    if raw is None:
        raise InvalidEvent("empty value (tombstone)")
    if len(raw) > MAX_EVENT_BYTES:
        raise InvalidEvent(f"event is {len(raw)} bytes; the limit is {MAX_EVENT_BYTES}")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidEvent(f"not UTF-8: {exc.reason} at byte {exc.start}") from None
    try:
        data = json.loads(text)
    except (ValueError, RecursionError) as exc:  # ValueError: also numbers Python refuses to convert
        raise InvalidEvent(f"not JSON: {exc}") from None
    if not isinstance(data, dict):
        raise InvalidEvent(f"an event is a JSON object, got {type(data).__name__}")
    if _depth(data) > MAX_JSON_DEPTH:
        raise InvalidEvent(f"JSON nested deeper than {MAX_JSON_DEPTH} levels")
    version = data.get("schema_version")
    if version != SCHEMA_VERSION:
        raise InvalidEvent(f"unknown schema_version {version!r}; this worker reads {SCHEMA_VERSION}")
    try:
        return Event.model_validate(data)
    except ValidationError as exc:
        raise InvalidEvent(_reasons(exc)) from None


def _depth(value: Any, level: int = 1) -> int:
    if level > MAX_JSON_DEPTH:
        return level
    if isinstance(value, dict):
        return max((_depth(v, level + 1) for v in value.values()), default=level)
    if isinstance(value, list):
        return max((_depth(v, level + 1) for v in value), default=level)
    return level


def _reasons(exc: ValidationError) -> str:
    parts = []
    for error in exc.errors()[:5]:
        where = ".".join(str(p) for p in error["loc"]) or "event"
        parts.append(f"{where}: {error['msg']}")
    return "; ".join(parts)
