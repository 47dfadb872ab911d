"""Pipeline throughput, latency, CPU per event, cold start and memory vs the raw model, measured in one run.

    .venv/bin/driftloop stack up      # optional: its broker is used when it runs, else a private one is started
    .venv/bin/python bench/pipeline.py --encoder tiny   [--events 20000] [--plot bench-tiny.png]
    .venv/bin/python bench/pipeline.py --encoder minilm [--events 2000]
    .venv/bin/python bench/pipeline.py --encoder tiny --no-cold-start --profile prof/   # + py-spy stacks
    .venv/bin/python bench/pipeline.py --encoder tiny --replicas 1,2,3                  # + throughput vs replicas

Everything the benchmark creates lives in one temporary folder, removed at the end: its own tritonserver on its own
model repository (nothing is written to ``triton_repo/``), its own Feast store and faust state, and its own topics
(prefix ``bench-<id>-``, deleted at the end). Only the Kafka broker may be the local stack's.

1. Publishes two models into its Triton: ``bench_<encoder>`` (a short bootstrap training: quality does not matter
   here, the network's shape does) and ``bench_null``, the *null model* (``bench/null_model.py``: the classifier's
   inputs and outputs, constant probabilities, no work), which measures the pipeline's own cost apart from the model.
2. Raw: the classifier version in this process (``Predictor.predict_proba``) at the workers' micro-batch size, on
   all cores: sequences/s and CPU microseconds per sequence, with each engine that can run it (``raw_engines``: torch
   on its weights, ONNX Runtime on its graph). ``raw_seq_per_s`` is the fastest of them (``raw_engine``): the
   pipeline is compared with the best this machine does with the model in process, whatever Triton runs.
3. Per model, one feature worker and one inference worker, as ``driftloop workers run`` starts them, with the default
   worker settings: a few warm-up batches and an unmeasured drain of a backlog as big as the measured one (a broker
   started for the benchmark compiles its hot paths during its first drains), then 3 s without traffic
   (``idle_cpu_ms_per_s``); then, with both workers stopped (SIGSTOP), a backlog of ``--events`` events (at least
   20,000 for the null model) goes onto the topic, and the workers drain it once resumed: events/s from the resume to
   the last prediction produced (its record's time). The default backlogs (20,000 tiny, 2,000 MiniLM) take seconds to
   drain, many times the first read's start and the feature worker's push interval, so the rate is the steady one (a
   3,000-event backlog drained in 0.7 s gave half of it). Then three fixed rates, 25 %, 50 % and 75 % of that
   throughput (``--fixed-s`` seconds each, at most ``--events`` events): end-to-end latency p50/p99 (the prediction's
   ``timings_ms.end_to_end``: event's broker timestamp to production).
4. CPU per event, from ``/proc/<pid>/stat`` (utime + stime, all threads; ``bench/procstat.py``) over each measured
   interval: the inference worker, the feature worker (``driftloop`` is the two summed), tritonserver with its python
   backend stubs, and the broker (which also serves the benchmark's own writes and reads; ``broker_jit`` is the part its
   JVM's compiler threads took). The benchmark's process is not counted. The feature worker's interval ends when its
   group has committed every event (faust commits every second), so it includes up to a second of idling. Resolution:
   one clock tick (10 ms) over the interval's events.
5. Cold start and memory per role, each started alone: the inference worker (start to its first prediction, one
   event waiting), the feature worker (start to the first features it pushed being served from a fresh store), the
   drift monitor and the retraining consumer (start to ``/readyz`` answering 200); resident memory (VmRSS) then; and
   ``import_s``, a fresh interpreter importing the role's module.

6. The drift monitor, on the encoder's pipeline: started on the predictions so far, stopped while copies of them
   (new event ids) make a backlog of at least 5,000, then drained, drift checks included: ``monitor.events_per_s``
   and its CPU per prediction; ``monitor_vs_pipeline`` = that rate / the pipeline's saturation rate (1 or more: the
   monitor keeps up).
7. ``--replicas 1,2,3``: the backlog drained again with N feature and N inference workers, for each N, once both
   groups are stable with N members (``scaling``; ``vs_first`` = events/s over the first N's).

Prints one JSON line; ``ratio`` = saturation throughput / raw throughput. The workers are stopped with SIGSTOP for as
long as the backlog takes to produce: keep it well under ``kafka.session_timeout_ms`` (10 s by default), or their
consumer groups rebalance.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import procstat

from driftloop.stack import kafka as local_kafka
from driftloop.stack import triton as local_triton
from features.store import apply_repo, online_features
from foundation.settings import Settings, load_settings
from streams import KafkaProducer, ensure_topics
from streams.client import Record, fetch_window
from streams.generator import dated_as_sent, produce, synthetic_records
from streams.reader import BEGINNING, TopicReader
from training.export import engines
from training.repository import MAX_BATCH_SIZE
from training.servable.runtime import Predictor, resolve_engine

NULL_MODEL = "bench_null"
NULL_MODEL_FILE = Path(__file__).with_name("null_model.py")
FRACTIONS = (0.25, 0.5, 0.75)
STAGES = ("queue", "features", "inference")  # timings_ms stages before end_to_end
WORKER_TIMEOUT_S = 300.0
JIT_THREADS = "CompilerThre"  # the JVM's C1 and C2 compiler threads ("C2 CompilerThre" in /proc)
IDLE_S = 3.0  # warm workers, no traffic: what they burn idle
ARRIVALS_FETCH_MS = 100
DEFAULT_EVENTS = {"tiny": 20_000, "minilm": 2_000}  # backlogs of several seconds at these machines' rates
NULL_EVENTS = 20_000


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# --- the benchmark's servers -------------------------------------------------------------------------------------


@dataclass
class Servers:
    """The broker (the local stack's when it runs, else a private one) and a private tritonserver."""

    bootstrap: str
    broker_pid: int
    broker: str  # "stack" or "private"
    triton_pid: int
    triton_http: str
    triton_grpc: str
    repository: Path


def private_settings(folder: Path) -> Settings:
    """Settings of servers the benchmark starts itself under ``folder``, on free ports."""
    user = load_settings()
    return load_settings(
        stack={
            "run_dir": folder / "stack",
            "serving_venv": user.stack.serving_venv,
            "kafka_port": free_port(),
            "kafka_controller_port": free_port(),
            "triton_http_port": free_port(),
            "triton_grpc_port": free_port(),
            "triton_metrics_port": free_port(),
            "kafka_heap": "512m",
        },
        triton={"model_repository": folder / "triton_repo"},
    )


@contextlib.contextmanager
def broker(private: Settings) -> Iterator[tuple[str, int, str]]:
    """The local stack's broker when it runs, else one started with ``private`` (stopped on exit): its bootstrap
    servers, its PID, and which it is (``stack`` or ``private``)."""
    user = load_settings()
    stack_broker = local_kafka.server(user).pid()
    if stack_broker is not None and local_kafka.is_ready(user):
        yield user.kafka_bootstrap, stack_broker, "stack"
        return
    proc = local_kafka.server(private)
    try:
        broker_pid = local_kafka.start(private)
        proc.wait_ready(lambda: local_kafka.is_ready(private), 120, "benchmark broker")
        yield private.kafka_bootstrap, broker_pid, "private"
    finally:
        proc.stop()


@contextlib.contextmanager
def servers(folder: Path, triton_env: dict[str, str] | None = None) -> Iterator[Servers]:
    """Start what the benchmark needs under ``folder`` and stop it on exit; ``triton_env`` is added to the
    environment of its tritonserver (and so of the python backend stubs)."""
    private = private_settings(folder)
    with broker(private) as (bootstrap, broker_pid, which):
        proc = local_triton.server(private)
        try:
            with _environment(triton_env or {}):
                triton_pid = local_triton.start(private)
            proc.wait_ready(lambda: local_triton.is_ready(private), 120, "benchmark tritonserver")
            yield Servers(
                bootstrap,
                broker_pid,
                which,
                triton_pid,
                private.triton_http,
                private.triton_grpc,
                private.triton.model_repository,
            )
        finally:
            proc.stop()


# --- reading what the workers produce ------------------------------------------------------------------------------


class Arrivals:
    """Reads a topic from its beginning in a background thread, keeping (time produced, value) of every record;
    values are parsed later, so that the benchmark's own CPU stays low while it measures."""

    def __init__(self, settings: Settings, topic: str) -> None:
        self.records: list[tuple[float, bytes]] = []
        self._stop = threading.Event()
        # A fetch window: without one the broker answered a fetch for every request the inference worker produced,
        # 15 % of its requests at a quarter of the tiny saturation rate on 2 cores. Times are the records' own
        # (CreateTime: when the worker produced them), so reading them up to a window late changes no figure.
        window = fetch_window(ARRIVALS_FETCH_MS)
        self._reader = TopicReader(settings, settings.kafka.topic(topic), BEGINNING, name="bench", overrides=window)
        self._thread = threading.Thread(target=self._run, name="bench-arrivals", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            batch = self._reader.poll(0.2, 1000)
            self.records.extend((msg.timestamp()[1] / 1000, msg.value()) for msg in batch)

    def __len__(self) -> int:
        return len(self.records)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)
        self._reader.close()


def wait_for(condition: Callable[[], object], timeout_s: float, what: str, procs=()) -> float:
    """Poll until ``condition()`` holds; returns when (epoch seconds). Fails when a worker of ``procs`` exited."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        for proc in procs:
            if proc.poll() is not None:
                raise RuntimeError(f"{' '.join(proc.args[3:])} exited with {proc.returncode} waiting for {what}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout_s:.0f}s waiting for {what}")
        time.sleep(0.05)
    return time.time()


def group_caught_up(settings: Settings, group: str, topic: str = "events-v1") -> bool:
    """Whether ``group`` has committed every record of ``topic`` (a logical name)."""
    from confluent_kafka import Consumer, KafkaException, TopicPartition

    from streams.client import client_config

    topic = settings.kafka.topic(topic)
    consumer = Consumer(client_config(settings, {"group.id": group, "log_level": 0}))
    try:
        partitions = consumer.list_topics(topic, timeout=10).topics[topic].partitions
        committed = consumer.committed([TopicPartition(topic, p) for p in partitions], timeout=10)
        return all(tp.offset >= consumer.get_watermark_offsets(tp, timeout=10)[1] for tp in committed)
    except KafkaException:
        return False
    finally:
        consumer.close()


def group_members(settings: Settings, group: str) -> int | None:
    """How many members ``group`` has while it is stable (every partition assigned); None during a rebalance."""
    from confluent_kafka import ConsumerGroupState
    from confluent_kafka.admin import AdminClient

    from streams.client import client_config

    admin = AdminClient(client_config(settings, {"log_level": 0}))
    try:
        described = admin.describe_consumer_groups([group], request_timeout=10)[group].result()
    except Exception:  # noqa: BLE001 - e.g. the coordinator is still loading: not stable yet
        return None
    return len(described.members) if described.state == ConsumerGroupState.STABLE else None


def delete_topics(settings: Settings, prefix: str) -> None:
    from confluent_kafka.admin import AdminClient

    from streams.client import client_config

    admin = AdminClient(client_config(settings, {"log_level": 0}))
    with contextlib.suppress(Exception):
        names = [t for t in admin.list_topics(timeout=10).topics if t.startswith(prefix)]
        if names:
            for future in admin.delete_topics(names, operation_timeout=30).values():
                with contextlib.suppress(Exception):
                    future.result()


# --- models ----------------------------------------------------------------------------------------------------


def publish_classifier(settings: Settings, samples: int) -> int:
    from training.pipeline import train_version

    run = train_version(settings, bootstrap=True, samples=samples, promote_policy="always", progress=False)
    return run.version


def publish_null(settings: Settings, classifier: Path) -> int:
    """A null-model version beside the classifier's metadata and tokenizer (the worker reads its vocabulary)."""
    from training.export import read_metadata, write_metadata
    from training.publish import promote, publish_version
    from training.repository import ModelRepository

    build = ModelRepository(settings).staging_dir()
    build.mkdir(parents=True)
    shutil.copytree(classifier / "tokenizer", build / "tokenizer")
    shutil.copy2(NULL_MODEL_FILE, build / "model.py")
    metadata = read_metadata(classifier)
    labels = len(metadata.labels)
    smoke = dict(metadata.smoke, probs=[[1.0 / labels] * labels for _ in metadata.smoke["texts"]])
    write_metadata(build, metadata.model_copy(update={"model": NULL_MODEL, "smoke": smoke}))
    version = publish_version(settings, build, reason="benchmark null model").version
    promote(settings, version, reason="benchmark null model")
    return version


def raw_throughput(version_dir: Path, texts: list[str], batch: int, engine: str) -> tuple[float, float]:
    """Sequences per second of the version in this process with ``engine`` (all cores), and CPU microseconds per
    sequence (all threads)."""
    predictor = Predictor.load(version_dir, engine=engine)
    features = np.zeros((batch, 6), dtype=np.float32)
    predictor.predict_proba(texts[:batch], features)  # warm up
    started, cpu = time.perf_counter(), time.process_time()
    done = 0
    for start in range(0, len(texts) - batch + 1, batch):
        predictor.predict_proba(texts[start : start + batch], features)
        done += batch
    return done / (time.perf_counter() - started), (time.process_time() - cpu) * 1e6 / done


# --- one pipeline ----------------------------------------------------------------------------------------------


@dataclass
class Pipeline:
    """Topics, groups and worker processes of one measurement (its own topic prefix)."""

    env: dict[str, str]
    folder: Path
    processes: dict[str, subprocess.Popen] = field(default_factory=dict)

    @classmethod
    def open(cls, base_env: dict[str, str], model: str, folder: Path, announce_from: Settings) -> Pipeline:
        from training.registry import announce, read_state

        run = uuid.uuid4().hex[:6]
        env = {
            **base_env,
            "DRIFTLOOP_KAFKA__TOPIC_PREFIX": f"{base_env['DRIFTLOOP_KAFKA__TOPIC_PREFIX']}{run}-",
            "DRIFTLOOP_TRITON__MODEL_NAME": model,
            # Under the benchmark's prefix too (faust names its changelog topics after the group): deleted at the end.
            "DRIFTLOOP_WORKERS__INFERENCE_GROUP": f"{base_env['DRIFTLOOP_KAFKA__TOPIC_PREFIX']}{run}-inference",
            "DRIFTLOOP_WORKERS__FEATURES_GROUP": f"{base_env['DRIFTLOOP_KAFKA__TOPIC_PREFIX']}{run}-features",
            "DRIFTLOOP_WORKERS__FAUST_WEB_PORT": str(free_port()),
        }
        pipeline = cls(env, folder / f"logs-{run}")
        pipeline.folder.mkdir(parents=True)
        settings = pipeline.settings()
        ensure_topics(settings)
        announce(settings, read_state(announce_from, model))
        return pipeline

    def settings(self) -> Settings:
        with _environment(self.env):
            return load_settings()

    def start(self, name: str, *argv: str) -> subprocess.Popen:
        log = (self.folder / f"{name}-{uuid.uuid4().hex[:4]}.log").open("wb")
        proc = subprocess.Popen(
            [sys.executable, "-m", "driftloop.cli", *argv], env=self.env, stdout=log, stderr=subprocess.STDOUT
        )
        self.processes[name] = proc
        return proc

    def signal(self, sig: int) -> None:
        for proc in self.processes.values():
            proc.send_signal(sig)

    def log_tails(self, chars: int = 3000) -> str:
        """The end of every worker log of this pipeline (for a failure's message)."""
        return "\n".join(
            f"--- {path.name}\n{path.read_text(errors='replace')[-chars:]}"
            for path in sorted(self.folder.glob("*.log"))
        )

    def close(self) -> None:
        for proc in self.processes.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGCONT)
                proc.send_signal(signal.SIGTERM)
        for proc in self.processes.values():
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


@contextlib.contextmanager
def _environment(env: dict[str, str]) -> Iterator[None]:
    saved = dict(os.environ)
    os.environ.update(env)
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)


def records(settings: Settings, count: int, seed: int, rate: float | None = None) -> list[list[Record]]:
    return list(synthetic_records(settings, count, seed=seed, labels=False, **dated_as_sent(count, rate)))


def send(settings: Settings, batches: list[list[Record]], rate: float | None = None) -> None:
    with KafkaProducer(settings) as producer:
        produce(producer, batches, rate=rate)


def memory_mb(pids: list[int]) -> dict[str, float]:
    """Resident (now) and peak resident memory of processes, summed, in MB."""
    rss = hwm = 0
    for pid in pids:
        memory = procstat.read_memory_kb(pid)
        rss += memory.get("VmRSS", 0)
        hwm += memory.get("VmHWM", 0)
    return {"rss": round(rss / 1024, 1), "peak": round(hwm / 1024, 1)}


def measure_model(
    base_env: dict[str, str],
    model: str,
    folder: Path,
    found: Servers,
    publish: Settings,
    events: int,
    fixed_s: float,
    profile_dir: Path | None = None,
    replicas: int = 1,
    monitor: bool = False,
) -> dict:
    """Saturation, CPU per event and latency at 25/50/75 % of saturation for one served model (no latency runs when
    ``fixed_s`` is 0), with ``replicas`` feature workers and as many inference workers."""
    pipeline = Pipeline.open(base_env, model, folder, publish)
    settings = pipeline.settings()
    arrivals = Arrivals(settings, "predictions-v1")
    # One producer for every run, warm from the warm-up: a new one's first events would wait for its connection
    # and id (about half a second), counted in their latency (it runs from the time they were produced).
    producer = KafkaProducer(settings)
    try:
        role_args = ("workers", "run", "--role")
        features = [
            pipeline.start(f"features-{i}", *role_args, "features", "--replica", str(i)) for i in range(replicas)
        ]
        inference = [
            pipeline.start(f"inference-{i}", *role_args, "inference", "--replica", str(i)) for i in range(replicas)
        ]
        procs = [*features, *inference]
        features_group = settings.workers.features_group
        for group in (features_group, settings.workers.inference_group):
            wait_for(
                lambda g=group: group_members(settings, g) == replicas, 120, f"{replicas} members in {group}", procs
            )
        # Warm-up: a few batches, then an unmeasured drain of a backlog as big as the measured one. A broker started
        # for the benchmark compiles its hot paths (the JVM's JIT) during its first drains: with C2, its compiler
        # threads took 4 to 6 s of CPU over the first tiny measurement on 2 cores, 1 to 3 s over each later one.
        warm = 2 * settings.workers.max_batch_size
        produce(producer, records(settings, warm, seed=1))
        wait_for(lambda: len(arrivals) >= warm, WORKER_TIMEOUT_S, f"{warm} warm-up predictions", procs)
        pipeline.signal(signal.SIGSTOP)
        try:
            produce(producer, records(settings, events, seed=3))
        finally:
            pipeline.signal(signal.SIGCONT)
        warm += events
        wait_for(lambda: len(arrivals) >= warm, WORKER_TIMEOUT_S, f"{warm} warm-up predictions", procs)
        wait_for(lambda: group_caught_up(settings, features_group), 120, "the feature worker's warm-up", procs)
        groups = {
            "inference_worker": [proc.pid for proc in inference],
            "feature_worker": [proc.pid for proc in features],
            "triton": procstat.tree(found.triton_pid),
            "broker": procstat.tree(found.broker_pid),
        }
        before, began = procstat.sample(groups), time.monotonic()
        time.sleep(IDLE_S)
        idle = procstat.cpu_us_per_event(before, procstat.sample(groups), 1, procstat.CLOCK_TICKS)
        idle = {group: _ms_per_s(us, time.monotonic() - began) for group, us in idle.items()}

        def cpu_during(
            count: int, start: Callable[[], None], profilers: dict[str, subprocess.Popen] | None = None
        ) -> tuple[dict, float, float]:
            """Run ``start``, wait for ``count`` more predictions and the feature worker's commits; CPU per event
            (the feature worker's until its commit), when it started and when the last prediction was produced. A
            profiler of ``profilers`` (by worker) stops when its worker is done."""
            profilers = profilers or {}
            expected = len(arrivals) + count
            before = procstat.sample(groups)
            compiling = procstat.thread_ticks(found.broker_pid, JIT_THREADS)
            began = time.time()
            start()
            wait_for(lambda: len(arrivals) >= expected, WORKER_TIMEOUT_S, f"{count} predictions", procs)
            after = procstat.sample(groups)
            compiled = procstat.thread_ticks(found.broker_pid, JIT_THREADS)
            stop_profilers(profilers, "inference")
            wait_for(lambda: group_caught_up(settings, features_group), 300, "the feature worker's commits", procs)
            after["feature_worker"] = procstat.sample({"feature_worker": groups["feature_worker"]})["feature_worker"]
            stop_profilers(profilers, "features")
            cpu = procstat.cpu_us_per_event(before, after, count, procstat.CLOCK_TICKS)
            cpu["driftloop"] = _sum(cpu["inference_worker"], cpu["feature_worker"])
            if compiling is not None and compiled is not None:  # the broker's, spent by its JIT compiler threads
                jit_ticks = procstat.ticks_between(compiling, compiled)
                cpu["broker_jit"] = round(jit_ticks / procstat.CLOCK_TICKS * 1e6 / count, 1)
            last = max(t for t, _ in arrivals.records[expected - count : expected])
            return cpu, began, last

        # Saturation: a backlog written while the workers are stopped, drained once they resume.
        backlog = records(settings, events, seed=2)
        pipeline.signal(signal.SIGSTOP)
        try:
            produce(producer, backlog)
            profilers = {
                name: profile(proc, profile_dir / f"{model}-{name}.txt")
                for name, proc in (pipeline.processes.items() if profile_dir else ())
            }
        except BaseException:
            pipeline.signal(signal.SIGCONT)
            raise
        cpu, began, last = cpu_during(events, lambda: pipeline.signal(signal.SIGCONT), profilers)
        saturated = events / (last - began)

        latency: dict[str, dict] = {}
        for i, fraction in enumerate(FRACTIONS if fixed_s else ()):
            rate = max(1.0, saturated * fraction)
            count = int(max(50, min(events, rate * fixed_s)))
            first = len(arrivals)
            batches = records(settings, count, seed=10 + i, rate=rate)
            fixed_cpu, began, _ = cpu_during(count, lambda b=batches, r=rate: produce(producer, b, rate=r))
            timings = [json.loads(v)["timings_ms"] for _, v in arrivals.records[first : first + count]]
            ends = [t["end_to_end"] for t in timings]
            latency[f"{round(fraction * 100)}%"] = {
                "rate_per_s": round(rate, 1),
                "events": count,
                "p50_ms": round(float(np.percentile(ends, 50)), 1),
                "p99_ms": round(float(np.percentile(ends, 99)), 1),
                # where an event's time went, per stage of the inference worker (see streams.schemas.Timings)
                "stage_p50_ms": {s: round(float(np.median([t[s] for t in timings])), 1) for s in STAGES},
                "stage_p99_ms": {s: round(float(np.percentile([t[s] for t in timings], 99)), 1) for s in STAGES},
                "cpu_us_per_event": fixed_cpu,
            }
        monitored = monitor_rate(pipeline, settings, [v for _, v in arrivals.records], events) if monitor else None
        memory = {
            "inference_worker": memory_mb(groups["inference_worker"]),
            "feature_worker": memory_mb(groups["feature_worker"]),
            "triton": memory_mb(procstat.tree(found.triton_pid)),
        }
    except Exception:
        print(pipeline.log_tails(), file=sys.stderr)
        raise
    finally:
        producer.close()
        pipeline.close()
        arrivals.close()
    return {
        "pipeline_events_per_s": round(saturated, 1),
        "cpu_us_per_event": cpu,
        "idle_cpu_ms_per_s": idle,
        "latency": latency,
        "memory_mb": memory,
        **({"monitor": monitored} if monitored else {}),
    }


def monitor_rate(pipeline: Pipeline, settings: Settings, predictions: list[bytes], events: int) -> dict:
    """How fast the drift monitor folds predictions, checks included: it starts on the predictions so far, is
    stopped (SIGSTOP) while copies of them make a backlog of ``max(events, 5000)``, and drains it once resumed."""
    group = f"{settings.monitoring.group_id}-bench"
    pipeline.env["DRIFTLOOP_MONITORING__GROUP_ID"] = group
    proc = pipeline.start("monitor", "monitor")
    wait_for(lambda: group_caught_up(settings, group, "predictions-v1"), 180, "the monitor's first commits", [proc])
    count = max(events, 5000)
    topic = settings.kafka.topic("predictions-v1")
    backlog = []
    for i in range(count):  # copies under new event ids: the monitor skips an id already in its window
        prediction = json.loads(predictions[i % len(predictions)])
        prediction["event_id"] = uuid.uuid4().hex
        backlog.append([Record(topic, json.dumps(prediction).encode(), key=prediction["entity_id"].encode())])
    proc.send_signal(signal.SIGSTOP)
    try:
        send(settings, backlog)
    finally:
        before, began = procstat.sample({"monitor": [proc.pid]}), time.monotonic()
        proc.send_signal(signal.SIGCONT)
    wait_for(lambda: group_caught_up(settings, group, "predictions-v1"), 300, "the monitor's commits", [proc])
    elapsed = time.monotonic() - began
    cpu = procstat.cpu_us_per_event(before, procstat.sample({"monitor": [proc.pid]}), count, procstat.CLOCK_TICKS)
    return {"events": count, "events_per_s": round(count / elapsed, 1), "cpu_us_per_event": cpu["monitor"]}


def _sum(*values: float | None) -> float | None:
    return None if any(v is None for v in values) else round(sum(values), 1)


def _ms_per_s(us: float | None, seconds: float) -> float | None:
    return None if us is None else round(us / 1000 / seconds, 1)


def stop_profiler(profiler: subprocess.Popen | None) -> None:
    if profiler is not None:
        profiler.send_signal(signal.SIGINT)
        profiler.wait(timeout=60)


def stop_profilers(profilers: dict[str, subprocess.Popen], role: str) -> None:
    """Stop the profilers of every replica of ``role`` (named ``<role>-<replica>``)."""
    for name, profiler in profilers.items():
        if name.startswith(f"{role}-"):
            stop_profiler(profiler)


def profile(proc: subprocess.Popen, out: Path) -> subprocess.Popen:
    """py-spy sampling ``proc`` (collapsed stacks, one line per stack with its count) until SIGINT."""
    py_spy = Path(sys.executable).with_name("py-spy")
    profiler = subprocess.Popen(
        [str(py_spy), "record", "--pid", str(proc.pid), "--format", "raw", "--rate", "250", "--nonblocking"]
        + ["--output", str(out)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    time.sleep(1.0)  # attached before the process resumes
    return profiler


# --- cold start ------------------------------------------------------------------------------------------------


def http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=1) as response:  # noqa: S310 - a local health endpoint
            return response.status == 200
    except OSError:
        return False


ROLE_MODULES = {
    "inference_worker": "streams.inference",
    "feature_worker": "streams.feature_app",
    "monitor": "monitoring.worker",
    "retrain": "training.retrain",
}


def import_seconds(module: str) -> float:
    """Wall seconds of a fresh interpreter importing ``module`` (and starting up)."""
    started = time.perf_counter()
    subprocess.run([sys.executable, "-c", f"import {module}"], check=True, capture_output=True)
    return round(time.perf_counter() - started, 2)


def cold_start(base_env: dict[str, str], model: str, folder: Path, publish: Settings) -> dict[str, dict]:
    """Each role started alone: seconds from start to its first output (or readiness), and its memory then; and
    how long importing the role's module takes in a fresh interpreter (``import_s``)."""
    result: dict[str, dict] = {}

    pipeline = Pipeline.open(base_env, model, folder, publish)
    settings = pipeline.settings()
    send(settings, records(settings, 1, seed=20))
    arrivals = Arrivals(settings, "predictions-v1")
    try:
        started = time.time()
        proc = pipeline.start("inference", "workers", "run", "--role", "inference")
        wait_for(lambda: len(arrivals) >= 1, WORKER_TIMEOUT_S, "the first prediction", [proc])
        result["inference_worker"] = {
            "first_output_s": round(arrivals.records[0][0] - started, 2),
            "rss_mb": memory_mb([proc.pid])["rss"],
        }
    finally:
        pipeline.close()
        arrivals.close()

    # A store of its own: the entities of the earlier runs have features already.
    fresh = {**base_env, "DRIFTLOOP_FEAST__DATA_DIR": str(folder / f"feast-{uuid.uuid4().hex[:6]}")}
    pipeline = Pipeline.open(fresh, model, folder, publish)
    settings = pipeline.settings()
    store = apply_repo(settings)
    batch = records(settings, 20, seed=21)
    entity = json.loads(batch[-1][0].value)["entity_id"]
    send(settings, batch)
    try:
        started = time.time()
        proc = pipeline.start("features", "workers", "run", "--role", "features")
        ready = wait_for(
            lambda: online_features(store, [entity])["msg_count_1h"][0] is not None,
            WORKER_TIMEOUT_S,
            "the first pushed features",
            [proc],
        )
        result["feature_worker"] = {"first_output_s": round(ready - started, 2), "rss_mb": memory_mb([proc.pid])["rss"]}
    finally:
        pipeline.close()

    for role, argv, section in (("monitor", ["monitor"], "MONITORING"), ("retrain", ["retrain"], "RETRAIN")):
        port = free_port()
        pipeline = Pipeline.open({**base_env, f"DRIFTLOOP_{section}__METRICS_PORT": str(port)}, model, folder, publish)
        try:
            started = time.time()
            proc = pipeline.start(role, *argv)
            ready = wait_for(lambda p=port: http_ok(f"http://127.0.0.1:{p}/readyz"), 180, f"{role} /readyz", [proc])
            result[role] = {"ready_s": round(ready - started, 2), "rss_mb": memory_mb([proc.pid])["rss"]}
        except (TimeoutError, RuntimeError) as exc:  # reported, not fatal: the other figures stand
            result[role] = {"ready_s": None, "error": str(exc)}
        finally:
            pipeline.close()
    for role, module in ROLE_MODULES.items():
        result[role]["import_s"] = import_seconds(module)
    return result


# --- main ------------------------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--encoder", choices=["tiny", "minilm"], default="tiny")
    parser.add_argument("--events", type=int, default=None, help="backlog size; default: 20000 (tiny), 2000 (minilm)")
    parser.add_argument("--fixed-s", type=float, default=15.0, help="seconds of each fixed-rate run (default 15)")
    parser.add_argument("--no-null", action="store_true", help="skip the null-model run")
    parser.add_argument("--no-cold-start", action="store_true", help="skip the cold-start and memory runs")
    parser.add_argument("--plot", default=None, help="write a PNG of throughput and latency here")
    parser.add_argument(
        "--triton-env",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="add to the environment of the benchmark's tritonserver, e.g. OMP_NUM_THREADS=1 (repeatable)",
    )
    parser.add_argument(
        "--instances", type=int, default=None, help="Triton instances of each model (default: training.instance_count)"
    )
    parser.add_argument(
        "--cpu-engine",
        choices=["auto", "onnxruntime", "torch"],
        default=None,
        help="what runs the served model on Triton's CPU instances (default: training.cpu_engine)",
    )
    parser.add_argument(
        "--replicas",
        default=None,
        help="also drain the backlog with N feature and N inference workers for each N of this list, e.g. 1,2,3",
    )
    parser.add_argument(
        "--profile",
        type=Path,
        default=None,
        help="write py-spy profiles (collapsed stacks) of the saturation runs here",
    )
    args = parser.parse_args()
    events = args.events or DEFAULT_EVENTS[args.encoder]
    if args.profile:
        args.profile.mkdir(parents=True, exist_ok=True)

    with tempfile.TemporaryDirectory(prefix="driftloop-bench-") as tmp:
        folder = Path(tmp)
        triton_env = dict(item.split("=", 1) for item in args.triton_env)
        with servers(folder, triton_env) as found:
            prefix = f"bench-{uuid.uuid4().hex[:6]}-"
            model = f"bench_{args.encoder}"
            base_env = {
                "DRIFTLOOP_KAFKA__BOOTSTRAP_SERVERS": found.bootstrap,
                "DRIFTLOOP_KAFKA__TOPIC_PREFIX": prefix,
                "DRIFTLOOP_TRITON__URL": found.triton_http,
                "DRIFTLOOP_TRITON__GRPC_URL": found.triton_grpc,
                "DRIFTLOOP_TRITON__MODEL_REPOSITORY": str(found.repository),
                "DRIFTLOOP_TRITON__MODEL_NAME": model,
                "DRIFTLOOP_TRAINING__ENCODER": args.encoder,
                "DRIFTLOOP_TRAINING__EPOCHS": "1",
                "DRIFTLOOP_FEAST__DATA_DIR": str(folder / "feast"),
                "DRIFTLOOP_WORKERS__FAUST_DATA_DIR": str(folder / "faust"),
                "DRIFTLOOP_WORKERS__METRICS_PORT": "0",
                "DRIFTLOOP_MONITORING__METRICS_PORT": "0",
                "DRIFTLOOP_MONITORING__REPORTS_DIR": str(folder / "reports"),
                "DRIFTLOOP_RETRAIN__METRICS_PORT": "0",
            }
            if args.instances:
                base_env["DRIFTLOOP_TRAINING__INSTANCE_COUNT"] = str(args.instances)
            if args.cpu_engine:
                base_env["DRIFTLOOP_TRAINING__CPU_ENGINE"] = args.cpu_engine
            env = {**os.environ, **base_env}
            with _environment(base_env):
                settings = load_settings()
            try:
                ensure_topics(settings)
                apply_repo(settings)
                version = publish_classifier(settings, samples=200)
                version_dir = found.repository / model / str(version)
                # the raw model at the batch the pipeline hands it: a read of up to workers.max_batch_size events goes
                # to Triton in requests of the served version's max_batch_size
                batch = min(settings.workers.max_batch_size, MAX_BATCH_SIZE)
                texts = [json.loads(r[0].value)["text"] for r in records(settings, max(events, 4 * batch), seed=1)]
                raw_engines = {}
                for engine in engines(version_dir):
                    rate, cpu = raw_throughput(version_dir, texts, batch, engine)
                    raw_engines[engine] = {"seq_per_s": round(rate, 1), "cpu_us_per_seq": round(cpu, 1)}
                best = max(raw_engines, key=lambda engine: raw_engines[engine]["seq_per_s"])
                raw = raw_engines[best]["seq_per_s"]

                result = {
                    "bench": "pipeline",
                    "encoder": args.encoder,
                    "model_version": version,
                    "batch": batch,
                    "events": events,
                    "served_engine": resolve_engine(settings.training.cpu_engine, version_dir, "cpu"),
                    "raw_engine": best,
                    "raw_seq_per_s": raw,
                    "raw_cpu_us_per_seq": raw_engines[best]["cpu_us_per_seq"],
                    "raw_engines": raw_engines,
                }
                measured = measure_model(
                    env, model, folder, found, settings, events, args.fixed_s, args.profile, monitor=True
                )
                half = measured["latency"].get("50%", {})
                result.update(
                    pipeline_events_per_s=measured["pipeline_events_per_s"],
                    ratio=round(measured["pipeline_events_per_s"] / raw, 3) if raw else None,
                    fixed_rate_per_s=half.get("rate_per_s"),
                    fixed_rate_events=half.get("events"),
                    latency_ms_p50=half.get("p50_ms"),
                    latency_ms_p99=half.get("p99_ms"),
                    cpu_us_per_event=measured["cpu_us_per_event"],
                    idle_cpu_ms_per_s=measured["idle_cpu_ms_per_s"],
                    latency=measured["latency"],
                    memory_mb=measured["memory_mb"],
                    monitor=measured["monitor"],
                    monitor_vs_pipeline=round(
                        measured["monitor"]["events_per_s"] / measured["pipeline_events_per_s"], 2
                    ),
                )
                if not args.no_null:
                    with _environment(base_env | {"DRIFTLOOP_TRITON__MODEL_NAME": NULL_MODEL}):
                        null_settings = load_settings()
                    publish_null(null_settings, version_dir)
                    null = measure_model(
                        env,
                        NULL_MODEL,
                        folder,
                        found,
                        null_settings,
                        max(events, NULL_EVENTS),
                        args.fixed_s,
                        args.profile,
                    )
                    result["null_model"] = {"events": max(events, NULL_EVENTS)} | {
                        k: v for k, v in null.items() if k != "memory_mb"
                    }
                if args.replicas:
                    result["scaling"] = scaling(env, model, folder, found, settings, events, args.replicas)
                if not args.no_cold_start:
                    result["cold_start"] = cold_start(env, model, folder, settings)
                result.update(broker=found.broker, cpus=os.cpu_count(), triton_env=triton_env)
                if args.instances:
                    result["instances"] = args.instances
            finally:
                delete_topics(settings, prefix)
    print(json.dumps(result))
    if args.plot:
        plot(result, args.plot)


def scaling(
    env: dict[str, str], model: str, folder: Path, found: Servers, publish: Settings, events: int, counts: str
) -> list[dict]:
    """Backlog drain rate with N replicas of each worker, for each N of ``counts`` ("1,2,3"), in one run."""
    rows = []
    for replicas in (int(n) for n in counts.split(",")):
        measured = measure_model(env, model, folder, found, publish, events, 0, replicas=replicas)
        rows.append(
            {
                "replicas": replicas,
                "events_per_s": measured["pipeline_events_per_s"],
                "cpu_us_per_event": measured["cpu_us_per_event"],
            }
        )
    for row in rows:
        row["vs_first"] = round(row["events_per_s"] / rows[0]["events_per_s"], 2)
    return rows


def plot(result: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    bars = {f"raw, {engine}": raw["seq_per_s"] for engine, raw in result["raw_engines"].items()}
    bars[f"pipeline\n({result['served_engine']})"] = result["pipeline_events_per_s"]
    if "null_model" in result:
        bars["pipeline,\nnull model"] = result["null_model"]["pipeline_events_per_s"]
    colors = ["silver"] * len(result["raw_engines"]) + ["tab:blue", "tab:orange"]
    left.bar(list(bars), list(bars.values()), color=colors[: len(bars)])
    left.set_ylabel("events / s")
    left.set_title(f"{result['encoder']}: ratio {result['ratio']} (vs raw {result['raw_engine']})")
    for name, runs in (("classifier", result["latency"]), ("null model", result.get("null_model", {}).get("latency"))):
        if runs:
            rates = [run["rate_per_s"] for run in runs.values()]
            right.plot(rates, [run["p50_ms"] for run in runs.values()], marker="o", label=f"{name} p50")
            right.plot(rates, [run["p99_ms"] for run in runs.values()], marker="x", linestyle="--", label=f"{name} p99")
    right.set_xlabel("events / s (25, 50, 75 % of saturation)")
    right.set_ylabel("end-to-end latency (ms)")
    right.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    main()
