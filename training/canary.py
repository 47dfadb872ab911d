"""Judge a candidate on live traffic: join the canary's predictions with the labels that arrive, per role.

The inference workers send a share of events to the candidate (``workers.canary_share``) or shadow all of them; this
reads the predictions and labels produced since the candidate was announced, without a consumer group, and decides:
promote when the candidate is at least as accurate as the champion with ``retrain.canary_min_labelled`` labelled
answers from both roles, roll back when it is worse, or when either role has too few labelled answers at the deadline
(the candidate fails or is not served; or the champion answered too little to compare with). Records that are not
valid predictions or labels are skipped and counted (``driftloop_skipped_records_total``), never fatal.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

from foundation.settings import Settings
from streams.reader import TopicReader
from streams.schemas import InvalidRecord, Prediction, parse_label, parse_prediction
from streams.skips import SkippedRecords

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Tally:
    labelled: int = 0
    correct: int = 0

    @property
    def accuracy(self) -> float | None:
        return self.correct / self.labelled if self.labelled else None

    def add(self, correct: bool) -> Tally:
        return Tally(self.labelled + 1, self.correct + int(correct))


@dataclass(frozen=True)
class Verdict:
    decision: str  # "promote" | "rollback"
    champion: Tally
    candidate: Tally
    reason: str

    def as_dict(self) -> dict:
        return {
            "decision": self.decision,
            "champion": {"labelled": self.champion.labelled, "accuracy": self.champion.accuracy},
            "candidate": {"labelled": self.candidate.labelled, "accuracy": self.candidate.accuracy},
            "reason": self.reason,
        }


def decide(champion: Tally, candidate: Tally, min_labelled: int, margin: float, final: bool) -> Verdict | None:
    """The decision once both roles have ``min_labelled`` labelled answers; at the deadline (``final``), when either
    role has fewer, the candidate is rolled back (there is nothing to compare it with). None: keep watching."""
    if candidate.labelled >= min_labelled and champion.labelled >= min_labelled:
        if candidate.accuracy >= champion.accuracy - margin:
            return Verdict("promote", champion, candidate, _why("at least as accurate as", champion, candidate))
        return Verdict("rollback", champion, candidate, _why("less accurate than", champion, candidate))
    if final:
        short = [
            f"{tally.labelled} labelled {role} answers"
            for role, tally in (("candidate", candidate), ("champion", champion))
            if tally.labelled < min_labelled
        ]
        return Verdict(
            "rollback",
            champion,
            candidate,
            f"only {' and '.join(short)} before the deadline (need {min_labelled} per role)",
        )
    return None


def _why(relation: str, champion: Tally, candidate: Tally) -> str:
    def pct(tally: Tally) -> str:
        return "n/a" if tally.accuracy is None else f"{tally.accuracy:.1%} of {tally.labelled}"

    return f"candidate {pct(candidate)} {relation} champion {pct(champion)} on live labels"


class CanaryWatch:
    """Follows predictions and labels from ``since`` and tallies accuracy per role of one candidate."""

    def __init__(self, settings: Settings, candidate: int, since: datetime) -> None:
        self.settings = settings
        self.candidate = candidate
        topics = [settings.kafka.topic("predictions-v1"), settings.kafka.topic("labels-v1")]
        self._reader = TopicReader(settings, topics, since, name="canary")
        self._predictions: dict[str, tuple[str, str]] = {}  # event_id -> (role, label)
        self._labels: dict[str, str] = {}
        self.champion, self.candidate_tally = Tally(), Tally()
        self.skipped = SkippedRecords()

    def poll(self, seconds: float) -> None:
        """Read for up to ``seconds`` and update the tallies; invalid records are skipped and counted."""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            for msg in self._reader.poll(0.2):
                self.take(msg.topic(), msg.value(), partition=msg.partition(), offset=msg.offset())

    def take(self, topic: str, value: bytes | None, **where: object) -> None:
        """Tally one record of the predictions or labels topic (full name); never raises for its content."""
        short = "predictions-v1" if topic == self.settings.kafka.topic("predictions-v1") else "labels-v1"
        try:
            if short == "predictions-v1":
                self._on_prediction(parse_prediction(value))
            else:
                label = parse_label(value)
                self._labels[label.event_id] = label.label
                self._score(label.event_id)
        except InvalidRecord as exc:
            self.skipped.skip(short, exc.reason, topic_name=topic, stage="canary", **where)
        except Exception as exc:  # noqa: BLE001 - a record the contract let through but this code cannot use
            reason = f"unusable: {type(exc).__name__}: {exc}"
            self.skipped.skip(short, reason, topic_name=topic, stage="canary", **where)

    def _on_prediction(self, prediction: Prediction) -> None:
        if prediction.role == "shadow" and prediction.model.version == self.candidate:
            role = "candidate"
        elif prediction.role == "candidate" and prediction.model.version == self.candidate:
            role = "candidate"
        elif prediction.role == "champion":
            role = "champion"
        else:
            return
        key = f"{prediction.event_id}/{role}"
        if key not in self._predictions:
            self._predictions[key] = (role, prediction.label)
            self._score(prediction.event_id, key)

    def _score(self, event_id: str, only: str | None = None) -> None:
        if event_id not in self._labels:
            return
        for key in [only] if only else [f"{event_id}/champion", f"{event_id}/candidate"]:
            answer = self._predictions.get(key)
            if answer is None or answer[0] == "scored":
                continue
            role, label = answer
            correct = label == self._labels[event_id]
            if role == "candidate":
                self.candidate_tally = self.candidate_tally.add(correct)
            else:
                self.champion = self.champion.add(correct)
            self._predictions[key] = ("scored", label)

    def close(self) -> None:
        self._reader.close()


def watch_canary(
    settings: Settings, candidate: int, since: datetime, on_progress: Callable[[Tally, Tally], None] | None = None
) -> Verdict:
    """Watch until a decision or ``retrain.canary_timeout_s``; returns the verdict."""
    config = settings.retrain
    watch = CanaryWatch(settings, candidate, since)
    deadline = time.monotonic() + config.canary_timeout_s
    try:
        while True:
            watch.poll(1.0)
            if on_progress:
                on_progress(watch.champion, watch.candidate_tally)
            final = time.monotonic() >= deadline
            verdict = decide(
                watch.champion, watch.candidate_tally, config.canary_min_labelled, config.promote_margin, final
            )
            if verdict:
                log.info("canary verdict", extra=verdict.as_dict())
                return verdict
    finally:
        watch.close()
