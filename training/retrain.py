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

    def run(self) -> None:
        config = self.settings.retrain
        # A run (training + canary) can outlast librdkafka's default 5 min between polls: allow an hour.
        consumer = KafkaConsumer(self.settings, config.group_id, [self.settings.kafka.topic("drift-v1")],
                                 {"max.poll.interval.ms": 3_600_000})  # fmt: skip
        covered_until: datetime | None = None
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
                firing = triggers(events, self.model, tuple(config.trigger_kinds))
                # An alert whose drift started before the end of the data the last run learned from is folded into
                # that run; one that started later is something the run could not have seen: it starts a new run.
                folded = [e for e in firing if covered_until is not None and e.started_at <= covered_until]
                for event in folded:
                    log.info("drift %s (%s) folded into the previous run", event.id, event.kind)
                fresh = [e for e in firing if e not in folded]
                if fresh:
                    outcome = self.handle(fresh)
                    covered_until = outcome.data_end or outcome.ended_at
                    if self._on_outcome:
                        self._on_outcome(outcome)
                consumer.commit(messages)
        finally:
            consumer.close()

    def handle(self, firing: list[DriftEvent]) -> RunOutcome:
        """One run for these alerts (the oldest is the trigger, the others are folded in)."""
        started = datetime.now(UTC)
        trigger, folded = firing[0], tuple(e.id for e in firing[1:])
        repo = ModelRepository(self.settings)
        existing = version_for_trigger(repo, {e.id for e in firing})
        state = read_state(self.settings)
        if existing is not None and state.candidate != existing:
            return RunOutcome(trigger.id, folded, existing, None, f"version {existing} was built for it already",
                              started, datetime.now(UTC))  # fmt: skip
        data_end = None
        try:
            version, since = existing, datetime.now(UTC)
            if version is None:
                version, since = self._train_candidate(trigger)
                data_end = since
            else:
                log.info("resuming the canary of version %s (trigger %s)", version, trigger.id)
            verdict = watch_canary(self.settings, version, since)
            if verdict.decision == "promote":
                promote(self.settings, version, reason=f"canary: {verdict.reason}; trigger {trigger.id}")
            else:
                withdraw(self.settings, version, reason=f"canary: {verdict.reason}; trigger {trigger.id}")
            detail = f"{verdict.decision}: {verdict.reason}"
        except TrainingError as exc:
            log.error("retraining for %s failed: %s", trigger.id, exc)
            version, verdict, detail = None, None, f"failed: {exc}"
        return RunOutcome(trigger.id, folded, version, verdict, detail, started, datetime.now(UTC), data_end)

    def _train_candidate(self, trigger: DriftEvent) -> tuple[int, datetime]:
        config = self.settings.retrain
        if config.settle_s:
            time.sleep(config.settle_s)
        window = DataWindow(trigger.started_at - timedelta(seconds=config.lookback_s), datetime.now(UTC))
        train = self._train
        if train is None:
            from training.pipeline import train_version

            train = train_version
        log.info("retraining %s on %s for drift %s (%s)", self.model, window.as_dict(), trigger.id, trigger.kind)
        result = train(self.settings, window=window, trigger_id=trigger.id, promote_policy="never", progress=False)
        return result.version, window.end
