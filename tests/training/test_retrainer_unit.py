"""The retraining consumer's bookkeeping without servers: which drift records it takes, which version a trigger
already built, how a run is recorded, and a reporting hook that fails."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest
from confluent_kafka import Message

from foundation.settings import load_settings
from streams.schemas import DriftEvent
from streams.skips import SkippedRecords
from tests.helpers import drift_event
from training.canary import Tally, Verdict
from training.repository import ModelRepository
from training.retrain import Retrainer, RunOutcome, RunPlanner, version_for_trigger
from training.servable import runtime

pytestmark = pytest.mark.unit


MODEL = "classifier"


def _drift(event_id: str, started: datetime, model: str = MODEL, status: str = "firing") -> DriftEvent:
    return drift_event(event_id, started, model=model, status=status)


def _message(value: bytes, offset: int) -> Message:
    return Message(topic="drift-v1", value=value, partition=1, offset=offset)


def _settings(tmp_path, **retrain):
    return load_settings(
        triton={"model_repository": tmp_path, "model_name": MODEL},
        retrain={"retry_after_s": 0, "settle_s": 0, "min_post_drift_labels": 0, **retrain},
    )


def test_parse_keeps_valid_events_and_skips_what_cannot_start_a_run(tmp_path) -> None:
    retrainer = Retrainer(_settings(tmp_path))
    now = datetime.now(UTC)
    future = now + timedelta(days=30)
    skipped = SkippedRecords()
    before = (skipped.count("drift-v1", "not JSON"), skipped.count("drift-v1", "unusable: x"))
    batch = [
        _message(_drift("ok", now - timedelta(minutes=1)).to_bytes(), 0),
        _message(b"{not json", 1),
        _message(_drift("ahead", future).to_bytes(), 2),  # this model's firing alert from the future: no window
        _message(_drift("other", future, model="another").to_bytes(), 3),  # not this consumer's to judge
        _message(_drift("ahead", future, status="resolved").to_bytes(), 4),  # a resolve only closes an alert
    ]

    events = retrainer.parse(batch)

    assert [(e.id, e.model, e.status) for e in events] == [
        ("ok", MODEL, "firing"),
        ("other", "another", "firing"),
        ("ahead", MODEL, "resolved"),
    ]
    assert skipped.count("drift-v1", "not JSON") == before[0] + 1
    assert skipped.count("drift-v1", "unusable: x") == before[1] + 1


def test_the_version_built_for_a_trigger_is_found_newest_first(tmp_path) -> None:
    repo = ModelRepository(_settings(tmp_path))
    for version, trigger in ((1, "bootstrap"), (2, "drift-1"), (3, "drift-1#retry1"), (4, "drift-1")):
        folder = repo.version_dir(version)
        folder.mkdir(parents=True)
        (folder / runtime.METADATA_FILE).write_text(json.dumps({"trigger_id": trigger}))
    broken = repo.version_dir(5)
    broken.mkdir()
    (broken / runtime.METADATA_FILE).write_text("{not json")

    assert version_for_trigger(repo, {"drift-1"}) == 4
    assert version_for_trigger(repo, {"drift-1#retry1", "drift-9"}) == 3
    assert version_for_trigger(repo, {"drift-9"}) is None
    assert version_for_trigger(ModelRepository(_settings(tmp_path / "empty")), {"drift-1"}) is None


def test_an_outcome_is_promoted_only_by_a_promote_verdict_and_records_every_field() -> None:
    started = datetime(2026, 11, 30, 12, tzinfo=UTC)
    verdict = Verdict("promote", Tally(50, 40), Tally(50, 45), "at least as accurate")
    outcome = RunOutcome(
        "drift-1",
        ("drift-2",),
        3,
        verdict,
        "promote: ok",
        started,
        started + timedelta(minutes=5),
        started - timedelta(minutes=1),
        "promoted",
    )

    assert outcome.promoted
    assert not RunOutcome("d", (), 3, Verdict("rollback", Tally(), Tally(), "worse"), "", started, started).promoted
    assert not RunOutcome("d", (), None, None, "failed", started, started, status="failed").promoted
    record = outcome.as_dict()
    assert json.loads(json.dumps(record)) == record
    assert record == {
        "trigger": "drift-1",
        "folded": ["drift-2"],
        "version": 3,
        "status": "promoted",
        "verdict": {
            "decision": "promote",
            "champion": {"labelled": 50, "accuracy": 0.8},
            "candidate": {"labelled": 50, "accuracy": 0.9},
            "reason": "at least as accurate",
        },
        "detail": "promote: ok",
        "started_at": "2026-11-30T12:00:00+00:00",
        "ended_at": "2026-11-30T12:05:00+00:00",
        "data_end": "2026-11-30T11:59:00+00:00",
    }


def test_a_failing_reporting_hook_neither_stops_the_consumer_nor_loses_the_run_record(tmp_path) -> None:
    def broken_hook(outcome: RunOutcome) -> None:
        raise ValueError("dashboard down")

    def train(settings, **kwargs):
        raise RuntimeError("no GPU memory")

    settings = _settings(tmp_path)
    retrainer = Retrainer(settings, train=train, on_outcome=broken_hook)
    planner = RunPlanner(MODEL, ("performance",), 0, 0)

    outcome = retrainer.step(planner, [_message(_drift("drift-7", datetime.now(UTC)).to_bytes(), 0)])

    assert outcome is not None and outcome.status == "failed" and "RuntimeError: no GPU memory" in outcome.detail
    lines = [json.loads(line) for line in ModelRepository(settings).runs_path.read_text().splitlines()]
    assert [(r["run"], r["status"]) for r in lines] == [("drift-7", "running"), ("drift-7", "failed")]
    assert retrainer.step(planner, []) is None  # the consumer goes on; no retry (retry_after_s 0)
