"""Follow the models topic (compacted): the current champion / candidate of a model, updated in the background."""

from __future__ import annotations

import logging
import threading
import uuid

from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

from driftloop.settings import Settings
from streams.client import client_config
from streams.schemas import ModelState

log = logging.getLogger(__name__)


class ModelTracker:
    """Reads every partition of the models topic from the beginning without a consumer group, keeps the latest
    state of one model, and keeps following it, so workers switch versions without a restart."""

    def __init__(self, settings: Settings, model: str) -> None:
        self.model = model
        self._topic = settings.kafka.topic("models-v1")
        self._config = client_config(
            settings, {"group.id": f"driftloop-models-{uuid.uuid4().hex[:8]}", "enable.auto.commit": False}
        )
        self._state: ModelState | None = None
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._follow, name="models-topic", daemon=True)

    def current(self) -> ModelState | None:
        with self._lock:
            return self._state

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stopping.set()
        self._thread.join(timeout=5)

    def _follow(self) -> None:
        consumer = Consumer(self._config)
        try:
            partitions = consumer.list_topics(self._topic, timeout=10).topics[self._topic].partitions
            consumer.assign([TopicPartition(self._topic, p, OFFSET_BEGINNING) for p in partitions])
            while not self._stopping.is_set():
                msg = consumer.poll(0.5)
                if msg is None or msg.error() or msg.key() != self.model.encode() or msg.value() is None:
                    continue
                try:
                    state = ModelState.model_validate_json(msg.value())
                except ValueError as exc:
                    log.warning("ignoring a malformed models-topic record at offset %s: %s", msg.offset(), exc)
                    continue
                with self._lock:
                    self._state = state
                log.info("model state", extra={"model": state.model, "champion": state.champion,
                                               "candidate": state.candidate, "event": state.event})  # fmt: skip
        except Exception:
            log.exception("models-topic follower stopped")
        finally:
            consumer.close()
