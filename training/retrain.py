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

from driftloop.settings import Settings
from monitoring.events import DriftEvent
from streams.client import KafkaConsumer
from training.canary import Verdict, watch_canary
from training.dataset import DataWindow
from training.exceptions import TrainingError
from training.publish import promote, withdraw
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

    def as_dict(self) -> dict:
        return {
            "trigger": self.trigger, "folded": list(self.folded), "version": self.version,
            "verdict": self.verdict.as_dict() if self.verdict else None, "detail": self.detail,
            "started_at": self.started_at.isoformat(), "ended_at": self.ended_at.isoformat(),
            "data_end": self.data_end.isoformat() if self.data_end else None,
        }  # fmt: skip


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
        # A run (training + canary) can outlast librdkafka's default 5 min between polls: allow an hour.
        consumer = KafkaConsumer(self.settings, config.group_id, [self.settings.kafka.topic("drift-v1")],
                                 {"max.poll.interval.ms": 3_600_000})  # fmt: skip
        planner = RunPlanner(self.model, tuple(config.trigger_kinds), config.retry_after_s, config.max_retries)
        try:
            while not self._stop.is_set():
                self._beat()
                messages = consumer.consume_batch(100, 1.0)
                events = []
                for msg in messages:
                    try:
                        events.append(DriftEvent.from_bytes(msg.value()))
                    except ValueError as exc:
                        log.warning("skipping a malformed drift event at offset %s: %s", msg.offset(), exc)
                for event in planner.observe(events):
                    log.info("drift %s (%s) folded into the previous run", event.id, event.kind)
                planned = planner.next_run(time.monotonic())
                if planned:
                    outcome = self.handle(planned)
                    promoted = outcome.verdict is not None and outcome.verdict.decision == "promote"
                    planner.ended(promoted, outcome.data_end or outcome.ended_at, time.monotonic())
                    if self._on_outcome:
                        self._on_outcome(outcome)
                consumer.commit(messages)
        finally:
            consumer.close()

    def handle(self, planned: PlannedRun) -> RunOutcome:
        """One run for these alerts (the oldest is the trigger, the others are folded in); a retry (attempt > 0)
        follows a run that promoted nothing and learns from the window up to now."""
        started = datetime.now(UTC)
        firing, attempt, trigger_id = planned.alerts, planned.attempt, planned.trigger_id
        trigger, folded = firing[0], tuple(e.id for e in firing[1:])
        repo = ModelRepository(self.settings)
        keys = {trigger_id} if attempt else {e.id for e in firing}
        existing = version_for_trigger(repo, keys)
        state = read_state(self.settings)
        if existing is not None and state.candidate != existing:
            return RunOutcome(trigger_id, folded, existing, None, f"version {existing} was built for it already",
                              started, datetime.now(UTC))  # fmt: skip
        data_end = None
        try:
            version = existing
            if version is None:
                version, data_end = self._train_candidate(trigger, trigger_id, settle=attempt == 0)
            else:
                log.info("resuming the canary of version %s (trigger %s)", version, trigger_id)
            # Both roles are judged from the moment the candidate serves: the champion's answers before it (e.g.
            # before the drift) would flatter it.
            verdict = watch_canary(self.settings, version, datetime.now(UTC))
            if verdict.decision == "promote":
                promote(self.settings, version, reason=f"canary: {verdict.reason}; trigger {trigger_id}")
            else:
                withdraw(self.settings, version, reason=f"canary: {verdict.reason}; trigger {trigger_id}")
            detail = f"{verdict.decision}: {verdict.reason}"
        except TrainingError as exc:
            log.error("retraining for %s failed: %s", trigger_id, exc)
            version, verdict, detail = None, None, f"failed: {exc}"
        return RunOutcome(trigger_id, folded, version, verdict, detail, started, datetime.now(UTC), data_end)

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
        result = train(self.settings, window=window, trigger_id=trigger_id, promote_policy="never", progress=False)
        return result.version, window.end
