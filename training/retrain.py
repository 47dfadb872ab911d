"""The retraining consumer: drift events in, a canaried candidate out, then promotion or roll-back.

- Its own consumer group on the drift topic. Firing events of the trigger kinds start a run; one run per model at a
  time: the other alerts of the same batch, and alerts whose drift started before the end of the data the run
  learned from, are folded into it (an alert that started later is one the run could not have seen: a new run).
- Offsets are committed only once the run is recorded (waiting, running or ended): a run the log shows waiting or
  running is resumed at start, and a crash before it is recorded replays the triggering events. Runs are idempotent
  by drift event id: a version whose metadata names the trigger is not trained again; if it is still the candidate,
  its canary is resumed; otherwise the event is done.
- Labels come late, and a data or prediction alert comes before them: a planned run first waits until
  ``retrain.min_post_drift_labels`` labelled events since the drift's onset are on the topics (counted every
  ``retrain.label_poll_s``; state ``waiting_for_labels`` in the run log). It fails after
  ``retrain.label_wait_timeout_s``, and is ``dropped`` when its alerts resolve first. Alerts that fire meanwhile are
  folded into it. The onset is the estimated start of the drift (the change point) of the run's first alert when that
  is a data or prediction alert, else the moment it fired (:func:`onset`).
- The run: labelled events since ``retrain.lookback_s`` before the onset, with point-in-time features →
  fine-tune from the champion → gate on the fresh holdout → publish as candidate (never promoted directly) → canary
  on live traffic (``training.canary``) → promote or roll back on the models topic.
- A run never stops the consumer: any exception in it (a ``TrainingError``, CUDA out of memory, a bug) ends the run
  as ``failed`` with the reason; a candidate that loses the holdout gate against the champion ends it as
  ``rejected``. Either way the drift events are committed and the consumer goes on. Every run is recorded in the
  model folder's run log (``.runs.jsonl``, shown by ``driftloop models list``). Drift events that are invalid or
  unusable are skipped and counted (``driftloop_skipped_records_total{topic="drift-v1"}``), never retried.
- At start, stale staging folders of killed builds are removed and a publish interrupted between Triton's load and
  the announcement is finished or rolled back (``training.publish.recover_publish``). Then, and every
  ``retrain.reconcile_interval_s`` in a thread of its own (a run blocks the consumer's loop for minutes, and a canary
  needs its candidate on every replica), every Triton replica is brought to the versions with a role
  (``training.publish.Publisher.reconcile``): one that was down during a publish gets the version when it is back.
- A run that promotes nothing (candidate withdrawn, training failed) while its alerts stay open is tried again
  ``retrain.retry_after_s`` later on the longer window, at most ``retrain.max_retries`` times; a resolve of the
  alerts, or a promotion, ends the retries. Retries are the consumer's memory: a restart forgets them (the alert's
  next fire starts a run again).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Literal

from confluent_kafka import Message

from foundation.settings import Settings
from streams.client import KafkaConsumer
from streams.schemas import DriftEvent, InvalidRecord, parse_drift_event
from streams.skips import SkippedRecords
from training.canary import Verdict, watch_canary
from training.dataset import CLOCK_SKEW, DataWindow, read_labelled_events
from training.evaluation import HoldoutGateRejected
from training.exceptions import TrainingError
from training.publish import Publisher, promote, recover_publish, withdraw
from training.registry import read_state
from training.repository import ModelRepository

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RunOutcome:
    trigger: str
    folded: tuple[str, ...]
    version: int | None
    verdict: Verdict | None
    detail: str
    started_at: datetime
    ended_at: datetime
    data_end: datetime | None = None  # the end of the window the candidate learned from
    # promoted | rolled_back (the canary withdrew the candidate) | rejected (holdout gate) | failed | skipped
    # | dropped (the alerts resolved while the run waited for labels)
    status: str = ""

    @property
    def promoted(self) -> bool:
        return self.verdict is not None and self.verdict.decision == "promote"

    def as_dict(self) -> dict:
        return {
            "trigger": self.trigger,
            "folded": list(self.folded),
            "version": self.version,
            "status": self.status,
            "verdict": self.verdict.as_dict() if self.verdict else None,
            "detail": self.detail,
            "started_at": self.started_at.isoformat(),
            "ended_at": self.ended_at.isoformat(),
            "data_end": self.data_end.isoformat() if self.data_end else None,
        }


DRIFT_TOPIC = "drift-v1"


def unusable(event: DriftEvent, now: datetime) -> str | None:
    """Why a valid drift event cannot start a run (None when it can): a drift that starts in the future, or that
    was detected before it started, has no data window."""
    if event.started_at > now + CLOCK_SKEW:
        return f"started_at {event.started_at.isoformat()} is in the future"
    if event.detected_at + CLOCK_SKEW < event.started_at:
        return "detected_at is before started_at"
    return None


def triggers(events: list[DriftEvent], model: str, kinds: tuple[str, ...]) -> list[DriftEvent]:
    """The firing events of ``model`` that may start a run, oldest first."""
    firing = [e for e in events if e.status == "firing" and e.kind in kinds and e.model == model]
    return sorted(firing, key=lambda e: e.detected_at)


def onset(event: DriftEvent, max_lookback: timedelta) -> datetime:
    """When the drift began, as far as its alert knows.

    A data or prediction alert: its estimated onset (``onset_at``, the fired window's change point), else the start
    of the window that fired (its oldest prediction's event time); not after the alert fired and not more than
    ``max_lookback`` before. A performance alert marks no onset (its window is as old as the labels are late, and
    holds pre-drift labels): the moment it fired.
    """
    if event.kind == "performance":
        return event.started_at
    start = min(event.onset_at or event.window.start or event.started_at, event.started_at)
    return max(start, event.started_at - max_lookback)


Gate = Literal["train", "wait", "timeout", "drop"]


def label_gate(labelled: int, needed: int, waited_s: float, timeout_s: float, still_open: bool) -> Gate:
    """What a run waiting for post-onset labels does now: ``drop`` when its alerts resolved (even with labels
    enough: nothing is left to heal), ``train`` with ``needed`` labelled events, ``timeout`` once it waited
    ``timeout_s``, else ``wait``."""
    if not still_open:
        return "drop"
    if labelled >= needed:
        return "train"
    return "timeout" if waited_s >= timeout_s else "wait"


@dataclass
class LabelWait:
    """A planned run waiting for labelled events since ``onset`` (see :func:`label_gate`)."""

    planned: PlannedRun
    onset: datetime
    since: datetime  # when the wait began (wall clock; kept across restarts through the run log)
    labelled: int = 0  # labelled events since the onset at the last count
    counted_at: float | None = None  # monotonic time of the last count (None: not counted yet)
    recorded: int | None = None  # the count last written to the run log

    def detail(self, needed: int, timeout_s: float) -> str:
        deadline = self.since + timedelta(seconds=timeout_s)
        return (
            f"{self.labelled} of {needed} labelled events since the onset {self.onset.isoformat()} "
            f"(retrain.min_post_drift_labels); gives up at {deadline.isoformat()} (retrain.label_wait_timeout_s)"
        )


@dataclass(frozen=True)
class PlannedRun:
    """What to run: alerts (the oldest is the trigger) and the attempt (0 first, then retries)."""

    alerts: list[DriftEvent]
    attempt: int = 0

    @property
    def trigger_id(self) -> str:
        """The key a version is built for (idempotency): the drift id, with the retry number on retries."""
        first = self.alerts[0].id
        return first if self.attempt == 0 else f"{first}#retry{self.attempt}"


class RunPlanner:
    """Which alerts start a run, which fold into the last one, and when a run that promoted nothing is retried.

    Pure bookkeeping (no I/O): :meth:`observe` the drift events of a batch, :meth:`next_run` to get work,
    :meth:`ended` after each run.
    """

    def __init__(self, model: str, kinds: tuple[str, ...], retry_after_s: float, max_retries: int) -> None:
        self.model, self.kinds = model, kinds
        self.retry_after_s, self.max_retries = retry_after_s, max_retries
        self.open: dict[str, DriftEvent] = {}  # dedup_key -> the firing event that opened it
        self.covered_until: datetime | None = None
        self.current: PlannedRun | None = None  # planned (maybe waiting for labels), not ended yet
        self._fresh: list[DriftEvent] = []
        self._retry_at: float | None = None
        self._attempt = 0

    def observe(self, events: list[DriftEvent]) -> list[DriftEvent]:
        """Take a batch of drift events (in topic order); returns the new firing ones folded into the current run
        (one still waiting for labels) or the previous one. A firing event of an alert already open is no news."""
        known = {e.id for e in self.open.values()}
        new: list[DriftEvent] = []
        for event in events:
            if event.model != self.model:
                continue
            if event.status == "resolved":
                self.open.pop(event.dedup_key, None)
            elif event.status == "firing" and event.kind in self.kinds:
                self.open.setdefault(event.dedup_key, event)
                if event.id not in known:
                    known.add(event.id)
                    new.append(event)
        new.sort(key=lambda e: e.detected_at)
        if self.current is not None:  # a run that has not trained yet takes them in
            self.current.alerts.extend(new)
            folded = new
        else:
            # An alert whose drift started before the end of the data the last run learned from is folded into
            # that run; one that started later is something the run could not have seen: it starts a new run.
            folded = [e for e in new if self.covered_until is not None and e.started_at <= self.covered_until]
            self._fresh += [e for e in new if e not in folded]
        if not self.open:
            self._retry_at = None
        return folded

    def resume(self, planned: PlannedRun) -> None:
        """Take back a run a previous process recorded as waiting or running: its alerts are open again."""
        for event in planned.alerts:
            self.open.setdefault(event.dedup_key, event)
        self.current, self._attempt = planned, planned.attempt

    def still_open(self, planned: PlannedRun) -> bool:
        """Whether an alert (model and kind) of ``planned`` is still open: not resolved since."""
        return any(e.dedup_key in self.open for e in planned.alerts)

    def next_run(self, now: float) -> PlannedRun | None:
        """Fresh alerts first; else a retry that is due (``now``: a monotonic clock) while alerts stay open. None
        while a run is current (until :meth:`ended`)."""
        if self.current is not None:
            return None
        if self._fresh:
            run, self._fresh, self._attempt, self._retry_at = PlannedRun(self._fresh), [], 0, None
            self.current = run
            return run
        if self._retry_at is not None and now >= self._retry_at and self.open:
            self._retry_at = None
            self._attempt += 1
            self.current = PlannedRun(sorted(self.open.values(), key=lambda e: e.detected_at), self._attempt)
            return self.current
        return None

    def ended(self, promoted: bool, data_end: datetime | None, now: float) -> None:
        """After a run: what it covered (None: it learned nothing); schedule a retry when it promoted nothing and
        alerts stay open."""
        self.current = None
        if data_end is not None:
            self.covered_until = data_end
        retry = not promoted and self.open and self.retry_after_s > 0 and self._attempt < self.max_retries
        self._retry_at = now + self.retry_after_s if retry else None


def version_for_trigger(repo: ModelRepository, trigger_ids: set[str]) -> int | None:
    """The version an earlier run built for one of these drift events, if any."""
    for version in sorted(repo.versions(), reverse=True):
        metadata = repo.metadata(version) or {}
        if metadata.get("trigger_id") in trigger_ids:
            return version
    return None


def count_labelled(settings: Settings, window: DataWindow) -> int:
    """Labelled events (labels the model knows) with an event time in ``window``, read from the topics.

    Raises:
        DatasetError: a topic cannot be read.
    """
    frame, _ = read_labelled_events(settings, window, timeout_s=60.0)
    return len(frame)


WAITING, RUNNING = "waiting_for_labels", "running"


class Retrainer:
    """Args: settings; ``train``: the training function (``training.pipeline.train_version``; injectable for tests
    of the control flow); ``on_outcome``: called after each run; ``beat``: called on every loop (liveness);
    ``count_labels``: labelled events in a window (default :func:`count_labelled`, from the topics)."""

    def __init__(
        self,
        settings: Settings,
        train: Callable | None = None,
        on_outcome: Callable[[RunOutcome], None] | None = None,
        beat: Callable[[], None] | None = None,
        count_labels: Callable[[Settings, DataWindow], int] | None = None,
    ) -> None:
        self.settings = settings
        self.model = settings.triton.model_name
        self._drift_topic = settings.kafka.topic("drift-v1")
        self._train = train
        self._count_labels = count_labels or count_labelled
        self._wait: LabelWait | None = None  # the run waiting for labels, if any
        self._on_outcome = on_outcome
        self._stop = threading.Event()
        self._beat = beat or (lambda: None)
        self._skipped = SkippedRecords()
        self._published: int | None = None  # the version the current run published, if any
        self._reconciler: Publisher | None = None  # keeps what each Triton replica passed between reconciles
        self._reconcile_error = ""

    def stop(self) -> None:
        self._stop.set()

    def warm_up(self) -> None:
        """Import what a run needs (torch and its optimiser, transformers, Feast: ~20 s on a small machine) before the
        first alert, not after it: that time would otherwise count against time to serve."""
        if self._train is not None:
            return
        started = time.perf_counter()
        from transformers import BertModel  # noqa: F401

        import training.pipeline  # noqa: F401
        from features import open_store
        from training import trainer

        open_store(self.settings)
        trainer.warm_up()
        log.info("ready to retrain", extra={"warm_up_s": round(time.perf_counter() - started, 1)})

    def run(self) -> None:
        config = self.settings.retrain
        self.warm_up()
        self.recover()
        # A run (training + canary) can outlast librdkafka's default 5 min between polls: allow an hour.
        consumer = KafkaConsumer(
            self.settings,
            config.group_id,
            [self.settings.kafka.topic(DRIFT_TOPIC)],
            {"max.poll.interval.ms": 3_600_000},
        )
        planner = RunPlanner(self.model, tuple(config.trigger_kinds), config.retry_after_s, config.max_retries)
        self.resume(planner)
        reconciling = None
        if config.reconcile_interval_s > 0:
            reconciling = threading.Thread(
                target=self._reconcile_every, args=(config.reconcile_interval_s,), name="reconcile", daemon=True
            )
            reconciling.start()
        try:
            while not self._stop.is_set():
                self._beat()
                messages = consumer.consume_batch(100, 1.0)
                self.step(planner, messages)
                consumer.commit_or_redeliver(messages)  # refused (broker outage): replayed, runs are idempotent
        finally:
            consumer.close()
            self._stop.set()
            if reconciling is None:
                self._close_reconciler()
            else:
                reconciling.join(self.settings.workers.shutdown_grace_s)

    def step(self, planner: RunPlanner, messages: list[Message]) -> RunOutcome | None:
        """Take one batch of drift-topic records and run what is due; never raises for a record or a run.

        Returns the outcome of a run that ended in this step; None while nothing ended (a run may be waiting for
        labels: it is recorded as such before this returns, so the batch may be committed).
        """
        for event in planner.observe(self.parse(messages)):
            log.info("drift %s (%s) folded into the current or previous run", event.id, event.kind)
        if self._wait is None:
            planned = planner.next_run(time.monotonic())
            if planned is None:
                return None
            max_lookback = timedelta(days=self.settings.training.window_days)
            self._wait = LabelWait(planned, onset(planned.alerts[0], max_lookback), datetime.now(UTC))
        wait = self._wait
        gate = self._gate(planner, wait)
        if gate == "wait":
            return None
        self._wait = None
        if gate == "train":
            outcome = self.handle(wait.planned, wait)
            planner.ended(outcome.promoted, outcome.data_end or outcome.ended_at, time.monotonic())
        else:
            outcome = self._end_wait(wait, gate)
            planner.ended(False, None, time.monotonic())
        if self._on_outcome:
            try:
                self._on_outcome(outcome)
            except Exception:  # noqa: BLE001 - a reporting hook must not stop the consumer
                log.exception("reporting the outcome of run %s failed", outcome.trigger)
        return outcome

    def parse(self, messages: list[Message]) -> list[DriftEvent]:
        """The usable drift events of a batch; the others are skipped and counted (never retried)."""
        topic = self.settings.kafka.topic(DRIFT_TOPIC)
        events, now = [], datetime.now(UTC)
        for msg in messages:
            try:
                event = parse_drift_event(msg.value())
            except InvalidRecord as exc:
                self._skipped.skip(
                    DRIFT_TOPIC, exc.reason, topic_name=topic, partition=msg.partition(), offset=msg.offset()
                )
                continue
            why = unusable(event, now) if event.model == self.model and event.status == "firing" else None
            if why:
                self._skipped.skip(
                    DRIFT_TOPIC,
                    f"unusable: {why}",
                    topic_name=topic,
                    partition=msg.partition(),
                    offset=msg.offset(),
                    drift_id=event.id,
                )
                continue
            events.append(event)
        return events

    def _gate(self, planner: RunPlanner, wait: LabelWait) -> Gate:
        """Count the post-onset labels when due, decide (:func:`label_gate`), record a wait in the run log."""
        config = self.settings.retrain
        needed, still_open = config.min_post_drift_labels, planner.still_open(wait.planned)
        now = time.monotonic()
        due = wait.counted_at is None or now - wait.counted_at >= config.label_poll_s
        if needed > 0 and still_open and wait.labelled < needed and due:
            wait.counted_at = now
            try:
                wait.labelled = self._count_labels(
                    self.settings,
                    DataWindow(wait.onset, max(datetime.now(UTC), wait.onset + timedelta(microseconds=1))),
                )
            except Exception as exc:  # noqa: BLE001 - a topic that cannot be read now: counted again later
                log.warning(
                    "could not count the labels of run %s: %s",
                    wait.planned.trigger_id,
                    exc,
                    extra={"error": type(exc).__name__},
                )
        waited = (datetime.now(UTC) - wait.since).total_seconds()
        gate = label_gate(wait.labelled, needed, waited, config.label_wait_timeout_s, still_open)
        if gate == "wait" and wait.recorded != wait.labelled:
            if wait.recorded is None:
                log.info(
                    "run %s waits for labels: %s",
                    wait.planned.trigger_id,
                    wait.detail(needed, config.label_wait_timeout_s),
                )
            self._record(self._wait_record(wait, WAITING))
            wait.recorded = wait.labelled
        return gate

    def _wait_record(self, wait: LabelWait, status: str) -> dict:
        """A run-log record that lets a restart resume the run (its alerts, onset and wait)."""
        config = self.settings.retrain
        planned = wait.planned
        record = {
            "run": planned.trigger_id,
            "trigger": planned.trigger_id,
            "folded": [e.id for e in planned.alerts[1:]],
            "attempt": planned.attempt,
            "status": status,
            "onset": wait.onset.isoformat(),
            "waiting_since": wait.since.isoformat(),
            "alerts": [e.model_dump(mode="json") for e in planned.alerts],
            "labels": {"labelled": wait.labelled, "needed": config.min_post_drift_labels},
        }
        if status == WAITING:
            record.update(
                started_at=wait.since.isoformat(),
                detail="waiting for labels: " + wait.detail(config.min_post_drift_labels, config.label_wait_timeout_s),
            )
        return record

    def _end_wait(self, wait: LabelWait, gate: Gate) -> RunOutcome:
        """The outcome of a run that never trained: dropped (its alerts resolved) or failed (no labels in time)."""
        config = self.settings.retrain
        planned = wait.planned
        counted = wait.detail(config.min_post_drift_labels, config.label_wait_timeout_s)
        if gate == "drop":
            status, detail = "dropped", f"dropped: the drift resolved before the run trained ({counted})"
            log.info("retraining for %s %s", planned.trigger_id, detail)
        else:
            status = "failed"
            detail = f"failed: not enough labels after waiting {config.label_wait_timeout_s:g} s: {counted}"
            log.error("retraining for %s %s", planned.trigger_id, detail)
        outcome = RunOutcome(
            planned.trigger_id,
            tuple(e.id for e in planned.alerts[1:]),
            None,
            None,
            detail,
            wait.since,
            datetime.now(UTC),
            status=status,
        )
        self._record({"model": self.model, "run": planned.trigger_id, "attempt": planned.attempt, **outcome.as_dict()})
        return outcome

    def resume(self, planner: RunPlanner) -> LabelWait | None:
        """Take back the run the log shows waiting for labels or running when the last process stopped (its drift
        events may be committed already): it waits or trains again (runs are idempotent by trigger)."""
        # The run log sits beside the versions, which consumers of other topics (another prefix: a demo run, a
        # staging stack) may share: only a run started from this consumer's drift topic is its own to take back.
        topic = self._drift_topic
        try:
            last = next(
                (
                    r
                    for r in ModelRepository(self.settings).runs(50)
                    if r.get("model") == self.model and r.get("drift_topic", topic) == topic
                ),
                None,
            )
        except OSError as exc:
            log.warning("could not read the run log: %s", exc)
            return None
        if not last or last.get("status") not in (WAITING, RUNNING) or not last.get("alerts"):
            return None
        try:
            alerts = [DriftEvent.model_validate(a) for a in last["alerts"]]
            planned = PlannedRun(alerts, int(last.get("attempt") or 0))
            wait = LabelWait(
                planned,
                datetime.fromisoformat(last["onset"]),
                datetime.fromisoformat(last.get("waiting_since") or last["started_at"]),
            )
        except (KeyError, TypeError, ValueError) as exc:
            log.warning("cannot resume run %s from the run log: %s", last.get("run"), exc)
            return None
        planner.resume(planned)
        self._wait = wait
        log.info("resuming run %s (%s when the last consumer stopped)", planned.trigger_id, last["status"])
        return wait

    def recover(self) -> None:
        """Remove stale staging folders; finish or roll back an interrupted publish; bring every Triton replica to
        the served versions. A failure is logged (the next publish or reconcile tries again, under the publish
        lock)."""
        try:
            version = recover_publish(self.settings)
        except Exception as exc:  # noqa: BLE001 - Triton or the broker down: the next publish recovers
            log.error("could not recover an interrupted publish: %s", exc, extra={"error": type(exc).__name__})
            return
        if version is not None:
            log.info("an interrupted publish of version %s is finished", version)
        self.reconcile()

    def reconcile(self) -> None:
        """Bring every Triton replica that answers to the versions with a role
        (:meth:`training.publish.Publisher.reconcile`). A failure is logged (once until it changes); the next
        reconcile tries again."""
        if self._reconciler is None:
            self._reconciler = Publisher(self.settings)
        try:
            self._reconciler.reconcile()
        except Exception as exc:  # noqa: BLE001 - Triton or the broker down: the next reconcile tries again
            error = f"{type(exc).__name__}: {exc}"
            level = logging.DEBUG if error == self._reconcile_error else logging.WARNING
            log.log(level, "could not reconcile the Triton replicas: %s", error, extra={"error": type(exc).__name__})
            self._reconcile_error = error
            return
        self._reconcile_error = ""

    def _reconcile_every(self, interval_s: float) -> None:
        """The reconcile thread: every ``interval_s`` until the consumer stops."""
        try:
            while not self._stop.wait(interval_s):
                self.reconcile()
        finally:
            self._close_reconciler()

    def _close_reconciler(self) -> None:
        if self._reconciler is not None:
            self._reconciler.close()
            self._reconciler = None

    def handle(self, planned: PlannedRun, wait: LabelWait | None = None) -> RunOutcome:
        """One run for these alerts (the oldest is the trigger, the others are folded in); a retry (attempt > 0)
        follows a run that promoted nothing and learns from the window up to now. ``wait``: the label wait it passed,
        with the drift's onset (default: :func:`onset` of the trigger); the data starts ``retrain.lookback_s`` before
        the onset.

        Never raises (but for BaseException): a failure is the run's outcome, recorded in the run log.
        """
        started = datetime.now(UTC)
        if wait is None:
            wait = LabelWait(
                planned, onset(planned.alerts[0], timedelta(days=self.settings.training.window_days)), started
            )
        onset_at, trigger_id, folded = wait.onset, planned.trigger_id, tuple(e.id for e in planned.alerts[1:])
        self._record({**self._wait_record(wait, RUNNING), "detail": "", "started_at": started.isoformat()})
        self._published = None
        try:
            outcome = self._run(planned, started, onset_at)
        except HoldoutGateRejected as exc:
            log.warning("retraining for %s: %s", trigger_id, exc)
            outcome = RunOutcome(
                trigger_id, folded, None, None, str(exc), started, datetime.now(UTC), status="rejected"
            )
        except Exception as exc:  # noqa: BLE001 - no failure of a run may stop the consumer
            if isinstance(exc, TrainingError):  # foreseen (too little data, a rejected version): no traceback
                log.error("retraining for %s failed: %s", trigger_id, exc, extra={"error": type(exc).__name__})
            else:
                log.exception("retraining for %s failed", trigger_id, extra={"error": type(exc).__name__})
            self._withdraw_after_failure(trigger_id, exc)
            detail = f"failed: {type(exc).__name__}: {exc}"[:2000]
            outcome = RunOutcome(
                trigger_id, folded, self._published, None, detail, started, datetime.now(UTC), status="failed"
            )
        self._record({"run": trigger_id, "attempt": planned.attempt, **outcome.as_dict()})
        return outcome

    def _run(self, planned: PlannedRun, started: datetime, onset_at: datetime) -> RunOutcome:
        firing, attempt, trigger_id = planned.alerts, planned.attempt, planned.trigger_id
        trigger, folded = firing[0], tuple(e.id for e in firing[1:])
        repo = ModelRepository(self.settings)
        if repo.read_intent() is not None:  # an interrupted publish (not recovered at start): decide it first
            recover_publish(self.settings)
        keys = {trigger_id} if attempt else {e.id for e in firing}
        existing = version_for_trigger(repo, keys)
        if existing is not None and read_state(self.settings).candidate != existing:
            return RunOutcome(
                trigger_id,
                folded,
                existing,
                None,
                f"version {existing} was built for it already",
                started,
                datetime.now(UTC),
                status="skipped",
            )
        data_end = None
        version = existing
        if version is None:
            version, data_end = self._train_candidate(trigger, trigger_id, onset_at, settle=attempt == 0)
        else:
            log.info("resuming the canary of version %s (trigger %s)", version, trigger_id)
        self._published = version
        # Both roles are judged from the moment the candidate serves: the champion's answers before it (e.g.
        # before the drift) would flatter it.
        verdict = watch_canary(self.settings, version, datetime.now(UTC))
        if verdict.decision == "promote":
            promote(self.settings, version, reason=f"canary: {verdict.reason}; trigger {trigger_id}")
        else:
            withdraw(self.settings, version, reason=f"canary: {verdict.reason}; trigger {trigger_id}")
        status = "promoted" if verdict.decision == "promote" else "rolled_back"
        return RunOutcome(
            trigger_id,
            folded,
            version,
            verdict,
            f"{verdict.decision}: {verdict.reason}",
            started,
            datetime.now(UTC),
            data_end,
            status,
        )

    def _withdraw_after_failure(self, trigger_id: str, exc: Exception) -> None:
        """A run that failed after publishing its candidate withdraws it (best effort): no canary judges it."""
        if self._published is None:
            return
        try:
            if read_state(self.settings).candidate == self._published:
                withdraw(self.settings, self._published, reason=f"run {trigger_id} failed: {type(exc).__name__}")
        except Exception as again:  # noqa: BLE001 - best effort; a retry's publish replaces the candidate anyway
            log.warning("could not withdraw version %s after a failed run: %s", self._published, again)

    def _record(self, record: dict) -> None:
        try:
            ModelRepository(self.settings).record_run({"model": self.model, "drift_topic": self._drift_topic, **record})
        except OSError as exc:
            log.warning("could not write the run log: %s", exc)

    def _train_candidate(
        self, trigger: DriftEvent, trigger_id: str, onset_at: datetime, settle: bool
    ) -> tuple[int, datetime]:
        config = self.settings.retrain
        if settle and config.settle_s:  # a retry has waited retry_after_s already
            time.sleep(config.settle_s)
        window = DataWindow(onset_at - timedelta(seconds=config.lookback_s), datetime.now(UTC))
        train = self._train
        if train is None:
            from training.pipeline import train_version

            train = train_version
        log.info("retraining %s on %s for drift %s (%s)", self.model, window.as_dict(), trigger_id, trigger.kind)
        result = train(
            self.settings,
            window=window,
            trigger_id=trigger_id,
            promote_policy="never",
            progress=False,
            holdout_margin=config.holdout_margin,
        )
        self._published = result.version
        return result.version, window.end
