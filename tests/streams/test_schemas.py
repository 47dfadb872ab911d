"""The event contract: valid events round-trip, every kind of bad input gets a clear reason."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest

from streams.schemas import MAX_EVENT_BYTES, DeadLetter, InvalidEvent, Source, check_record_of, parse_event
from streams.synthetic import SyntheticStream

pytestmark = pytest.mark.unit


def _event(**changes) -> dict:
    data = {
        "schema_version": 1,
        "event_id": "e-1",
        "entity_id": "entity-1",
        "event_time": "2026-11-27T10:00:00Z",
        "text": "great fast delivery",
        "attributes": {"amount": 12.5},
    }
    data.update(changes)
    return data


def test_valid_event_round_trips():
    event = parse_event(json.dumps(_event()).encode())
    assert event.event_time == datetime(2026, 11, 27, 10, tzinfo=UTC)
    assert parse_event(event.to_bytes()) == event


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (None, "tombstone"),
        (b"\xff\xfe", "not UTF-8"),
        (b"{oops", "not JSON"),
        (b"[1, 2]", "JSON object"),
        (b"[" * 100_000 + b"]" * 100_000, "bytes; the limit"),
        (json.dumps(_event(text={"a": {"b": {"c": {"d": {"e": {"f": {"g": {"h": 1}}}}}}}})).encode(), "nested deeper"),
        (json.dumps(_event(schema_version=2)).encode(), "unknown schema_version 2"),
        (json.dumps({k: v for k, v in _event().items() if k != "event_id"}).encode(), "event_id: Field required"),
        (json.dumps(_event(event_time="2026-11-27T10:00:00")).encode(), "needs a time zone"),
        (json.dumps(_event(attributes={"amount": "lots"})).encode(), "attributes.amount"),
        (json.dumps(_event(entity_id="")).encode(), "entity_id"),
        (json.dumps(_event(text="x" * 10_001)).encode(), "text"),
        (json.dumps(_event(extra_field=1)).encode(), "extra_field"),
        (b'{"schema_version": 1, "attributes": {"a": NaN}}', "event_id"),
    ],
)
def test_bad_events_get_a_reason(raw, reason):
    with pytest.raises(InvalidEvent, match=reason):
        parse_event(raw)


def test_nan_attribute_is_rejected():
    raw = json.dumps(_event(attributes={"amount": float("nan")})).encode()
    with pytest.raises(InvalidEvent, match="finite"):
        parse_event(raw)


def test_size_limit_is_checked_before_decoding():
    with pytest.raises(InvalidEvent, match=str(MAX_EVENT_BYTES)):
        parse_event(b"x" * (MAX_EVENT_BYTES + 1))


def test_dead_letter_keeps_the_original_bytes():
    original = b"\xff\x00 anything"
    letter = DeadLetter.of("validate", "not UTF-8", Source(topic="t", partition=2, offset=7), b"k", original)
    again = DeadLetter.model_validate_json(letter.to_bytes())
    assert again.original() == original and again.source.offset == 7


def test_synthetic_stream_is_seeded_and_valid():
    a = [le.event for le in SyntheticStream(seed=3).stream(20, start=datetime(2026, 1, 1, tzinfo=UTC))]
    b = [le.event for le in SyntheticStream(seed=3).stream(20, start=datetime(2026, 1, 1, tzinfo=UTC))]
    assert a == b
    assert all(parse_event(e.to_bytes()) == e for e in a)


def test_synthetic_id_seed_gives_the_same_traffic_under_fresh_event_ids():
    start = datetime(2026, 1, 1, tzinfo=UTC)
    first, second = (list(SyntheticStream(seed=3, id_seed=n).stream(50, start=start)) for n in (1, 2))
    assert [(le.event.text, le.event.entity_id, le.label) for le in first] == [
        (le.event.text, le.event.entity_id, le.label) for le in second
    ]
    assert not {le.event.event_id for le in first} & {le.event.event_id for le in second}
    again = list(SyntheticStream(seed=3, id_seed=1).stream(50, start=start))
    assert [le.event for le in again] == [le.event for le in first]


def test_synthetic_malformed_values_are_all_rejected():
    stream = SyntheticStream(seed=5)
    for _ in range(50):
        raw, _why = stream.malformed()
        with pytest.raises(InvalidEvent):
            parse_event(raw)


def test_synthetic_drift_changes_vocabulary_and_mapping():
    stream = SyntheticStream(seed=1)
    before = list(stream.stream(300))
    after = list(stream.stream(300, drift_at=0))
    words_before = {w for le in before for w in le.event.text.split()}
    words_after = {w for le in after for w in le.event.text.split()}
    assert words_after - words_before  # new vocabulary
    great = [le.label for le in before if "great" in le.event.text.split()]
    assert great and set(great) == {"positive"}
    stellar = [le.label for le in after if "stellar" in le.event.text.split()]
    assert stellar and set(stellar) == {"negative"}


def _dated(event_time: str):
    return parse_event(json.dumps(_event(event_time=event_time)).encode())


def test_a_record_dated_far_ahead_of_its_timestamp_is_refused_by_the_record_rules():
    written = datetime(2026, 11, 27, 10, tzinfo=UTC).timestamp()
    now = written + 7 * 86_400  # read a week later: judged by the record's timestamp all the same
    check_record_of(_dated("2026-11-27T10:59:00Z"), b"entity-1", written, 3600, now=now)
    check_record_of(_dated("2020-01-01T00:00:00Z"), b"entity-1", written, 3600, now=now)  # the past is fine
    with pytest.raises(InvalidEvent, match=r"dated too far ahead: event_time 2026-11-27T11:01:00\+00:00 is 3,660 s"):
        check_record_of(_dated("2026-11-27T11:01:00Z"), b"entity-1", written, 3600, now=now)
    check_record_of(_dated("2199-12-31T23:59:59Z"), b"entity-1", written, None, now=now)  # no bound


def test_a_record_timestamp_from_the_future_or_none_is_bounded_by_the_clock():
    now = datetime(2026, 11, 27, 10, tzinfo=UTC).timestamp()
    for written in (None, 0, -0.001, datetime(2150, 1, 1, tzinfo=UTC).timestamp()):  # -0.001: aiokafka's -1 ms
        check_record_of(_dated("2026-11-27T10:30:00Z"), b"entity-1", written, 3600, now=now)
        with pytest.raises(InvalidEvent, match="dated too far ahead"):
            check_record_of(_dated("2149-12-31T00:00:00Z"), b"entity-1", written, 3600, now=now)
