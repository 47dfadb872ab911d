"""The stream workers as separate processes against the real broker, Triton and Feast store.

The classifier here is tests/streams/keyword_classifier (the serving contract of triton_repo/classifier without
training), so these tests isolate the workers: accounting of every event, DLQ reasons, features, restarts.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path

import pytest
import tritonclient.http as httpclient
from confluent_kafka import Consumer, KafkaException, TopicPartition

from driftloop.settings import Settings, load_settings
from features.store import apply_repo
from streams import KafkaConsumer, KafkaProducer, ensure_topics
from streams.client import client_config
from streams.generator import produce, synthetic_records
from streams.client import Record
from streams.schemas import DeadLetter, ModelState, Prediction
from streams.windows import features_at
from tests.helpers import free_port

pytestmark = pytest.mark.integration

MODEL = "keyword_classifier"
MODEL_DIR = Path(__file__).parent / MODEL


@pytest.fixture(scope="session")
def keyword_model(triton_server):
    client = httpclient.InferenceServerClient(triton_server.http)
    if triton_server.repository is None:
        pytest.skip("needs a Triton server whose model repository this test can write")
    shutil.copytree(MODEL_DIR, triton_server.repository / MODEL, dirs_exist_ok=True)
    client.load_model(MODEL)
    yield MODEL
    client.unload_model(MODEL)
    client.close()


@pytest.fixture
def pipeline(settings_factory, triton_server, keyword_model, tmp_path, monkeypatch):
    """Settings for one pipeline (fresh topics, groups, Feast store), also exported as env for worker processes."""
    base = settings_factory()
    run = uuid.uuid4().hex[:6]
    env = {
        "DRIFTLOOP_KAFKA__BOOTSTRAP_SERVERS": base.kafka_bootstrap,
        "DRIFTLOOP_KAFKA__TOPIC_PREFIX": base.kafka.topic_prefix,
        "DRIFTLOOP_KAFKA__SESSION_TIMEOUT_MS": "6000",
        "DRIFTLOOP_TRITON__URL": triton_server.http,
        "DRIFTLOOP_TRITON__GRPC_URL": triton_server.grpc,
        "DRIFTLOOP_TRITON__MODEL_NAME": keyword_model,
        "DRIFTLOOP_FEAST__DATA_DIR": str(tmp_path / "feast"),
        "DRIFTLOOP_WORKERS__INFERENCE_GROUP": f"inference-{run}",
        "DRIFTLOOP_WORKERS__FEATURES_GROUP": f"features-{run}",
        "DRIFTLOOP_WORKERS__METRICS_PORT": "0",
        "DRIFTLOOP_WORKERS__FAUST_WEB_PORT": str(free_port()),
        "DRIFTLOOP_WORKERS__FAUST_DATA_DIR": str(tmp_path / "faust"),
        "DRIFTLOOP_WORKERS__FEATURE_PUSH_INTERVAL_S": "0.2",
    }
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("KAFKA_BOOTSTRAP_SERVERS", raising=False)
    monkeypatch.delenv("TRITON_URL", raising=False)
    settings = load_settings()
    ensure_topics(settings)
    apply_repo(settings)
    pipeline = Pipeline(settings, tmp_path)
    yield pipeline
    for proc in pipeline.processes:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
    for proc in pipeline.processes:
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()


class Pipeline:
    """Worker processes of one test; waiting fails at once, with the log, when a worker dies unexpectedly."""

    def __init__(self, settings: Settings, folder: Path) -> None:
        self.settings = settings
        self.folder = folder
        self.processes: list[subprocess.Popen] = []
        self.killed: set[int] = set()

    def start(self, *args: str) -> subprocess.Popen:
        log = (self.folder / f"worker-{len(self.processes)}.log").open("wb")
        proc = subprocess.Popen([sys.executable, "-m", "driftloop.cli", "workers", *args],
                                stdout=log, stderr=subprocess.STDOUT, env=dict(os.environ))  # fmt: skip
        self.processes.append(proc)
        return proc

    def kill(self, proc: subprocess.Popen) -> None:
        self.killed.add(proc.pid)
        proc.send_signal(signal.SIGKILL)  # no chance to commit or flush anything
        proc.wait(timeout=10)

    def wait(self, condition, timeout_s: float, what: str) -> None:
        deadline = time.monotonic() + timeout_s
        while not condition():
            for i, proc in enumerate(self.processes):
                if proc.poll() is not None and proc.pid not in self.killed:
                    log = (self.folder / f"worker-{i}.log").read_text(errors="replace")[-3000:]
                    raise AssertionError(f"worker {proc.args[3:]} exited with {proc.returncode}:\n{log}")
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out waiting for {what}")
            time.sleep(0.5)


def _produce(settings: Settings, count: int, malformed_share: float, seed: int, rate: float | None = None):
    """Send synthetic events; returns (valid event ids, number of malformed)."""
    valid, malformed = [], 0
    batches = list(synthetic_records(settings, count, seed=seed, malformed_share=malformed_share, labels=False))
    for records in batches:
        value = records[0].value or b""
        if records[0].key and records[0].key.startswith(b"malformed-"):
            malformed += 1
        else:
            valid.append(json.loads(value)["event_id"])
    with KafkaProducer(settings) as producer:
        produce(producer, batches, rate=rate)
    return valid, malformed


def _collect(settings: Settings, topic: str, until, timeout_s: float = 180.0) -> list:
    records = []
    with KafkaConsumer(settings, f"check-{uuid.uuid4().hex[:6]}", [settings.kafka.topic(topic)]) as consumer:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline and not until(records):
            records += [m.value() for m in consumer.consume_batch(500, 0.5)]
    return records


def _group_caught_up(settings: Settings, group: str, topic: str) -> bool:
    consumer = Consumer(client_config(settings, {"group.id": group}))
    try:
        partitions = consumer.list_topics(topic, timeout=10).topics[topic].partitions
        committed = consumer.committed([TopicPartition(topic, p) for p in partitions], timeout=10)
        return all(tp.offset >= consumer.get_watermark_offsets(tp, timeout=10)[1] for tp in committed)
    except KafkaException:  # e.g. the group coordinator is still loading: not caught up yet
        return False
    finally:
        consumer.close()


def _table_state(settings: Settings) -> dict[str, dict]:
    """The feature worker's table, read back from its changelog topic (latest value per entity)."""
    topic = f"{settings.workers.features_group}-entity-windows-changelog"
    state: dict[str, dict] = {}
    with KafkaConsumer(settings, f"changelog-{uuid.uuid4().hex[:6]}", [topic]) as consumer:
        idle_since = time.monotonic()
        while time.monotonic() - idle_since < 3:
            batch = consumer.consume_batch(500, 0.5)
            if batch:
                idle_since = time.monotonic()
            for msg in batch:
                state[msg.key().decode()] = json.loads(msg.value())
    return state


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
    predictions = [Prediction.model_validate_json(v) for v in
                   _collect(settings, "predictions-v1", lambda r: len({json.loads(v)["event_id"] for v in r}) >= len(valid))]  # fmt: skip
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
    batches[17][0] = batches[17][0].__class__(batches[17][0].topic, json.dumps(poisoned).encode(), key=batches[17][0].key)
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
        start("run", "--role", "inference")
        _produce(settings, 20, malformed_share=0.0, seed=41)
        first = _collect(settings, "predictions-v1", lambda r: len(r) >= 20)
        assert {json.loads(v)["model"]["version"] for v in first} == {2}  # no announcement: the newest version

        state = ModelState(model=MODEL, champion=1, candidate=None, event="rolled_back", at=datetime.now(UTC))
        with KafkaProducer(settings) as producer:
            producer.produce_batch([Record(settings.kafka.topic("models-v1"), state.to_bytes(), key=MODEL.encode())])
        time.sleep(2)  # the worker follows the topic in the background
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
    pipeline.wait(lambda: len(_collect(settings, "predictions-v1", lambda r: len(r) >= 100, 5)) >= 100, 90, "predictions")
    worker.send_signal(signal.SIGTERM)
    assert worker.wait(timeout=30) == 0

    start("run", "--role", "inference")
    _collect(settings, "predictions-v1", lambda r: len(r) >= len(valid))
    time.sleep(3)  # let a late duplicate arrive, if there were one
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
    start("run", "--role", "inference")
    ids, _ = _produce(settings, 200, malformed_share=0.0, seed=61)
    predictions = [json.loads(v) for v in _collect(settings, "predictions-v1", lambda r: len(r) >= 200)]
    by_role = Counter((p["role"], p["model"]["version"]) for p in predictions)
    assert set(by_role) == {("champion", 1), ("candidate", 2)}, by_role
    assert 60 < by_role[("candidate", 2)] < 140

    _announce(settings, champion=1, candidate=7)  # announced but not served: its share falls back to the champion
    time.sleep(2)
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
