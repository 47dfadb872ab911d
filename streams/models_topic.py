"""Follow the models topic (compacted): the current champion / candidate of a model, updated in the background.

The follower is supervised: if reading fails (the broker gone, a client error), it starts again with backoff from
the topic's beginning, keeping the last state it had meanwhile; :meth:`ModelTracker.check` tells readiness whether it
follows now. A record that is not a valid model state of this model is skipped and counted, never a failure.
"""

from __future__ import annotations

import logging
import threading
import uuid

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaException, TopicPartition

from foundation.settings import Settings
from streams.client import client_config
from streams.schemas import InvalidRecord, ModelState, parse_model_state
from streams.skips import SkippedRecords

log = logging.getLogger(__name__)

RESTART_BACKOFF_MAX_S = 10.0


class ModelTracker:
    """Reads every partition of the models topic from the beginning without a consumer group, keeps the latest
    state of one model, and keeps following it, so workers switch versions without a restart."""

    def __init__(self, settings: Settings, model: str, skipped: SkippedRecords | None = None) -> None:
        self.model = model
        self._topic = settings.kafka.topic("models-v1")
        self._config = client_config(
            settings, {"group.id": f"driftloop-models-{uuid.uuid4().hex[:8]}", "enable.auto.commit": False}
        )
        self._skipped = skipped or SkippedRecords()
        self._state: ModelState | None = None
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._following = threading.Event()
        self.restarts = 0
        self.last_error: str | None = None
        self._thread = threading.Thread(target=self._supervise, name="models-topic", daemon=True)

    def current(self) -> ModelState | None:
        with self._lock:
            return self._state

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stopping.set()
        self._thread.join(timeout=5)

    def check(self) -> str:
        """Readiness: a detail while following; raises while the follower is (re)starting after a failure."""
        if not self._following.is_set():
            raise RuntimeError(f"not following {self._topic} (restarts {self.restarts}; last error: {self.last_error})")
        return f"following {self._topic} (restarts {self.restarts})"

    def _supervise(self) -> None:
        delay = 0.5
        while not self._stopping.is_set():
            try:
                self._follow()
                return
            except Exception as exc:  # noqa: BLE001 - supervised: any failure restarts the follower
                self._following.clear()
                self.restarts += 1
                self.last_error = f"{type(exc).__name__}: {exc}"
                log.exception("models-topic follower failed; restarting in %.1fs", delay, extra={"restarts": self.restarts})
            self._stopping.wait(delay)
            delay = min(delay * 2, RESTART_BACKOFF_MAX_S)

    def _follow(self) -> None:
        consumer = Consumer(self._config)
        try:
            metadata = consumer.list_topics(self._topic, timeout=10).topics.get(self._topic)
            if metadata is None or metadata.error is not None or not metadata.partitions:
                raise KafkaException(f"topic {self._topic} not found ({metadata.error if metadata else 'no metadata'})")
            consumer.assign([TopicPartition(self._topic, p, OFFSET_BEGINNING) for p in metadata.partitions])
            self._following.set()
            while not self._stopping.is_set():
                msg = consumer.poll(0.5)
                if msg is None or msg.error() or msg.key() != self.model.encode():
                    continue
                self._take(msg)
        finally:
            self._following.clear()
            consumer.close()

    def _take(self, msg) -> None:
        try:
            state = parse_model_state(msg.value())
            if state.model != self.model:
                raise InvalidRecord(f"keyed {self.model!r} but names model {state.model!r}")
        except InvalidRecord as exc:
            self._skipped.skip(self._topic, exc.reason, partition=msg.partition(), offset=msg.offset())
            return
        with self._lock:
            self._state = state
        log.info("model state", extra={"model": state.model, "champion": state.champion,
                                       "candidate": state.candidate, "event": state.event})  # fmt: skip
