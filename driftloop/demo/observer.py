"""What the demo sees: the predictions, labels, drift, dead-letter and models topics, folded into one ``Observed``."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from datetime import datetime

from confluent_kafka import Message

from foundation.settings import Settings
from streams.reader import BEGINNING, Start, TopicReader
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


@dataclass
class Observed:
    """What the observer saw on the topics (thread-safe through the lock)."""

    predictions: dict[str, Prediction] = field(default_factory=dict)  # served answer per event id
    labels: dict[str, str] = field(default_factory=dict)
    drift: list[dict] = field(default_factory=list)
    states: list[ModelState] = field(default_factory=list)
    dead_letters: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def current(self) -> ModelState | None:
        """The latest state of the model (None before any)."""
        with self.lock:
            return self.states[-1] if self.states else None


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
    """Follows the predictions, labels, drift and DLQ topics from ``since`` and the models topic from its start
    (``streams.reader.TopicReader``: no consumer group); what it reads is folded by a ``TopicView`` (invalid records
    skipped and counted, never raised)."""

    def __init__(self, settings: Settings, model: str, since: datetime) -> None:
        super().__init__(name="demo-observer", daemon=True)
        self.settings, self.model = settings, model
        self.view = TopicView(settings, model)
        self.seen = self.view.seen
        self._stopping = threading.Event()
        starts: dict[str, Start] = {settings.kafka.topic(n): since for n in OBSERVED_TOPICS if n != "models-v1"}
        starts[settings.kafka.topic("models-v1")] = BEGINNING
        self._reader = TopicReader(settings, starts, name="demo")

    def stop(self) -> None:
        self._stopping.set()
        self.join(timeout=5)
        self._reader.close()

    def run(self) -> None:
        for msg in self._reader.follow(self._stopping, poll_s=0.3):
            self.view.observe(msg)
