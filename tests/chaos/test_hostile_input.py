"""Hostile input: over a thousand malformed records mixed into valid events, against a real inference worker process.

Every hostile record must get exactly one dead letter (stage ``validate``, a reason, its source offset and its
original bytes); every valid event a prediction; the worker must never die; and valid events must flow at a rate
within a generous factor of a clean run measured in the same test, on the same worker.

The worker, Triton (tests/streams/keyword_classifier), the Feast store and the broker are the real ones, set up as
in tests/streams/test_workers.py (the fixtures live in tests/streams/support.py).
"""

from __future__ import annotations

import base64
import hashlib
import json
import random
import signal
import time
import uuid
from collections import Counter
from datetime import UTC, datetime, timedelta

import pytest

from foundation.settings import Settings
from streams import DeliveryError, KafkaConsumer, KafkaProducer, Record, ensure_topics
from streams.schemas import DeadLetter, InvalidEvent, check_record_of, parse_event
from streams.synthetic import SyntheticStream
from tests.chaos.corpus import (
    COMPRESSED_VALUE,
    KINDS,
    MAX_PLAIN_VALUE,
    PRODUCER_OVERRIDES,
    HostileRecord,
    hostile_corpus,
)

HOSTILE = 1200
VALID = 600
WARMUP = 20
ID_HEADER = "chaos-id"
# Valid events per second with the hostile mix, as a share of the clean run's (measured in the same test).
MIN_THROUGHPUT_RATIO = 0.25


def _rejected(key: bytes | None, value: bytes | None) -> bool:
    """The inference worker's validation: the event contract, then the record rules (key = entity_id, not dated far
    ahead of the record: its timestamp is about now)."""
    try:
        check_record_of(parse_event(value), key, None, Settings().workers.max_event_ahead_s)
    except InvalidEvent:
        return True
    return False


@pytest.mark.unit
def test_corpus_is_deterministic_broad_and_all_invalid():
    corpus = hostile_corpus(HOSTILE, seed=1)
    assert corpus == hostile_corpus(HOSTILE, seed=1) and corpus != hostile_corpus(HOSTILE, seed=2)
    kinds = Counter(record.kind for record in corpus)
    assert len(corpus) >= 1000 and set(kinds) == set(KINDS) and len(kinds) >= 10
    assert any(len(r.value or b"") > 1_048_588 for r in corpus)  # over the broker's limit before compression
    assert any(len(r.value or b"") >= MAX_PLAIN_VALUE - 100 for r in corpus if r.kind == "huge_value")
    assert any(r.key is None for r in corpus) and any(r.value is None for r in corpus)
    # Every one is refused by the event contract or the key rule - and parse_event raises nothing but InvalidEvent.
    accepted, crashed = [], []
    for record in corpus:
        try:
            if not _rejected(record.key, record.value):
                accepted.append((record.kind, record.why))
        except Exception as exc:  # noqa: BLE001 - what would crash a worker
            crashed.append((record.kind, record.why, f"{type(exc).__name__}: {str(exc)[:80]}"))
    assert not crashed, f"{len(crashed)} records make parse_event raise instead of InvalidEvent: {crashed[:2]}"
    assert not accepted, accepted[:5]


@pytest.mark.chaos
@pytest.mark.integration
def test_broker_limits_for_large_values(settings_factory, chaos_ledger):
    """What the broker takes: the sizes the corpus's large kinds are built on (see tests/chaos/corpus.py)."""
    settings = settings_factory()
    ensure_topics(settings)
    topic = settings.kafka.topic("events-v1")
    accepted = 0
    with KafkaProducer(settings) as producer:
        accepted += producer.produce_batch([Record(topic, b"v" * MAX_PLAIN_VALUE, key=b"k")])
        with pytest.raises(DeliveryError, match="cannot produce.*Message size too large"):
            producer.produce_batch([Record(topic, b"v" * 1_000_000, key=b"k")])  # refused by the client itself
    with KafkaProducer(settings, {"message.max.bytes": 10_000_000, "compression.type": "none"}) as raised:
        accepted += raised.produce_batch([Record(topic, random.randbytes(1_048_400), key=b"k")])
        with pytest.raises(DeliveryError, match="not acknowledged.*Message size too large"):
            raised.produce_batch([Record(topic, random.randbytes(1_048_577), key=b"k")])  # refused by the broker
    with KafkaProducer(settings, PRODUCER_OVERRIDES) as compressing:
        accepted += compressing.produce_batch([Record(topic, b"z" * COMPRESSED_VALUE, key=b"k")])
    with KafkaConsumer(settings, f"limits-{uuid.uuid4().hex[:6]}", [topic]) as consumer:
        sizes: list[int] = []
        deadline = time.monotonic() + 30
        while len(sizes) < accepted and time.monotonic() < deadline:
            sizes += [len(m.value()) for m in consumer.consume_batch(10, 0.5)]
    chaos_ledger.record(
        "broker-limits",
        produced=accepted,
        predicted=0,
        dead_lettered=0,
        lost=accepted - len(sizes),
        duplicates=max(0, len(sizes) - accepted),
        refused_at_produce=2,
    )
    assert sorted(sizes) == sorted([MAX_PLAIN_VALUE, 1_048_400, COMPRESSED_VALUE])


def _assert_carries_the_original(letter: DeadLetter, record: HostileRecord) -> None:
    """The dead letter holds the record's bytes: all of them, or - where the dead letter says it was cut short
    (``value_truncated`` / ``key_truncated``, for records too large to carry whole) - a prefix, with the original
    size and SHA-256 of the value."""
    value = record.value or b""
    if getattr(letter, "value_truncated", False):
        assert value.startswith(letter.original()) and len(letter.original()) < len(value), record.kind
        assert letter.value_size == len(value) and letter.value_sha256 == hashlib.sha256(value).hexdigest()
    else:
        assert letter.original() == value, record.kind
    if record.key is None:
        assert letter.key_b64 is None, record.kind
    elif getattr(letter, "key_truncated", False):
        assert record.key.startswith(base64.b64decode(letter.key_b64)), record.kind
    else:
        assert base64.b64decode(letter.key_b64) == record.key, record.kind


class Outputs:
    """Everything the worker wrote to the predictions and dead-letter topics, read as it arrives."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.predictions: Counter[str] = Counter()
        self.letters: list[DeadLetter] = []
        self._consumer = KafkaConsumer(
            settings,
            f"chaos-{uuid.uuid4().hex[:6]}",
            [settings.kafka.topic("predictions-v1"), settings.kafka.topic("dlq-v1")],
        )

    def poll(self) -> Outputs:
        dlq = self.settings.kafka.topic("dlq-v1")
        for msg in self._consumer.consume_batch(1000, 0.2):
            if msg.topic() == dlq:
                self.letters.append(DeadLetter.model_validate_json(msg.value()))
            else:
                self.predictions[json.loads(msg.value())["event_id"]] += 1
        return self

    def close(self) -> None:
        self._consumer.close()


def _valid_records(settings: Settings, count: int, seed: int, first_id: int) -> tuple[list[Record], list[str]]:
    stream = SyntheticStream(seed=seed, labels=settings.training.labels)
    topic, start = settings.kafka.topic("events-v1"), datetime.now(UTC)
    records, ids = [], []
    for i in range(count):
        event = stream.one(start + timedelta(milliseconds=100 * i)).event
        headers = [(ID_HEADER, str(first_id + i).encode())]
        records.append(Record(topic, event.to_bytes(), key=event.entity_id.encode(), headers=headers))
        ids.append(event.event_id)
    return records, ids


def _send(settings: Settings, records: list[Record]) -> None:
    with KafkaProducer(settings, PRODUCER_OVERRIDES) as producer:
        for i in range(0, len(records), 200):
            producer.produce_batch(records[i : i + 200], timeout_s=60)


def _source_index(settings: Settings, expected: int) -> dict[tuple[int, int], int]:
    """(partition, offset) of every record on the events topic -> its chaos id (read back from the broker)."""
    index: dict[tuple[int, int], int] = {}
    with KafkaConsumer(settings, f"readback-{uuid.uuid4().hex[:6]}", [settings.kafka.topic("events-v1")]) as consumer:
        deadline = time.monotonic() + 60
        while len(index) < expected and time.monotonic() < deadline:
            for msg in consumer.consume_batch(1000, 0.5):
                index[(msg.partition(), msg.offset())] = int(dict(msg.headers())[ID_HEADER])
    return index


@pytest.mark.chaos
@pytest.mark.integration
def test_hostile_records_all_reach_the_dlq_and_valid_events_keep_flowing(pipeline, chaos_ledger):
    settings = pipeline.settings
    topic = settings.kafka.topic("events-v1")
    warmup, warmup_ids = _valid_records(settings, WARMUP, seed=100, first_id=0)
    clean, clean_ids = _valid_records(settings, VALID, seed=101, first_id=WARMUP)
    mixed_valid, mixed_ids = _valid_records(settings, VALID, seed=102, first_id=WARMUP + VALID)
    corpus = hostile_corpus(HOSTILE, seed=7)
    first_hostile = WARMUP + 2 * VALID
    hostile = [
        Record(topic, r.value, key=r.key, headers=[(ID_HEADER, str(first_hostile + i).encode())])
        for i, r in enumerate(corpus)
    ]
    mixed = hostile + mixed_valid
    random.Random(7).shuffle(mixed)

    worker = pipeline.start("run", "--role", "inference")
    outputs = Outputs(settings)
    produced, clean_s, mixed_s, failure = 0, None, None, None
    try:
        # Warm up (worker joined, Triton and Feast answering), so that both timed phases start from the same state.
        _send(settings, warmup)
        produced += len(warmup)
        pipeline.wait(lambda: len(outputs.poll().predictions) >= WARMUP, 90, "warm-up predictions")

        started = time.monotonic()
        _send(settings, clean)
        produced += len(clean)
        pipeline.wait(lambda: len(outputs.poll().predictions) >= WARMUP + VALID, 120, "the clean run's predictions")
        clean_s = time.monotonic() - started

        started = time.monotonic()
        _send(settings, mixed)
        produced += len(mixed)
        pipeline.wait(
            lambda: len(outputs.poll().predictions) >= WARMUP + 2 * VALID and len(outputs.letters) >= HOSTILE,
            240,
            "the hostile run's predictions and dead letters",
        )
        mixed_s = time.monotonic() - started
        time.sleep(2)  # a late duplicate, if there were one
    except AssertionError as exc:  # a dead worker or a timeout: account for what happened, then fail
        failure = exc
    finally:
        outputs.poll()
        outputs.close()
    still_running = worker.poll() is None

    # Accounting: each dead letter's source offset names the record it stands for.
    source = _source_index(settings, produced)
    letters_by_id: dict[int, list[DeadLetter]] = {}
    for letter in outputs.letters:
        letters_by_id.setdefault(source.get((letter.source.partition, letter.source.offset), -1), []).append(letter)
    sent = set(source.values())
    hostile_ids = set(range(first_hostile, first_hostile + HOSTILE)) & sent
    valid_ids = {event_id for i, event_id in enumerate(warmup_ids + clean_ids + mixed_ids) if i in sent}
    lost = len(hostile_ids - set(letters_by_id)) + len(valid_ids - set(outputs.predictions))
    duplicates = sum(n - 1 for n in outputs.predictions.values()) + sum(len(v) - 1 for v in letters_by_id.values())
    ratio = clean_s / mixed_s if clean_s and mixed_s else None  # valid events per second: mixed / clean
    chaos_ledger.record(
        "hostile-input",
        produced=produced,
        predicted=len(set(outputs.predictions) & valid_ids),
        dead_lettered=len(set(letters_by_id) & hostile_ids),
        lost=lost,
        duplicates=duplicates,
        hostile=len(hostile_ids),
        valid=len(valid_ids),
        kinds=len({r.kind for r in corpus}),
        worker_exits=0 if still_running else 1,
        clean_valid_per_s=round(VALID / clean_s, 1) if clean_s else None,
        mixed_valid_per_s=round(VALID / mixed_s, 1) if mixed_s else None,
        throughput_ratio=round(ratio, 3) if ratio else None,
        failure=str(failure).splitlines()[0] if failure else None,
    )
    if failure:
        raise failure

    assert still_running, "the inference worker died"
    assert len(source) == produced
    assert set(outputs.predictions) == valid_ids, f"{len(valid_ids - set(outputs.predictions))} valid events lost"
    assert all(n == 1 for n in outputs.predictions.values()), "duplicate predictions without a restart"
    assert -1 not in letters_by_id, "a dead letter whose source offset names no record"
    assert set(letters_by_id) == hostile_ids, f"{len(hostile_ids - set(letters_by_id))} hostile records lost"
    reasons: dict[str, Counter] = {}
    for chaos_id, letters in letters_by_id.items():
        assert len(letters) == 1, f"record {chaos_id}: {len(letters)} dead letters"
        letter, record = letters[0], corpus[chaos_id - first_hostile]
        assert letter.stage == "validate" and letter.error.strip(), (record.kind, letter)
        assert letter.source.topic == topic
        _assert_carries_the_original(letter, record)
        reasons.setdefault(record.kind, Counter())[letter.error.split(":")[0][:40]] += 1
    assert set(reasons) == set(KINDS)
    assert ratio >= MIN_THROUGHPUT_RATIO, (
        f"valid events: {VALID / clean_s:.0f}/s clean, {VALID / mixed_s:.0f}/s with {HOSTILE} hostile records mixed in"
    )

    worker.send_signal(signal.SIGTERM)
    assert worker.wait(timeout=30) == 0
    log = (pipeline.folder / "worker-0.log").read_text(errors="replace")
    assert "Traceback" not in log, log[-3000:]
