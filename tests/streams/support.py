"""What the worker-process tests share: the keyword model on Triton, one pipeline's settings and worker
processes, and helpers that produce events and collect what the workers wrote.

The fixtures are registered for the whole suite by ``pytest_plugins`` in ``tests/conftest.py``; tests name them
without importing them.
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
from pathlib import Path

import pytest
import tritonclient.http as httpclient
from confluent_kafka import Consumer, KafkaException, TopicPartition

from features.store import apply_repo
from foundation.settings import Settings, load_settings
from streams import KafkaConsumer, KafkaProducer, ensure_topics
from streams.client import client_config
from streams.generator import produce, synthetic_records
from tests.helpers import worker_env

__all__ = [
    "MODEL",
    "MODEL_DIR",
    "Pipeline",
    "collect",
    "group_caught_up",
    "keyword_model",
    "open_pipeline",
    "pipeline",
    "produce_synthetic",
    "table_state",
]

MODEL = "keyword_classifier"
MODEL_DIR = Path(__file__).parent / MODEL  # tests/streams/keyword_classifier


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
    pipeline = open_pipeline(settings_factory(), triton_server, keyword_model, tmp_path, monkeypatch)
    yield pipeline
    pipeline.close()


def open_pipeline(base: Settings, triton, model: str, folder: Path, monkeypatch, **env: str) -> Pipeline:
    """A pipeline on ``base``'s broker and topic prefix and the Triton endpoint ``triton`` (``.http``, ``.grpc``):
    fresh groups and Feast store under ``folder``, all exported as env for worker processes (through
    ``monkeypatch``, so undone after the test); ``env`` adds or overrides ``DRIFTLOOP_*`` variables.
    Call :meth:`Pipeline.close` when done (the ``pipeline`` fixture does)."""
    run = uuid.uuid4().hex[:6]
    env = {
        "DRIFTLOOP_KAFKA__BOOTSTRAP_SERVERS": base.kafka_bootstrap,
        "DRIFTLOOP_KAFKA__TOPIC_PREFIX": base.kafka.topic_prefix,
        "DRIFTLOOP_KAFKA__SESSION_TIMEOUT_MS": "6000",
        "DRIFTLOOP_TRITON__URL": triton.http,
        "DRIFTLOOP_TRITON__GRPC_URL": triton.grpc,
        "DRIFTLOOP_TRITON__MODEL_NAME": model,
        "DRIFTLOOP_WORKERS__INFERENCE_GROUP": f"inference-{run}",
        "DRIFTLOOP_WORKERS__FEATURES_GROUP": f"features-{run}",
        **worker_env(folder),
        **env,
    }
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("KAFKA_BOOTSTRAP_SERVERS", raising=False)
    monkeypatch.delenv("TRITON_URL", raising=False)
    settings = load_settings()
    ensure_topics(settings)
    apply_repo(settings)
    return Pipeline(settings, folder)


class Pipeline:
    """Worker processes of one test; waiting fails at once, with the log, when a worker dies unexpectedly."""

    def __init__(self, settings: Settings, folder: Path) -> None:
        self.settings = settings
        self.folder = folder
        self.processes: list[subprocess.Popen] = []
        self.killed: set[int] = set()

    def start(self, *args: str) -> subprocess.Popen:
        log = (self.folder / f"worker-{len(self.processes)}.log").open("wb")
        proc = subprocess.Popen(
            [sys.executable, "-m", "driftloop.cli", "workers", *args],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=dict(os.environ),
        )
        self.processes.append(proc)
        return proc

    def kill(self, proc: subprocess.Popen) -> None:
        self.killed.add(proc.pid)
        proc.send_signal(signal.SIGKILL)  # no chance to commit or flush anything
        proc.wait(timeout=10)

    def log(self, proc: subprocess.Popen) -> str:
        """What a worker process wrote so far."""
        return (self.folder / f"worker-{self.processes.index(proc)}.log").read_text(errors="replace")

    def close(self) -> None:
        """SIGTERM every worker still running; SIGKILL one that has not stopped within 30 s."""
        for proc in self.processes:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.processes:
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()

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


def produce_synthetic(settings: Settings, count: int, malformed_share: float, seed: int, rate: float | None = None):
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


def collect(settings: Settings, topic: str, until, timeout_s: float = 180.0) -> list:
    records = []
    with KafkaConsumer(settings, f"check-{uuid.uuid4().hex[:6]}", [settings.kafka.topic(topic)]) as consumer:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline and not until(records):
            records += [m.value() for m in consumer.consume_batch(500, 0.5)]
    return records


def group_caught_up(settings: Settings, group: str, topic: str) -> bool:
    consumer = Consumer(client_config(settings, {"group.id": group}))
    try:
        partitions = consumer.list_topics(topic, timeout=10).topics[topic].partitions
        committed = consumer.committed([TopicPartition(topic, p) for p in partitions], timeout=10)
        return all(tp.offset >= consumer.get_watermark_offsets(tp, timeout=10)[1] for tp in committed)
    except KafkaException:  # e.g. the group coordinator is still loading: not caught up yet
        return False
    finally:
        consumer.close()


def table_state(settings: Settings) -> dict[str, dict]:
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
