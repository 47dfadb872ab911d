"""The inference worker's per-batch steps without servers: parsing and dead letters, routing between champion,
candidate and shadow, and building the prediction records."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Sequence
from datetime import UTC, datetime

import numpy as np
import pytest
from confluent_kafka import TIMESTAMP_CREATE_TIME, Message

from foundation.settings import load_settings
from streams import inference
from streams.client import Record
from streams.inference import Batch, InferenceWorker, Served, Stamps, checked_event
from streams.schemas import DeadLetter, InvalidEvent, ModelState, Prediction
from streams.triton_client import TritonRequestError, TritonUnavailable, VersionNotServed

pytestmark = pytest.mark.unit

LABELS = ("negative", "neutral", "positive")
FEATURES = ("account_age_days", "lifetime_events")


def _event(event_id: str, entity_id: str = "user-1", text: str = "great service") -> bytes:
    return json.dumps(
        {
            "schema_version": 1,
            "event_id": event_id,
            "entity_id": entity_id,
            "event_time": "2026-11-30T12:00:00Z",
            "text": text,
        }
    ).encode()


def _message(value: bytes | None, key: bytes | None = b"user-1", offset: int = 0, **extra) -> Message:
    return Message(topic="events-v1", partition=2, offset=offset, key=key, value=value, **extra)


def _worker(**workers) -> InferenceWorker:
    return InferenceWorker(load_settings(training={"labels": list(LABELS)}, workers=workers))


def _letters(batch: Batch) -> list[DeadLetter]:
    return [DeadLetter.model_validate_json(r.value) for r in batch.outputs if r.topic.endswith("dlq-v1")]


def _predictions(batch: Batch) -> list[Prediction]:
    return [Prediction.model_validate_json(r.value) for r in batch.outputs if r.topic.endswith("predictions-v1")]


def _state(champion: int | None, candidate: int | None = None) -> ModelState:
    return ModelState(model="m", champion=champion, candidate=candidate, event="published", at=datetime.now(UTC))


def test_valid_events_pass_and_each_refused_record_becomes_a_validate_dead_letter() -> None:
    worker = _worker()
    good = _message(_event("e1"), offset=1)
    batch = Batch(
        [
            good,
            _message(_event("e2"), key=b"someone-else", offset=2),
            _message(b"{not json", offset=3),
            _message(None, offset=4),
        ]
    )

    events = worker._parse(batch)

    assert [(msg.offset(), event.event_id) for msg, event in events] == [(1, "e1")]
    letters = _letters(batch)
    assert batch.dead == 3 and [letter.source.offset for letter in letters] == [2, 3, 4]
    assert {letter.stage for letter in letters} == {"validate"}
    assert "the record key must be the entity_id 'user-1'" in letters[0].error
    assert all(letter.source.topic == "events-v1" and letter.source.partition == 2 for letter in letters)


def test_an_unexpected_parse_failure_is_dead_lettered_and_the_batch_goes_on(monkeypatch) -> None:
    def broken(raw: bytes | None):
        if b"e2" in raw:
            raise RuntimeError("parser bug")
        return real(raw)

    real = inference.parse_event
    monkeypatch.setattr(inference, "parse_event", broken)
    batch = Batch([_message(_event("e1")), _message(_event("e2"), offset=1)])

    events = _worker()._parse(batch)

    assert [event.event_id for _, event in events] == ["e1"]
    assert [letter.error for letter in _letters(batch)] == ["RuntimeError: parser bug"]


def test_an_event_dated_far_ahead_of_its_record_becomes_a_dead_letter_with_the_reason() -> None:
    written_ms = int(datetime(2026, 11, 30, 11, 30, tzinfo=UTC).timestamp() * 1000)  # _event is dated 12:00
    batch = Batch(
        [
            _message(_event("e1"), offset=1, timestamp=(TIMESTAMP_CREATE_TIME, written_ms)),
            _message(_event("e2"), offset=2, timestamp=(TIMESTAMP_CREATE_TIME, written_ms - 3_600_000)),
        ]
    )

    events = _worker(max_event_ahead_s=3600)._parse(batch)

    assert [event.event_id for _, event in events] == ["e1"]
    assert [letter.error for letter in _letters(batch)] == [
        "dated too far ahead: event_time 2026-11-30T12:00:00+00:00 is 5,400 s after the record was written; "
        "workers.max_event_ahead_s allows 3,600"
    ]


def test_the_key_check_names_the_expected_entity_and_cuts_a_long_key() -> None:
    assert checked_event(_message(_event("e1"))).event_id == "e1"
    with pytest.raises(InvalidEvent, match=r"got b'xxx") as refused:
        checked_event(_message(_event("e1"), key=b"x" * 500))
    assert len(refused.value.reason) < 200
    with pytest.raises(InvalidEvent, match="got None"):
        checked_event(_message(_event("e1"), key=None))


def test_roles_follow_the_version_that_answered_and_failed_shadow_answers_are_dropped() -> None:
    probs = np.array([0.1, 0.2, 0.7])
    failed = TritonRequestError("too long")
    served = Served([(probs, 1), (probs, 2), failed], [(probs, 2), failed, (probs, 2)], candidate=2)

    assert [(i, role) for i, _, role in served.answers()] == [
        (0, "champion"),
        (1, "candidate"),
        (2, "champion"),
        (0, "shadow"),
        (2, "shadow"),
    ]
    assert [role for _, _, role in Served([(probs, 1)], [], candidate=None).answers()] == ["champion"]


def test_answers_become_predictions_and_failed_answers_dead_letters() -> None:
    worker = _worker()
    worker._vocabs = {1: None, 2: None}  # no model repository here
    batch = Batch(
        [
            _message(_event(f"e{i}"), offset=i, headers=[("traceparent", b"00-abc")] if i == 0 else None)
            for i in range(4)
        ],
        read_at=100.0,
    )
    events = worker._parse(batch)
    features = {"account_age_days": [3, None, 5, 6], "lifetime_events": [10, 20, 30, 40]}
    served = Served(
        [
            (np.array([0.1, 0.2, 0.7]), 1),
            TritonRequestError("text refused"),
            (np.array([0.6, 0.4]), 1),
            (np.array([0.2, 0.5, 0.3]), 2),
        ],
        [(np.array([0.9, 0.05, 0.05]), 2), TritonRequestError("shadow refused")],
        candidate=2,
    )

    worker._answer(batch, events, served, features, FEATURES, Stamps(100.0, 100.5, 100.75, 101.0))

    assert batch.predicted == 2 and batch.dead == 2  # the shadow answer is a record, not a prediction of its own
    assert [(letter.source.offset, letter.error) for letter in _letters(batch)] == [
        (1, "text refused"),
        (2, "ValueError: zip() argument 2 is shorter than argument 1"),
    ]
    assert {letter.stage for letter in _letters(batch)} == {"inference"}
    first, candidate, shadow = _predictions(batch)
    assert (first.event_id, first.label, first.role, first.model.version) == ("e0", "positive", "champion", 1)
    assert first.scores == {"negative": 0.1, "neutral": 0.2, "positive": 0.7}
    assert first.features == {"account_age_days": 3.0, "lifetime_events": 10.0}
    assert first.trace_id == "00-abc"
    assert (candidate.event_id, candidate.role, candidate.model.version) == ("e3", "candidate", 2)
    assert (shadow.event_id, shadow.role, shadow.label) == ("e0", "shadow", "negative")
    records = [r for r in batch.outputs if r.topic.endswith("predictions-v1")]
    assert records[0].headers == [("trace-id", b"00-abc")] and records[1].headers is None
    assert all(r.key == b"user-1" for r in records)


def test_an_answer_that_is_not_a_number_is_a_dead_letter_not_a_prediction() -> None:
    worker = _worker()
    worker._vocabs = {1: None}
    batch = Batch([_message(_event("e0"), offset=0), _message(_event("e1"), offset=1)])
    served = Served([(np.array([np.nan, 0.5, 0.5]), 1), (np.array([0.2, 0.3, 0.5]), 1)], [], None)
    features = {"account_age_days": [1, float("inf")], "lifetime_events": [1, 2]}

    worker._answer(batch, worker._parse(batch), served, features, FEATURES, Stamps(1.0, 1.0, 1.0, 1.0))

    assert batch.predicted == 0 and batch.dead == 2
    assert [letter.error for letter in _letters(batch)] == [
        "ValueError: scores: numbers must be finite: ['negative']",
        "ValueError: features: numbers must be finite: ['account_age_days']",
    ]


def test_stage_timings_run_from_the_broker_timestamp_or_else_from_the_read() -> None:
    stamps = Stamps(read_at=10.0, started=10.25, features_done=10.5, inference_done=11.0)
    timings = stamps.timings(broker_ts=9.0, now=11.5)
    assert timings == {"queue": 1250, "features": 250, "inference": 500, "end_to_end": 2500}

    worker = _worker()
    worker._vocabs = {1: None}
    batch = Batch([_message(_event("e1"), timestamp=(0, -1))])  # no broker timestamp
    worker._answer(
        batch,
        worker._parse(batch),
        Served([(np.array([1.0, 0, 0]), 1)], [], None),
        {name: [1] for name in FEATURES},
        FEATURES,
        stamps,
    )
    assert _predictions(batch)[0].timings_ms.queue == 250  # from read_at


class ScriptedTriton:
    """Answers ``classify`` per version from a script: probabilities, or the exception that version raises."""

    model = "m"

    def __init__(self, served: set[int], failures: dict[int, Exception] | None = None) -> None:
        self.served = frozenset(served)
        self.failures = failures or {}
        self.calls: list[tuple[int, int]] = []
        self.forgotten = False

    async def served_versions(self, refresh: bool = False) -> frozenset[int]:
        return self.served

    def forget_served(self) -> None:
        self.forgotten = True

    async def classify(self, texts: Sequence[str], features: np.ndarray, version: int) -> list:
        self.calls.append((version, len(texts)))
        if version in self.failures:
            raise self.failures[version]
        return [(np.array([0.2, 0.3, 0.5]), version) for _ in texts]


class Announced:
    def __init__(self, state: ModelState | None) -> None:
        self.state = state

    def current(self) -> ModelState | None:
        return self.state


def _classify(worker: InferenceWorker, triton: ScriptedTriton, state: ModelState | None, n: int = 4) -> Served:
    ids = [f"e{i}" for i in range(n)]
    matrix = np.zeros((n, len(FEATURES)), dtype=np.float32)
    return asyncio.run(worker._classify(triton, Announced(state), ids, ["text"] * n, matrix))


def test_the_canary_share_goes_to_the_candidate_and_the_shadow_asks_it_for_every_event() -> None:
    triton = ScriptedTriton({1, 2})

    served = _classify(_worker(canary_share=1.0, shadow=True), triton, _state(1, 2))

    assert [role for _, _, role in served.answers()] == ["candidate"] * 4 + ["shadow"] * 4
    assert sorted(triton.calls) == [(2, 4), (2, 4)]
    assert [
        role for _, _, role in _classify(_worker(canary_share=0.0), ScriptedTriton({1, 2}), _state(1, 2)).answers()
    ] == ["champion"] * 4


def test_a_failing_candidate_falls_back_to_the_champion_and_an_unavailable_shadow_is_skipped() -> None:
    for failure in (VersionNotServed("gone"), TritonUnavailable("down")):
        triton = ScriptedTriton({1, 2}, {2: failure})

        served = _classify(_worker(canary_share=1.0, shadow=True), triton, _state(1, 2))

        assert [(role, result[1]) for _, result, role in served.answers()] == [("champion", 1)] * 4
        assert (1, 4) in triton.calls and not served.shadow


def test_no_usable_champion_or_a_champion_that_went_away_is_an_outage() -> None:
    triton = ScriptedTriton({2})
    with pytest.raises(TritonUnavailable, match="no version of m that may answer"):
        _classify(_worker(), triton, _state(None, 2))
    assert triton.forgotten

    with pytest.raises(TritonUnavailable, match="champion version 1 went away"):
        _classify(_worker(), ScriptedTriton({1}, {1: VersionNotServed("unloaded")}), _state(1))
    with pytest.raises(TritonUnavailable, match="down"):
        _classify(_worker(), ScriptedTriton({1}, {1: TritonUnavailable("down")}), _state(1))


class _Recorder:
    """Stands in for the producer and the consumer: records what goes out and what is committed, in order."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, object]] = []

    def produce_batch(self, records, keep_waiting=None) -> int:
        self.calls.append(("produce", [r.value for r in records]))
        return len(records)

    def commit_or_redeliver(self, messages) -> bool:
        self.calls.append(("commit", [m.offset() for m in messages]))
        return True


def _handled(worker: InferenceWorker, first_fails: bool = False) -> tuple[list, BaseException | None]:
    """Two batches handled concurrently, the second processed before the first; the calls made and the error."""
    recorder = _Recorder()
    first, second = Batch([_message(b"a", offset=1)]), Batch([_message(b"b", offset=2)])
    first.outputs.append(Record("predictions-v1", b"first"))
    second.outputs.append(Record("predictions-v1", b"second"))

    async def main() -> BaseException | None:
        release = asyncio.Event()

        async def slow() -> None:
            await release.wait()
            if first_fails:
                raise TritonUnavailable("down")

        async def fast() -> None:
            return None

        one = asyncio.create_task(worker._handle(first, slow, None, recorder, recorder))
        two = asyncio.create_task(worker._handle(second, fast, one, recorder, recorder))
        for _ in range(10):
            await asyncio.sleep(0)
        assert recorder.calls == []  # processed, and waiting for the batch read before it
        release.set()
        results = await asyncio.gather(one, two, return_exceptions=True)
        return next((r for r in results if isinstance(r, BaseException)), None)

    return recorder.calls, asyncio.run(main())


def test_batches_go_out_and_commit_in_the_order_they_were_read_whichever_is_processed_first() -> None:
    calls, error = _handled(_worker())
    assert error is None
    assert calls == [("produce", [b"first"]), ("commit", [1]), ("produce", [b"second"]), ("commit", [2])]


def test_a_batch_read_after_one_that_failed_neither_goes_out_nor_commits() -> None:
    calls, error = _handled(_worker(), first_fails=True)
    assert isinstance(error, TritonUnavailable)
    assert calls == []  # both are redelivered: nothing was committed past the failed batch
