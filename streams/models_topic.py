"""Follow the models topic (compacted): the current champion / candidate of a model, updated in the background.

The follower is supervised: if reading fails (the broker gone, a client error), it starts again with backoff from
the topic's beginning, keeping the last state it had meanwhile; :meth:`ModelTracker.check` tells readiness whether it
follows now. A record that is not a valid model state of this model is skipped and counted
(``driftloop_skipped_records_total{topic="models-v1"}``), never a failure.
"""

from __future__ import annotations

import logging
import threading

from foundation.retry import policy
from foundation.settings import Settings
from streams.reader import BEGINNING, TopicReader
from streams.schemas import InvalidRecord, ModelState, parse_model_state
from streams.skips import SkippedRecords

log = logging.getLogger(__name__)

MODELS_TOPIC = "models-v1"  # the contract name skipped records are counted under, as every reader of it does
RESTART_BACKOFF_MAX_S = 10.0
CATCH_UP_TIMEOUT_S = 60.0  # reading a compacted topic of model states to its end; longer is a failure, restarted


class ModelTracker:
    """Reads every partition of the models topic from the beginning without a consumer group, keeps the latest
    state of one model, and keeps following it, so workers switch versions without a restart."""

    def __init__(self, settings: Settings, model: str, skipped: SkippedRecords | None = None) -> None:
        self.model = model
        self._settings = settings
        self._topic = settings.kafka.topic(MODELS_TOPIC)
        self._skipped = skipped or SkippedRecords()
        self._state: ModelState | None = None
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._following = threading.Event()
        self._caught_up = threading.Event()  # the state of the topic as it was at start is read
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

    def wait_caught_up(self, timeout_s: float) -> bool:
        """Wait until the follower has read the topic up to where it stood when it started: until then the current
        state may be an older one (e.g. no candidate yet), so a worker must not route by it. True once caught up."""
        return self._caught_up.wait(timeout_s)

    def check(self) -> str:
        """Readiness: a detail while following; raises while the follower is (re)starting after a failure."""
        if not self._following.is_set():
            raise RuntimeError(f"not following {self._topic} (restarts {self.restarts}; last error: {self.last_error})")
        return f"following {self._topic} (restarts {self.restarts})"

    def _supervise(self) -> None:
        restarts = policy(
            retry_on=Exception,
            initial_s=0.5,
            max_s=RESTART_BACKOFF_MAX_S,
            what="models-topic follower",
            stop_when=self._stopping.is_set,
            sleep=self._stopping.wait,
            on_retry=self._restarting,
        )
        try:
            restarts(self._follow)  # returns once stopping; any failure before restarts it with backoff
        except Exception as exc:  # noqa: BLE001 - it failed as the tracker was stopping: nothing left to restart
            log.info("models-topic follower stopped after a failure: %s: %s", type(exc).__name__, exc)

    def _restarting(self, attempt: int, delay_s: float, error: BaseException) -> None:
        self.restarts = attempt
        self.last_error = f"{type(error).__name__}: {error}"
        log.error(
            "models-topic follower failed; restarting in %.1fs",
            delay_s,
            exc_info=error,
            extra={"restarts": self.restarts},
        )

    def _follow(self) -> None:
        if self._stopping.is_set():
            return
        try:
            with TopicReader(self._settings, self._topic, BEGINNING, name="models") as reader:
                self._following.set()
                for msg in reader.catch_up(timeout_s=CATCH_UP_TIMEOUT_S):
                    if msg.key() == self.model.encode():
                        self._take(msg)
                self._caught_up.set()
                for msg in reader.follow(self._stopping):
                    if msg.key() == self.model.encode():
                        self._take(msg)
        finally:
            self._following.clear()

    def _take(self, msg) -> None:
        try:
            state = parse_model_state(msg.value())
            if state.model != self.model:
                raise InvalidRecord(f"keyed {self.model!r} but names model {state.model!r}")
        except InvalidRecord as exc:
            self._skipped.skip(
                MODELS_TOPIC, exc.reason, topic_name=self._topic, partition=msg.partition(), offset=msg.offset()
            )
            return
        with self._lock:
            self._state = state
        log.info(
            "model state",
            extra={
                "model": state.model,
                "champion": state.champion,
                "candidate": state.candidate,
                "event": state.event,
            },
        )
