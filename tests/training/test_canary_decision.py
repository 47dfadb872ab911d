"""The canary's decision rule and the retraining consumer's choice of triggers (pure logic)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from monitoring.events import DriftEvent
from training.canary import Tally, decide
from training.retrain import triggers

pytestmark = pytest.mark.unit


def tally(labelled: int, correct: int) -> Tally:
    return Tally(labelled, correct)


def test_waits_until_both_roles_have_enough_labels():
    assert decide(tally(10, 9), tally(200, 190), min_labelled=50, margin=0.0, final=False) is None
    assert decide(tally(200, 100), tally(49, 49), min_labelled=50, margin=0.0, final=False) is None


def test_promotes_a_better_or_equal_candidate_and_rolls_back_a_worse_one():
    better = decide(tally(100, 40), tally(100, 90), min_labelled=50, margin=0.0, final=False)
    assert better.decision == "promote" and "90.0% of 100" in better.reason
    worse = decide(tally(100, 90), tally(100, 80), min_labelled=50, margin=0.05, final=False)
    assert worse.decision == "rollback"
    within_margin = decide(tally(100, 90), tally(100, 86), min_labelled=50, margin=0.05, final=False)
    assert within_margin.decision == "promote"


def test_at_the_deadline_a_silent_candidate_is_rolled_back():
    verdict = decide(tally(500, 400), tally(3, 3), min_labelled=50, margin=0.0, final=True)
    assert verdict.decision == "rollback" and "only 3 labelled" in verdict.reason
    # enough candidate answers but a quiet champion share (e.g. canary share 100%): judged on the candidate alone
    assert decide(tally(0, 0), tally(60, 50), min_labelled=50, margin=0.0, final=True).decision == "promote"


def _event(kind: str, status: str, model: str = "classifier", minutes: int = 0) -> DriftEvent:
    at = datetime(2026, 11, 27, 10, tzinfo=UTC) + timedelta(minutes=minutes)
    return DriftEvent(
        id=f"{kind}-{status}-{minutes}", kind=kind, status=status, severity="warning", model=model, version=1,
        dedup_key=f"driftloop/{model}/{kind}", window={"start": at, "end": at, "size": 100, "labelled": 0},
        metrics={}, drifted_columns=[], started_at=at, detected_at=at,
    )  # fmt: skip


def test_triggers_are_firing_events_of_the_model_and_kinds_oldest_first():
    events = [
        _event("data", "firing", minutes=5),
        _event("performance", "firing", minutes=1),
        _event("data", "resolved", minutes=2),
        _event("data", "firing", model="other", minutes=0),
        _event("prediction", "firing", minutes=3),
    ]
    chosen = triggers(events, "classifier", ("data", "performance"))
    assert [e.id for e in chosen] == ["performance-firing-1", "data-firing-5"]
