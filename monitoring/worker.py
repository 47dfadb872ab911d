"""The ``driftloop monitor`` worker: Kafka in, checks, drift events out, alerts to on-call.

One loop, top-down:

1. follow the models topic (the champion per model) from its beginning, without a consumer group;
2. read a batch of predictions and labels (consumer group ``monitoring.group_id``);
3. fold each record into the ``Monitor``, running the checks that fall due on the way (by count) and after the batch
   (by time);
4. produce the drift events (key: model) and the dead letters, wait for the acknowledgements;
5. deliver the events and the repeats of open alerts to the receivers;
6. commit the batch.

No record stops the loop, restarts it or stalls its partition:

- a prediction that breaks its contract, that the monitor cannot use (a label the model does not have), or whose
  handling raised anything else goes to the DLQ topic (stage ``monitoring``, the reason with the exception type, the
  original bytes);
- a label, a drift event read back at start or a model state that is invalid or unusable (a tombstone, an unknown
  model or label, any error while handling it) is skipped: counted in ``driftloop_skipped_records_total{topic,reason}``
  and logged at most once a minute per reason (``streams.skips``), never retried;
- a check that raises (Evidently on an absurd window) is logged and counted
  (``driftloop_drift_check_errors_total``); the loop goes on and the next check runs when it falls due.

Only the Kafka calls, and the blocking checks and deliveries, leave the event loop (``asyncio.to_thread``). A restart
resumes from the committed offsets with empty windows: the first check comes once ``min_window`` predictions arrived;
the alerts it left open are reopened from the tail of the drift topic (its own output), so they are neither opened
twice nor left unresolved.

``/healthz``, ``/readyz`` and ``/metrics`` are served on ``monitoring.metrics_port`` (``foundation.health``): the loop
beats on every iteration; it is ready once it read the models topic and runs.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import signal
import threading
from dataclasses import dataclass, field

from confluent_kafka import Message

from foundation.health import HealthServer
from foundation.heap import freeze_startup_heap
from foundation.settings import Settings
from foundation.shutdown import exit_after
from monitoring.alerts import AlertDispatcher, build_dispatcher
from monitoring.exceptions import MonitoringError, UnusableRecord
from monitoring.metrics import MonitorMetrics
from monitoring.monitor import CheckOutcome, Monitor
from monitoring.sources import ModelStatesReader, oldest_record_at, read_tail
from streams.client import KafkaConsumer, KafkaProducer, Record, fetch_window
from streams.schemas import (
    DeadLetter,
    DriftEvent,
    InvalidRecord,
    Source,
    parse_drift_event,
    parse_label,
    parse_prediction,
)

log = logging.getLogger(__name__)

STAGE = "monitoring"
BATCH_SIZE = 1000
POLL_TIMEOUT_S = 0.5
FETCH_WINDOW_MS = 100  # drift is judged over minutes: a tenth of a second more costs nothing
RESTORE_TAIL = 10_000  # drift events read back per partition at start (transitions only: a few per model and day)
MAX_DLQ_KEY_BYTES = 1024  # a longer original key is replaced by its SHA-256 as the dead letter's Kafka key


@dataclass
class _Folded:
    outcomes: list[CheckOutcome] = field(default_factory=list)
    dead: list[Record] = field(default_factory=list)


class MonitorWorker:
    """Runs the monitoring loop until ``stop()``.

    Args:
        settings: root settings.
        metrics: the metrics (served on ``monitoring.metrics_port``); new when omitted.
        dispatcher: alert delivery; built from ``monitoring.*`` when omitted.
        monitor: the state; new when omitted.
    """

    def __init__(
        self,
        settings: Settings,
        metrics: MonitorMetrics | None = None,
        dispatcher: AlertDispatcher | None = None,
        monitor: Monitor | None = None,
    ) -> None:
        self.settings = settings
        self.metrics = metrics or MonitorMetrics()
        self.monitor = monitor or Monitor(settings, self.metrics)
        self.dispatcher = dispatcher or build_dispatcher(settings.monitoring, self.metrics)
        self.ready = threading.Event()  # set once the models topic was read and the loop runs
        self._stop = threading.Event()
        self._health: HealthServer | None = None
        self._topics = {
            "predictions": settings.kafka.topic("predictions-v1"),
            "labels": settings.kafka.topic("labels-v1"),
            "drift": settings.kafka.topic("drift-v1"),
            "dlq": settings.kafka.topic("dlq-v1"),
        }

    def stop(self) -> None:
        """Ask the loop to finish its batch and return (safe from any thread or a signal handler)."""
        self._stop.set()

    def health_server(self) -> HealthServer | None:
        """The health and metrics endpoint of ``monitoring.metrics_port`` (None when it is 0).

        Liveness allows one full round of failing deliveries between two beats of the loop.
        """
        config = self.settings.monitoring
        if not config.metrics_port:
            return None
        attempt_s = config.delivery_timeout_s + config.retry_backoff_max_s
        stale_after_s = 60.0 + len(self.dispatcher.receivers) * (config.delivery_retries + 1) * attempt_s
        health = HealthServer(config.metrics_port, stale_after_s=stale_after_s, registry=self.metrics.registry)
        health.add_check("running", lambda: self.ready.is_set() and not self._stop.is_set())
        health.add_check("references", self._references_detail)
        return health

    def _references_detail(self) -> str:
        waiting = [
            f"{t.model} v{t.serving_version}"
            for t in self.monitor.tracks.values()
            if t.missing_reference is not None and t.missing_reference == t.serving_version
        ]
        return f"waiting for the reference of {', '.join(waiting)}" if waiting else "ok"

    async def run(self) -> None:
        """The loop (see the module docstring); returns after ``stop()``."""
        config = self.settings.monitoring
        topics = [self._topics["predictions"], self._topics["labels"]]
        health = self._health = self.health_server()
        consumer: KafkaConsumer | None = None
        models: ModelStatesReader | None = None
        producer: KafkaProducer | None = None
        try:
            if health is not None:
                health.start()
            # A fetch window: without one the broker answers a fetch for each request the inference workers produce.
            window = fetch_window(FETCH_WINDOW_MS)
            consumer = await asyncio.to_thread(KafkaConsumer, self.settings, config.group_id, topics, window)
            models = await asyncio.to_thread(ModelStatesReader, self.settings, self.metrics.skipped)
            producer = KafkaProducer(self.settings, {"message.timeout.ms": 0})  # outages are waited out
            self._observe_states(await asyncio.to_thread(models.read_all))
            await self._note_history()
            reopened = self.monitor.restore_alerts(await asyncio.to_thread(self._own_events))
            if reopened:
                log.info("open alerts restored", extra={"alerts": [f"{e.model}/{e.kind}" for e in reopened]})
            log.info(
                "monitor running",
                extra={
                    "group": config.group_id,
                    "receivers": [r.name for r in self.dispatcher.receivers],
                    "models": sorted(self.monitor.tracks),
                },
            )
            self.ready.set()
            while not self._stop.is_set():
                if health is not None:
                    health.beat()
                self._observe_states(await asyncio.to_thread(models.poll, 0.0))
                messages = await asyncio.to_thread(consumer.consume_batch, BATCH_SIZE, POLL_TIMEOUT_S)
                folded = await asyncio.to_thread(self._fold, messages)
                await self._publish(producer, folded)
                if messages:
                    await asyncio.to_thread(consumer.commit_or_redeliver, messages)
        finally:
            for closing in (consumer, models, producer):
                if closing is not None:
                    await asyncio.to_thread(closing.close)
            if health is not None:
                health.stop()
            log.info("monitor stopped", extra=dict(self.monitor.observed))

    async def _note_history(self) -> None:
        """Tell the monitor how long predictions have been served (the predictions topic's oldest record), so that a
        restart does not take a store in its stride for a fresh one."""
        try:
            since = await asyncio.to_thread(oldest_record_at, self.settings, "predictions-v1")
        except MonitoringError as exc:
            log.warning("history of the predictions topic unknown: %s", exc)
            return
        if since is not None:
            self.monitor.note_history(since)

    def _own_events(self) -> list[DriftEvent]:
        """The drift events of earlier runs (the tail of the drift topic); what cannot be used is skipped, counted."""
        events = []
        for value in read_tail(self.settings, "drift-v1", RESTORE_TAIL):
            event = self._own_event(value)
            if event is not None:
                events.append(event)
        return events

    def _own_event(self, value: bytes | None) -> DriftEvent | None:
        """One drift event read back, or None (skipped) when it breaks the contract or names an unknown model."""
        try:
            event = parse_drift_event(value)
        except InvalidRecord as exc:
            self.metrics.skipped.skip("drift-v1", exc.reason)
            return None
        if (
            event.model not in self.monitor.tracks
            and not (self.settings.triton.model_repository / event.model).is_dir()
        ):
            self.metrics.skipped.skip("drift-v1", f"unknown model: {event.model!r} is neither followed nor published")
            return None
        return event

    def _observe_states(self, states: dict[str, int | None]) -> None:
        """Models-topic states (already checked by the reader) into the monitor; one that raises is skipped."""
        for model, champion in states.items():
            try:
                self.monitor.observe_champion(model, champion)
            except Exception as exc:  # noqa: BLE001 - no record may stop the loop
                self.metrics.skipped.skip("models-v1", f"unexpected {type(exc).__name__}: {exc}", model=model)

    def _fold(self, messages: list[Message]) -> _Folded:
        folded = _Folded()
        for msg in messages:
            topic = msg.topic()
            if topic == self._topics["predictions"]:
                self._fold_prediction(msg, folded)
            elif topic == self._topics["labels"]:
                self._fold_label(msg)
            self._run_due(folded)
        self._run_due(folded)  # time-based checks, also when no record came
        return folded

    def _fold_prediction(self, msg: Message, folded: _Folded) -> None:
        """One prediction into the window; one that cannot be (whatever the reason) becomes a dead letter."""
        try:
            self.monitor.observe_prediction(parse_prediction(msg.value()))
        except InvalidRecord as exc:
            folded.dead.append(self._dead_letter(msg, exc.reason, "invalid"))
        except UnusableRecord as exc:
            folded.dead.append(self._dead_letter(msg, exc.reason, "unusable"))
        except Exception as exc:  # noqa: BLE001 - no record may stop the loop
            folded.dead.append(self._dead_letter(msg, f"unexpected {type(exc).__name__}: {exc}", "error"))
        else:
            self.metrics.records.labels("predictions", "ok").inc()

    def _fold_label(self, msg: Message) -> None:
        """One label joined to its prediction; one that cannot be (whatever the reason) is skipped and counted."""
        try:
            self.monitor.observe_label(parse_label(msg.value()))
        except (InvalidRecord, UnusableRecord) as exc:
            self._skip_label(msg, exc.reason, "invalid" if isinstance(exc, InvalidRecord) else "unusable")
        except Exception as exc:  # noqa: BLE001 - no record may stop the loop
            self._skip_label(msg, f"unexpected {type(exc).__name__}: {exc}", "error")
        else:
            self.metrics.records.labels("labels", "ok").inc()

    def _skip_label(self, msg: Message, reason: str, outcome: str) -> None:
        self.metrics.records.labels("labels", outcome).inc()
        self.metrics.skipped.skip("labels-v1", reason, partition=msg.partition(), offset=msg.offset())

    def _run_due(self, folded: _Folded) -> None:
        for model in self.monitor.due():
            outcome = self._check(model)
            if outcome is not None:
                folded.outcomes.append(outcome)

    def _check(self, model: str) -> CheckOutcome | None:
        """One check; one that raises is logged and counted, and the loop goes on (the next runs when due)."""
        try:
            return self.monitor.check(model)
        except Exception as exc:  # noqa: BLE001 - a check that fails must not stop the loop
            self.metrics.check_errors.labels(model, type(exc).__name__).inc()
            log.exception("drift check failed", extra={"model": model, "error": f"{type(exc).__name__}: {exc}"})
            return None

    def _dead_letter(self, msg: Message, error: str, outcome: str) -> Record:
        """The dead letter of a prediction: the original bytes, where they came from, and why."""
        self.metrics.records.labels("predictions", outcome).inc()
        source = Source(topic=msg.topic(), partition=msg.partition(), offset=msg.offset())
        log.warning(
            "prediction sent to the DLQ",
            extra={"topic": msg.topic(), "partition": msg.partition(), "offset": msg.offset(), "error": error[:500]},
        )
        letter = DeadLetter.of(STAGE, error, source, msg.key(), msg.value())
        return Record(self._topics["dlq"], letter.to_bytes(), key=_dlq_key(msg.key()))

    def _still_running(self) -> bool:
        if self._health is not None:
            self._health.beat()  # waiting on the broker on purpose, not stuck
        return not self._stop.is_set()

    async def _publish(self, producer: KafkaProducer, folded: _Folded) -> None:
        records = [
            Record(self._topics["drift"], event.to_bytes(), key=event.model.encode())
            for outcome in folded.outcomes
            for event in outcome.events
        ] + folded.dead
        if records:
            # A broker outage: wait (the batch stays uncommitted) unless stopping; see KafkaProducer.produce_batch.
            await asyncio.to_thread(producer.produce_batch, records, keep_waiting=self._still_running)
        for outcome in folded.outcomes:
            for event in [*outcome.events, *outcome.repeats]:
                if self.dispatcher.receivers:
                    await asyncio.to_thread(self.dispatcher.dispatch, event)


def _dlq_key(key: bytes | None) -> bytes | None:
    """The original key, or its SHA-256 when it is long (the dead letter carries it anyway, in base64)."""
    if key is None or len(key) <= MAX_DLQ_KEY_BYTES:
        return key
    return hashlib.sha256(key).hexdigest().encode()


def run_monitor(settings: Settings) -> None:
    """Run the worker in the foreground until SIGINT or SIGTERM."""
    worker = MonitorWorker(settings)

    async def main() -> None:
        loop = asyncio.get_running_loop()

        def stop() -> None:
            exit_after(settings.workers.shutdown_grace_s, "the drift monitor")
            worker.stop()

        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop)
        await worker.run()

    freeze_startup_heap()
    asyncio.run(main())
