"""The contracts' fast paths agree with the slow ones they replace on the hot path: orjson's reading with the json
module's, ``encode_prediction`` with the ``Prediction`` model's bytes, the nesting check with its plain definition."""

from __future__ import annotations

import json
import math
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from streams.schemas import (
    MAX_JSON_DEPTH,
    MAX_TIME,
    MIN_TIME,
    InvalidRecord,
    Prediction,
    _depth,
    _loads,
    encode_prediction,
    parse_model_state,
)

pytestmark = pytest.mark.unit

JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=30,
)


def _as_read(value):
    """``value`` as orjson reads it: an int past 64 bits becomes its nearest float (see ``schemas._loads``); a text
    orjson refuses is read by the json module, so ``_loads`` gives this or the json module's value."""
    if isinstance(value, bool) or value is None or isinstance(value, str | float):
        return value
    if isinstance(value, int):
        return value if -(2**63) <= value < 2**64 else float(value)
    if isinstance(value, list):
        return [_as_read(v) for v in value]
    return {k: _as_read(v) for k, v in value.items()}


def _same(a, b) -> bool:
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a):
        return math.isnan(b)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict) and isinstance(b, dict):
        return list(a) == list(b) and all(_same(a[k], b[k]) for k in a)
    return type(a) is type(b) and a == b


@settings(max_examples=400)
@given(JSON_VALUES)
@example(float("nan"))
@example(10**30)
@example("\ud800")
@example({"a": 1, "b": [float("inf"), -(10**40)]})
def test_loads_reads_what_the_json_module_reads(value) -> None:
    text = json.dumps(value)
    expected = json.loads(text)
    assert _same(_loads(text), _as_read(expected)) or _same(_loads(text), expected)


@settings(max_examples=400)
@given(st.text(max_size=40))
@example('{"a": 1, "a": 2}')
@example("\ufeff{}")
@example('"\x01"')
@example("9" * 5000)
@example("[" * 2000 + "]" * 2000)
def test_loads_refuses_what_the_json_module_refuses(text: str) -> None:
    try:
        expected = json.loads(text)
    except (ValueError, RecursionError):
        with pytest.raises((ValueError, RecursionError)):
            _loads(text)
    else:
        assert _same(_loads(text), _as_read(expected)) or _same(_loads(text), expected)


@pytest.mark.parametrize("version", [10**30, 2**64 + 5, -(2**63) - 1])
def test_an_int_field_past_64_bits_is_refused_with_a_reason(version: int) -> None:
    """orjson reads such a number as a float, which an int field refuses (the json module's int was taken)."""
    raw = json.dumps({"model": "classifier", "champion": version, "event": "published", "at": "2026-12-01T00:00:00Z"})
    with pytest.raises(InvalidRecord, match="champion: .*exceeded maximum size"):
        parse_model_state(raw.encode())


def test_an_int_field_within_64_bits_is_read_exactly() -> None:
    raw = json.dumps({"model": "classifier", "champion": 2**64 - 1, "event": "published", "at": "2026-12-01T00:00:00Z"})
    assert parse_model_state(raw.encode()).champion == 2**64 - 1


def _plain_depth(value, level: int = 1) -> int:
    """The nesting check's definition, walked whole."""
    if level > MAX_JSON_DEPTH:
        return level
    if isinstance(value, dict):
        return max((_plain_depth(v, level + 1) for v in value.values()), default=level)
    if isinstance(value, list):
        return max((_plain_depth(v, level + 1) for v in value), default=level)
    return level


@settings(max_examples=400)
@given(
    st.recursive(st.integers(), lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=2), c, max_size=3))
)
def test_depth_counts_as_its_definition(value) -> None:
    assert min(_depth(value), MAX_JSON_DEPTH + 1) == min(_plain_depth(value), MAX_JSON_DEPTH + 1)


FINITE = st.floats(allow_nan=False, allow_infinity=False)
IDS = st.text(min_size=1, max_size=20)
TIMES = st.datetimes(
    min_value=MIN_TIME.replace(tzinfo=None), max_value=(MAX_TIME - timedelta(days=1)).replace(tzinfo=None)
).map(lambda t: t.replace(tzinfo=UTC))


@st.composite
def prediction_fields(draw) -> dict:
    labels = draw(st.lists(IDS, min_size=1, max_size=4, unique=True))
    fields = {
        "event_id": draw(IDS),
        "entity_id": draw(IDS),
        "event_time": draw(TIMES),
        "label": draw(st.sampled_from(labels)),
        "scores": {label: round(draw(FINITE), 6) for label in labels},
        "model": {"name": draw(IDS), "version": draw(st.integers(0, 10**6))},
        "features": draw(st.dictionaries(IDS, st.none() | FINITE, max_size=5)),
        "timings_ms": {name: draw(FINITE) for name in ("queue", "features", "inference", "end_to_end")},
        "predicted_at": draw(TIMES),
    }
    if draw(st.booleans()):
        fields["role"] = draw(st.sampled_from(["champion", "candidate", "shadow"]))
    fields["trace_id"] = draw(st.none() | st.text(max_size=128))
    fields["text_stats"] = draw(st.none() | st.dictionaries(IDS, FINITE, max_size=3))
    return fields


@settings(max_examples=300)
@given(prediction_fields())
@example(
    {
        "event_id": "é ✓",
        "entity_id": "u",
        "event_time": datetime(2026, 12, 1, 12, tzinfo=UTC),
        "label": "a",
        "scores": {"a": 1e-07, "b": 1e16, "c": 5e-324, "d": 1.7976931348623157e308},
        "model": {"name": "m", "version": 1},
        "features": {"x": None, "y": -0.0},
        "timings_ms": {"queue": 0.0, "features": 1.5, "inference": 2.0, "end_to_end": 3.0},
        "predicted_at": datetime(2026, 12, 1, 12, 0, 0, 1, tzinfo=UTC),
    }
)
def test_encode_prediction_writes_what_the_model_writes(fields: dict) -> None:
    assert encode_prediction(fields) == Prediction(**fields).to_bytes()


@pytest.mark.parametrize(
    ("field", "value"),
    [("scores", {"a": float("nan")}), ("features", {"x": float("inf")}), ("text_stats", {"length": float("-inf")})],
)
def test_encode_prediction_refuses_numbers_that_are_not_finite(field: str, value: dict) -> None:
    base = {
        "event_id": "e",
        "entity_id": "u",
        "event_time": datetime(2026, 12, 1, tzinfo=UTC),
        "label": "a",
        "scores": {"a": 1.0},
        "model": {"name": "m", "version": 1},
        "features": {},
        "timings_ms": {"queue": 0.0, "features": 0.0, "inference": 0.0, "end_to_end": 0.0},
        "predicted_at": datetime(2026, 12, 1, tzinfo=UTC),
    }
    with pytest.raises(ValueError, match=f"{field}: numbers must be finite"):
        encode_prediction({**base, field: value})


def test_encode_prediction_refuses_unknown_and_missing_fields() -> None:
    with pytest.raises(ValueError, match=r"unknown \['colour'\], missing \[.*'event_id'"):
        encode_prediction({"colour": "blue"})
