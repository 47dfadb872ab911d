"""Wire contracts (JSON, UTF-8) of every topic: events, labels, predictions, dead letters, drift events, model states.

Any Kafka client can speak them; the README documents each with an example.

Times: every timestamp a producer sends (``event_time``, ``labelled_at``, a model state's ``at``, a drift event's
times) must carry a time zone and lie in ``[MIN_TIME, MAX_TIME)`` (1900-01-01 … 2200-01-01 UTC), a range that Python,
pandas (nanoseconds since 1970, 1677…2262), Feast and Redis all represent; anything else is refused with a reason.
Parsers raise only their contract's own error (``InvalidEvent``, ``InvalidRecord``), whatever the bytes.
"""

from __future__ import annotations

import base64
import hashlib
import json
import math
import time
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

import orjson
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, field_validator

from streams.exceptions import StreamsError

SCHEMA_VERSION = 1
MAX_EVENT_BYTES = 64 * 1024
MAX_TEXT_CHARS = 10_000
MAX_JSON_DEPTH = 8
MAX_DEAD_LETTER_BYTES = 256 * 1024

MIN_TIME = datetime(1900, 1, 1, tzinfo=UTC)
MAX_TIME = datetime(2200, 1, 1, tzinfo=UTC)

Id = Annotated[str, Field(min_length=1, max_length=128)]
Finite = Annotated[float, Field(allow_inf_nan=False)]  # JSON has no NaN or Infinity: what is sent must round-trip
Kind = Literal["data", "prediction", "performance"]
Severity = Literal["warning", "critical"]


class InvalidRecord(StreamsError):
    """A record that breaks its topic's contract; ``reason`` says how, in one line."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class InvalidEvent(InvalidRecord):
    """An event that breaks the contract; ``reason`` says how, in one line."""


def bounded_time(value: datetime) -> datetime:
    """``value`` in UTC, if it has a time zone and lies in ``[MIN_TIME, MAX_TIME)``; else ValueError with a reason."""
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError("needs a time zone (e.g. 2026-11-27T10:00:00Z)")
    try:
        utc = value.astimezone(UTC)
    except (OverflowError, ValueError):
        utc = None
    if utc is None or not MIN_TIME <= utc < MAX_TIME:
        raise ValueError(f"out of range: times must lie in [{MIN_TIME:%Y-%m-%d}, {MAX_TIME:%Y-%m-%d}) UTC")
    return utc


Time = Annotated[datetime, AfterValidator(bounded_time)]


class _Contract(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    def to_bytes(self) -> bytes:
        return self.model_dump_json(exclude_none=True).encode()


class Event(_Contract):
    """An input event (key on the topic: ``entity_id``)."""

    schema_version: Literal[1] = SCHEMA_VERSION
    event_id: Id
    entity_id: Id
    event_time: Time
    text: Annotated[str, Field(max_length=MAX_TEXT_CHARS)]
    attributes: dict[Annotated[str, Field(max_length=64)], float] = Field(default_factory=dict, max_length=32)

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
    labelled_at: Time


class ModelRef(_Contract):
    name: Id
    version: Annotated[int, Field(ge=0)]


class Timings(_Contract):
    """Milliseconds spent in each stage; ``end_to_end`` runs from the event's broker timestamp to production."""

    queue: Finite
    features: Finite
    inference: Finite
    end_to_end: Finite


class Prediction(_Contract):
    """One prediction per event (key: ``entity_id``). Consumers dedupe by ``event_id`` (at-least-once)."""

    event_id: Id
    entity_id: Id
    event_time: Time
    label: Id
    scores: dict[Id, Finite] = Field(max_length=1024)
    model: ModelRef
    role: Literal["champion", "candidate", "shadow"] = "champion"
    features: dict[Id, Finite | None] = Field(max_length=1024)
    timings_ms: Timings
    trace_id: Annotated[str, Field(max_length=128)] | None = None
    predicted_at: Time
    # Text descriptors of the event's text for drift monitoring (``length``, ``word_count``, ``oov_share``),
    # computed by the inference worker with ``monitoring.text_stats``; the text itself is not carried.
    text_stats: dict[Id, Finite] | None = Field(default=None, max_length=64)


def encode_prediction(fields: dict[str, Any]) -> bytes:
    """The bytes ``Prediction(**fields).to_bytes()`` writes, without building the model (~6x faster): the inference
    worker's hot path.

    ``fields`` are plain values, the nested ones as dicts (``model``, ``timings_ms``). The caller vouches for what its
    own code and the validated event give (ids, label names, times); checked here is what a model or the feature
    store hands over: every number must be finite, as the contract requires. Keys come out in the model's order and
    a top-level None is left out, as ``to_bytes`` does; the unit tests hold the two equal.

    Raises:
        ValueError: a field unknown to the contract or missing, or a number that is not finite (named).
    """
    unknown = fields.keys() - _PREDICTION_FIELDS.keys()
    missing = _PREDICTION_REQUIRED - fields.keys()
    if unknown or missing:
        raise ValueError(f"prediction fields: unknown {sorted(unknown)}, missing {sorted(missing)}")
    for name in _PREDICTION_NUMBERS:
        numbers = fields.get(name) or {}
        bad = [key for key, value in numbers.items() if value is not None and not math.isfinite(value)]
        if bad:
            raise ValueError(f"{name}: numbers must be finite: {bad[:5]}")
    ordered = {}
    for name, default in _PREDICTION_FIELDS.items():
        value = fields.get(name, default)
        if value is not None:
            ordered[name] = value
    return orjson.dumps(ordered, option=orjson.OPT_UTC_Z)


_PREDICTION_FIELDS = {name: None if f.is_required() else f.get_default() for name, f in Prediction.model_fields.items()}
_PREDICTION_REQUIRED = {name for name, field in Prediction.model_fields.items() if field.is_required()}
_PREDICTION_NUMBERS = ("scores", "features", "timings_ms", "text_stats")


class ModelState(_Contract):
    """The models topic (compacted, key: model name): the whole current state in every record."""

    model: Id
    champion: Annotated[int, Field(ge=1)] | None = None
    candidate: Annotated[int, Field(ge=1)] | None = None
    previous_champion: Annotated[int, Field(ge=1)] | None = None
    event: Literal["published", "promoted", "rolled_back", "rejected"]
    at: Time
    reason: Annotated[str, Field(max_length=10_000)] = ""


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


Status = Literal["firing", "resolved"]


class WindowInfo(_Contract):
    """The compared window: event-time bounds, number of predictions, how many of them have a label."""

    start: Time | None
    end: Time | None
    size: Annotated[int, Field(ge=0)]
    labelled: Annotated[int, Field(ge=0)]


class ColumnScore(_Contract):
    """Evidently's test of one column: method, score (p-value or distance), threshold, verdict."""

    method: str
    score: Finite
    threshold: Finite
    drifted: bool


class DriftEvent(_Contract):
    """The drift topic (key: the model name): a drift alert of one model and kind opening (``firing``) or closing
    (``resolved``).

    Example::

        {"schema_version": 1, "id": "6f1c…", "kind": "data", "status": "firing", "severity": "critical",
         "model": "classifier", "version": 3, "dedup_key": "driftloop/classifier/data",
         "window": {"start": "2026-11-27T10:00:00Z", "end": "2026-11-27T10:05:00Z", "size": 5000, "labelled": 812},
         "metrics": {"drift_share": 0.8, "drifted_count": 4, "column_count": 5},
         "drifted_columns": ["amount", "items", "text_length", "oov_share"],
         "scores": {"amount": {"method": "ks", "score": 0.0, "threshold": 0.05, "drifted": true}, …},
         "started_at": "2026-11-27T10:05:01Z", "detected_at": "2026-11-27T10:05:01Z",
         "onset_at": "2026-11-27T10:03:12Z",
         "report_path": ".stack/reports/drift-classifier-v3-20261127T100501Z-6f1c.html"}
    """

    schema_version: Literal[1] = 1
    id: Id
    kind: Kind
    status: Status
    severity: Severity
    model: Id
    version: Annotated[int, Field(ge=0)]
    dedup_key: str
    window: WindowInfo
    metrics: dict[str, Finite]
    drifted_columns: list[str]
    scores: dict[str, ColumnScore] = Field(default_factory=dict)
    started_at: Time
    detected_at: Time
    report_path: str | None = None
    firing_event_id: str | None = None  # on a resolved event: the event that opened the alert
    # On a firing data or prediction alert: the estimated start of the drift (the fired window's change point).
    onset_at: Time | None = None

    def to_bytes(self) -> bytes:
        return self.model_dump_json().encode()

    @classmethod
    def from_bytes(cls, raw: bytes | None) -> DriftEvent:
        """Raises: InvalidRecord (whatever the bytes)."""
        return parse_drift_event(raw)


def dedup_key(model: str, kind: Kind) -> str:
    """The alert identity shared by every receiver: one open alert per model and drift kind."""
    return f"driftloop/{model}/{kind}"


MAX_RECORD_BYTES = 1024 * 1024  # labels, predictions, drift events, model states


def parse_event(raw: bytes | None) -> Event:
    """Decode and validate one event.

    Raises:
        InvalidEvent: with a one-line reason (size, encoding, JSON, nesting, schema version, or field errors).
    """
    data = _json_object(raw, "an event", MAX_EVENT_BYTES, InvalidEvent)
    version = data.get("schema_version")
    if version != SCHEMA_VERSION:
        raise InvalidEvent(f"unknown schema_version {version!r}; this worker reads {SCHEMA_VERSION}")
    return _validate(Event, data, InvalidEvent)


def check_record_of(
    event: Event, key: bytes | None, written_at: float | None, max_ahead_s: float | None, now: float | None = None
) -> None:
    """Check what the stream workers require of an events-topic record beyond its value's contract: the key is the
    event's ``entity_id``, and ``event_time`` lies at most ``max_ahead_s`` (None: any) ahead of when the record was
    written (``written_at``, its timestamp in epoch seconds; the clock instead when it has none or is ahead of it).

    Both workers judge a record alike: by its timestamp, not by when they read it (the clock only bounds a timestamp
    that claims to come from the future). A far-future event would empty its entity's window (the window keeps the
    day before its newest event) and freeze its online features in Redis (Feast keeps a row until a newer one comes).

    Raises:
        InvalidEvent: with the reason.
    """
    if key != event.entity_id.encode():
        raise InvalidEvent(
            f"the record key must be the entity_id {event.entity_id!r}, got {key if key is None else key[:64]!r}"
        )
    if max_ahead_s is None:
        return
    now = time.time() if now is None else now
    reference = now if written_at is None or not 0 < written_at <= now else written_at
    ahead_s = event.event_time.timestamp() - reference
    if ahead_s > max_ahead_s:
        raise InvalidEvent(
            f"dated too far ahead: event_time {event.event_time.isoformat()} is {ahead_s:,.0f} s after the record was "
            f"written; workers.max_event_ahead_s allows {max_ahead_s:,.0f}"
        )


def parse_label(raw: bytes | None) -> Label:
    """Decode and validate one label. Raises: InvalidRecord with a one-line reason."""
    return _validate(Label, _json_object(raw, "a label", MAX_RECORD_BYTES, InvalidRecord), InvalidRecord)


def parse_prediction(raw: bytes | None) -> Prediction:
    """Decode and validate one prediction. Raises: InvalidRecord with a one-line reason."""
    return _validate(Prediction, _json_object(raw, "a prediction", MAX_RECORD_BYTES, InvalidRecord), InvalidRecord)


def parse_drift_event(raw: bytes | None) -> DriftEvent:
    """Decode and validate one drift event. Raises: InvalidRecord with a one-line reason."""
    return _validate(DriftEvent, _json_object(raw, "a drift event", MAX_RECORD_BYTES, InvalidRecord), InvalidRecord)


def parse_model_state(raw: bytes | None) -> ModelState:
    """Decode and validate one models-topic record. Raises: InvalidRecord with a one-line reason."""
    return _validate(ModelState, _json_object(raw, "a model state", MAX_RECORD_BYTES, InvalidRecord), InvalidRecord)


def _json_object(raw: bytes | None, what: str, max_bytes: int, error: type[InvalidRecord]) -> dict:
    if raw is None:
        raise error("empty value (tombstone)")
    if not isinstance(raw, bytes | bytearray | memoryview):
        raise error(f"{what} is bytes, got {type(raw).__name__}")
    if len(raw) > max_bytes:
        raise error(f"{what} is {len(raw)} bytes; the limit is {max_bytes}")
    try:
        text = bytes(raw).decode("utf-8")
    except UnicodeDecodeError as exc:
        raise error(f"not UTF-8: {exc.reason} at byte {exc.start}") from None
    try:
        data = _loads(text)
    except (ValueError, RecursionError) as exc:  # ValueError: also numbers Python refuses to convert
        raise error(f"not JSON: {str(exc)[:200]}") from None
    if not isinstance(data, dict):
        raise error(f"{what} is a JSON object, got {type(data).__name__}")
    if _depth(data) > MAX_JSON_DEPTH:
        raise error(f"JSON nested deeper than {MAX_JSON_DEPTH} levels")
    return data


def _loads(text: str) -> Any:
    """The JSON value of ``text`` as the json module reads it, read by orjson where orjson can (5x faster).

    orjson refuses what the json module reads beyond strict JSON (NaN and infinity literals, numbers past a double,
    lone surrogates, nesting past 1,024 levels): those texts are read again by the json module. Where both read a
    text they agree, except that orjson reads an integer outside [-2**63, 2**64) as the nearest float: a contract's
    float gets the same value either way, and a contract's int field (a version, a count) refuses such a number with
    a reason ("exceeded maximum size"), where the json module's reading let pydantic take the absurd int.
    """
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError:
        return json.loads(text)


def _validate(model: type[_Contract], data: dict, error: type[InvalidRecord]):
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise error(_reasons(exc)) from None
    except (ValueError, TypeError, OverflowError, RecursionError) as exc:  # a validator outside pydantic's wrapping
        raise error(f"{type(exc).__name__}: {str(exc)[:200]}") from None


def _depth(value: Any, level: int = 1) -> int:
    """How deep ``value`` nests, a scalar counting one level, up to the first level past ``MAX_JSON_DEPTH``."""
    if level > MAX_JSON_DEPTH:
        return level
    if isinstance(value, dict):
        children = value.values()
    elif isinstance(value, list):
        children = value
    else:
        return level
    deepest = level
    for child in children:
        # A scalar child is one level down: only containers are walked (events hold a few, predictions a few more).
        depth = _depth(child, level + 1) if isinstance(child, dict | list) else level + 1
        if depth > deepest:
            deepest = depth
            if deepest > MAX_JSON_DEPTH:
                break
    return deepest


def _reasons(exc: ValidationError) -> str:
    parts = []
    for error in exc.errors()[:5]:
        where = ".".join(str(p) for p in error["loc"]) or "value"
        parts.append(f"{where}: {error['msg']}"[:300])
    return "; ".join(parts)
