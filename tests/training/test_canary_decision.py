"""The canary's decision rule and the retraining consumer's choice of triggers and retries (pure logic)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from streams.schemas import DriftEvent
from tests.helpers import drift_event
from training.canary import Tally, decide
from training.retrain import RunPlanner, triggers

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
    assert verdict.decision == "rollback" and "only 3 labelled candidate answers" in verdict.reason


def test_the_canary_needs_both_roles_a_silent_champion_is_no_comparison():
    # enough candidate answers, but the champion answered nothing labelled (e.g. canary share 100%): no promotion
    assert decide(tally(0, 0), tally(60, 60), min_labelled=50, margin=0.0, final=False) is None
    verdict = decide(tally(0, 0), tally(60, 60), min_labelled=50, margin=0.0, final=True)
    assert verdict.decision == "rollback"
    assert "only 0 labelled champion answers" in verdict.reason and "need 50 per role" in verdict.reason
    both = decide(tally(10, 9), tally(20, 20), min_labelled=50, margin=0.0, final=True)
    assert both.decision == "rollback" and "20 labelled candidate answers and 10 labelled champion" in both.reason
    assert decide(tally(50, 40), tally(50, 40), min_labelled=50, margin=0.0, final=True).decision == "promote"


def _event(kind: str, status: str, model: str = "classifier", minutes: int = 0) -> DriftEvent:
    at = datetime(2026, 11, 27, 10, tzinfo=UTC) + timedelta(minutes=minutes)
    return drift_event(
        f"{kind}-{status}-{minutes}",
        at,
        kind=kind,
        status=status,
        model=model,
        severity="warning",
        labelled=0,
        metrics={},
    )


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


KINDS = ("data", "performance", "prediction")


def _planner(retry_after_s: float = 30.0, max_retries: int = 2) -> RunPlanner:
    return RunPlanner("classifier", KINDS, retry_after_s, max_retries)


def test_fresh_alerts_make_one_run_and_alerts_the_run_covered_are_folded():
    planner = _planner()
    assert planner.observe([_event("performance", "firing", minutes=1), _event("data", "firing", minutes=2)]) == []
    run = planner.next_run(0.0)
    assert [e.id for e in run.alerts] == ["performance-firing-1", "data-firing-2"]
    assert run.trigger_id == run.alerts[0].id and run.attempt == 0
    assert planner.next_run(0.0) is None
    planner.ended(promoted=True, data_end=datetime(2026, 11, 27, 10, 3, tzinfo=UTC), now=10.0)
    folded = planner.observe([_event("prediction", "firing", minutes=3)])  # started before the data's end
    assert [e.id for e in folded] == ["prediction-firing-3"] and planner.next_run(100.0) is None
    planner.observe([_event("prediction", "firing", minutes=9)])  # later than anything the run saw: a new run
    assert [e.id for e in planner.next_run(100.0).alerts] == ["prediction-firing-9"]


def test_a_run_that_promoted_nothing_is_retried_while_its_alert_stays_open():
    planner = _planner(retry_after_s=30.0, max_retries=2)
    planner.observe([_event("performance", "firing", minutes=1)])
    first = planner.next_run(0.0)
    planner.ended(promoted=False, data_end=datetime(2026, 11, 27, 10, 5, tzinfo=UTC), now=10.0)
    assert planner.next_run(39.0) is None  # not due yet
    retry = planner.next_run(40.0)
    assert retry.attempt == 1 and retry.trigger_id == f"{first.trigger_id}#retry1"
    planner.ended(promoted=False, data_end=datetime(2026, 11, 27, 10, 6, tzinfo=UTC), now=50.0)
    assert planner.next_run(80.0).trigger_id == f"{first.trigger_id}#retry2"
    planner.ended(promoted=False, data_end=datetime(2026, 11, 27, 10, 7, tzinfo=UTC), now=90.0)
    assert planner.next_run(10_000.0) is None  # max_retries reached


def test_a_resolve_or_a_promotion_ends_the_retries():
    planner = _planner()
    planner.observe([_event("performance", "firing", minutes=1)])
    planner.next_run(0.0)
    planner.ended(promoted=False, data_end=datetime(2026, 11, 27, 10, 5, tzinfo=UTC), now=0.0)
    planner.observe([_event("performance", "resolved", minutes=4)])
    assert planner.next_run(1_000.0) is None

    planner.observe([_event("data", "firing", minutes=8)])
    planner.next_run(1_000.0)
    planner.ended(promoted=True, data_end=datetime(2026, 11, 27, 10, 9, tzinfo=UTC), now=1_000.0)
    assert planner.next_run(5_000.0) is None  # promoted: the alert resolves on its own or fires again


def test_retries_can_be_switched_off():
    planner = _planner(retry_after_s=0.0)
    planner.observe([_event("performance", "firing", minutes=1)])
    planner.next_run(0.0)
    planner.ended(promoted=False, data_end=datetime(2026, 11, 27, 10, 5, tzinfo=UTC), now=0.0)
    assert planner.next_run(10_000.0) is None
