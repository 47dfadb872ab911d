"""The demo's driver: start the product's workers, produce the stream (labels late and for a share of the events,
as ground truth arrives), inject the concept drift, and stop once a version that learned the drift is promoted."""

from __future__ import annotations

import os
import secrets
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from driftloop.demo.observer import Observer
from driftloop.demo.report import progress_line, summarise, write_outputs
from foundation.settings import Settings
from foundation.supervisor import Child, GaveUp, Supervisor
from streams.client import KafkaProducer, Record
from streams.generator import LabelSchedule
from streams.synthetic import SyntheticStream


@dataclass(frozen=True)
class DemoPlan:
    """Args: events per second; seconds of clean traffic before the drift; the longest the demo may run; seconds of
    traffic kept after the promotion; the seed; seconds from an event to its label (0: with the event); the share of
    the events that get a label (``driftloop demo`` takes both from the ``[demo]`` settings: 30 s and 0.5)."""

    rate: float = 10.0
    drift_after_s: float = 60.0
    timeout_s: float = 600.0
    after_promotion_s: float = 30.0
    seed: int = 7
    label_delay_s: float = 0.0
    label_share: float = 1.0


WORKERS = {"workers": ("workers",), "monitor": ("monitor",), "retrain": ("retrain",)}  # name: driftloop command
MAX_RESTARTS = 3  # of one worker, before the demo gives up
WARM_UP_S = 300.0  # the longest wait for the first prediction: the workers' start-up takes minutes on 2 busy cores


def supervisor(config_file: Path | None, logs: Path, env: dict[str, str]) -> Supervisor:
    """The product's workers as a user starts them (stream workers, monitor, retraining consumer), each logging to
    ``logs/<name>.log``, restarted when one dies as Kubernetes or compose would."""
    base = [sys.executable, "-m", "driftloop.cli"] + (["--config", str(config_file)] if config_file else [])
    children = [Child(name, [*base, *command], env, logs / f"{name}.log") for name, command in WORKERS.items()]
    return Supervisor(children, max_restarts=MAX_RESTARTS, grace_s=60.0)


def run_loop(
    settings: Settings, plan: DemoPlan, config_file: Path | None, out_dir: Path, echo: Callable[[str], None]
) -> dict:
    """Produce the stream, inject the drift, wait for the loop to promote a new version; return the summary.

    Raises:
        RuntimeError: a worker kept exiting, or no prediction came within ``WARM_UP_S``.
    """
    from training.repository import KEEP_RUNS, ModelRepository

    model = settings.triton.model_name
    observer = Observer(settings, model, datetime.now(UTC) - timedelta(seconds=1))
    observer.start()
    logs = out_dir / "logs"
    workers = supervisor(config_file, logs, dict(os.environ))
    workers.start()

    def check_workers() -> None:
        try:
            restarted = workers.check()
        except GaveUp as exc:
            raise RuntimeError(f"{exc}; see {logs}") from exc
        for name in restarted:
            echo(f">>> {name} exited with an error: restarted it (restart {workers.restarts(name)})")

    # The same traffic every run (seeded), under event ids of its own: datasets read labels up to an hour older than
    # their window, so a second demo on the same stack would otherwise find the first one's labels under its ids
    # (labels of another phase of the stream), count them as post-drift labels and train on them.
    stream = SyntheticStream(
        seed=plan.seed,
        entities=settings.training.bootstrap_entities,
        labels=settings.training.labels,
        id_seed=secrets.randbits(64),
    )
    labels = LabelSchedule(settings.kafka.topic("labels-v1"), plan.label_delay_s, plan.label_share, seed=plan.seed)
    produced: dict[str, datetime] = {}
    labelled = 0
    marks: dict[str, datetime] = {}
    initial = _wait_for(observer.seen.current, 30)
    initial_champion = initial.champion if initial else None
    promoted_at: datetime | None = None
    healed_by: int | None = None
    announced: set[int] = set()
    try:
        with KafkaProducer(settings) as producer:

            def send_labels(records: list[Record]) -> None:
                nonlocal labelled
                producer.produce_batch(records)
                labelled += len(records)

            def send(drifted: bool) -> None:
                nonlocal labelled
                now = datetime.now(UTC)
                event = stream.one(now, drifted=drifted)
                produced[event.event.event_id] = now
                labels.hold(
                    Record(
                        settings.kafka.topic("labels-v1"),
                        event.label_record().to_bytes(),
                        key=event.event.event_id.encode(),
                    ),
                    time.monotonic(),
                )
                due = labels.due(time.monotonic())
                producer.produce_batch(
                    [
                        Record(
                            settings.kafka.topic("events-v1"),
                            event.event.to_bytes(),
                            key=event.event.entity_id.encode(),
                        ),
                        *due,
                    ]
                )
                labelled += len(due)

            # The clock starts once the workers answer (their start-up takes a while on a small machine).
            echo("waiting for the workers to answer ...")
            warm_up = time.monotonic()
            while not observer.seen.predictions:
                check_workers()
                if time.monotonic() - warm_up > WARM_UP_S:
                    raise RuntimeError(f"no prediction within {WARM_UP_S:.0f} s; see {logs}")
                send(drifted=False)
                time.sleep(1 / plan.rate)
            started = datetime.now(UTC)
            marks["start"] = started
            if plan.label_delay_s or plan.label_share < 1:
                echo(f"labels arrive {plan.label_delay_s:g} s after their event, for {plan.label_share:.0%} of them")
            last_report, i = time.monotonic(), 0
            while True:
                now = datetime.now(UTC)
                elapsed = (now - started).total_seconds()
                drifted = elapsed >= plan.drift_after_s
                if drifted and "drift_onset" not in marks:
                    marks["drift_onset"] = now
                    echo(f"[{elapsed:6.1f}s] >>> concept drift injected: new vocabulary, changed label mapping")
                send(drifted)
                i += 1
                state = observer.seen.current()
                if promoted_at is None and state and state.champion not in (None, initial_champion):
                    if state.champion not in announced:
                        announced.add(state.champion)
                        echo(f"[{elapsed:6.1f}s] >>> version {state.champion} promoted to champion")
                    if drifted and learned_after(settings, state.champion, marks["drift_onset"]):
                        promoted_at, healed_by = now, state.champion
                if time.monotonic() - last_report >= 5:
                    last_report = time.monotonic()
                    echo(progress_line(elapsed, len(produced), observer.seen, state, plan.label_delay_s))
                if promoted_at and (now - promoted_at).total_seconds() >= plan.after_promotion_s:
                    break
                if elapsed >= plan.timeout_s:
                    echo(f"[{elapsed:6.1f}s] timeout: no promotion within {plan.timeout_s:.0f}s")
                    break
                check_workers()
                time.sleep(max(0.0, started.timestamp() + i / plan.rate - time.time()))
            if len(labels):
                echo(f"sending the {len(labels)} labels still held, each once due ...")
            labels.drain(send_labels, sleep=lambda s: _sleep_checking(s, check_workers))
        # let the tail drain: every event answered, every label sent seen
        _wait_for(lambda: set(produced) <= set(observer.seen.predictions) and len(observer.seen.labels) >= labelled, 60)
    finally:
        workers.stop()
        observer.stop()
    runs = ModelRepository(settings).runs(KEEP_RUNS)
    summary = summarise(observer.seen, produced, marks, initial_champion, healed_by, runs)
    summary["restarts"] = {name: workers.restarts(name) for name in WORKERS if workers.restarts(name)}
    write_outputs(summary, observer.seen, produced, out_dir)
    return summary


def _sleep_checking(seconds: float, check: Callable[[], None]) -> None:
    """Sleep ``seconds``, keeping the workers running meanwhile."""
    deadline = time.monotonic() + seconds
    while (left := deadline - time.monotonic()) > 0:
        time.sleep(min(left, 1.0))
        check()


def _wait_for(condition: Callable, timeout_s: float):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if result := condition():
            return result
        time.sleep(0.5)
    return None


def learned_after(settings: Settings, version: int, when: datetime) -> bool:
    """True when ``version`` was trained on data that reaches past ``when`` (it can know the drift)."""
    from training.repository import ModelRepository

    window = (ModelRepository(settings).metadata(version) or {}).get("data_window") or {}
    return bool(window.get("end")) and datetime.fromisoformat(window["end"]) > when
