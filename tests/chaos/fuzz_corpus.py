"""Hostile records for every topic a worker reads, built from shapes: near-valid JSON with extreme values.

One set of builders serves two drivers:

- the property tests (tests/streams/test_parsers_fuzz.py) draw through hypothesis (:func:`near_valid`), so that a
  failing case shrinks;
- the live fuzz scenario (tests/chaos/test_live_fuzz.py) draws through a seeded ``random.Random``
  (:func:`hostile_records`), so that the same seed gives the same records, in the same order, without hypothesis'
  engine in a live test.

A builder starts from a valid record of its topic (:data:`VALID`), then applies one to three mutations: a field set
to an extreme value of its kind (times out of range, naive, year 1 with an offset, beyond pandas' nanosecond range
1677…2262, leap seconds, huge offsets, epoch numbers; huge ints and floats; empty, huge and surrogate strings; deep
nesting; a wrong type), a field removed, a field added, a duplicate key; and sometimes a wire-level mutation of the
serialised bytes (NaN/Infinity literals, an integer of thousands of digits, truncation, a byte-order mark, invalid
UTF-8, UTF-16, random bytes). Some results are still valid records (a boundary time, a huge but legal text): a
parser must accept those, the workers must process them.
"""

from __future__ import annotations

import json
import random
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

T = TypeVar("T")

TOPICS = ("events", "labels", "predictions", "drift", "models")
#: The model that valid-shaped hostile records of the drift, models and predictions topics name: never the model
#: under test, whose valid records are commands (a drift to retrain on, a champion to serve), not garbage.
OTHER_MODEL = "fuzz-other-model"


class Source(Protocol):
    """Where a builder's choices come from (hypothesis' ``draw`` or a seeded ``random.Random``)."""

    def pick(self, options: Sequence[T]) -> T: ...

    def integer(self, low: int, high: int) -> int: ...

    def raw(self, max_size: int) -> bytes: ...


class RandomSource:
    """Choices from a seeded ``random.Random``: deterministic, no hypothesis engine."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng

    def pick(self, options: Sequence[T]) -> T:
        return options[self.rng.randrange(len(options))]

    def integer(self, low: int, high: int) -> int:
        return self.rng.randint(low, high)

    def raw(self, max_size: int) -> bytes:
        return self.rng.randbytes(self.rng.randint(0, max_size))


class DrawSource:
    """Choices drawn through hypothesis (``st.data()`` or a composite's ``draw``): shrinkable."""

    def __init__(self, draw: Callable[[Any], Any]) -> None:
        from hypothesis import strategies as st

        self._draw, self._st = draw, st

    def pick(self, options: Sequence[T]) -> T:
        return self._draw(self._st.sampled_from(list(options)))

    def integer(self, low: int, high: int) -> int:
        return self._draw(self._st.integers(low, high))

    def raw(self, max_size: int) -> bytes:
        return self._draw(self._st.binary(max_size=max_size))


# --- extreme values, by kind --------------------------------------------------------------------------------------

VALID_TIMES = [
    "2026-11-27T10:00:00Z",
    "2026-11-27T10:00:00.123456+05:30",
    "1900-01-01T00:00:00Z",
    "1899-12-31T23:00:00-01:00",
    "2199-12-31T23:59:59.999999Z",
    "2200-01-01T00:59:59+01:00",
    "1970-01-01T00:00:00Z",
    1_700_000_000,
    1_700_000_000_000,
    0,
]
#: Times the contract must refuse: no zone, out of [1900, 2200) UTC (year 1 with an offset, pandas' 1677/2262 ends,
#: 9999), impossible dates, leap seconds, not ISO 8601, not a time at all.
REFUSED_TIMES = [
    "0001-01-01T00:00:00+01:00",
    "0001-01-01T00:00:00-23:59",
    "0001-01-01T00:00:00Z",
    "9999-12-31T23:59:59-01:00",
    "9999-12-31T23:59:59.999999+00:00",
    "2026-11-27T10:00:00",
    "2026-11-27 10:00:00",
    "1677-09-21T00:12:43Z",
    "1677-09-21T00:12:42Z",
    "1600-01-01T00:00:00Z",
    "2262-04-11T23:47:16Z",
    "2262-04-12T00:00:00Z",
    "3000-01-01T00:00:00Z",
    "1899-12-31T23:59:59.999999Z",
    "2200-01-01T00:00:00Z",
    "2199-12-31T23:00:00-01:00",
    "2016-12-31T23:59:60Z",
    "2026-11-27T10:00:00+24:00",
    "2026-11-27T10:00:00+99:99",
    "2026-02-30T00:00:00Z",
    "",
    "now",
    "T",
    10**20,
    -(10**20),
    1e308,
    True,
    [],
    {},
]
#: Extreme times, some of them legal (a parser decides): the refused ones and more.
EXTREME_TIMES = REFUSED_TIMES + [
    "2026-11-27",
    "2026-11-27T10:00:00+23:59",
    "2026-11-27T10:00:00-23:59",
    "2026-11-27T10:00:00.123456789Z",
    "+002026-11-27T10:00:00Z",
    "2026-W48-5T10:00:00Z",
    "2026-11-27T10:00:00Z ",
    "2026-11-27t10:00:00z",
    -62_135_596_800,
    -1.5,
    253_402_300_800,
    None,
]
HUGE_INTS = [2**31, 2**63, 2**64, -(2**63) - 1, 10**100, -(10**100)]
FLOATS = [1e308, -1e308, 5e-324, -0.0, 0.0, 1.7976931348623157e308, 123456789.123456789]
WRONG_TYPES = [None, True, False, [], {}, "1", 1, 1.5, [1, "a"], {"a": 1}]
WEIRD_TEXT = [
    "",
    " ",
    "\u0000",
    "\t\n\r",
    "\u202e\u202d",
    "e\u0301\u0301\u0301",
    "😀" * 50,
    "\ufeff",
    "\uffff",
    "𝕏" * 7,
    "\ud800",
    "\udfff\ud800",
    "\\ud800",
    "null",
    "NaN",
    "<script>alert(1)</script>",
    "'; DROP TABLE events; --",
    "%s%s%n",
    "../../etc/passwd",
]
LONG_TEXT = ["x" * 129, "y" * 10_000, "z" * 10_001, "w " * 30_000]
UNKNOWN_LABELS = ["banana", "", "POSITIVE", "positive ", "l" * 129, "négatif", "\u0000"]


def _deep(src: Source) -> Any:
    depth = src.pick([7, 8, 9, 40, 200])
    value: Any = src.pick([1, "x", None])
    for _ in range(depth):
        value = [value] if src.integer(0, 1) else {"a": value}
    return value


def _string(src: Source, unique: str) -> Any:
    """A string that is legal but odd (made unique by ``unique``), too long, or not a string at all."""
    kind = src.integer(0, 3)
    if kind == 0:
        return src.pick(WEIRD_TEXT) + unique
    if kind == 1:
        return src.pick(LONG_TEXT)
    if kind == 2:
        return src.pick(WRONG_TYPES)
    return src.pick(["", " "])


def _number(src: Source) -> Any:
    return src.pick([*HUGE_INTS, *FLOATS, *WRONG_TYPES, -1, 0, 1])


def _time(src: Source) -> Any:
    return src.pick(EXTREME_TIMES) if src.integer(0, 3) else src.pick(VALID_TIMES)


# --- valid records, by topic --------------------------------------------------------------------------------------


def valid_event(src: Source, index: int) -> dict:
    return {
        "schema_version": 1,
        "event_id": f"fuzz-{index:06d}",
        "entity_id": f"fuzz-entity-{src.integer(0, 19):02d}",
        "event_time": src.pick(VALID_TIMES[:3]),
        "text": src.pick(["great fast delivery", "my card was declined again", "late order", "ok"]),
        "attributes": {"amount": float(src.integer(1, 500)), "items": float(src.integer(1, 5))},
    }


def valid_label(src: Source, index: int) -> dict:
    return {
        "event_id": f"fuzz-unknown-{index:06d}",
        "label": src.pick(["positive", "negative", "neutral"]),
        "labelled_at": "2026-11-27T10:05:00Z",
    }


def valid_prediction(src: Source, index: int) -> dict:
    return {
        "event_id": f"fuzz-prediction-{index:06d}",
        "entity_id": "fuzz-entity-00",
        "event_time": "2026-11-27T10:00:00Z",
        "label": "positive",
        "scores": {"negative": 0.1, "neutral": 0.2, "positive": 0.7},
        "model": {"name": OTHER_MODEL, "version": 1},
        "role": "champion",
        "features": {"msg_count_1h": 1.0, "x": None},
        "timings_ms": {"queue": 1.0, "features": 1.0, "inference": 1.0, "end_to_end": 3.0},
        "predicted_at": "2026-11-27T10:00:00.019Z",
        "text_stats": {"length": 10.0, "word_count": 2.0},
    }


def valid_drift(src: Source, index: int) -> dict:
    return {
        "schema_version": 1,
        "id": f"fuzz-drift-{index:06d}",
        "kind": src.pick(["data", "prediction", "performance"]),
        "status": src.pick(["firing", "resolved"]),
        "severity": src.pick(["warning", "critical"]),
        "model": OTHER_MODEL,
        "version": 1,
        "dedup_key": f"driftloop/{OTHER_MODEL}/data",
        "window": {"start": "2026-11-27T10:00:00Z", "end": "2026-11-27T10:05:00Z", "size": 500, "labelled": 80},
        "metrics": {"drift_share": 0.8},
        "drifted_columns": ["amount"],
        "scores": {"amount": {"method": "ks", "score": 0.0, "threshold": 0.05, "drifted": True}},
        "started_at": "2026-11-27T10:05:01Z",
        "detected_at": "2026-11-27T10:05:01Z",
    }


def valid_model_state(src: Source, index: int) -> dict:
    return {
        "model": OTHER_MODEL,
        "champion": src.integer(1, 3),
        "candidate": None,
        "event": src.pick(["published", "promoted", "rolled_back", "rejected"]),
        "at": "2026-11-27T10:00:00Z",
        "reason": "",
    }


VALID: dict[str, Callable[[Source, int], dict]] = {
    "events": valid_event,
    "labels": valid_label,
    "predictions": valid_prediction,
    "drift": valid_drift,
    "models": valid_model_state,
}
#: Fields holding times, per topic (paths into the record).
TIME_FIELDS: dict[str, list[tuple[str, ...]]] = {
    "events": [("event_time",)],
    "labels": [("labelled_at",)],
    "predictions": [("event_time",), ("predicted_at",)],
    "drift": [("started_at",), ("detected_at",), ("window", "start"), ("window", "end")],
    "models": [("at",)],
}
#: Extreme values that only make sense for one field.
SPECIAL: dict[str, dict[str, Callable[[Source], Any]]] = {
    "events": {"schema_version": lambda s: s.pick([0, 2, -1, "1", 1.0, True, None, 10**30])},
    "labels": {"label": lambda s: s.pick(UNKNOWN_LABELS)},
    "predictions": {
        "scores": lambda s: s.pick([{}, {"positive": 1e308}, {"positive": -1.0}, {"a" * 1000: 0.5}, {"positive": "x"}]),
        "role": lambda s: s.pick(["shadow", "candidate", "judge", ""]),
        "model": lambda s: s.pick(
            [
                {"name": OTHER_MODEL, "version": -1},
                {"name": "", "version": 2**63},
                {"name": OTHER_MODEL},
                {"version": 1},
            ]
        ),
        "timings_ms": lambda s: s.pick([{}, {"queue": 1e308, "features": -1, "inference": 0, "end_to_end": 5e-324}]),
    },
    "drift": {
        "kind": lambda s: s.pick(["concept", "", "DATA", None]),
        "status": lambda s: s.pick(["open", "closed", ""]),
        "version": lambda s: s.pick([-1, 2**63, 10**40]),
        "window": lambda s: s.pick(
            [
                {},
                {"start": None, "end": None, "size": -1, "labelled": 0},
                {"start": "0001-01-01T00:00:00+01:00", "end": None, "size": 1, "labelled": 1},
            ]
        ),
        "drifted_columns": lambda s: s.pick([["x"] * 5000, [None], "amount", [[]]]),
        "scores": lambda s: s.pick(
            [{"a": {}}, {"a": {"method": "ks", "score": 1e308, "threshold": -1, "drifted": "yes"}}]
        ),
    },
    "models": {
        "champion": lambda s: s.pick([0, -1, 2**63, 10**40, 1.5, "2", True]),
        "candidate": lambda s: s.pick([0, -5, 2**64]),
        "event": lambda s: s.pick(["deleted", "", "PROMOTED", None]),
        "model": lambda s: s.pick(["", "m" * 129, None, 7]),
    },
}


# --- mutations -----------------------------------------------------------------------------------------------------


def _set_path(record: dict, path: tuple[str, ...], value: Any) -> None:
    target = record
    for part in path[:-1]:
        if not isinstance(target.get(part), dict):
            return
        target = target[part]
    target[path[-1]] = value


def _mutate_field(src: Source, topic: str, record: dict, index: int) -> None:
    fields = list(record)
    times = TIME_FIELDS[topic]
    choice = src.integer(0, 6)
    if choice <= 1 and times:  # times are the main hazard: twice the weight
        _set_path(record, src.pick(times), _time(src))
    elif choice == 2 and SPECIAL.get(topic):
        name = src.pick(list(SPECIAL[topic]))
        record[name] = SPECIAL[topic][name](src)
    elif choice == 3:
        record[src.pick(fields)] = _string(src, f"-{index}")
    elif choice == 4:
        record[src.pick(fields)] = _number(src)
    elif choice == 5:
        record[src.pick(fields)] = _deep(src)
    else:
        record.pop(src.pick(fields), None)


def _mutate_record(src: Source, topic: str, record: dict, index: int) -> None:
    for _ in range(src.integer(1, 3)):
        choice = src.integer(0, 9)
        if choice <= 6:
            _mutate_field(src, topic, record, index)
        elif choice == 7:
            record[src.pick(["extra", "", "__proto__", "label", "schema_version_2", "\u0000"])] = src.pick(WRONG_TYPES)
        elif choice == 8 and topic == "events":
            record["attributes"] = src.pick(
                [
                    {f"k{j}": float(j) for j in range(33)},
                    {"k" * 65: 1.0},
                    {"a": 1e308, "b": -1e308},
                    {"a": 10**30},
                    {"": 0.0},
                    {"a": True},
                ]
            )
        else:
            _mutate_field(src, topic, record, index)


_NUMBER = re.compile(rb"[:\[,] ?(-?[0-9][0-9.eE+-]*)")


def _serialise(src: Source, record: dict) -> bytes:
    """JSON bytes, sometimes with tokens Python's json reads but the contract must refuse, or a duplicate key."""
    body = json.dumps(record, ensure_ascii=src.integer(0, 1) == 0).encode("utf-8", "surrogatepass")
    choice = src.integer(0, 9)
    numbers = [m.span(1) for m in _NUMBER.finditer(body)]
    if choice == 0 and numbers:  # a literal json.dumps cannot write, for one number: NaN, Infinity, huge numbers
        start, end = src.pick(numbers)
        token = src.pick([b"NaN", b"Infinity", b"-Infinity", b"1e400", b"-1e999", b"9" * 5000, b"1" + b"0" * 400])
        return body[:start] + token + body[end:]
    if choice == 1 and body.startswith(b"{") and len(record):  # a duplicate key: the last one wins in json.loads
        first = next(iter(record))
        return b"{" + json.dumps(first).encode() + b": " + json.dumps(_string(src, "")).encode() + b", " + body[1:]
    if choice == 2 and b'\\"' not in body:
        return body.replace(b'"', b'"\\ud800', 1) if src.integer(0, 1) else body.replace(b'"', b'"\\udfff', 2)
    return body


def _wire(src: Source, body: bytes) -> bytes | None:
    """A wire-level mutation of serialised bytes."""
    choice = src.integer(0, 9)
    if choice == 0:
        return body[: src.integer(0, max(0, len(body) - 1))]
    if choice == 1:
        return b"\xef\xbb\xbf" + body
    if choice == 2:
        cut = src.integer(0, len(body))
        return body[:cut] + src.pick([b"\xff", b"\xc0\xaf", b"\xed\xa0\x80", b"\xe2\x82", b"\x00"]) + body[cut:]
    if choice == 3:
        return body.decode("utf-8", "replace").encode("utf-16")
    if choice == 4:
        return src.raw(256)
    if choice == 5:
        return src.pick([b"", b" ", b"null", b"[]", b"42", b'"x"', b"true", b"[" * 5000 + b"]" * 5000, None])
    if choice == 6:
        return b"[" + body + b"]"
    return body + src.pick([b"}", b" garbage", b"\n{}"])


def near_valid_value(src: Source, topic: str, index: int) -> bytes | None:
    """One value for ``topic``: a valid record of the topic mutated as the module docstring says."""
    record = VALID[topic](src, index)
    if src.integer(0, 9):  # one in ten stays valid before the wire: the parser must accept it
        _mutate_record(src, topic, record, index)
    body = _serialise(src, record)
    return _wire(src, body) if src.integer(0, 4) == 0 else body


def near_valid(topic: str):
    """A hypothesis strategy of values for ``topic`` (shrinkable through its draws)."""
    from hypothesis import strategies as st

    @st.composite
    def values(draw) -> bytes | None:
        return near_valid_value(DrawSource(draw), topic, draw(st.integers(0, 999_999)))

    return values()


# --- the live scenario's records -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Hostile:
    """One record to produce onto ``topic`` (a key of :data:`TOPICS`). The models topic is compacted: the broker
    refuses a record without a key there, so its keys are never ``None`` (an empty key is taken)."""

    topic: str
    key: bytes | None
    value: bytes | None
    why: str


def _key_for(src: Source, topic: str, value: bytes | None, model: str) -> bytes | None:
    """A plausible key (the one the contract names, when the value has it), sometimes none or a wrong one."""
    choice = src.integer(0, 9)
    if choice == 0:
        return None if topic != "models" else b""  # a compacted topic refuses a record without a key
    if choice == 1:
        return src.pick([b"", b"\x00\xff", b"k" * 1000, model.encode()])
    try:
        data = json.loads(value or b"")
    except (ValueError, RecursionError):
        data = None
    field = {
        "events": "entity_id",
        "labels": "event_id",
        "predictions": "entity_id",
        "drift": "model",
        "models": "model",
    }[topic]
    if isinstance(data, dict) and isinstance(data.get(field), str):
        return data[field].encode("utf-8", "surrogatepass")
    return OTHER_MODEL.encode() if topic in ("drift", "models") else b"fuzz-entity-00"


def generated(topic: str, count: int, seed: int, model: str, first_index: int = 0) -> list[Hostile]:
    """``count`` generated records for ``topic``, deterministic in ``seed``. Valid-shaped drift events and model states
    name :data:`OTHER_MODEL`; ``model`` (the model under test) appears only as a key of invalid values."""
    src = RandomSource(random.Random(f"{seed}-{topic}"))
    records = []
    for i in range(first_index, first_index + count):
        value = near_valid_value(src, topic, i)
        records.append(Hostile(topic, _key_for(src, topic, value, model), value, "generated"))
    return records


def fixed(model: str, known_event_ids: Sequence[str] = ()) -> list[Hostile]:
    """The fixed list: the cases the issue names, on every topic. ``known_event_ids`` are events that exist (their
    labels here are unknown labels, never a usable one)."""
    event = {"schema_version": 1, "entity_id": "fuzz-entity-fixed", "text": "my card was declined again"}
    out: list[Hostile] = []

    def ev(i: int, why: str, **fields: Any) -> None:
        record = {**event, "event_id": f"fuzz-fixed-{i:04d}", "event_time": "2026-11-27T10:00:00Z", **fields}
        out.append(Hostile("events", b"fuzz-entity-fixed", json.dumps(record).encode(), why))

    for i, when in enumerate(EXTREME_TIMES):
        ev(i, f"event_time {when!r}", event_time=when)
    ev(100, "the issue's record: year 1 at +01:00", event_time="0001-01-01T00:00:00+01:00")
    ev(101, "empty text", text="")
    ev(102, "a text of 10,000 characters (the limit)", text="x" * 10_000)
    ev(103, "a text of 10,001 characters", text="x" * 10_001)
    ev(104, "huge attributes", attributes={"a": 1e308, "b": -1e308, "c": 5e-324})
    ev(105, "an integer attribute of 400 digits", attributes={"a": 10**400})
    ev(106, "1900-01-01T00:00:00Z, the first time the contract takes", event_time="1900-01-01T00:00:00Z")
    ev(107, "2199-12-31T23:59:59.999999Z, the last", event_time="2199-12-31T23:59:59.999999Z")
    out.append(Hostile("events", b"fuzz-entity-fixed", None, "a tombstone"))
    out.append(Hostile("events", b"fuzz-entity-fixed", b"", "an empty value"))

    def label(why: str, **fields: Any) -> None:
        record = {
            "event_id": "fuzz-no-such-event",
            "label": "positive",
            "labelled_at": "2026-11-27T10:05:00Z",
            **fields,
        }
        out.append(Hostile("labels", str(record.get("event_id"))[:200].encode(), json.dumps(record).encode(), why))

    for when in EXTREME_TIMES:
        label(f"labelled_at {when!r}", labelled_at=when)
    for name in UNKNOWN_LABELS:
        label(f"unknown label {name!r}", label=name)
    for i, event_id in enumerate(known_event_ids):
        label(f"unknown label for a known event {event_id}", event_id=event_id, label=UNKNOWN_LABELS[i % 3])
    label("a label for an unknown event")
    label("a label with an empty event_id", event_id="")
    out.append(Hostile("labels", b"x", b"\xff\xfe garbage", "garbage"))
    out.append(Hostile("labels", b"x", None, "a tombstone"))

    for topic in ("predictions", "drift", "models"):
        for key in (model.encode(), OTHER_MODEL.encode(), None if topic != "models" else b""):
            for value, why in [
                (b"\x00\x01\x02garbage", "binary garbage"),
                (b"{", "truncated JSON"),
                (b"[]", "array"),
                (b"{}", "an empty object"),
                (b"null", "null"),
                (b"", "an empty value"),
                (b"[" * 10_000 + b"]" * 10_000, "an array 10,000 deep"),
                (b'{"model": "\\ud800"}', "a lone surrogate"),
                (b'{"model": "' + model.encode() + b'", "champion": 1e400}', "champion = inf"),
                (b'{"model": "' + model.encode() + b'", "champion": ' + b"9" * 5000 + b"}", "huge int"),
                (b'{"model": "' + model.encode() + b'", "at": "0001-01-01T00:00:00+01:00"}', "year 1"),
            ]:
                out.append(Hostile(topic, key, value, why))
    out.append(Hostile("models", OTHER_MODEL.encode(), None, "a tombstone of another model"))
    # Key and value disagree: keyed by the model under test, a valid state of another model (a reader must go by
    # neither alone: the inference worker's follower skips it).
    mismatched = {"model": OTHER_MODEL, "champion": 3, "event": "promoted", "at": "2026-11-27T10:00:00Z"}
    out.append(Hostile("models", model.encode(), json.dumps(mismatched).encode(), "keyed by the model, not its"))
    mismatched_drift = {**valid_drift(RandomSource(random.Random(1)), 1), "status": "firing"}
    out.append(Hostile("drift", model.encode(), json.dumps(mismatched_drift).encode(), "keyed by the model, not its"))
    out.append(Hostile("drift", OTHER_MODEL.encode(), None, "a tombstone"))
    for when in REFUSED_TIMES[:12]:
        bad_state = {"model": model, "champion": 1, "event": "promoted", "at": when}
        out.append(Hostile("models", model.encode(), json.dumps(bad_state).encode(), f"a model state at {when!r}"))
        bad_drift = {
            **valid_drift(RandomSource(random.Random(0)), 0),
            "model": model,
            "detected_at": when,
            "started_at": when,
        }
        out.append(Hostile("drift", model.encode(), json.dumps(bad_drift).encode(), f"a drift event at {when!r}"))
    return out
