"""A seeded corpus of hostile records for the events topic: every one breaks the event contract in its own way.

Each record must end up in the dead-letter topic with a reason, and none may crash a worker. The kinds cover the
wire (invalid or overlong UTF-8, a byte-order mark, lone surrogates, binary garbage, UTF-16), the JSON (truncated,
10,000 levels deep, NaN/Infinity, numbers too large for a float or for Python's int conversion, arrays and scalars
instead of an object, an empty object), the schema (a wrong type for every field, each required field missing,
extra fields, unknown schema versions, ids too long or empty, too many attributes) and the record (null key, a key
that is not the entity_id, a 600 KB key, a tombstone, an empty value, values up to the sizes the broker takes:
1 MB of text, 1 MB of random bytes, 3 MB that compress to a few KB).

Size limits measured on the local broker (Kafka 4.1, defaults):

- the producer (librdkafka ``message.max.bytes`` = 1,000,000) refuses a record above about 999,900 bytes of key +
  value at ``produce()`` time ("Broker: Message size too large", before anything is sent);
- the broker (``message.max.bytes`` = 1,048,588, per record batch after compression) refuses an uncompressed value
  of 1,048,577 bytes, but takes a 3 MB value that compresses well (lz4) from a producer whose own limit is raised:
  a record on the events topic can be larger than 1 MB.

``MAX_PLAIN_VALUE`` is the largest value a default producer sends (``huge_value``); ``huge_random`` and
``oversize_compressed`` need a producer with its limit raised (``PRODUCER_OVERRIDES``), as any client may. A dead
letter carries the original bytes base64-encoded (4/3 of their size), so it can outgrow what the broker takes for
the record it stands for.

Deterministic: the same ``seed`` and ``count`` give the same records, in the same order.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

MAX_PLAIN_VALUE = 999_000  # bytes: what a producer with librdkafka's default message.max.bytes still sends
RANDOM_VALUE = 1_000_000  # bytes of noise: lz4 cannot shrink them, the broker still takes them
COMPRESSED_VALUE = 3_000_000  # bytes: over 1 MB, taken by the broker because it compresses to a few KB
HUGE_KEY = 600_000  # bytes: a key that the dead letter carries twice (as its key and in key_b64)
#: A producer that can send every kind (the default limit refuses huge_random and oversize_compressed).
PRODUCER_OVERRIDES = {"message.max.bytes": 10_000_000}

_FIELDS = ("schema_version", "event_id", "entity_id", "event_time", "text", "attributes")
_REQUIRED = ("event_id", "entity_id", "event_time", "text")
# Per field, JSON values of the wrong type (none of them coerced into a valid event by the schema).
_WRONG_TYPES: dict[str, list] = {
    "schema_version": ["1", [1], {"v": 1}, None, 2, 0, -1, 99, "v1", 1.5],
    "event_id": [123, 1.5, True, None, [], {}, ["e"], {"id": "x"}],
    "entity_id": [7, False, None, [], {"id": 1}, 3.25],
    "event_time": [True, None, [], {}, "yesterday", "2026-13-45T99:00:00Z", "2026-11-27T10:00:00", ""],
    "text": [5, 2.5, True, None, [], ["a", "b"], {"t": "x"}],
    "attributes": [[], "x", 5, True, [1.0, 2.0], {"a": "lots"}, {"a": [1]}, {"a": None}, {"a": {"b": 1}}],
}


@dataclass(frozen=True)
class HostileRecord:
    """One record to produce: ``kind`` names the breakage, ``why`` says what is wrong with this one."""

    kind: str
    key: bytes | None
    value: bytes | None
    why: str


Builder = Callable[[random.Random, dict, int], tuple[bytes | None, bytes | None, str]]


def _valid(rng: random.Random, index: int) -> dict:
    """A valid event as a JSON-ready dict (each hostile record starts from one and breaks it)."""
    start = datetime(2026, 11, 27, 10, tzinfo=UTC)
    return {
        "schema_version": 1,
        "event_id": f"hostile-{index:06d}",
        "entity_id": f"entity-{rng.randrange(50):04d}",
        "event_time": (start + timedelta(seconds=index)).isoformat().replace("+00:00", "Z"),
        "text": " ".join(rng.choices("great broken order late thanks refund the my a".split(), k=rng.randint(2, 8))),
        "attributes": {"amount": round(rng.uniform(1, 500), 2), "items": float(rng.randint(1, 5))},
    }


def _dumps(event: dict | list | object) -> bytes:
    return json.dumps(event).encode()


def _key(event: dict) -> bytes:
    return event["entity_id"].encode()


def _null_key(rng, event, i):
    return None, _dumps(event), "a valid body without a key"


def _key_mismatch(rng, event, i):
    other = "entity-9999" if rng.random() < 0.5 else event["entity_id"].upper()
    return other.encode(), _dumps(event), f"keyed {other!r}, not by its entity_id"


def _huge_value(rng, event, i):
    event["text"] = "x" * (MAX_PLAIN_VALUE - len(_dumps(event)) - 64)
    value = _dumps(event)
    return _key(event), value + b" " * (MAX_PLAIN_VALUE - len(value) - 16), f"a {MAX_PLAIN_VALUE:,}-byte value"


def _huge_text(rng, event, i):
    event["text"] = rng.choice("ab ") * rng.randint(10_001, 60_000)
    return _key(event), _dumps(event), f"a text of {len(event['text']):,} characters"


def _deep_json(rng, event, i):
    depth = 10_000
    if rng.random() < 0.5:
        return _key(event), b"[" * depth + b"]" * depth, f"an array nested {depth:,} deep"
    event["attributes"] = 1
    nested = b'{"a":' * depth + b"1" + b"}" * depth
    body = _dumps(event).replace(b'"attributes": 1', b'"attributes": ' + nested)
    return _key(event), body, f"an attribute object nested {depth:,} deep"


def _non_finite(rng, event, i):
    token = rng.choice([b"NaN", b"Infinity", b"-Infinity"])
    field = rng.choice(["amount", "text", "event_time"])
    body = _dumps(event)
    if field == "amount":
        body = body.replace(b'"amount": ' + json.dumps(event["attributes"]["amount"]).encode(), b'"amount": ' + token)
    else:
        body = body.replace(json.dumps(event[field]).encode(), token, 1)
    return _key(event), body, f"{token.decode()} as {field}"


def _huge_number(rng, event, i):
    choice = rng.randrange(3)
    body = _dumps(event)
    old = b'"amount": ' + json.dumps(event["attributes"]["amount"]).encode()
    if choice == 0:
        return _key(event), body.replace(old, b'"amount": 1e400'), "a float that overflows to infinity"
    if choice == 1:
        return _key(event), body.replace(old, b'"amount": -1e309'), "a float that overflows to -infinity"
    digits = rng.randint(4_301, 20_000)  # Python refuses to convert integers of more than 4,300 digits
    return _key(event), body.replace(old, b'"amount": ' + b"9" * digits), f"an integer of {digits:,} digits"


def _wrong_type(rng, event, i):
    field = _FIELDS[i % len(_FIELDS)]
    bad = rng.choice(_WRONG_TYPES[field])
    event[field] = bad
    return _key(event) if field != "entity_id" else b"entity-0000", _dumps(event), f"{field} = {bad!r}"


def _missing_field(rng, event, i):
    field = _REQUIRED[i % len(_REQUIRED)]
    del event[field]
    return (_key(event) if "entity_id" in event else None), _dumps(event), f"no {field}"


def _extra_fields(rng, event, i):
    extra = rng.choice([{"extra": 1}, {"__proto__": {"admin": True}}, {"label": "positive"}, {"": None}])
    event.update(extra)
    return _key(event), _dumps(event), f"extra field(s) {sorted(extra)}"


def _empty_object(rng, event, i):
    return _key(event), rng.choice([b"{}", b"{ }", b"\n{}\n"]), "an empty object"


def _json_array(rng, event, i):
    return _key(event), rng.choice([b"[]", b"[1, 2, 3]", _dumps([event]), _dumps([event, event])]), "a JSON array"


def _scalar(rng, event, i):
    value = rng.choice([b"42", b"-1.5", b'"an event"', b"true", b"false", b"null", b"1e5"])
    return _key(event), value, f"the JSON scalar {value.decode()}"


def _bom(rng, event, i):
    return _key(event), b"\xef\xbb\xbf" + _dumps(event), "a UTF-8 byte-order mark before the object"


def _overlong_utf8(rng, event, i):
    seq = rng.choice([b"\xc0\xaf", b"\xe0\x80\xaf", b"\xf0\x80\x80\xaf", b"\xc0\x80"])
    return _key(event), _dumps(event).replace(b'"text": "', b'"text": "' + seq, 1), f"overlong UTF-8 {seq.hex()}"


def _invalid_utf8(rng, event, i):
    choice = rng.randrange(4)
    body = _dumps(event)
    if choice == 0:
        return _key(event), b"\xff\xfe" + body, "bytes that are not UTF-8"
    if choice == 1:
        return _key(event), body.replace(b'"text": "', b'"text": "\xe2\x82', 1), "a truncated multi-byte sequence"
    if choice == 2:
        return _key(event), json.dumps(event).encode("utf-16"), "the event in UTF-16"
    return _key(event), body.replace(b'"text": "', b'"text": "\xed\xa0\x80', 1), "a surrogate encoded in UTF-8"


def _lone_surrogate(rng, event, i):
    field = rng.choice(["text", "event_id", "entity_id"])
    escape = rng.choice([b"\\ud800", b"\\udfff", b"\\udbff"])
    body = _dumps(event).replace(b'"' + field.encode() + b'": "', b'"' + field.encode() + b'": "' + escape, 1)
    return _key(event), body, f"a lone surrogate {escape.decode()} escaped in {field}"


def _truncated(rng, event, i):
    body = _dumps(event)
    return _key(event), body[: rng.randrange(1, len(body) - 1)], "truncated JSON"


def _garbage(rng, event, i):
    return _key(event), bytes(rng.getrandbits(8) for _ in range(rng.randint(1, 512))), "random bytes"


def _tombstone(rng, event, i):
    return _key(event), None, "a null value (tombstone)"


def _empty_value(rng, event, i):
    return _key(event), rng.choice([b"", b" ", b"\n", b"\x00"]), "an empty or blank value"


def _bad_ids(rng, event, i):
    field = rng.choice(["event_id", "entity_id"])
    event[field] = rng.choice(["", "x" * 129, "y" * 10_000])
    return event["entity_id"].encode(), _dumps(event), f"{field} of length {len(event[field])}"


def _bad_attributes(rng, event, i):
    if rng.random() < 0.5:
        event["attributes"] = {f"k{j}": float(j) for j in range(33)}
        return _key(event), _dumps(event), "33 attributes"
    event["attributes"] = {"k" * 65: 1.0}
    return _key(event), _dumps(event), "an attribute name of 65 characters"


def _huge_random(rng, event, i):
    return _key(event), rng.randbytes(RANDOM_VALUE), f"{RANDOM_VALUE:,} random bytes (no compression helps)"


def _huge_key(rng, event, i):
    return b"k" * HUGE_KEY, _dumps(event), f"a {HUGE_KEY:,}-byte key"


def _oversize_compressed(rng, event, i):
    event["text"] = "z" * COMPRESSED_VALUE
    return _key(event), _dumps(event), f"a {COMPRESSED_VALUE:,}-byte value that lz4 compresses under the broker limit"


def _far_future(rng, event, i):
    # Valid by the contract (before 2200) but dated far ahead of its record: it would empty the entity's window.
    event["event_time"] = rng.choice(["2100-01-01T00:00:00Z", "2150-06-15T12:00:00+02:00", "2199-12-31T23:59:59Z"])
    return _key(event), _dumps(event), f"dated {event['event_time']}, far ahead of its record"


def _control_bytes(rng, event, i):
    body = _dumps(event)
    return _key(event), body.replace(b", ", b",\x00 ", 1), "a NUL byte between JSON tokens"


#: kind -> builder. Order matters only for determinism.
KINDS: dict[str, Builder] = {
    "null_key": _null_key,
    "key_mismatch": _key_mismatch,
    "huge_value": _huge_value,
    "huge_text": _huge_text,
    "deep_json": _deep_json,
    "non_finite": _non_finite,
    "huge_number": _huge_number,
    "wrong_type": _wrong_type,
    "missing_field": _missing_field,
    "extra_fields": _extra_fields,
    "empty_object": _empty_object,
    "json_array": _json_array,
    "scalar": _scalar,
    "bom": _bom,
    "overlong_utf8": _overlong_utf8,
    "invalid_utf8": _invalid_utf8,
    "lone_surrogate": _lone_surrogate,
    "truncated": _truncated,
    "garbage": _garbage,
    "tombstone": _tombstone,
    "empty_value": _empty_value,
    "bad_ids": _bad_ids,
    "bad_attributes": _bad_attributes,
    "control_bytes": _control_bytes,
    "far_future": _far_future,
    "huge_key": _huge_key,
    # These two need a producer whose message.max.bytes is raised (PRODUCER_OVERRIDES).
    "huge_random": _huge_random,
    "oversize_compressed": _oversize_compressed,
}
#: Kinds whose records are large: a bounded number of them, so a corpus stays a few MB.
_LARGE = {"huge_value": 4, "huge_random": 2, "huge_key": 2, "oversize_compressed": 2, "huge_text": 30, "deep_json": 30}


def hostile_corpus(count: int, seed: int = 0, kinds: tuple[str, ...] | None = None) -> list[HostileRecord]:
    """``count`` hostile records, every kind of ``kinds`` (default: all) at least once, large kinds capped.

    Raises:
        ValueError: ``count`` is smaller than the number of kinds.
    """
    names = list(kinds or KINDS)
    if count < len(names):
        raise ValueError(f"a corpus of {count} cannot hold the {len(names)} kinds")
    rng = random.Random(seed)
    plan = list(names)  # each kind once, then the rest drawn with the large kinds capped
    small = [name for name in names if name not in _LARGE]
    budget = {name: cap - 1 for name, cap in _LARGE.items() if name in names}
    while len(plan) < count:
        name = rng.choice(names)
        if name in budget:
            if budget[name] <= 0:
                name = rng.choice(small)
            else:
                budget[name] -= 1
        plan.append(name)
    rng.shuffle(plan)
    records = []
    for index, name in enumerate(plan):
        key, value, why = KINDS[name](rng, _valid(rng, index), index)
        records.append(HostileRecord(name, key, value, why))
    return records
