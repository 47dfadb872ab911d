"""The closed-loop demo: bootstrap a model, stream events, inject a concept drift, watch the loop heal itself.

Runs on the local stack with real processes: the stream workers, the drift monitor and the retraining consumer, each
started as ``driftloop …`` with the same settings. This module only produces events and observes the topics; the
loop itself is the product's. At the end it prints a timeline and writes a JSON summary and a PNG plot.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

from confluent_kafka import Consumer, Message, TopicPartition

from foundation.settings import Settings
from streams.client import KafkaProducer, Record, client_config
from streams.schemas import (
    DeadLetter,
    InvalidRecord,
    ModelState,
    Prediction,
    bounded_time,
    parse_drift_event,
    parse_label,
    parse_model_state,
    parse_prediction,
)
from streams.skips import SkippedRecords
from streams.synthetic import SyntheticStream

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DemoPlan:
    """Args: events per second; seconds of clean traffic before the drift; the longest the demo may run; seconds of
    traffic kept after the promotion; the seed."""

    rate: float = 10.0
    drift_after_s: float = 60.0
    timeout_s: float = 600.0
    after_promotion_s: float = 30.0
    seed: int = 7


@dataclass
class Observed:
    """What the observer saw on the topics (thread-safe through the lock)."""

    predictions: dict[str, Prediction] = field(default_factory=dict)  # served answer per event id
    labels: dict[str, str] = field(default_factory=dict)
    drift: list[dict] = field(default_factory=list)
    states: list[ModelState] = field(default_factory=list)
    dead_letters: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)


OBSERVED_TOPICS = ("predictions-v1", "labels-v1", "drift-v1", "dlq-v1", "models-v1")


class TopicView:
    """Folds records of the observed topics into an ``Observed`` (no Kafka here).

    A record it cannot read (broken contract, tombstone, anything that raises) is skipped and counted
    (``driftloop_skipped_records_total``, logged at most once a minute per reason): no record stops the observer.

    Args:
        settings: root settings (the topic names).
        model: the model whose states are kept.
        skipped: where skipped records are counted (default: prometheus_client's registry).
    """

    def __init__(self, settings: Settings, model: str, skipped: SkippedRecords | None = None) -> None:
        self.model, self.seen = model, Observed()
        self.skipped = skipped or SkippedRecords()
        self.topics = {settings.kafka.topic(n): n for n in OBSERVED_TOPICS}

    def observe(self, msg: Message) -> bool:
        """Fold one record into ``seen``; False when it was skipped (counted, never raised)."""
        name = self.topics.get(msg.topic(), msg.topic())
        try:
            self._on(name, msg.value())
        except InvalidRecord as exc:
            reason = exc.reason
        except Exception as exc:  # noqa: BLE001 - no record may stop the observer
            reason = f"unexpected {type(exc).__name__}: {str(exc)[:200]}"
        else:
            return True
        self.skipped.skip(name, reason, partition=msg.partition(), offset=msg.offset())
        return False

    def _on(self, name: str, value: bytes | None) -> None:
        """Raises: InvalidRecord (or anything a hostile record provokes; ``observe`` catches it)."""
        seen = self.seen
        if name == "predictions-v1":
            prediction = _served(parse_prediction(value))
            with seen.lock:
                if prediction.role != "shadow":
                    seen.predictions.setdefault(prediction.event_id, prediction)
        elif name == "labels-v1":
            label = parse_label(value)
            with seen.lock:
                seen.labels[label.event_id] = label.label
        elif name == "drift-v1":
            event = parse_drift_event(value).model_dump(mode="json")
            with seen.lock:
                seen.drift.append(event)
        elif name == "dlq-v1":
            DeadLetter.model_validate_json(value or b"")
            with seen.lock:
                seen.dead_letters += 1
        else:
            state = parse_model_state(value)
            if state.model == self.model:
                with seen.lock:
                    seen.states.append(state)


def _served(prediction: Prediction) -> Prediction:
    """The prediction with ``predicted_at`` in UTC (the summary compares it with aware times).

    Raises:
        InvalidRecord: ``predicted_at`` has no time zone or lies out of the contracts' range.
    """
    try:
        predicted_at = bounded_time(prediction.predicted_at)
    except ValueError as exc:
        raise InvalidRecord(f"predicted_at: {exc}") from None
    return prediction.model_copy(update={"predicted_at": predicted_at})


class Observer(threading.Thread):
    """Reads predictions, labels, drift, models and DLQ topics from ``since``, without a consumer group; what it
    reads is folded by a ``TopicView`` (invalid records skipped and counted, never raised)."""

    def __init__(self, settings: Settings, model: str, since: datetime) -> None:
        super().__init__(name="demo-observer", daemon=True)
        self.settings, self.model = settings, model
        self.view = TopicView(settings, model)
        self.seen = self.view.seen
        self._stopping = threading.Event()
        self._consumer = Consumer(client_config(settings, {"group.id": f"driftloop-demo-{uuid.uuid4().hex[:8]}",
                                                           "enable.auto.commit": False}))  # fmt: skip
        names = ("predictions-v1", "labels-v1", "drift-v1", "dlq-v1")
        wanted = []
        for topic in [settings.kafka.topic(n) for n in names]:
            partitions = self._consumer.list_topics(topic, timeout=10).topics[topic].partitions
            wanted += [TopicPartition(topic, p, int(since.timestamp() * 1000)) for p in partitions]
        models = settings.kafka.topic("models-v1")
        wanted += [TopicPartition(models, p, 0) for p in self._consumer.list_topics(models, timeout=10).topics[models].partitions]
        self._consumer.assign(self._consumer.offsets_for_times(wanted, timeout=10))

    def stop(self) -> None:
        self._stopping.set()
        self.join(timeout=5)
        self._consumer.close()

    def run(self) -> None:
        while not self._stopping.is_set():
            for msg in self._consumer.consume(500, timeout=0.3):
                if msg.error() is None:
                    self.view.observe(msg)


WORKERS = {"workers": ("workers",), "monitor": ("monitor",), "retrain": ("retrain",)}  # name: driftloop command


class Supervisor:
    """The product's workers as a user starts them (stream workers, monitor, retraining consumer), restarted when one
    dies, as Kubernetes or compose would; after ``max_restarts`` of one worker the demo gives up."""

    def __init__(self, config_file: Path | None, logs: Path, env: dict[str, str], max_restarts: int = 3) -> None:
        self.base = [sys.executable, "-m", "driftloop.cli"] + (["--config", str(config_file)] if config_file else [])
        self.logs, self.env, self.max_restarts = logs, env, max_restarts
        self.procs: dict[str, subprocess.Popen] = {}
        self.restarts: dict[str, int] = {}

    def start(self) -> None:
        self.logs.mkdir(parents=True, exist_ok=True)
        for name in WORKERS:
            self._spawn(name)

    def _spawn(self, name: str) -> None:
        with (self.logs / f"{name}.log").open("ab") as out:
            command = [*self.base, *WORKERS[name]]
            self.procs[name] = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=self.env)

    def check(self, echo: Callable[[str], None]) -> None:
        """Restart a worker that exited.

        Raises:
            RuntimeError: a worker exited more than ``max_restarts`` times.
        """
        for name, proc in self.procs.items():
            if proc.poll() is None:
                continue
            restarts = self.restarts.get(name, 0)
            if restarts >= self.max_restarts:
                raise RuntimeError(f"{name} exited with {proc.returncode} after {restarts} restarts; see {self.logs}")
            echo(f">>> {name} exited with {proc.returncode}: restarting it")
            self.restarts[name] = restarts + 1
            self._spawn(name)

    def stop(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.procs.values():
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()


def run_loop(
    settings: Settings, plan: DemoPlan, config_file: Path | None, out_dir: Path, echo: Callable[[str], None]
) -> dict:
    """Produce the stream, inject the drift, wait for the loop to promote a new version; return the summary."""
    model = settings.triton.model_name
    observer = Observer(settings, model, datetime.now(UTC) - timedelta(seconds=1))
    observer.start()
    workers = Supervisor(config_file, out_dir / "logs", dict(os.environ))
    workers.start()
    stream = SyntheticStream(seed=plan.seed, entities=settings.training.bootstrap_entities,
                             labels=settings.training.labels)  # fmt: skip
    produced: dict[str, datetime] = {}
    marks: dict[str, datetime] = {}
    initial = _wait_for(lambda: _current(observer.seen), 30)
    initial_champion = initial.champion if initial else None
    promoted_at: datetime | None = None
    healed_by: int | None = None
    announced: set[int] = set()
    try:
        with KafkaProducer(settings) as producer:

            def send(drifted: bool) -> None:
                now = datetime.now(UTC)
                labelled = stream.one(now, drifted=drifted)
                event = labelled.event
                produced[event.event_id] = now
                producer.produce_batch([
                    Record(settings.kafka.topic("events-v1"), event.to_bytes(), key=event.entity_id.encode()),
                    Record(settings.kafka.topic("labels-v1"), labelled.label_record().to_bytes(),
                           key=event.event_id.encode()),
                ])  # fmt: skip

            # The clock starts once the workers answer (their start-up takes a while on a small machine).
            echo("waiting for the workers to answer ...")
            warm_up = time.monotonic()
            while not observer.seen.predictions:
                workers.check(echo)
                if time.monotonic() - warm_up > 180:
                    raise RuntimeError(f"no prediction within 180 s; see {out_dir / 'logs'}")
                send(drifted=False)
                time.sleep(1 / plan.rate)
            started = datetime.now(UTC)
            marks["start"] = started
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
                state = _current(observer.seen)
                if promoted_at is None and state and state.champion not in (None, initial_champion):
                    if state.champion not in announced:
                        announced.add(state.champion)
                        echo(f"[{elapsed:6.1f}s] >>> version {state.champion} promoted to champion")
                    if drifted and learned_after(settings, state.champion, marks["drift_onset"]):
                        promoted_at, healed_by = now, state.champion
                if time.monotonic() - last_report >= 5:
                    last_report = time.monotonic()
                    echo(_progress(elapsed, len(produced), observer.seen, state))
                if promoted_at and (now - promoted_at).total_seconds() >= plan.after_promotion_s:
                    break
                if elapsed >= plan.timeout_s:
                    echo(f"[{elapsed:6.1f}s] timeout: no promotion within {plan.timeout_s:.0f}s")
                    break
                workers.check(echo)
                time.sleep(max(0.0, started.timestamp() + i / plan.rate - time.time()))
        _wait_for(lambda: set(produced) <= set(observer.seen.predictions), 60)  # let the tail drain
    finally:
        workers.stop()
        observer.stop()
    summary = summarise(observer.seen, produced, marks, initial_champion, healed_by, out_dir / "logs" / "retrain.log")
    summary["restarts"] = dict(workers.restarts)
    write_outputs(summary, observer.seen, produced, out_dir)
    return summary


def _current(seen: Observed) -> ModelState | None:
    with seen.lock:
        return seen.states[-1] if seen.states else None


def _wait_for(condition: Callable, timeout_s: float):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if result := condition():
            return result
        time.sleep(0.5)
    return None


def _progress(elapsed: float, produced: int, seen: Observed, state: ModelState | None) -> str:
    with seen.lock:
        recent = [p for p in seen.predictions.values() if (datetime.now(UTC) - p.event_time).total_seconds() < 15]
        scored = [p.label == seen.labels[p.event_id] for p in recent if p.event_id in seen.labels]
        alerts = sum(1 for d in seen.drift if d.get("status") == "firing")
        answered = len(seen.predictions)
    accuracy = f"{sum(scored) / len(scored):6.1%}" if scored else "   n/a"
    champion = f"v{state.champion}" if state and state.champion else "-"
    candidate = f" candidate v{state.candidate}" if state and state.candidate else ""
    return (f"[{elapsed:6.1f}s] events {produced:5d}  predictions {answered:5d}  accuracy(15s) {accuracy}  "
            f"champion {champion}{candidate}  drift alerts {alerts}")  # fmt: skip


def learned_after(settings: Settings, version: int, when: datetime) -> bool:
    """True when ``version`` was trained on data that reaches past ``when`` (it can know the drift)."""
    from training.repository import ModelRepository

    window = (ModelRepository(settings).metadata(version) or {}).get("data_window") or {}
    return bool(window.get("end")) and datetime.fromisoformat(window["end"]) > when


def summarise(
    seen: Observed,
    produced: dict[str, datetime],
    marks: dict[str, datetime],
    initial: int | None,
    healed_by: int | None,
    retrain_log: Path,
) -> dict:
    """Timeline and figures of one run: ``healed_by`` is the first version promoted that learned from drifted data."""
    onset = marks.get("drift_onset")
    firing = sorted((d for d in seen.drift if d.get("status") == "firing"), key=lambda d: d["detected_at"])
    after_onset = [d for d in firing if onset and datetime.fromisoformat(d["detected_at"]) >= onset]
    alert = datetime.fromisoformat(after_onset[0]["detected_at"]) if after_onset else None
    published = next((s for s in seen.states if s.event == "published" and s.candidate == healed_by), None)
    promoted = next((s for s in seen.states if s.event == "promoted" and s.champion == healed_by), None)
    new_version = healed_by
    first_new = min(
        (p.predicted_at for p in seen.predictions.values() if new_version and p.model.version == new_version), default=None
    )
    outcome = _outcome_for(retrain_log, healed_by)

    def accuracy(start: datetime | None, end: datetime | None) -> float | None:
        rows = [p.label == seen.labels[p.event_id] for p in seen.predictions.values() if p.event_id in seen.labels
                and (start is None or p.event_time >= start) and (end is None or p.event_time < end)]  # fmt: skip
        return round(sum(rows) / len(rows), 4) if rows else None

    def since_onset(when: datetime | None) -> float | None:
        return round((when - onset).total_seconds(), 1) if when and onset else None

    promotion_time = promoted.at if promoted else None
    timeline = {
        "drift_onset": onset, "drift_alert": alert,
        "retraining_start": outcome.get("started_at"), "candidate_published": published.at if published else None,
        "candidate_serving": first_new, "promotion": promotion_time, "retraining_end": outcome.get("ended_at"),
    }  # fmt: skip
    lost = sorted(set(produced) - set(seen.predictions))
    return {
        "timeline": {k: (v.isoformat() if isinstance(v, datetime) else v) for k, v in timeline.items()},
        "initial_champion": initial,
        "new_version": new_version,
        "time_to_detect_s": since_onset(alert),
        "time_to_serve_new_version_s": since_onset(first_new),
        "time_to_promote_s": since_onset(promotion_time),
        "accuracy_before_drift": accuracy(None, onset),
        "accuracy_after_drift": accuracy(onset, promotion_time),
        "accuracy_after_promotion": accuracy(promotion_time, None) if promotion_time else None,
        "events_produced": len(produced),
        "predictions": len(seen.predictions),
        "failed_predictions": seen.dead_letters,
        "drift_alerts": [f"{d['detected_at'][11:19]} {d['kind']} {d['severity']}" for d in firing],
        "events_lost": len(lost),
        "canary": outcome.get("verdict"),
    }


def _outcome_for(retrain_log: Path, version: int | None) -> dict:
    """The retraining consumer's report (one JSON line per run, on its stdout) of the run that built ``version``."""
    if version is None or not retrain_log.exists():
        return {}
    for line in retrain_log.read_text(errors="replace").splitlines():
        if line.startswith("{") and '"trigger"' in line:
            try:
                outcome = json.loads(line)
            except ValueError:
                continue
            if outcome.get("version") == version:
                return outcome
    return {}


def write_outputs(summary: dict, seen: Observed, produced: dict[str, datetime], out_dir: Path) -> None:
    """``summary.json`` and ``accuracy.png`` (accuracy over time in 5 s bins, with the loop's moments marked)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    start = min(produced.values()) if produced else datetime.now(UTC)
    bins: dict[int, list[bool]] = {}
    for p in seen.predictions.values():
        if p.event_id in seen.labels:
            bins.setdefault(int((p.event_time - start).total_seconds() // 5), []).append(p.label == seen.labels[p.event_id])
    xs = sorted(bins)
    fig, ax = plt.subplots(figsize=(10, 4.5))
    # Each point at the middle of its bin: a bin that straddles a moment shows on both sides of its marker.
    accuracy = [sum(bins[x]) / len(bins[x]) for x in xs]
    ax.plot([x * 5 + 2.5 for x in xs], accuracy, marker=".", label="accuracy (5 s bins)")
    colours = {"drift_onset": "red", "drift_alert": "orange", "candidate_serving": "purple", "promotion": "green"}
    for name, colour in colours.items():
        when = summary["timeline"].get(name)
        if when:
            x = (datetime.fromisoformat(when) - start).total_seconds()
            ax.axvline(x, color=colour, linestyle="--", label=f"{name.replace('_', ' ')} ({x:.0f}s)")
    ax.set_xlabel("seconds since start")
    ax.set_ylabel("accuracy on labelled events")
    ax.set_ylim(0, 1.05)
    ax.set_title("driftloop closed loop: accuracy over time")
    ax.legend(loc="lower left", fontsize=8)
    fig.tight_layout()
    fig.savefig(out_dir / "accuracy.png", dpi=110)
    plt.close(fig)


def timeline_lines(summary: dict) -> list[str]:
    """The timeline as text, in order, with seconds since the drift onset."""
    onset = summary["timeline"].get("drift_onset")
    rows = sorted(((k, v) for k, v in summary["timeline"].items() if v), key=lambda kv: kv[1])
    lines = []
    for name, when in rows:
        offset = (datetime.fromisoformat(when) - datetime.fromisoformat(onset)).total_seconds() if onset else 0.0
        lines.append(f"  {when[11:23]}  {offset:+7.1f}s  {name.replace('_', ' ')}")
    return lines
