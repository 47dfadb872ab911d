"""A retraining run waits for post-onset labels: its gate, its onset, and the consumer's bookkeeping (pure logic and
the run log; the training function and the label count are injected)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from confluent_kafka import Message

from foundation.settings import load_settings
from streams.schemas import DriftEvent, WindowInfo
from tests.helpers import drift_event
from training.dataset import DataWindow
from training.repository import ModelRepository
from training.retrain import Retrainer, RunOutcome, RunPlanner, label_gate, onset

MODEL = "classifier"
T0 = datetime(2026, 11, 27, 10, 0, tzinfo=UTC)


def _drift(
    event_id: str, fired: datetime, status: str = "firing", kind: str = "data", window_start: datetime | None = None
) -> DriftEvent:
    return drift_event(
        event_id,
        fired,
        status=status,
        kind=kind,
        model=MODEL,
        window_start=window_start or fired - timedelta(seconds=40),
        size=400,
        labelled=0,
        metrics={"drift_share": 0.8},
        drifted_columns=("text_length",),
    )


def _message(event: DriftEvent, offset: int) -> Message:
    return Message(topic="drift-v1", value=event.to_bytes(), partition=0, offset=offset)


class Labels:
    """An injected label count: what the topics hold since the window's start; records the windows asked for."""

    def __init__(self, count: int = 0) -> None:
        self.count, self.windows = count, []

    def __call__(self, settings, window: DataWindow) -> int:
        self.windows.append(window)
        return self.count


class Train:
    """A ``train`` that records its window and fails as training does on too little data (no canary follows)."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, DataWindow]] = []

    def __call__(self, settings, *, window, trigger_id, **kwargs) -> None:
        self.calls.append((trigger_id, window))
        raise RuntimeError("stop after the data window (the test checks the window)")


def _settings(tmp_path, **retrain):
    return load_settings(
        triton={"model_repository": tmp_path, "model_name": MODEL},
        retrain={
            "trigger_kinds": ["data", "prediction", "performance"],
            "retry_after_s": 0,
            "settle_s": 0,
            "lookback_s": 10,
            "min_post_drift_labels": 5,
            "label_poll_s": 1e-6,
            "label_wait_timeout_s": 600,
            **retrain,
        },
    )


def _planner(settings) -> RunPlanner:
    config = settings.retrain
    return RunPlanner(MODEL, tuple(config.trigger_kinds), config.retry_after_s, config.max_retries)


@pytest.mark.unit
def test_the_label_gate_drops_trains_gives_up_or_waits() -> None:
    assert label_gate(0, 5, 10.0, 60.0, still_open=True) == "wait"
    assert label_gate(5, 5, 10.0, 60.0, still_open=True) == "train"
    assert label_gate(4, 5, 60.0, 60.0, still_open=True) == "timeout"
    assert label_gate(9, 5, 0.0, 60.0, still_open=False) == "drop"  # resolved: nothing to heal, labels or not
    assert label_gate(0, 0, 0.0, 60.0, still_open=True) == "train"  # 0: no wait


@pytest.mark.unit
def test_the_onset_is_the_start_of_the_window_that_fired() -> None:
    fired = T0 + timedelta(minutes=5)
    assert onset(_drift("a", fired, window_start=T0), timedelta(days=7)) == T0
    # Never after the alert itself, never more than the longest look-back before it.
    assert onset(_drift("b", fired, window_start=fired + timedelta(hours=1)), timedelta(days=7)) == fired
    assert onset(_drift("c", fired, window_start=T0 - timedelta(days=30)), timedelta(days=7)) == fired - timedelta(7)
    no_window = _drift("d", fired).model_copy(update={"window": WindowInfo(start=None, end=None, size=0, labelled=0)})
    assert onset(no_window, timedelta(days=7)) == fired
    # A performance alert's window is as old as the labels are late: it marks no onset, the moment it fired does.
    assert onset(_drift("e", fired, kind="performance", window_start=T0), timedelta(days=7)) == fired
    estimated = _drift("f", fired, window_start=T0).model_copy(update={"onset_at": T0 + timedelta(minutes=3)})
    assert onset(estimated, timedelta(days=7)) == T0 + timedelta(minutes=3)  # the change point, not the window start


@pytest.mark.unit
def test_alerts_that_fire_while_a_run_waits_fold_into_it_and_repeats_are_no_news() -> None:
    planner = RunPlanner(MODEL, ("data", "prediction", "performance"), 0, 0)
    first = _drift("data-1", T0)
    planner.observe([first])
    run = planner.next_run(0.0)
    assert run is not None and planner.next_run(0.0) is None  # one run at a time
    later = _drift("perf-1", T0 + timedelta(minutes=3), kind="performance")
    assert planner.observe([first, later]) == [later]  # the repeat of data-1 is not news
    assert [e.id for e in run.alerts] == ["data-1", "perf-1"] and run.trigger_id == "data-1"
    assert planner.still_open(run)
    planner.observe([_drift("data-1r", T0 + timedelta(minutes=4), status="resolved")])
    assert planner.still_open(run)  # the performance alert is still open
    planner.observe([_drift("perf-1r", T0 + timedelta(minutes=5), status="resolved", kind="performance")])
    assert not planner.still_open(run)


@pytest.mark.unit
def test_a_run_waits_for_post_onset_labels_then_trains_on_the_window_anchored_at_the_onset(tmp_path) -> None:
    settings = _settings(tmp_path)
    labels, train, outcomes = Labels(2), Train(), []
    retrainer = Retrainer(settings, train=train, on_outcome=outcomes.append, count_labels=labels)
    planner = _planner(settings)
    fired = datetime.now(UTC) - timedelta(seconds=30)
    drift = _drift("data-7", fired, window_start=fired - timedelta(seconds=45))

    assert retrainer.step(planner, [_message(drift, 0)]) is None
    assert train.calls == [] and labels.windows[0].start == fired - timedelta(seconds=45)
    waiting = ModelRepository(settings).runs(1)[0]
    assert waiting["status"] == "waiting_for_labels" and waiting["labels"] == {"labelled": 2, "needed": 5}
    assert "2 of 5 labelled events since the onset" in waiting["detail"]

    labels.count = 4
    assert retrainer.step(planner, []) is None
    assert ModelRepository(settings).runs(1)[0]["labels"]["labelled"] == 4
    labels.count = 5
    outcome = retrainer.step(planner, [])

    assert outcome is not None and outcome.trigger == "data-7" and outcome.status == "failed"
    assert [(t, w.start) for t, w in train.calls] == [("data-7", fired - timedelta(seconds=45 + 10))]
    assert [o.trigger for o in outcomes] == ["data-7"]
    assert [r["status"] for r in ModelRepository(settings).runs()] == ["failed"]


@pytest.mark.unit
def test_a_resolve_drops_a_waiting_run(tmp_path) -> None:
    settings = _settings(tmp_path)
    train, outcomes = Train(), []
    retrainer = Retrainer(settings, train=train, on_outcome=outcomes.append, count_labels=Labels(1))
    planner = _planner(settings)
    fired = datetime.now(UTC) - timedelta(seconds=20)
    assert retrainer.step(planner, [_message(_drift("data-8", fired), 0)]) is None

    resolved = _drift("data-8-resolved", fired + timedelta(seconds=10), status="resolved")
    outcome = retrainer.step(planner, [_message(resolved, 1)])

    assert isinstance(outcome, RunOutcome) and outcome.status == "dropped" and outcome.version is None
    assert "resolved before the run trained" in outcome.detail and "1 of 5" in outcome.detail
    assert train.calls == [] and outcomes == [outcome]
    assert ModelRepository(settings).runs(1)[0]["status"] == "dropped"
    assert retrainer.step(planner, []) is None  # nothing left to do, no retry


@pytest.mark.unit
def test_a_run_without_labels_in_time_fails_with_the_reason(tmp_path) -> None:
    settings = _settings(tmp_path, label_wait_timeout_s=1e-6)
    train = Train()
    retrainer = Retrainer(settings, train=train, count_labels=Labels(3))
    outcome = retrainer.step(_planner(settings), [_message(_drift("data-9", datetime.now(UTC)), 0)])

    assert outcome is not None and outcome.status == "failed" and train.calls == []
    assert outcome.detail.startswith("failed: not enough labels after waiting") and "3 of 5" in outcome.detail
    assert "retrain.label_wait_timeout_s" in outcome.detail


@pytest.mark.unit
def test_a_restart_resumes_the_waiting_run_from_the_run_log(tmp_path) -> None:
    settings = _settings(tmp_path)
    labels = Labels(0)
    fired = datetime.now(UTC) - timedelta(seconds=20)
    first = Retrainer(settings, train=Train(), count_labels=labels)
    drift = _drift("data-10", fired, window_start=fired - timedelta(seconds=30))
    assert first.step(_planner(settings), [_message(drift, 0)]) is None

    # A new process: the drift event was committed with the waiting run; the log brings the run back.
    train, planner = Train(), _planner(settings)
    again = Retrainer(settings, train=train, count_labels=labels)
    resumed = again.resume(planner)
    assert resumed is not None and resumed.planned.trigger_id == "data-10"
    assert resumed.onset == fired - timedelta(seconds=30)
    assert again.step(planner, []) is None  # still waiting
    labels.count = 5
    outcome = again.step(planner, [])
    assert outcome is not None and [t for t, _ in train.calls] == ["data-10"]
    assert train.calls[0][1].start == fired - timedelta(seconds=40)
    # A replay of the same firing event is no news: no second run.
    assert again.step(planner, [_message(drift, 0)]) is None and len(train.calls) == 1
    # A finished run is not resumed.
    assert Retrainer(settings, train=Train(), count_labels=labels).resume(_planner(settings)) is None


@pytest.mark.unit
def test_a_consumer_of_other_topics_does_not_take_back_the_waiting_run(tmp_path) -> None:
    """The run log sits beside the versions; a consumer on another topic prefix (the next demo run) shares it."""
    settings = _settings(tmp_path)
    fired = datetime.now(UTC) - timedelta(seconds=20)
    waiting = Retrainer(settings, train=Train(), count_labels=Labels(0))
    assert waiting.step(_planner(settings), [_message(_drift("data-11", fired), 0)]) is None

    other = settings.model_copy(update={"kafka": settings.kafka.model_copy(update={"topic_prefix": "next-run-"})})
    assert Retrainer(other, train=Train(), count_labels=Labels(0)).resume(_planner(other)) is None
    resumed = Retrainer(settings, train=Train(), count_labels=Labels(0)).resume(_planner(settings))
    assert resumed is not None and resumed.planned.trigger_id == "data-11"
