"""The demo's report: the summary from topic records (through the observer's ``TopicView``) and the retraining
consumer's run log, never from another process's log lines."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest
from confluent_kafka import Message

from driftloop.demo import TopicView, run_outcome, summarise, timeline_lines
from driftloop.demo.report import progress_line
from foundation.settings import load_settings
from training.repository import ModelRepository

pytestmark = pytest.mark.unit

ONSET = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)
SUMMARY_FIELDS = {
    "timeline",
    "initial_champion",
    "new_version",
    "time_to_detect_s",
    "time_to_serve_new_version_s",
    "time_to_promote_s",
    "accuracy_before_drift",
    "accuracy_after_drift",
    "accuracy_after_promotion",
    "events_produced",
    "predictions",
    "failed_predictions",
    "drift_alerts",
    "events_lost",
    "canary",
}


@pytest.fixture
def settings(tmp_path):
    return load_settings(kafka={"topic_prefix": "report-"}, triton={"model_repository": tmp_path / "repo"})


def _feed(view: TopicView, settings, topic: str, record: dict) -> None:
    msg = Message(topic=settings.kafka.topic(topic), partition=0, offset=0, value=json.dumps(record).encode())
    assert view.observe(msg), record


def _prediction(i: int, at: datetime, label: str, version: int) -> dict:
    return {
        "event_id": f"e{i}",
        "entity_id": "entity-0001",
        "event_time": at.isoformat(),
        "label": label,
        "scores": {label: 0.9},
        "model": {"name": "classifier", "version": version},
        "features": {},
        "timings_ms": {"queue": 1, "features": 1, "inference": 1, "end_to_end": 3},
        "predicted_at": (at + timedelta(milliseconds=50)).isoformat(),
    }


def _state(event: str, at: datetime, champion: int, candidate: int | None = None) -> dict:
    return {"model": "classifier", "champion": champion, "candidate": candidate, "event": event, "at": at.isoformat()}


def _drift(kind: str, detected: datetime) -> dict:
    return {
        "id": f"d-{kind}",
        "kind": kind,
        "status": "firing",
        "severity": "warning",
        "model": "classifier",
        "version": 1,
        "dedup_key": f"driftloop/classifier/{kind}",
        "window": {"start": None, "end": None, "size": 400, "labelled": 120},
        "metrics": {},
        "drifted_columns": [],
        "started_at": detected.isoformat(),
        "detected_at": detected.isoformat(),
    }


def _loop(settings) -> tuple[TopicView, dict[str, datetime]]:
    """60 s before the drift (v1 right), 60 s after (v1 wrong on half), v2 promoted at +60 s and right after."""
    view = TopicView(settings, "classifier")
    produced = {}
    for i in range(180):
        at = ONSET + timedelta(seconds=i - 60)
        produced[f"e{i}"] = at
        if i == 179:
            continue  # produced, never answered: lost
        version = 2 if i >= 120 else 1
        right = i < 60 or i >= 120 or i % 2 == 0
        _feed(view, settings, "predictions-v1", _prediction(i, at, "positive" if right else "negative", version))
        if i % 3:  # a share of the events is labelled
            _feed(
                view,
                settings,
                "labels-v1",
                {"event_id": f"e{i}", "label": "positive", "labelled_at": (at + timedelta(seconds=30)).isoformat()},
            )
    _feed(view, settings, "models-v1", _state("published", ONSET - timedelta(minutes=5), champion=1))
    _feed(view, settings, "drift-v1", _drift("performance", ONSET + timedelta(seconds=35)))
    _feed(view, settings, "models-v1", _state("published", ONSET + timedelta(seconds=50), champion=1, candidate=2))
    _feed(view, settings, "models-v1", _state("promoted", ONSET + timedelta(seconds=60), champion=2))
    return view, produced


def _runs(settings) -> list[dict]:
    repo = ModelRepository(settings)
    start, end = ONSET + timedelta(seconds=36), ONSET + timedelta(seconds=61)
    verdict = {"decision": "promote", "reason": "candidate 0.98 >= champion 0.5"}
    repo.record_run({"run": "d-old", "trigger": "d-old", "version": 5, "status": "promoted"})  # another version
    repo.record_run(
        {"run": "d-performance", "trigger": "d-performance", "status": "running", "started_at": start.isoformat()}
    )
    repo.record_run(
        {
            "run": "d-performance",
            "trigger": "d-performance",
            "version": 2,
            "status": "promoted",
            "verdict": verdict,
            "started_at": start.isoformat(),
            "ended_at": end.isoformat(),
        }
    )
    return repo.runs(200)


def test_the_summary_comes_from_the_topics_and_the_run_log(settings):
    view, produced = _loop(settings)
    summary = summarise(view.seen, produced, {"drift_onset": ONSET}, initial=1, healed_by=2, runs=_runs(settings))

    assert set(summary) == SUMMARY_FIELDS
    assert summary["timeline"] == {
        "drift_onset": ONSET.isoformat(),
        "drift_alert": (ONSET + timedelta(seconds=35)).isoformat(),
        "retraining_start": (ONSET + timedelta(seconds=36)).isoformat(),
        "candidate_published": (ONSET + timedelta(seconds=50)).isoformat(),
        "candidate_serving": (ONSET + timedelta(seconds=60, milliseconds=50)).isoformat(),
        "promotion": (ONSET + timedelta(seconds=60)).isoformat(),
        "retraining_end": (ONSET + timedelta(seconds=61)).isoformat(),
    }
    assert summary["canary"] == {"decision": "promote", "reason": "candidate 0.98 >= champion 0.5"}
    assert (summary["time_to_detect_s"], summary["time_to_promote_s"]) == (35.0, 60.0)
    assert summary["accuracy_before_drift"] == 1.0 and summary["accuracy_after_promotion"] == 1.0
    assert summary["accuracy_after_drift"] == 0.5
    assert (summary["events_produced"], summary["predictions"], summary["events_lost"]) == (180, 179, 1)
    assert summary["drift_alerts"] == ["12:00:35 performance warning"]
    names = [line.split()[-2:] for line in timeline_lines(summary)]
    assert names[0] == ["drift", "onset"] and names[-1] == ["retraining", "end"]


def test_without_a_run_for_the_version_the_run_fields_stay_empty(settings):
    view, produced = _loop(settings)
    summary = summarise(view.seen, produced, {"drift_onset": ONSET}, initial=1, healed_by=2, runs=[])
    assert summary["canary"] is None
    assert summary["timeline"]["retraining_start"] is None and summary["timeline"]["retraining_end"] is None
    assert summary["timeline"]["promotion"] is not None  # from the models topic


def test_run_outcome_is_the_run_that_built_the_version(settings):
    runs = _runs(settings)
    assert run_outcome(runs, 2)["trigger"] == "d-performance"
    assert run_outcome(runs, 5)["trigger"] == "d-old"
    assert run_outcome(runs, 3) == {} and run_outcome(runs, None) == {}


def test_progress_scores_only_the_events_whose_labels_are_due(settings):
    view = TopicView(settings, "classifier")
    now = datetime.now(UTC)
    for i, age in enumerate((40, 35, 5, 1)):  # the two recent ones are wrong, and their labels not due yet
        at = now - timedelta(seconds=age)
        _feed(view, settings, "predictions-v1", _prediction(i, at, "positive" if age > 30 else "negative", 1))
        _feed(view, settings, "labels-v1", {"event_id": f"e{i}", "label": "positive", "labelled_at": now.isoformat()})
    assert "accuracy(15s) 100.0%" in progress_line(1.0, 4, view.seen, None, label_delay_s=30.0)
    assert "accuracy(15s)   0.0%" in progress_line(1.0, 4, view.seen, None)
