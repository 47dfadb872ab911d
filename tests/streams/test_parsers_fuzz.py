"""Property-based tests of every topic parser: whatever the bytes, a valid object or the contract's own error.

Two kinds of input per parser: any bytes (and ``None``, a tombstone), and near-valid JSON built from the shapes in
tests/chaos/fuzz_corpus.py (a valid record of the topic with extreme values: times out of range, naive, year 1 with
an offset, beyond pandas' nanosecond range, leap seconds, huge offsets; huge ints and floats, NaN/Infinity literals,
empty, huge and surrogate strings, deep nesting, wrong types, extra and duplicate fields, unknown labels; and
wire-level damage). An accepted object must hold only UTC times inside the contract's bounds, and its ``to_bytes()``
must parse back to an equal object.
"""

from __future__ import annotations

import json
import random
from datetime import datetime

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from pydantic import BaseModel

from streams.schemas import (
    MAX_TIME,
    MIN_TIME,
    InvalidEvent,
    InvalidRecord,
    parse_drift_event,
    parse_event,
    parse_label,
    parse_model_state,
    parse_prediction,
)
from tests.chaos import fuzz_corpus
from tests.chaos.fuzz_corpus import REFUSED_TIMES, near_valid

pytestmark = pytest.mark.unit

PARSERS = {
    "events": (parse_event, InvalidEvent),
    "labels": (parse_label, InvalidRecord),
    "predictions": (parse_prediction, InvalidRecord),
    "drift": (parse_drift_event, InvalidRecord),
    "models": (parse_model_state, InvalidRecord),
}
# No example database: the working tree is shared, and a failure prints its input anyway.
FUZZ = settings(
    max_examples=150,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
ISSUE_RECORD = (
    b'{"schema_version": 1, "event_id": "p-1", "entity_id": "cust-7", '
    b'"event_time": "0001-01-01T00:00:00+01:00", "text": "my card was declined again"}'
)


def _times(value: object, where: str = "") -> list[tuple[str, datetime]]:
    """Every datetime held by a parsed object, with its path."""
    if isinstance(value, datetime):
        return [(where, value)]
    if isinstance(value, BaseModel):
        return [t for name in type(value).model_fields for t in _times(getattr(value, name), f"{where}.{name}")]
    if isinstance(value, dict):
        return [t for k, v in value.items() for t in _times(v, f"{where}[{k!r}]")]
    if isinstance(value, list | tuple):
        return [t for i, v in enumerate(value) for t in _times(v, f"{where}[{i}]")]
    return []


def check(topic: str, raw: bytes | None) -> object | None:
    """Parse ``raw`` as a record of ``topic``: the contract's error is fine (returns None), anything else fails the
    test; an accepted object is checked (UTC times within bounds, ``to_bytes()`` round-trips) and returned."""
    parse, error = PARSERS[topic]
    try:
        parsed = parse(raw)
    except error:
        return None
    except Exception as exc:  # noqa: BLE001 - the property under test
        pytest.fail(
            f"parse of a {topic} record raised {type(exc).__name__}, not {error.__name__}: {exc!r}; input {raw[:300]!r}"
        )
    for where, when in _times(parsed):
        assert when.utcoffset() is not None and when.utcoffset().total_seconds() == 0, (where, when, raw[:300])
        assert MIN_TIME <= when < MAX_TIME, (where, when, raw[:300])
    try:
        again = parse(parsed.to_bytes())
    except Exception as exc:  # noqa: BLE001 - the property under test
        pytest.fail(f"an accepted {topic} record does not round-trip: {type(exc).__name__}: {exc}; input {raw[:300]!r}")
    assert again == parsed, (parsed, again, raw[:300])
    return parsed


def _any_bytes():
    return st.one_of(st.none(), st.binary(max_size=512), st.text(max_size=200).map(lambda s: s.encode("utf-8")))


@pytest.mark.parametrize("topic", list(PARSERS))
@FUZZ
@given(raw=_any_bytes())
def test_any_bytes_parse_or_raise_the_contract_error(topic, raw):
    check(topic, raw)


@pytest.mark.parametrize("topic", list(PARSERS))
@FUZZ
@given(data=st.data())
def test_near_valid_json_parses_or_raises_the_contract_error(topic, data):
    check(topic, data.draw(near_valid(topic), label=f"{topic} value"))


@FUZZ
@given(raw=near_valid("events"))
@example(raw=ISSUE_RECORD)
@example(raw=ISSUE_RECORD.replace(b"0001-01-01T00:00:00+01:00", b"2262-04-12T00:00:00Z"))
@example(raw=ISSUE_RECORD.replace(b"0001-01-01T00:00:00+01:00", b"2026-11-27T10:00:00"))
def test_events_are_refused_as_invalid_events(raw):
    """Only InvalidEvent (a subclass of InvalidRecord) comes out of parse_event: the worker dead-letters exactly it."""
    check("events", raw)


@pytest.mark.parametrize("token", [b"NaN", b"Infinity", b"-Infinity", b"1e400", b"-1e999", b"9" * 5000])
@pytest.mark.parametrize("topic", list(PARSERS))
def test_non_finite_and_huge_numbers_in_every_numeric_field(topic, token):
    """Each number of a valid record replaced, one at a time, by a literal Python's json reads (NaN, infinities, a
    float that overflows, an integer too long to convert): refused, or accepted and round-tripping."""
    record = json.dumps(fuzz_corpus.VALID[topic](fuzz_corpus.RandomSource(random.Random(0)), 0)).encode()
    spans = [m.span(1) for m in fuzz_corpus._NUMBER.finditer(record)]
    assert spans
    for start, end in spans:
        check(topic, record[:start] + token + record[end:])


@pytest.mark.parametrize("when", REFUSED_TIMES)
@pytest.mark.parametrize("topic", list(PARSERS))
def test_refused_times_are_refused_in_every_time_field(topic, when):
    """The times the live scenario relies on being refused (it puts them on the drift and models topics under the
    model's own name), in every time field of every contract."""
    src = fuzz_corpus.RandomSource(random.Random(0))
    for path in fuzz_corpus.TIME_FIELDS[topic]:
        record = fuzz_corpus.VALID[topic](src, 0)
        assert check(topic, json.dumps(record).encode()) is not None, "the valid record is refused"
        fuzz_corpus._set_path(record, path, when)
        assert check(topic, json.dumps(record).encode()) is None, (path, when)


def test_the_fixed_list_never_commands_the_model_under_test():
    """No fixed or generated record is a valid drift event or model state of the model under test: those would be
    real commands (a drift to retrain on, a champion to serve), not garbage."""
    model = "classifier"
    generated = [r for topic in ("drift", "models") for r in fuzz_corpus.generated(topic, 300, 5, model)]
    records = fuzz_corpus.fixed(model) + generated
    for record in records:
        if record.topic in ("drift", "models"):
            parsed = check(record.topic, record.value)
            assert parsed is None or parsed.model != model, record
        assert record.topic != "models" or record.key is not None, record  # the broker refuses it (compacted)


def test_generation_is_deterministic_and_broad():
    first = fuzz_corpus.generated("events", 400, seed=3, model="m")
    assert first == fuzz_corpus.generated("events", 400, seed=3, model="m")
    assert first != fuzz_corpus.generated("events", 400, seed=4, model="m")
    accepted = sum(check("events", r.value) is not None for r in first)
    assert 10 <= accepted <= 200, accepted  # mostly hostile, some still valid
    assert len({r.value for r in first}) > 350
