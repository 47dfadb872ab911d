"""The stream workers as separate processes against the real broker, Triton and Feast store.

The classifier here is tests/streams/keyword_classifier (the serving contract of triton_repo/classifier without
training), so these tests isolate the workers: accounting of every event, DLQ reasons, features, restarts.
"""

from __future__ import annotations

import json
import shutil
import signal
from collections import Counter
from datetime import UTC, datetime

import pytest
import tritonclient.http as httpclient

from foundation.settings import Settings
from streams import KafkaProducer
from streams.client import Record
from streams.generator import produce, synthetic_records
from streams.schemas import DeadLetter, ModelState, Prediction
from streams.windows import features_at
from tests.helpers import wait_until
from tests.streams.support import MODEL, MODEL_DIR
from tests.streams.support import collect as _collect
from tests.streams.support import group_caught_up as _group_caught_up
from tests.streams.support import produce_synthetic as _produce
from tests.streams.support import table_state as _table_state

pytestmark = pytest.mark.integration


def test_every_event_gets_a_prediction_or_a_dead_letter(pipeline):
    settings, start = pipeline.settings, pipeline.start
    valid, malformed = _produce(settings, 2000, malformed_share=0.05, seed=11)
    prediction_texts = {
        json.loads(r[0].value)["event_id"]: json.loads(r[0].value)["text"]
        for r in synthetic_records(settings, 2000, seed=11, malformed_share=0.05, labels=False)
        if not r[0].key.startswith(b"malformed-")
    }
    assert 60 < malformed < 140

    # Features first, so that the inference workers read what the faust table holds at the end.
    start("run", "--role", "features")
    events_topic = settings.kafka.topic("events-v1")
    pipeline.wait(lambda: _group_caught_up(settings, settings.workers.features_group, events_topic), 120, "features")

    start("--role", "inference", "--replicas", "2")
    predictions = [
        Prediction.model_validate_json(v)
        for v in _collect(
            settings, "predictions-v1", lambda r: len({json.loads(v)["event_id"] for v in r}) >= len(valid)
        )
    ]
    letters = [DeadLetter.model_validate_json(v) for v in _collect(settings, "dlq-v1", lambda r: len(r) >= malformed)]

    predicted = {p.event_id for p in predictions}
    assert predicted == set(valid), f"missing {len(set(valid) - predicted)}"
    assert len(letters) == malformed
    assert all(letter.stage == "validate" and letter.error for letter in letters)
    assert {letter.source.topic for letter in letters} == {events_topic}
    reasons = Counter(letter.error.split(":")[0].split(" ")[0] for letter in letters)
    assert len(reasons) >= 4, reasons  # several kinds of breakage, each with its own reason

    # Features in the predictions are what the faust table computed for that entity.
    table = _table_state(settings)
    for prediction in predictions:
        state = table[prediction.entity_id]
        expected = features_at(state["times"], state["lengths"], state["times"][-1])
        used = {name: prediction.features[name] for name in expected}
        assert used == pytest.approx(expected, rel=1e-5), prediction.entity_id
        assert prediction.model.name == MODEL and prediction.model.version == 1
        assert prediction.timings_ms.end_to_end >= prediction.timings_ms.inference >= 0
        assert prediction.text_stats["word_count"] == len(prediction_texts[prediction.event_id].split())


def test_killing_an_inference_worker_mid_stream_loses_no_event(pipeline):
    settings, start = pipeline.settings, pipeline.start
    worker = start("run", "--role", "inference")
    valid, _ = _produce(settings, 300, malformed_share=0.0, seed=21)
    pipeline.wait(lambda: len(_collect(settings, "predictions-v1", lambda r: len(r) >= 50, 5)) >= 50, 90, "predictions")
    pipeline.kill(worker)
    more, _ = _produce(settings, 300, malformed_share=0.0, seed=22)
    start("run", "--role", "inference")

    expected = set(valid) | set(more)
    seen = _collect(settings, "predictions-v1", lambda r: {json.loads(v)["event_id"] for v in r} >= expected)
    assert {json.loads(v)["event_id"] for v in seen} >= expected


def test_poisoned_event_is_isolated_into_the_dlq_and_its_batch_is_answered(pipeline):
    settings, start = pipeline.settings, pipeline.start
    batches = list(synthetic_records(settings, 40, seed=31, labels=False))
    poisoned = json.loads(batches[17][0].value)
    poisoned["text"] = "POISON " + poisoned["text"]
    batches[17][0] = batches[17][0].__class__(
        batches[17][0].topic, json.dumps(poisoned).encode(), key=batches[17][0].key
    )
    with KafkaProducer(settings) as producer:
        produce(producer, batches)
    start("run", "--role", "inference")

    predictions = _collect(settings, "predictions-v1", lambda r: len(r) >= 39)
    letters = [DeadLetter.model_validate_json(v) for v in _collect(settings, "dlq-v1", lambda r: len(r) >= 1)]
    assert len({json.loads(v)["event_id"] for v in predictions}) == 39
    assert len(letters) == 1 and letters[0].stage == "inference" and "poisoned" in letters[0].error
    assert json.loads(letters[0].original())["event_id"] == poisoned["event_id"]


def test_workers_follow_the_champion_announced_on_the_models_topic(pipeline, triton_server):
    settings, start = pipeline.settings, pipeline.start
    version_2 = triton_server.repository / MODEL / "2"
    shutil.copytree(MODEL_DIR / "1", version_2, dirs_exist_ok=True)
    client = httpclient.InferenceServerClient(triton_server.http)
    client.load_model(MODEL)  # version_policy all: versions 1 and 2 served side by side
    try:
        worker = start("run", "--role", "inference")
        _produce(settings, 20, malformed_share=0.0, seed=41)
        first = _collect(settings, "predictions-v1", lambda r: len(r) >= 20)
        assert {json.loads(v)["model"]["version"] for v in first} == {2}  # no announcement: the newest version

        state = ModelState(model=MODEL, champion=1, candidate=None, event="rolled_back", at=datetime.now(UTC))
        with KafkaProducer(settings) as producer:
            producer.produce_batch([Record(settings.kafka.topic("models-v1"), state.to_bytes(), key=MODEL.encode())])
        wait_until(lambda: "event=rolled_back" in pipeline.log(worker), 30, "the worker to follow the rollback")
        ids, _ = _produce(settings, 20, malformed_share=0.0, seed=42)
        later = [json.loads(v) for v in _collect(settings, "predictions-v1", lambda r: len(r) >= 40)]
        assert {p["model"]["version"] for p in later if p["event_id"] in set(ids)} == {1}
    finally:
        shutil.rmtree(version_2)
        client.load_model(MODEL)
        client.close()


def test_sigterm_finishes_in_flight_batches_and_commits_them(pipeline):
    settings, start = pipeline.settings, pipeline.start
    worker = start("run", "--role", "inference")
    valid, _ = _produce(settings, 400, malformed_share=0.0, seed=51)
    pipeline.wait(
        lambda: len(_collect(settings, "predictions-v1", lambda r: len(r) >= 100, 5)) >= 100, 90, "predictions"
    )
    worker.send_signal(signal.SIGTERM)
    assert worker.wait(timeout=30) == 0

    start("run", "--role", "inference")
    _collect(settings, "predictions-v1", lambda r: len(r) >= len(valid))
    # Predictions are written before their events are committed: once the group is caught up, a duplicate is there.
    events = settings.kafka.topic("events-v1")
    wait_until(lambda: _group_caught_up(settings, settings.workers.inference_group, events), 60, "commits")
    seen = [json.loads(v)["event_id"] for v in _collect(settings, "predictions-v1", lambda r: False, 5)]
    assert set(seen) == set(valid)
    assert len(seen) == len(valid), f"{len(seen) - len(valid)} duplicates after a graceful stop"


@pytest.fixture
def two_versions(triton_server):
    version_2 = triton_server.repository / MODEL / "2"
    shutil.copytree(MODEL_DIR / "1", version_2, dirs_exist_ok=True)
    client = httpclient.InferenceServerClient(triton_server.http)
    client.load_model(MODEL)
    yield
    shutil.rmtree(version_2)
    client.load_model(MODEL)
    client.close()


def _announce(settings: Settings, champion: int, candidate: int | None) -> None:
    state = ModelState(model=MODEL, champion=champion, candidate=candidate, event="published", at=datetime.now(UTC))
    with KafkaProducer(settings) as producer:
        producer.produce_batch([Record(settings.kafka.topic("models-v1"), state.to_bytes(), key=MODEL.encode())])


def test_canary_share_goes_to_the_candidate_and_a_missing_candidate_falls_back(pipeline, two_versions, monkeypatch):
    settings, start = pipeline.settings, pipeline.start
    monkeypatch.setenv("DRIFTLOOP_WORKERS__CANARY_SHARE", "0.5")
    _announce(settings, champion=1, candidate=2)
    worker = start("run", "--role", "inference")
    ids, _ = _produce(settings, 200, malformed_share=0.0, seed=61)
    predictions = [json.loads(v) for v in _collect(settings, "predictions-v1", lambda r: len(r) >= 200)]
    by_role = Counter((p["role"], p["model"]["version"]) for p in predictions)
    assert set(by_role) == {("champion", 1), ("candidate", 2)}, by_role
    assert 60 < by_role[("candidate", 2)] < 140

    _announce(settings, champion=1, candidate=7)  # announced but not served: its share falls back to the champion
    wait_until(lambda: "candidate=7" in pipeline.log(worker), 30, "the worker to follow the announcement")
    more, _ = _produce(settings, 100, malformed_share=0.0, seed=62)
    later = [json.loads(v) for v in _collect(settings, "predictions-v1", lambda r: len(r) >= 300)]
    answered = [p for p in later if p["event_id"] in set(more)]
    assert len({p["event_id"] for p in answered}) == 100
    assert {p["model"]["version"] for p in answered} == {1}


def test_shadow_mode_records_both_answers(pipeline, two_versions, monkeypatch):
    settings, start = pipeline.settings, pipeline.start
    monkeypatch.setenv("DRIFTLOOP_WORKERS__CANARY_SHARE", "0")
    monkeypatch.setenv("DRIFTLOOP_WORKERS__SHADOW", "true")
    _announce(settings, champion=1, candidate=2)
    start("run", "--role", "inference")
    ids, _ = _produce(settings, 50, malformed_share=0.0, seed=71)
    predictions = [json.loads(v) for v in _collect(settings, "predictions-v1", lambda r: len(r) >= 100)]
    roles = Counter((p["role"], p["model"]["version"]) for p in predictions)
    assert roles == {("champion", 1): 50, ("shadow", 2): 50}


def test_unserved_versions_never_answer_and_never_mislabel(pipeline, two_versions, monkeypatch):
    """Triton is always called with an explicit version: a champion announced but not served is answered by an older
    served version (never by the candidate, Triton's default), and a shadow candidate that is not served is
    skipped - neither raises."""
    settings, start = pipeline.settings, pipeline.start
    monkeypatch.setenv("DRIFTLOOP_WORKERS__CANARY_SHARE", "0")
    monkeypatch.setenv("DRIFTLOOP_WORKERS__SHADOW", "true")
    _announce(settings, champion=7, candidate=2)  # 7 was never loaded; 1 and 2 are served
    worker = start("run", "--role", "inference")
    first, _ = _produce(settings, 50, malformed_share=0.0, seed=81)
    predictions = [json.loads(v) for v in _collect(settings, "predictions-v1", lambda r: len(r) >= 50)]
    assert Counter((p["role"], p["model"]["version"]) for p in predictions) == {("champion", 1): 50}

    _announce(settings, champion=1, candidate=9)  # a shadow candidate that is not served
    pipeline.wait(lambda: "candidate=9" in pipeline.log(worker), 30, "the worker to follow the announcement")
    more, _ = _produce(settings, 50, malformed_share=0.0, seed=82)
    later = [json.loads(v) for v in _collect(settings, "predictions-v1", lambda r: len(r) >= 100)]
    answered = Counter((p["role"], p["model"]["version"]) for p in later if p["event_id"] in set(more))
    assert answered == {("champion", 1): 50}
    assert worker.poll() is None and "Traceback" not in pipeline.log(worker)
