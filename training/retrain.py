"""The retraining consumer: drift events in, a canaried candidate out, then promotion or roll-back.

- Its own consumer group on the drift topic. Firing events of the trigger kinds start a run; one run per model at a
  time: the other alerts of the same batch, and alerts whose drift started before the end of the data the run
  learned from, are folded into it (an alert that started later is one the run could not have seen: a new run).
- Offsets are committed only when the run has ended, so a crash replays the triggering events. Runs are idempotent
  by drift event id: a version whose metadata names the trigger is not trained again; if it is still the candidate,
  its canary is resumed; otherwise the event is done.
- The run: labelled events since shortly before the drift started, with point-in-time features → fine-tune from the
  champion → gate on the fresh holdout → publish as candidate (never promoted directly) → canary on live traffic
  (``training.canary``) → promote or roll back on the models topic.
- A run never stops the consumer: any exception in it (a ``TrainingError``, CUDA out of memory, a bug) ends the run
  as ``failed`` with the reason; a candidate that loses the holdout gate against the champion ends it as
  ``rejected``. Either way the drift events are committed and the consumer goes on. Every run is recorded in the
  model folder's run log (``.runs.jsonl``, shown by ``driftloop models list``). Drift events that are invalid or
  unusable are skipped and counted (``driftloop_skipped_records_total{topic="drift-v1"}``), never retried.
- At start, stale staging folders of killed builds are removed and a publish interrupted between Triton's load and
  the announcement is finished or rolled back (``training.publish.recover_publish``).
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

from confluent_kafka import Message

from foundation.settings import Settings
from streams.schemas import DriftEvent
from streams.client import KafkaConsumer
from streams.schemas import InvalidRecord, parse_drift_event
from streams.skips import SkippedRecords
from training.canary import Verdict, watch_canary
from training.dataset import CLOCK_SKEW, DataWindow
from training.evaluation import HoldoutGateRejected
from training.exceptions import TrainingError
from training.publish import promote, recover_publish, withdraw
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
    status: str = ""

    @property
    def promoted(self) -> bool:
        return self.verdict is not None and self.verdict.decision == "promote"

    def as_dict(self) -> dict:
        return {
            "trigger": self.trigger, "folded": list(self.folded), "version": self.version, "status": self.status,
            "verdict": self.verdict.as_dict() if self.verdict else None, "detail": self.detail,
            "started_at": self.started_at.isoformat(), "ended_at": self.ended_at.isoformat(),
            "data_end": self.data_end.isoformat() if self.data_end else None,
        }  # fmt: skip


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
        self._fresh: list[DriftEvent] = []
        self._retry_at: float | None = None
        self._attempt = 0

    def observe(self, events: list[DriftEvent]) -> list[DriftEvent]:
        """Take a batch of drift events; returns the firing ones folded into the previous run."""
        for event in events:
            if event.model == self.model and event.status == "resolved":
                self.open.pop(event.dedup_key, None)
        firing = triggers(events, self.model, self.kinds)
        for event in firing:
            self.open.setdefault(event.dedup_key, event)
        # An alert whose drift started before the end of the data the last run learned from is folded into that
        # run; one that started later is something the run could not have seen: it starts a new run.
        folded = [e for e in firing if self.covered_until is not None and e.started_at <= self.covered_until]
        self._fresh += [e for e in firing if e not in folded]
        if not self.open:
            self._retry_at = None
        return folded

    def next_run(self, now: float) -> PlannedRun | None:
        """Fresh alerts first; else a retry that is due (``now``: a monotonic clock) while alerts stay open."""
        if self._fresh:
            run, self._fresh, self._attempt, self._retry_at = PlannedRun(self._fresh), [], 0, None
            return run
        if self._retry_at is not None and now >= self._retry_at and self.open:
            self._retry_at = None
            self._attempt += 1
            return PlannedRun(sorted(self.open.values(), key=lambda e: e.detected_at), self._attempt)
        return None

    def ended(self, promoted: bool, data_end: datetime, now: float) -> None:
        """After a run: what it covered; schedule a retry when it promoted nothing and alerts stay open."""
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


class Retrainer:
    """Args: settings; ``train``: the training function (``training.pipeline.train_version``; injectable for tests
    of the control flow); ``on_outcome``: called after each run; ``beat``: called on every loop (liveness)."""

    def __init__(
        self,
        settings: Settings,
        train: Callable | None = None,
        on_outcome: Callable[[RunOutcome], None] | None = None,
        beat: Callable[[], None] | None = None,
    ) -> None:
        self.settings = settings
        self.model = settings.triton.model_name
        self._train = train
        self._on_outcome = on_outcome
        self._stop = threading.Event()
        self._beat = beat or (lambda: None)
        self._skipped = SkippedRecords()
        self._published: int | None = None  # the version the current run published, if any

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
        consumer = KafkaConsumer(self.settings, config.group_id, [self.settings.kafka.topic(DRIFT_TOPIC)],
                                 {"max.poll.interval.ms": 3_600_000})  # fmt: skip
        planner = RunPlanner(self.model, tuple(config.trigger_kinds), config.retry_after_s, config.max_retries)
        try:
            while not self._stop.is_set():
                self._beat()
                messages = consumer.consume_batch(100, 1.0)
                self.step(planner, messages)
                consumer.commit_or_redeliver(messages)  # refused (broker outage): replayed, runs are idempotent
        finally:
            consumer.close()

    def step(self, planner: RunPlanner, messages: list[Message]) -> RunOutcome | None:
        """Take one batch of drift-topic records and run what is due; never raises for a record or a run."""
        for event in planner.observe(self.parse(messages)):
            log.info("drift %s (%s) folded into the previous run", event.id, event.kind)
        planned = planner.next_run(time.monotonic())
        if planned is None:
            return None
        outcome = self.handle(planned)
        planner.ended(outcome.promoted, outcome.data_end or outcome.ended_at, time.monotonic())
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
                self._skipped.skip(DRIFT_TOPIC, exc.reason, topic_name=topic, partition=msg.partition(),
                                   offset=msg.offset())  # fmt: skip
                continue
            why = unusable(event, now) if event.model == self.model and event.status == "firing" else None
            if why:
                self._skipped.skip(DRIFT_TOPIC, f"unusable: {why}", topic_name=topic, partition=msg.partition(),
                                   offset=msg.offset(), drift_id=event.id)  # fmt: skip
                continue
            events.append(event)
        return events

    def recover(self) -> None:
        """Remove stale staging folders; finish or roll back an interrupted publish. A failure is logged (the next
        publish tries again, under the publish lock)."""
        try:
            version = recover_publish(self.settings)
        except Exception as exc:  # noqa: BLE001 - Triton or the broker down: the next publish recovers
            log.error("could not recover an interrupted publish: %s", exc, extra={"error": type(exc).__name__})
            return
        if version is not None:
            log.info("an interrupted publish of version %s is finished", version)

    def handle(self, planned: PlannedRun) -> RunOutcome:
        """One run for these alerts (the oldest is the trigger, the others are folded in); a retry (attempt > 0)
        follows a run that promoted nothing and learns from the window up to now.

        Never raises (but for BaseException): a failure is the run's outcome, recorded in the run log.
        """
        started = datetime.now(UTC)
        trigger_id, folded = planned.trigger_id, tuple(e.id for e in planned.alerts[1:])
        self._record({"run": trigger_id, "trigger": trigger_id, "folded": list(folded), "attempt": planned.attempt,
                      "status": "running", "started_at": started.isoformat()})  # fmt: skip
        self._published = None
        try:
            outcome = self._run(planned, started)
        except HoldoutGateRejected as exc:
            log.warning("retraining for %s: %s", trigger_id, exc)
            outcome = RunOutcome(trigger_id, folded, None, None, str(exc), started, datetime.now(UTC),
                                 status="rejected")  # fmt: skip
        except Exception as exc:  # noqa: BLE001 - no failure of a run may stop the consumer
            if isinstance(exc, TrainingError):  # foreseen (too little data, a rejected version): no traceback
                log.error("retraining for %s failed: %s", trigger_id, exc, extra={"error": type(exc).__name__})
            else:
                log.exception("retraining for %s failed", trigger_id, extra={"error": type(exc).__name__})
            self._withdraw_after_failure(trigger_id, exc)
            detail = f"failed: {type(exc).__name__}: {exc}"[:2000]
            outcome = RunOutcome(trigger_id, folded, self._published, None, detail, started, datetime.now(UTC),
                                 status="failed")  # fmt: skip
        self._record({"run": trigger_id, "attempt": planned.attempt, **outcome.as_dict()})
        return outcome

    def _run(self, planned: PlannedRun, started: datetime) -> RunOutcome:
        firing, attempt, trigger_id = planned.alerts, planned.attempt, planned.trigger_id
        trigger, folded = firing[0], tuple(e.id for e in firing[1:])
        repo = ModelRepository(self.settings)
        if repo.read_intent() is not None:  # an interrupted publish (not recovered at start): decide it first
            recover_publish(self.settings)
        keys = {trigger_id} if attempt else {e.id for e in firing}
        existing = version_for_trigger(repo, keys)
        if existing is not None and read_state(self.settings).candidate != existing:
            return RunOutcome(trigger_id, folded, existing, None, f"version {existing} was built for it already",
                              started, datetime.now(UTC), status="skipped")  # fmt: skip
        data_end = None
        version = existing
        if version is None:
            version, data_end = self._train_candidate(trigger, trigger_id, settle=attempt == 0)
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
        return RunOutcome(trigger_id, folded, version, verdict, f"{verdict.decision}: {verdict.reason}", started,
                          datetime.now(UTC), data_end, status)  # fmt: skip

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
            ModelRepository(self.settings).record_run({"model": self.model, **record})
        except OSError as exc:
            log.warning("could not write the run log: %s", exc)

    def _train_candidate(self, trigger: DriftEvent, trigger_id: str, settle: bool) -> tuple[int, datetime]:
        config = self.settings.retrain
        if settle and config.settle_s:  # a retry has waited retry_after_s already
            time.sleep(config.settle_s)
        window = DataWindow(trigger.started_at - timedelta(seconds=config.lookback_s), datetime.now(UTC))
        train = self._train
        if train is None:
            from training.pipeline import train_version

            train = train_version
        log.info("retraining %s on %s for drift %s (%s)", self.model, window.as_dict(), trigger_id, trigger.kind)
        result = train(self.settings, window=window, trigger_id=trigger_id, promote_policy="never", progress=False,
                       holdout_margin=config.holdout_margin)  # fmt: skip
        self._published = result.version
        return result.version, window.end
