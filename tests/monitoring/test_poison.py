"""Poison records against every handler of the monitor, the demo's observer and ``driftloop tail``, without a broker.

Each handler gets hostile records (garbage bytes, tombstones, out-of-range and naive times, a 200 KB label, unknown
labels and models, valid JSON with absurd values) and must answer with a dead letter (predictions) or a counted skip
(labels, drift events, model states), never an exception; the valid records of the same batch still count.
Records are real ``confluent_kafka.Message`` objects, built without a broker.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest
from confluent_kafka import Message

from driftloop.commands.streams import pretty_line, raw_json_line
from driftloop.demo import TopicView
from foundation.settings import load_settings
from monitoring import Monitor, MonitorMetrics, MonitorWorker
from monitoring.reference import ReferenceSample, load_reference
from monitoring.sources import followed_state
from streams.schemas import DeadLetter, Label, ModelState
from streams.skips import SkippedRecords
from tests.monitoring.kafka_helpers import SMALL_WINDOW

pytestmark = pytest.mark.unit

SMALL = {
    **SMALL_WINDOW,
}
YEAR_ONE = "0001-01-01T00:00:00+01:00"
NAIVE = "2026-11-27T10:00:00"
GARBAGE = [None, b"", b"\xff\xfe\x00\x81binary", b"not json", b"[1, 2]", b"null", b"{" * 5000, b'{"a": NaN}']


@pytest.fixture
def settings(tmp_path):
    return load_settings(
        kafka={"topic_prefix": "poison-"},
        triton={"model_repository": tmp_path / "repo"},
        monitoring={**SMALL, "reports_dir": tmp_path / "reports", "metrics_port": 0},
    )


@pytest.fixture
def served(settings, synthetic_factory):
    """A model with v1 published in the repository and its predictions."""
    setup = synthetic_factory()
    setup.write(settings.triton.model_repository)
    return setup


def _msg(settings, topic: str, value: bytes | None, offset: int = 0, key: bytes | None = b"k") -> Message:
    return Message(topic=settings.kafka.topic(topic), partition=0, offset=offset, key=key, value=value)


def _json(record: dict) -> bytes:
    return json.dumps(record).encode()


def _skipped(skipped: SkippedRecords, topic: str, reason: str) -> float:
    return skipped.count(topic, reason)


def _hostile_predictions(valid: dict) -> dict[str, bytes | None]:
    """Name -> value: predictions that break the contract or that the monitor cannot use."""
    return {
        "year one": _json({**valid, "event_time": YEAR_ONE}),
        "naive time": _json({**valid, "event_time": NAIVE}),
        "year 9999": _json({**valid, "event_time": "9999-12-31T23:59:59+00:00"}),
        "huge event id": _json({**valid, "event_id": "e" * 100_000}),
        "200 KB label": _json({**valid, "label": "x" * 200_000}),
        "unknown label": _json({**valid, "label": "not-a-label"}),
        "scores not numbers": _json({**valid, "scores": {"positive": "high"}}),
        "extra field": _json({**valid, "surprise": 1}),
        "too deep": _json({**valid, "features": {"a": [[[[[[[[[[1]]]]]]]]]]}}),
        **{f"garbage {i}": g for i, g in enumerate(GARBAGE)},
    }


# -- the monitor worker's fold: predictions -------------------------------------------------------------------------


def test_hostile_predictions_are_dead_lettered_and_the_rest_of_the_batch_goes_on(settings, served):
    worker = MonitorWorker(settings)
    pairs = served.predictions(260, seed=3)
    valid = json.loads(pairs[0][0].to_bytes())
    hostile = _hostile_predictions(valid)
    messages, offset = [], 0
    for i, (prediction, _) in enumerate(pairs):
        messages.append(_msg(settings, "predictions-v1", prediction.to_bytes(), offset))
        offset += 1
        if i < len(hostile):
            name, value = list(hostile.items())[i]
            messages.append(_msg(settings, "predictions-v1", value, offset, key=b"k" * 5000))
            offset += 1

    folded = worker._fold(messages)

    assert len(folded.dead) == len(hostile)
    assert len(worker.monitor.tracks["classifier"].window) == 260
    assert len(folded.outcomes) == 1  # the check at 200 ran in the same batch
    letters = [DeadLetter.model_validate_json(r.value) for r in folded.dead]
    assert all(r.topic == settings.kafka.topic("dlq-v1") for r in folded.dead)
    assert all(len(r.key) == 64 for r in folded.dead)  # a 5000-byte key is replaced by its SHA-256
    by_name = dict(zip(hostile, letters, strict=True))  # in the order of the batch
    assert all(letter.stage == "monitoring" and letter.error for letter in letters)
    assert all(by_name[name].original() == (value or b"") for name, value in hostile.items())
    assert "out of range" in by_name["year one"].error and "out of range" in by_name["year 9999"].error
    assert "time zone" in by_name["naive time"].error
    assert "unknown label" in by_name["unknown label"].error and "label" in by_name["200 KB label"].error
    assert by_name["garbage 0"].error == "empty value (tombstone)" and "not UTF-8" in by_name["garbage 2"].error
    outcomes = worker.metrics.registry.get_sample_value
    assert outcomes("driftloop_monitor_records_total", {"topic": "predictions", "outcome": "ok"}) == 260
    # The 200 KB label breaks the contract (labels are ids of at most 128 characters); "not-a-label" is unusable.
    assert outcomes("driftloop_monitor_records_total", {"topic": "predictions", "outcome": "unusable"}) == 1


def test_valid_predictions_with_absurd_values_enter_the_window_and_checks_still_run(settings, served):
    worker = MonitorWorker(settings)
    messages = []
    for i, (prediction, _) in enumerate(served.predictions(250, seed=4)):
        absurd = {
            "features": {k: (1e308 if i % 2 else -1e308) for k in prediction.features},
            "text_stats": {k: 1e308 for k in prediction.text_stats or {}},
            "scores": {} if i % 3 else {prediction.label: -1e308},
        }
        value = _json({**json.loads(prediction.to_bytes()), **absurd})  # NaN / Infinity: refused by the contract
        messages.append(_msg(settings, "predictions-v1", value, i))
    folded = worker._fold(messages)
    assert folded.dead == [] and len(worker.monitor.tracks["classifier"].window) == 250
    assert [o.result.model for o in folded.outcomes] == ["classifier"]


def test_an_unexpected_exception_dead_letters_that_prediction_only(settings, served):
    class Fragile(Monitor):
        def observe_prediction(self, prediction):
            if prediction.event_id.endswith("7"):
                raise RuntimeError("boom")
            return super().observe_prediction(prediction)

    metrics = MonitorMetrics()
    worker = MonitorWorker(settings, metrics=metrics, monitor=Fragile(settings, metrics))
    pairs = served.predictions(50, seed=5)
    folded = worker._fold([_msg(settings, "predictions-v1", p.to_bytes(), i) for i, (p, _) in enumerate(pairs)])
    broken = [p for p, _ in pairs if p.event_id.endswith("7")]
    assert broken and len(folded.dead) == len(broken)
    assert all("unexpected RuntimeError: boom" in DeadLetter.model_validate_json(r.value).error for r in folded.dead)
    assert len(worker.monitor.tracks["classifier"].window) == 50 - len(broken)


def test_a_check_that_raises_is_counted_and_the_loop_goes_on(settings, served, caplog):
    def broken_reference(settings, model, version) -> ReferenceSample:
        reference = load_reference(settings, model, version)
        return ReferenceSample(
            model,
            version,
            reference.labels,
            reference.feature_names,
            reference.frame.drop(columns=["label"]),
            reference.metrics,
            reference.path,
        )

    metrics = MonitorMetrics()
    worker = MonitorWorker(
        settings, metrics=metrics, monitor=Monitor(settings, metrics, reference_loader=broken_reference)
    )
    pairs = served.predictions(420, seed=6)
    messages = [_msg(settings, "predictions-v1", p.to_bytes(), i) for i, (p, _) in enumerate(pairs)]
    folded = worker._fold(messages)  # checks fall due at 200, 300, 400
    assert folded.outcomes == [] and folded.dead == []
    assert (
        metrics.registry.get_sample_value(
            "driftloop_drift_check_errors_total", {"model": "classifier", "error": "KeyError"}
        )
        == 3
    )
    assert len(worker.monitor.tracks["classifier"].window) == 300
    assert "drift check failed" in caplog.text


# -- the monitor worker's fold: labels ------------------------------------------------------------------------------


def test_hostile_labels_are_skipped_counted_and_never_dead_lettered(settings, served):
    worker = MonitorWorker(settings)
    pairs = served.predictions(20, seed=7)
    known = pairs[0][0].event_id
    now = datetime.now(UTC).isoformat()
    hostile = [
        _json({"event_id": known, "label": pairs[0][1], "labelled_at": YEAR_ONE}),
        _json({"event_id": known, "label": pairs[0][1], "labelled_at": NAIVE}),
        _json({"event_id": known, "label": "x" * 200_000, "labelled_at": now}),
        _json({"event_id": "e" * 100_000, "label": "positive", "labelled_at": now}),
        _json({"event_id": known, "label": "not-a-label", "labelled_at": now}),
        _json({"event_id": "never-seen", "label": "not-a-label", "labelled_at": now}),
        *GARBAGE,
    ]
    messages = [_msg(settings, "predictions-v1", p.to_bytes(), i) for i, (p, _) in enumerate(pairs)]
    messages += [_msg(settings, "labels-v1", v, 100 + i) for i, v in enumerate(hostile)]
    labels = [Label(event_id=p.event_id, label=label, labelled_at=datetime.now(UTC)) for p, label in pairs]
    messages += [_msg(settings, "labels-v1", label.to_bytes(), 200 + i) for i, label in enumerate(labels)]
    # A label for an event nobody has seen (yet) is kept aside, not refused: its prediction may come later.
    messages.append(
        _msg(settings, "labels-v1", _json({"event_id": "later", "label": "positive", "labelled_at": now}), 300)
    )

    skipped = worker.metrics.skipped
    before = {r: _skipped(skipped, "labels-v1", r) for r in ("labelled_at", "unknown label", "not json", "event_id")}
    folded = worker._fold(messages)

    assert folded.dead == []
    track = worker.monitor.tracks["classifier"]
    assert track.window.labelled == 20 and len(worker.monitor.pending_labels) == 1
    after = {r: _skipped(skipped, "labels-v1", r) for r in before}
    assert after["labelled_at"] - before["labelled_at"] == 2  # year one, naive
    assert after["unknown label"] - before["unknown label"] == 2
    assert after["event_id"] - before["event_id"] == 2  # the 100 KB event id, and {"a": NaN} (no event_id)
    assert _skipped(skipped, "labels-v1", "label") == 1  # the 200 KB label (a fresh registry per worker)
    assert after["not json"] - before["not json"] >= 2
    counted = worker.metrics.registry.get_sample_value
    assert counted("driftloop_monitor_records_total", {"topic": "labels", "outcome": "invalid"}) == 4 + len(GARBAGE)
    assert counted("driftloop_monitor_records_total", {"topic": "labels", "outcome": "unusable"}) == 2
    assert counted("driftloop_monitor_records_total", {"topic": "labels", "outcome": "ok"}) == 21


def test_a_pending_label_the_version_does_not_have_is_dropped_when_its_prediction_comes(settings, served):
    monitor = Monitor(settings)
    (p1, _), (p2, l2) = served.predictions(2, seed=8)
    monitor.observe_label(Label(event_id=p1.event_id, label="stranger", labelled_at=datetime.now(UTC)))
    monitor.observe_label(Label(event_id=p2.event_id, label=l2, labelled_at=datetime.now(UTC)))
    monitor.observe_prediction(p1)
    monitor.observe_prediction(p2)
    assert monitor.tracks["classifier"].window.labelled == 1


def test_a_prediction_dated_far_ahead_cannot_empty_a_window_with_a_max_age(tmp_path, served):
    settings = load_settings(
        triton={"model_repository": tmp_path / "repo"}, monitoring={**SMALL, "window_max_age_s": 3600}
    )
    worker = MonitorWorker(settings)
    pairs = served.predictions(10, seed=9)
    ahead = pairs[0][0].model_copy(update={"event_id": "ahead", "event_time": datetime.now(UTC) + timedelta(days=3)})
    messages = [_msg(settings, "predictions-v1", p.to_bytes(), i) for i, (p, _) in enumerate(pairs)]
    folded = worker._fold([*messages[:5], _msg(settings, "predictions-v1", ahead.to_bytes(), 99), *messages[5:]])
    assert len(folded.dead) == 1 and "too far ahead" in DeadLetter.model_validate_json(folded.dead[0].value).error
    assert len(worker.monitor.tracks["classifier"].window) == 10


# -- drift events read back at start, model states ------------------------------------------------------------------


def _drift_event(model: str) -> dict:
    now = datetime.now(UTC).isoformat()
    return {
        "id": "ev-1",
        "kind": "data",
        "status": "firing",
        "severity": "critical",
        "model": model,
        "version": 1,
        "dedup_key": f"driftloop/{model}/data",
        "window": {"start": now, "end": now, "size": 300, "labelled": 0},
        "metrics": {"drift_share": 0.8},
        "drifted_columns": ["amount"],
        "started_at": now,
        "detected_at": now,
    }


def test_drift_events_read_back_skip_what_cannot_be_used(settings, served):
    worker = MonitorWorker(settings)
    skipped = worker.metrics.skipped
    before = _skipped(skipped, "drift-v1", "unknown model"), _skipped(skipped, "drift-v1", "window.start")
    hostile = [
        *GARBAGE,
        _json(_drift_event("nobody")),
        _json({**_drift_event("classifier"), "window": {"start": YEAR_ONE, "end": None, "size": 1, "labelled": 0}}),
    ]
    assert [worker._own_event(v) for v in hostile] == [None] * len(hostile)
    event = worker._own_event(_json(_drift_event("classifier")))
    assert event is not None and event.model == "classifier"
    assert worker.monitor.restore_alerts([event]) == [event]
    assert _skipped(skipped, "drift-v1", "unknown model") - before[0] == 1
    assert _skipped(skipped, "drift-v1", "window.start") - before[1] == 1


def test_model_states_that_cannot_be_followed_are_skipped_and_counted(settings, served):
    repository = settings.triton.model_repository
    skipped = SkippedRecords(registry=MonitorMetrics().registry)
    now = datetime.now(UTC).isoformat()
    state = {"model": "classifier", "champion": 1, "event": "promoted", "at": now}
    hostile = {
        "tombstone": None,
        "garbage": b"\x00\x01\x02",
        "unknown model": _json({**state, "model": "nobody"}),
        "unknown version": _json({**state, "champion": 99}),
        "year one": _json({**state, "at": YEAR_ONE}),
        "naive": _json({**state, "at": NAIVE}),
        "champion zero": _json({**state, "champion": 0}),
        "champion negative": _json({**state, "champion": -3}),
        "huge model name": _json({**state, "model": "m" * 200_000}),
        "absurd champion": _json({**state, "champion": 10**400}),
    }
    results = {
        name: followed_state(_msg(settings, "models-v1", v, i), repository, skipped)
        for i, (name, v) in enumerate(hostile.items())
    }
    assert results == dict.fromkeys(hostile)
    assert skipped.count("models-v1", "unknown model") == 1 and skipped.count("models-v1", "unknown version") == 1
    assert skipped.count("models-v1", "empty value") == 1
    valid = followed_state(_msg(settings, "models-v1", _json(state)), repository, skipped)
    assert isinstance(valid, ModelState) and (valid.model, valid.champion) == ("classifier", 1)
    published = followed_state(_msg(settings, "models-v1", _json({**state, "champion": None})), repository, skipped)
    assert published is not None and published.champion is None


# -- the demo's observer --------------------------------------------------------------------------------------------


def test_the_demo_observer_skips_what_it_cannot_read(settings, served):
    view = TopicView(settings, "classifier", SkippedRecords(registry=MonitorMetrics().registry))
    (prediction, label), *_ = served.predictions(1, seed=10)
    valid = json.loads(prediction.to_bytes())
    now = datetime.now(UTC).isoformat()
    hostile = [
        # The observer does not know the model's labels: an unknown (or 200 KB) predicted label is the monitor's
        # to refuse.
        *(("predictions-v1", v) for name, v in _hostile_predictions(valid).items() if "label" not in name),
        ("predictions-v1", _json({**valid, "predicted_at": NAIVE})),
        ("predictions-v1", _json({**valid, "predicted_at": YEAR_ONE})),
        ("labels-v1", _json({"event_id": prediction.event_id, "label": label, "labelled_at": NAIVE})),
        ("labels-v1", _json({"event_id": prediction.event_id, "label": "x" * 200_000, "labelled_at": now})),
        ("drift-v1", _json([1, 2])),
        ("drift-v1", _json({**_drift_event("classifier"), "detected_at": YEAR_ONE})),
        ("dlq-v1", b"garbage"),
        ("dlq-v1", None),
        ("models-v1", None),
        ("models-v1", _json({"model": "classifier", "champion": "two"})),
        *((topic, g) for topic in ("labels-v1", "drift-v1", "models-v1") for g in GARBAGE),
    ]
    accepted = [
        (topic, (value or b"")[:100])
        for i, (topic, value) in enumerate(hostile)
        if view.observe(_msg(settings, topic, value, i))
    ]
    assert accepted == []

    state = {"model": "classifier", "champion": 1, "event": "promoted", "at": now}
    letter = DeadLetter.of("inference", "x", {"topic": "t", "partition": 0, "offset": 1}, None, b"v")
    good = [
        ("predictions-v1", prediction.to_bytes()),
        ("labels-v1", Label(event_id=prediction.event_id, label=label, labelled_at=datetime.now(UTC)).to_bytes()),
        ("drift-v1", _json(_drift_event("classifier"))),
        ("dlq-v1", letter.to_bytes()),
        ("models-v1", _json(state)),
    ]
    assert all(view.observe(_msg(settings, topic, value)) for topic, value in good)
    seen = view.seen
    assert list(seen.predictions) == [prediction.event_id] and seen.labels == {prediction.event_id: label}
    assert len(seen.drift) == 1 and seen.dead_letters == 1 and [s.champion for s in seen.states] == [1]
    assert datetime.fromisoformat(seen.drift[0]["detected_at"]).tzinfo is not None


# -- driftloop tail -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("stream", ["predictions", "labels", "drift", "models", "dlq", "events"])
def test_tail_prints_any_record_as_one_line(stream, served):
    (prediction, _), *_ = served.predictions(1, seed=11)
    values = [
        *GARBAGE,
        b"x" * 300_000,
        b"\xff" * 300_000,
        _json({"event_time": YEAR_ONE}),
        _json({**json.loads(prediction.to_bytes()), "scores": {}}),
        prediction.to_bytes(),
    ]
    for value in values:
        line = pretty_line(stream, value, "t[0]@1")
        assert "\n" not in line and len(line) < 2000, line[:200]
    assert (
        pretty_line(stream, None, "t[0]@7")
        == f"! t[0]@7 invalid {stream} record: empty value (tombstone) | (tombstone)"
    )
    assert "base64:" in pretty_line(stream, b"\xff\x00binary")


def test_tail_json_lines_are_json_or_a_note():
    assert raw_json_line(b'{"a": 1}') == ('{"a": 1}', "")
    assert raw_json_line(b'{"a":\n 1}') == ('{"a": 1}', "")
    assert raw_json_line(None) == (None, "tombstone (no value)")
    assert raw_json_line(b"\xff")[1].startswith("not UTF-8")
    assert raw_json_line(b'{"a": NaN}')[1].startswith("not JSON")
    assert raw_json_line(b"[" * 100_000)[1].startswith("not JSON")
