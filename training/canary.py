"""Judge a candidate on live traffic: join the canary's predictions with the labels that arrive, per role.

The inference workers send a share of events to the candidate (``workers.canary_share``) or shadow all of them; this
reads the predictions and labels produced since the candidate was announced, without a consumer group, and decides:
promote when the candidate is at least as accurate as the champion on enough labelled events, roll back when it is
worse, or when it answered too few events before the deadline (it fails, or is not served).
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

from confluent_kafka import Consumer, TopicPartition

from driftloop.settings import Settings
from streams.client import client_config
from streams.schemas import Label, Prediction

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
    """The decision once both roles have ``min_labelled`` labelled answers; at the deadline (``final``), a candidate
    with too few answers is rolled back. None: keep watching."""
    if candidate.labelled >= min_labelled and (champion.labelled >= min_labelled or final):
        if champion.accuracy is None or candidate.accuracy >= champion.accuracy - margin:
            return Verdict("promote", champion, candidate, _why("at least as accurate as", champion, candidate))
        return Verdict("rollback", champion, candidate, _why("less accurate than", champion, candidate))
    if final:
        return Verdict("rollback", champion, candidate,
                       f"only {candidate.labelled} labelled candidate answers before the deadline (need {min_labelled})")  # fmt: skip
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
        self._consumer = Consumer(client_config(settings, {"group.id": f"driftloop-canary-{uuid.uuid4().hex[:8]}",
                                                           "enable.auto.commit": False}))  # fmt: skip
        topics = [settings.kafka.topic("predictions-v1"), settings.kafka.topic("labels-v1")]
        millis = int(since.timestamp() * 1000)
        wanted = []
        for topic in topics:
            partitions = self._consumer.list_topics(topic, timeout=10).topics[topic].partitions
            wanted += [TopicPartition(topic, p, millis) for p in partitions]
        self._consumer.assign(self._consumer.offsets_for_times(wanted, timeout=10))
        self._predictions: dict[str, tuple[str, str]] = {}  # event_id -> (role, label)
        self._labels: dict[str, str] = {}
        self.champion, self.candidate_tally = Tally(), Tally()

    def poll(self, seconds: float) -> None:
        """Read for up to ``seconds`` and update the tallies."""
        deadline = time.monotonic() + seconds
        prediction_topic = self.settings.kafka.topic("predictions-v1")
        while time.monotonic() < deadline:
            for msg in self._consumer.consume(500, timeout=0.2):
                if msg.error() or msg.value() is None:
                    continue
                try:
                    if msg.topic() == prediction_topic:
                        self._on_prediction(Prediction.model_validate_json(msg.value()))
                    else:
                        label = Label.model_validate_json(msg.value())
                        self._labels[label.event_id] = label.label
                        self._score(label.event_id)
                except ValueError:
                    continue

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
        self._consumer.close()


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
            verdict = decide(watch.champion, watch.candidate_tally, config.canary_min_labelled,
                             config.promote_margin, final)  # fmt: skip
            if verdict:
                log.info("canary verdict", extra=verdict.as_dict())
                return verdict
    finally:
        watch.close()
