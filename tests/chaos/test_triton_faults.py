"""Triton faults, against a private tritonserver (the session's is shared with other tests).

- Restart: tritonserver stopped (SIGTERM) and started again while events flow. The inference worker holds its
  batch and retries with backoff - it neither dead-letters nor drops an event, nor dies - and resumes when the
  server is back: every valid event gets exactly one prediction (after dedupe), every refused record one dead letter.
- Crashed python backend stub: the model's ``triton_python_backend_stub`` process is SIGKILLed. Triton keeps the
  model "ready" but fails every request ("Stub process ... is not healthy") until the model is unloaded and loaded
  again; the worker notices, reloads the model (explicit model-control mode) and answers every event, none of them
  dead-lettered.
- Out of memory: a model that fails every execution of more than 2 rows with CUDA's out-of-memory error. A failure
  that is the server's is never blamed on an event: the worker answers in smaller batches, holds and retries where
  even one row fails that way, and dead-letters no valid event.
- Slow model (backpressure): with a backlog on the topic and a model that takes 0.25 s per execution, the worker's
  batches and events in flight (its ``driftloop_in_flight_*`` gauges) never exceed ``workers.max_in_flight`` x
  ``workers.max_batch_size``, the backlog waits on the broker, the worker's memory stays flat, and nothing is lost.
"""

from __future__ import annotations

import os
import shutil
import signal
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pytest

from driftloop.stack import triton as local_triton
from foundation.settings import Settings, load_settings
from tests.chaos.accounting import Outputs, Producer, committed_total, read_events, settle, warm_up
from tests.helpers import free_port
from tests.streams.support import MODEL, MODEL_DIR, open_pipeline

pytestmark = [pytest.mark.chaos, pytest.mark.integration]

SLOW_MODEL = "slow_classifier"
SLOW_DIR = Path(__file__).parent / SLOW_MODEL
OOM_MODEL = "oom_classifier"  # fails every execution of more than 2 rows with CUDA's out-of-memory error
OOM_DIR = Path(__file__).parent / OOM_MODEL
WARMUP, EVENTS = 20, 800  # the stream lasts 8 s at 100 events/s; the fault lands ~1 s in


@dataclass(frozen=True)
class PrivateTriton:
    settings: Settings
    http: str
    grpc: str

    @property
    def process(self):
        return local_triton.server(self.settings)

    def start(self) -> None:
        local_triton.start(self.settings)
        self.process.wait_ready(lambda: local_triton.is_ready(self.settings), 120, "private tritonserver")

    def models_ready(self) -> bool:
        loaded = {m["name"] for m in local_triton.repository_index(self.settings) if m.get("state") == "READY"}
        return {MODEL, SLOW_MODEL, OOM_MODEL} <= loaded


@pytest.fixture(scope="module")
def private_triton(stack_settings, tmp_path_factory):
    """A tritonserver of this module only, serving the keyword and the slow classifier (both loaded at start)."""
    if os.environ.get("TRITON_URL"):
        pytest.skip("needs a tritonserver this test can stop and restart")
    repository = tmp_path_factory.mktemp("private_triton_repo")
    shutil.copytree(MODEL_DIR, repository / MODEL)
    shutil.copytree(SLOW_DIR, repository / SLOW_MODEL)
    shutil.copytree(OOM_DIR, repository / OOM_MODEL)
    stack = {
        **stack_settings.stack.model_dump(),
        "run_dir": tmp_path_factory.mktemp("private_triton"),
        "triton_http_port": free_port(),
        "triton_grpc_port": free_port(),
        "triton_metrics_port": free_port(),
    }
    settings = load_settings(stack=stack, triton={"model_repository": repository})
    triton = PrivateTriton(settings, settings.triton_http, settings.triton_grpc)
    triton.start()
    yield triton
    triton.process.stop()


@pytest.fixture
def triton(private_triton):
    """The private server, running with both models ready (a previous scenario may have stopped or broken it)."""
    if private_triton.process.pid() is None:
        private_triton.start()
    deadline = time.monotonic() + 60
    while not private_triton.models_ready():
        assert time.monotonic() < deadline, "the private tritonserver's models are not ready"
        time.sleep(0.5)
    return private_triton


def _stub_pids(server_pid: int, model: str) -> list[int]:
    """The python backend stub processes tritonserver started for ``model``'s instances."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except (OSError, IndexError, ValueError):
            continue
        if ppid == server_pid and "triton_python_backend_stub" in cmdline and f"/{model}/" in cmdline:
            pids.append(int(entry.name))
    return pids


def _run_fault(pipeline, chaos_ledger, scenario: str, seed: int, inject) -> dict:
    """Once the inference worker answers, stream EVENTS events at 100/s through it, call ``inject(worker)`` once
    100 of them are answered, then account for every record. Returns inject()'s details."""
    settings = pipeline.settings
    worker = pipeline.start("run", "--role", "inference")
    outputs = Outputs(settings)
    produced = warm_up(settings, WARMUP, seed=seed - 1)
    pipeline.wait(lambda: len(outputs.poll().predictions) >= WARMUP, 90, "the warm-up predictions")
    producer = Producer(settings, EVENTS, seed=seed, rate=100.0)
    producer.start()
    pipeline.wait(lambda: len(outputs.poll().predictions) >= WARMUP + 100, 90, "the first predictions")
    started = time.monotonic()
    details = inject(worker)
    sent = read_events(settings, produced + producer.finish())
    failure = None
    try:
        pipeline.wait(lambda: outputs.poll().covers(sent), 120, "a prediction or dead letter for every record")
        details["fault_to_all_answered_s"] = round(time.monotonic() - started, 1)
    except AssertionError as exc:
        failure = exc
    counts = settle(sent, outputs)
    log = pipeline.log(worker)
    details.update(
        wrong=counts["wrong"],
        client_retries=log.count("Triton call failed"),
        outage_retries=log.count("unavailable (attempt"),
        worker_alive=worker.poll() is None,
    )
    chaos_ledger.record(scenario, **{k: v for k, v in counts.items() if k != "wrong"}, **details)
    if failure:
        raise failure
    assert len(sent) == WARMUP + EVENTS and sent.refused
    assert counts["lost"] == 0, counts
    assert counts["wrong"] == 0, f"valid events dead-lettered or unknown predictions: {counts}"
    assert worker.poll() is None, "the inference worker died"
    assert "Traceback" not in log, log[-3000:]
    return details


def test_triton_restart_mid_stream_is_waited_out(settings_factory, triton, tmp_path, monkeypatch, chaos_ledger):
    pipeline = open_pipeline(settings_factory(), triton, MODEL, tmp_path, monkeypatch)

    def restart(worker) -> dict:
        stopped = time.monotonic()
        triton.process.stop()
        # Down until the worker has spent its client retries and holds its batch (the outage path), then back.
        pipeline.wait(lambda: "triton unavailable (attempt" in pipeline.log(worker), 60, "the worker to notice")
        triton.start()
        return {"restarts": 1, "down_s": round(time.monotonic() - stopped, 1)}

    try:
        details = _run_fault(pipeline, chaos_ledger, "triton-restart", 101, restart)
    finally:
        pipeline.close()
    assert details["outage_retries"] >= 1, "the worker never held a batch: the outage missed the stream"


def test_crashed_python_backend_stub_is_reloaded(settings_factory, triton, tmp_path, monkeypatch, chaos_ledger):
    pipeline = open_pipeline(settings_factory(), triton, MODEL, tmp_path, monkeypatch)

    def crash_stub(worker) -> dict:
        stubs = _stub_pids(triton.process.pid(), MODEL)
        assert stubs, "no python backend stub found for the model"
        for pid in stubs:
            os.kill(pid, signal.SIGKILL)
        return {"stubs_killed": len(stubs)}

    try:
        _run_fault(pipeline, chaos_ledger, "triton-stub-crash", 111, crash_stub)
        log = pipeline.log(pipeline.processes[0])
    finally:
        pipeline.close()
    assert "crashed (python backend stub); unloading and loading it" in log, log[-3000:]


def test_out_of_memory_on_large_batches_dead_letters_no_valid_event(
    settings_factory, triton, tmp_path, monkeypatch, chaos_ledger
):
    pipeline = open_pipeline(settings_factory(), triton, OOM_MODEL, tmp_path, monkeypatch)

    def nothing(worker) -> dict:
        return {"max_rows": 2}  # the stream comes in chunks of 50: batches of more than 2 rows fail throughout

    try:
        _run_fault(pipeline, chaos_ledger, "triton-oom-large-batches", 131, nothing)
    finally:
        pipeline.close()


def _scrape(url: str) -> dict[str, float]:
    with urllib.request.urlopen(url, timeout=5) as resp:
        text = resp.read().decode()
    values = {}
    for line in text.splitlines():
        if line.startswith("driftloop_in_flight_") and 'worker="inference"' in line:
            name, value = line.split("{", 1)[0], line.rsplit(" ", 1)[1]
            values[name] = float(value)
    return values


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def test_slow_model_keeps_in_flight_work_bounded(settings_factory, triton, tmp_path, monkeypatch, chaos_ledger):
    batch, in_flight, events = 16, 2, 600
    port = free_port()
    pipeline = open_pipeline(
        settings_factory(),
        triton,
        SLOW_MODEL,
        tmp_path,
        monkeypatch,
        DRIFTLOOP_WORKERS__MAX_BATCH_SIZE=str(batch),
        DRIFTLOOP_WORKERS__MAX_IN_FLIGHT=str(in_flight),
        DRIFTLOOP_WORKERS__METRICS_PORT=str(port),
    )
    settings = pipeline.settings
    metrics = f"http://127.0.0.1:{port + 1}/metrics"  # inference is role 1 of replica 0: metrics_port + 1
    producer = Producer(settings, events, seed=121, rate=10_000.0)  # the whole backlog first
    producer.start()
    sent = read_events(settings, producer.finish())
    outputs = Outputs(settings)
    samples: list[dict[str, float]] = []
    rss: list[float] = []
    lag: list[int] = []
    failure = None
    try:
        worker = pipeline.start("run", "--role", "inference")
        pipeline.wait(lambda: sum(outputs.poll().predictions.values()) >= batch, 90, "the first predictions")
        deadline = time.monotonic() + 120
        while not outputs.poll().covers(sent):
            if worker.poll() is not None or time.monotonic() > deadline:
                pipeline.wait(lambda: False, 0, "every event of the backlog")  # raises with the log
            samples.append(_scrape(metrics))
            rss.append(_rss_mb(worker.pid))
            lag.append(
                len(sent)
                - committed_total(settings, settings.workers.inference_group, settings.kafka.topic("events-v1"))
            )
    except AssertionError as exc:
        failure = exc
    pipeline.close()
    counts = settle(sent, outputs)
    peak_batches = max((s.get("driftloop_in_flight_batches", 0) for s in samples), default=None)
    peak_events = max((s.get("driftloop_in_flight_events", 0) for s in samples), default=None)
    chaos_ledger.record(
        "triton-slow-model",
        **{k: v for k, v in counts.items() if k != "wrong"},
        wrong=counts["wrong"],
        samples=len(samples),
        peak_in_flight_batches=peak_batches,
        peak_in_flight_events=peak_events,
        bound_events=batch * in_flight,
        peak_lag=max(lag, default=None),
        rss_mb_first=rss[0] if rss else None,
        rss_mb_peak=max(rss, default=None),
    )
    if failure:
        raise failure
    assert counts["lost"] == 0 and counts["wrong"] == 0, counts
    assert len(samples) >= 10, "too few samples of the worker's metrics to judge"
    assert 1 <= peak_batches <= in_flight, samples
    assert peak_events <= batch * in_flight, samples
    assert max(lag) >= 10 * batch * in_flight, "the backlog never waited on the broker: nothing was slow"
    assert max(rss) - rss[0] < 100, f"worker memory grew from {rss[0]:.0f} MB to {max(rss):.0f} MB"
