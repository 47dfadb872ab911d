"""The retraining consumer survives its own failures and any record on the drift topic.

A run that raises (here an injected ``train`` raising RuntimeError, as a CUDA out-of-memory error would) ends as
``failed`` with the reason, is recorded in the run log shown by ``driftloop models list``, its drift event is
committed and the consumer goes on; retries follow ``retrain.max_retries``. Invalid or unusable drift events are
skipped and counted, never retried.
"""

from __future__ import annotations

import json
import threading
import time
from datetime import UTC, datetime, timedelta

import pytest
from confluent_kafka import Message

from foundation.settings import load_settings
from streams import KafkaProducer, Record, ensure_topics
from streams.schemas import DriftEvent
from streams.skips import SkippedRecords
from tests.helpers import drift_event, wait_until
from tests.streams.support import group_caught_up
from training.evaluation import HoldoutGateRejected, Metrics
from training.repository import ModelRepository
from training.retrain import Retrainer, RunOutcome, RunPlanner, unusable

MODEL = "classifier"


def _drift(event_id: str, started: datetime, status: str = "firing", kind: str = "performance") -> DriftEvent:
    return drift_event(event_id, started, status=status, kind=kind, model=MODEL)


HOSTILE = [
    b"",
    b"not json at all \xff",
    b"[1, 2, 3]",
    b'{"id": "x"}',
    json.dumps(
        {
            **json.loads(_drift("old", datetime(2026, 1, 1, tzinfo=UTC)).to_bytes()),
            "started_at": "0001-01-01T00:00:00+01:00",
        }
    ).encode(),
    json.dumps(
        {
            **json.loads(_drift("naive", datetime(2026, 1, 1, tzinfo=UTC)).to_bytes()),
            "detected_at": "2026-11-27T10:00:00",
        }
    ).encode(),
]


class OutOfMemory:
    """A ``train`` that fails as CUDA does when the GPU is full; counts its calls."""

    def __init__(self) -> None:
        self.calls: list[str] = []

    def __call__(self, settings, *, window, trigger_id, **kwargs) -> None:
        self.calls.append(trigger_id)
        raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")


def _message(value: bytes | None, offset: int) -> Message:
    return Message(topic="drift-v1", value=value, partition=0, offset=offset)


@pytest.mark.unit
def test_unusable_drift_events_are_named() -> None:
    now = datetime.now(UTC)
    assert unusable(_drift("ok", now - timedelta(minutes=5)), now) is None
    assert "in the future" in unusable(_drift("future", now + timedelta(days=400)), now)
    late = _drift("x", now).model_copy(update={"detected_at": now - timedelta(days=2)})
    assert "before started_at" in unusable(late, now)


@pytest.mark.unit
def test_a_run_that_raises_is_recorded_as_failed_and_retried_up_to_max_retries(tmp_path) -> None:
    settings = load_settings(
        triton={"model_repository": tmp_path, "model_name": MODEL},
        retrain={"retry_after_s": 0.01, "max_retries": 2, "settle_s": 0, "lookback_s": 60, "min_post_drift_labels": 0},
    )
    train = OutOfMemory()
    outcomes: list[RunOutcome] = []
    retrainer = Retrainer(settings, train=train, on_outcome=outcomes.append)
    planner = RunPlanner(MODEL, ("performance",), 0.01, 2)
    skipped = SkippedRecords()
    before = skipped.count("drift-v1", "not JSON")
    started = datetime.now(UTC) - timedelta(minutes=2)
    batch = [_message(raw, i) for i, raw in enumerate(HOSTILE)]
    batch += [
        _message(_drift("future", datetime.now(UTC) + timedelta(days=30)).to_bytes(), 10),
        _message(_drift("drift-1", started).to_bytes(), 11),
    ]

    first = retrainer.step(planner, batch)

    assert first is not None and first.status == "failed" and first.version is None
    assert "RuntimeError: CUDA out of memory" in first.detail
    assert skipped.count("drift-v1", "not JSON") == before + 1
    assert train.calls == ["drift-1"]
    for attempt in (1, 2):
        time.sleep(0.02)  # retry_after_s: the planner's clock must pass it
        retry = retrainer.step(planner, [])
        assert retry is not None and retry.trigger == f"drift-1#retry{attempt}" and retry.status == "failed"
    time.sleep(0.02)
    assert retrainer.step(planner, []) is None  # max_retries reached
    assert train.calls == ["drift-1", "drift-1#retry1", "drift-1#retry2"]
    assert [o.status for o in outcomes] == ["failed"] * 3

    runs = ModelRepository(settings).runs()
    assert [(r["run"], r["status"]) for r in runs] == [
        ("drift-1#retry2", "failed"),
        ("drift-1#retry1", "failed"),
        ("drift-1", "failed"),
    ]
    assert "CUDA out of memory" in runs[0]["detail"] and runs[0]["attempt"] == 2


@pytest.mark.unit
def test_a_candidate_refused_by_the_holdout_gate_ends_the_run_as_rejected(tmp_path) -> None:
    settings = load_settings(
        triton={"model_repository": tmp_path, "model_name": MODEL},
        retrain={"retry_after_s": 0, "holdout_margin": 0.02, "min_post_drift_labels": 0},
    )
    margins = []

    def worse(settings, *, holdout_margin, **kwargs) -> None:
        margins.append(holdout_margin)
        metrics = Metrics(samples=30, accuracy=0.5, macro_f1=0.4, log_loss=1.0, per_class={})
        raise HoldoutGateRejected(
            "rejected by the holdout gate: candidate macro-F1 0.400 < champion v1 0.900",
            metrics,
            metrics.model_copy(update={"macro_f1": 0.9}),
        )

    retrainer = Retrainer(settings, train=worse)
    planner = RunPlanner(MODEL, ("performance",), 0, 0)
    outcome = retrainer.step(planner, [_message(_drift("drift-2", datetime.now(UTC)).to_bytes(), 0)])

    assert margins == [0.02]
    assert outcome.status == "rejected" and outcome.version is None and not outcome.promoted
    assert outcome.detail.startswith("rejected by the holdout gate")
    assert ModelRepository(settings).runs(1)[0]["status"] == "rejected"


@pytest.mark.unit
def test_the_run_log_stays_bounded(tmp_path) -> None:
    repo = ModelRepository(load_settings(triton={"model_repository": tmp_path, "model_name": MODEL}))
    for i in range(60):
        repo.record_run({"run": f"r{i}", "status": "running"}, keep=10)
        repo.record_run({"run": f"r{i}", "status": "failed", "detail": "x" * 200}, keep=10)
    assert len(repo.runs_path.read_text().splitlines()) <= 10 * 6
    assert [r["run"] for r in repo.runs(3)] == ["r59", "r58", "r57"]
    assert repo.runs(1)[0]["status"] == "failed"
    repo.runs_path.write_text(repo.runs_path.read_text() + "garbage\n[1]\n")
    assert repo.runs(1)[0]["run"] == "r59"


@pytest.mark.integration
@pytest.mark.timeout(180)
def test_the_consumer_commits_a_failed_run_and_goes_on(retrain_settings, models_list, tmp_path) -> None:
    settings = retrain_settings(min_post_drift_labels=0)
    ensure_topics(settings)
    topic = settings.kafka.topic("drift-v1")
    now = datetime.now(UTC)
    records = [Record(topic, raw, key=MODEL.encode()) for raw in HOSTILE]
    records += [Record(topic, _drift("drift-7", now - timedelta(minutes=1)).to_bytes(), key=MODEL.encode())]
    with KafkaProducer(settings) as producer:
        producer.produce_batch(records)

    train = OutOfMemory()
    outcomes: list[RunOutcome] = []
    retrainer = Retrainer(settings, train=train, on_outcome=outcomes.append)
    errors: list[BaseException] = []

    def run() -> None:
        try:
            retrainer.run()
        except BaseException as exc:  # noqa: BLE001 - reported by the test
            errors.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    try:
        wait_until(lambda: bool(outcomes) or bool(errors), 120, "the run's outcome")
        assert not errors, errors
        assert outcomes[0].status == "failed" and "CUDA out of memory" in outcomes[0].detail
        wait_until(lambda: group_caught_up(settings, settings.retrain.group_id, topic), 60, "drift events committed")
        # The consumer goes on: a new drift after the failure starts a new run.
        with KafkaProducer(settings) as producer:
            later = _drift("drift-8", datetime.now(UTC) + timedelta(seconds=1))
            producer.produce_batch([Record(topic, later.to_bytes(), key=MODEL.encode())])
        wait_until(lambda: len(outcomes) >= 2 or bool(errors), 120, "a second run")
        assert not errors and thread.is_alive()
        assert train.calls == ["drift-7", "drift-8"]
    finally:
        retrainer.stop()
        thread.join(30)

    rows = [json.loads(line) for line in models_list(settings, "--json").splitlines()]
    assert [(r["kind"], r["run"], r["status"]) for r in rows] == [
        ("run", "drift-8", "failed"),
        ("run", "drift-7", "failed"),
    ]
    text = models_list(settings)
    assert "last runs of the retraining consumer" in text and "failed" in text and "RuntimeError" in text
