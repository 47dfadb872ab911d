"""The monitor's state machine without Kafka: windows, schedule, hysteresis, events, reference switches."""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from foundation.settings import load_settings
from monitoring import DriftEvent, Monitor
from streams.schemas import Label
from tests.monitoring.kafka_helpers import SMALL_WINDOW

pytestmark = pytest.mark.unit

SMALL = {
    **SMALL_WINDOW,
    "reports_keep": 3,
}


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def make_monitor(tmp_path, synthetic_factory):
    def make(clock=None, **monitoring):
        settings = load_settings(
            triton={"model_repository": tmp_path / "repo"},
            monitoring={**SMALL, "reports_dir": tmp_path / "reports", **monitoring},
        )
        return Monitor(settings, clock=clock or Clock()), settings

    return make


def _feed(monitor, setup, n, seed, drift_at=None, labels=True):
    outcomes = []
    for prediction, label in setup.predictions(n, seed, drift_at):
        monitor.observe_prediction(prediction)
        if labels:
            monitor.observe_label(Label(event_id=prediction.event_id, label=label, labelled_at=datetime.now(UTC)))
        for model in monitor.due():
            outcomes.append(monitor.check(model))
    return outcomes


def test_a_stable_stream_checks_every_n_events_and_never_fires(make_monitor, synthetic_factory):
    monitor, settings = make_monitor()
    setup = synthetic_factory()
    setup.write(settings.triton.model_repository)
    outcomes = _feed(monitor, setup, 1800, seed=3)
    assert len(outcomes) == 17  # at 200 (min window), then every 100
    assert all(not o.events and not o.repeats for o in outcomes)
    assert all(o.result.window.size == min(300, 200 + 100 * i) for i, o in enumerate(outcomes))
    assert not (settings.monitoring.reports_dir).exists()


def test_drift_fires_after_k_checks_repeats_while_open_and_resolves_when_it_clears(make_monitor, synthetic_factory):
    monitor, settings = make_monitor()
    setup = synthetic_factory()
    setup.write(settings.triton.model_repository)
    assert not any(o.events for o in _feed(monitor, setup, 400, seed=4))

    drifted = _feed(monitor, setup, 600, seed=5, drift_at=0)
    fired_at = next(i for i, o in enumerate(drifted) if o.events)
    assert fired_at == 1  # detected at the first check after the shift, fired at the second (k = 2)
    assert {e.kind for e in drifted[fired_at].events} == {"data", "performance"}
    # A third of the window drifted moves the score less than the features: prediction fires one check later.
    events = {e.kind: e for o in drifted[fired_at : fired_at + 2] for e in o.events}
    assert set(events) == {"data", "prediction", "performance"}
    data = events["data"]
    assert data.status == "firing" and data.severity == "critical"
    assert (data.model, data.version, data.dedup_key) == ("classifier", 1, "driftloop/classifier/data")
    assert data.window.size == 300 and data.window.labelled == 300 and data.window.start < data.window.end
    assert {"amount", "items", "oov_share"} <= set(data.drifted_columns)
    assert data.metrics["drift_share"] >= 0.5 and set(data.scores) == {
        "amount",
        "items",
        "text_length",
        "word_count",
        "oov_share",
    }
    assert data.report_path and Path(data.report_path).is_file()
    assert events["performance"].metrics["accuracy"] < 0.7
    assert DriftEvent.from_bytes(data.to_bytes()) == data
    assert all(len(o.repeats) == 3 and not o.events for o in drifted[fired_at + 2 :])
    assert {r.id for o in drifted[fired_at + 1 :] for r in o.repeats if r.kind == "data"} == {data.id}
    assert {r.severity for r in drifted[-1].repeats if r.kind == "data"} == {"critical"}

    cleared = _feed(monitor, setup, 800, seed=6)
    resolved_at = next(i for i, o in enumerate(cleared) if o.events)
    resolved = {e.kind: e for e in cleared[resolved_at].events}
    assert set(resolved) == {"data", "prediction", "performance"}
    assert resolved["data"].status == "resolved" and resolved["data"].firing_event_id == data.id
    assert resolved["data"].started_at == data.started_at and resolved["data"].severity == "critical"
    assert resolved["data"].drifted_columns == [] and Path(resolved["data"].report_path).is_file()
    assert not any(o.events or o.repeats for o in cleared[resolved_at + 1 :])
    assert all(not s.firing for s in monitor.tracks["classifier"].states.values())


def test_a_restarted_monitor_reopens_its_open_alerts_from_its_own_events(make_monitor, synthetic_factory):
    monitor, settings = make_monitor()
    setup = synthetic_factory()
    setup.write(settings.triton.model_repository)
    drifted = _feed(monitor, setup, 600, seed=5, drift_at=0)
    opened = [e for o in drifted for e in o.events]
    assert {e.kind for e in opened} == {"data", "prediction", "performance"}
    # An older alert of the same kind, opened and resolved before: only the last event of an alert counts.
    older = opened[0].model_copy(update={"id": "old", "detected_at": opened[0].detected_at.replace(year=2025)})
    closed = older.model_copy(update={"id": "old-resolved", "status": "resolved", "firing_event_id": "old"})

    restarted, _ = make_monitor()  # a new process: empty windows, no alert state
    reopened = restarted.restore_alerts([*opened, closed, older])
    assert {e.id for e in reopened} == {e.id for e in opened}
    still = _feed(restarted, setup, 400, seed=7, drift_at=0)
    assert not any(o.events for o in still)  # the drift goes on: repeats of the same alerts, no second opening
    assert {r.id for o in still for r in o.repeats} == {e.id for e in opened}
    cleared = [e for o in _feed(restarted, setup, 800, seed=6) for e in o.events]
    assert {(e.status, e.firing_event_id) for e in cleared} == {("resolved", e.id) for e in opened}


def test_reports_are_kept_up_to_the_retention_limit(make_monitor, synthetic_factory):
    monitor, settings = make_monitor(reports_keep=2, hysteresis_checks=1, resolve_checks=1)
    setup = synthetic_factory()
    setup.write(settings.triton.model_repository)
    for seed in range(3):
        _feed(monitor, setup, 300, seed=10 + seed, drift_at=0)
        _feed(monitor, setup, 300, seed=20 + seed)
    assert len(list(settings.monitoring.reports_dir.glob("drift-*.html"))) == 2


def test_checks_are_due_by_count_or_time_once_the_window_is_large_enough(make_monitor, synthetic_factory):
    clock = Clock()
    monitor, settings = make_monitor(clock=clock, check_every_events=1000, check_interval_s=30)
    setup = synthetic_factory()
    setup.write(settings.triton.model_repository)
    predictions = setup.predictions(260, seed=3)
    for prediction, _ in predictions[:150]:
        monitor.observe_prediction(prediction)
    clock.now += 60
    assert monitor.due() == []  # below min_window
    assert monitor.check("classifier") is None
    assert monitor.check("classifier", force=True).result.window.size == 150
    for prediction, _ in predictions[150:250]:
        monitor.observe_prediction(prediction)
    assert monitor.due() == []  # 100 new events, 0 s since the forced check
    clock.now += 31
    assert monitor.due() == ["classifier"]
    monitor.check("classifier")
    clock.now += 31
    assert monitor.due() == []  # time passed but nothing new arrived
    monitor.observe_label(Label(event_id=predictions[0][0].event_id, label="neutral", labelled_at=datetime.now(UTC)))
    assert monitor.due() == ["classifier"]  # a late label can change the performance figures


def test_only_champion_predictions_of_the_serving_version_enter_the_window(make_monitor, synthetic_factory):
    monitor, _ = make_monitor()
    setup = synthetic_factory()
    (p1, _), (p2, _), (p3, _), (p4, _) = setup.predictions(4, seed=3)
    assert monitor.observe_prediction(p1)
    assert not monitor.observe_prediction(p1)  # redelivered
    assert not monitor.observe_prediction(p2.model_copy(update={"role": "shadow"}))
    newer = p2.model_copy(update={"model": p2.model.model_copy(update={"version": 2})})
    assert monitor.observe_prediction(newer)  # no models-topic record: the newest version seen is served
    track = monitor.tracks["classifier"]
    assert track.serving_version == 2 and len(track.window) == 1
    assert not monitor.observe_prediction(p3)  # an older version now
    monitor.observe_champion("classifier", 1)  # the models topic says: rolled back to v1
    assert track.serving_version == 1 and len(track.window) == 0
    assert monitor.observe_prediction(p3)
    assert not monitor.observe_prediction(newer.model_copy(update={"event_id": "other"}))  # the topic rules now
    monitor.observe_champion("classifier", None)
    assert track.serving_version == 1
    assert monitor.observe_prediction(p4)
    assert monitor.observed == {"predictions": 8, "labels": 0, "skipped": 4}


def test_labels_join_whichever_arrives_first(make_monitor, synthetic_factory):
    monitor, _ = make_monitor()
    (p1, l1), (p2, l2) = synthetic_factory().predictions(2, seed=3)
    monitor.observe_prediction(p1)
    assert monitor.observe_label(Label(event_id=p1.event_id, label=l1, labelled_at=datetime.now(UTC)))
    assert not monitor.observe_label(Label(event_id=p2.event_id, label=l2, labelled_at=datetime.now(UTC)))
    monitor.observe_prediction(p2)
    assert monitor.tracks["classifier"].window.labelled == 2


def test_a_new_champion_switches_the_reference_and_an_open_alert_waits_for_clean_checks(
    make_monitor, synthetic_factory
):
    monitor, settings = make_monitor(hysteresis_checks=1, resolve_checks=1)
    v1, v2 = synthetic_factory(version=1), synthetic_factory(version=2)
    v1.write(settings.triton.model_repository)
    v2.write(settings.triton.model_repository)
    monitor.observe_champion("classifier", 1)
    fired = [e for o in _feed(monitor, v1, 200, seed=5, drift_at=0) for e in o.events]
    assert {e.kind for e in fired} == {"data", "prediction", "performance"}

    monitor.observe_champion("classifier", 2)
    track = monitor.tracks["classifier"]
    assert len(track.window) == 0 and track.states["data"].firing and track.states["data"].drift_streak == 0
    assert not [o for o in _feed(monitor, v1, 50, seed=6)]  # v1 predictions no longer count
    outcomes = _feed(monitor, v2, 200, seed=6)
    assert track.reference.version == 2
    resolved = outcomes[0].events
    assert {(e.kind, e.status, e.version) for e in resolved} == {
        ("data", "resolved", 2),
        ("prediction", "resolved", 2),
        ("performance", "resolved", 2),
    }


def test_a_missing_reference_is_logged_once_and_checks_resume_when_it_appears(make_monitor, synthetic_factory, caplog):
    monitor, settings = make_monitor()
    setup = synthetic_factory()
    with caplog.at_level(logging.WARNING, logger="monitoring.monitor"):
        assert _feed(monitor, setup, 400, seed=3) == [None, None, None]
    assert [r.getMessage() for r in caplog.records].count("no reference: checks wait for it") == 1
    setup.write(settings.triton.model_repository)
    outcomes = _feed(monitor, setup, 100, seed=4)
    assert len(outcomes) == 1 and outcomes[0].result.version == 1


def test_history_starts_at_the_first_prediction_unless_an_older_one_is_known(make_monitor, synthetic_factory):
    settings = make_monitor()[1]
    setup = synthetic_factory()
    setup.write(settings.triton.model_repository)
    wall = Clock()
    monitor = Monitor(settings, clock=Clock(), wall_clock=wall)
    assert monitor.history_since is None
    monitor.note_history(900.0)  # the predictions topic's oldest record
    _feed(monitor, setup, 5, seed=3)
    assert monitor.history_since == 900.0
    monitor.note_history(950.0)  # a later note never makes the store younger
    assert monitor.history_since == 900.0

    fresh = Monitor(settings, clock=Clock(), wall_clock=wall)
    _feed(fresh, setup, 5, seed=3)
    assert fresh.history_since == wall.now


def test_a_fired_data_alert_estimates_when_the_drift_began(make_monitor, synthetic_factory):
    monitor, settings = make_monitor()
    setup = synthetic_factory()
    setup.write(settings.triton.model_repository)
    t0 = datetime.now(UTC) - timedelta(hours=1)
    pairs = setup.predictions(200, seed=4) + setup.predictions(300, seed=5, drift_at=0)
    fired = []
    for i, (prediction, label) in enumerate(pairs):
        monitor.observe_prediction(prediction.model_copy(update={"event_time": t0 + timedelta(seconds=i)}))
        monitor.observe_label(Label(event_id=prediction.event_id, label=label, labelled_at=datetime.now(UTC)))
        for model in monitor.due():
            fired += [e for e in monitor.check(model).events if e.status == "firing"]
    events = {e.kind: e for e in fired}
    onset = events["data"].onset_at
    # The window that fired holds 100 clean and 200 drifted predictions; the drift began at prediction 200.
    assert onset is not None and abs(onset - (t0 + timedelta(seconds=200))) <= timedelta(seconds=15)
    assert events["data"].window.start <= t0 + timedelta(seconds=110)
    assert events["performance"].onset_at is None  # late labels: a performance window marks no onset
