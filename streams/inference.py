"""The inference worker: events → micro-batches → Feast online features → Triton → predictions (+ dead letters).

At-least-once: a batch's offsets are committed only after its predictions and dead letters are acknowledged by the
broker, and batches commit in the order they were read even when several are in flight.

Outages are waited out, not turned into dead letters: when the Feast online store or Triton cannot answer, the batch
is held (uncommitted; no more batches are read beyond ``workers.max_in_flight``) and retried with exponential backoff
up to ``workers.outage_backoff_max_s``, for as long as the outage lasts. A model whose python backend stub crashed
(Triton keeps it "ready" but fails every request) is unloaded and loaded again (``workers.triton_reload_unhealthy``).
A SIGTERM during an outage leaves the held batches uncommitted: they are redelivered.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import NamedTuple

import numpy as np
from confluent_kafka import TIMESTAMP_NOT_AVAILABLE, Message

from features.exceptions import FeatureStoreNotReady
from features.online_read import FEATURE_NAMES, OnlineReader, open_reader
from foundation.health import HealthServer
from foundation.settings import Settings
from streams.canary import route, serving_versions
from streams.client import KafkaConsumer, KafkaProducer, Record, fetch_window
from streams.exceptions import DeliveryError, StreamsError
from streams.metrics import WorkerMetrics
from streams.models_topic import ModelTracker
from streams.schemas import (
    MAX_DEAD_LETTER_BYTES,
    DeadLetter,
    Event,
    InvalidEvent,
    Source,
    check_record_of,
    encode_prediction,
    parse_event,
)
from streams.text_stats import load_vocab, text_stats
from streams.triton_client import (
    Result,
    TritonClassifier,
    TritonModelUnhealthy,
    TritonRequestError,
    TritonUnavailable,
    VersionNotServed,
)

log = logging.getLogger(__name__)

TRACE_HEADERS = ("trace-id", "traceparent", "x-trace-id")
OUTAGES = (FeatureStoreNotReady, TritonUnavailable)  # waited out: the batch is held and retried
UNBOUNDED_DELIVERY = {"message.timeout.ms": 0}  # a broker outage is waited out, however long (see produce_batch)
READ_WAIT_S = 0.25  # an idle read returns this often (stop and liveness); events end it as soon as they come


@dataclass
class Batch:
    """Messages read together; ``outputs`` are produced before ``messages`` are committed."""

    messages: list[Message]
    read_at: float = field(default_factory=time.time)
    outputs: list[Record] = field(default_factory=list)
    predicted: int = 0
    dead: int = 0
    completing: bool = False  # its outputs are being produced and its offsets committed: not to be cancelled


def dead_letter(settings: Settings, msg: Message, stage: str, error: str) -> Record:
    letter = DeadLetter.of(
        stage, error, Source(topic=msg.topic(), partition=msg.partition(), offset=msg.offset()), msg.key(), msg.value()
    )
    key = msg.key()
    return Record(settings.kafka.topic("dlq-v1"), letter.to_bytes(), key=key[:MAX_DEAD_LETTER_BYTES] if key else key)


def trace_id(msg: Message) -> str | None:
    for name, value in msg.headers() or ():
        if name.lower() in TRACE_HEADERS and value:
            return value.decode("utf-8", errors="replace")[:128]
    return None


def feature_matrix(features: dict[str, list], names: Sequence[str]) -> np.ndarray:
    """Rows of the model's FP32 feature input; a feature never pushed for an entity is 0 (recorded as null)."""
    columns = [[0.0 if v is None else float(v) for v in features[name]] for name in names]
    return np.asarray(columns, dtype=np.float32).T.reshape(len(features[names[0]]) if names else 0, len(names))


def checked_event(msg: Message, max_ahead_s: float | None = None) -> Event:
    """The record's event, keyed by its entity id and dated at most ``max_ahead_s`` ahead of the record.

    Raises:
        InvalidEvent: the value breaks the event contract, or the record breaks ``check_record_of``.
    """
    event = parse_event(msg.value())
    kind, written_ms = msg.timestamp()
    check_record_of(event, msg.key(), written_ms / 1000 if kind != TIMESTAMP_NOT_AVAILABLE else None, max_ahead_s)
    return event


class Stamps(NamedTuple):
    """When a batch was read, its features fetched and its answers received (epoch seconds)."""

    read_at: float
    started: float
    features_done: float
    inference_done: float

    def timings(self, broker_ts: float, now: float) -> dict[str, float]:
        """Per-stage milliseconds (``Timings``' fields) of one event written by the broker at ``broker_ts``, predicted
        at ``now``."""
        return {
            "queue": round((self.started - broker_ts) * 1000, 3),
            "features": round((self.features_done - self.started) * 1000, 3),
            "inference": round((self.inference_done - self.features_done) * 1000, 3),
            "end_to_end": round((now - broker_ts) * 1000, 3),
        }


class InferenceWorker:
    """One member of the inference consumer group.

    Args:
        settings: root settings (``workers``, ``kafka``, ``triton``, ``feast``, ``training.labels``).
        replica: index of this process among the replicas (offsets its metrics port).
    """

    def __init__(self, settings: Settings, replica: int = 0, health: HealthServer | None = None) -> None:
        self.settings = settings
        self.replica = replica
        self.health = health
        self.labels = list(settings.training.labels)
        self._stop = asyncio.Event()
        self._vocabs: dict[int, frozenset[str] | None] = {}
        self.metrics = WorkerMetrics("inference")
        self._reloads = 0  # model reloads done; a batch reloads only if none happened since its call failed
        self._reload_lock = asyncio.Lock()

    def stop(self) -> None:
        """Ask the worker to finish its in-flight batches, commit them and leave the group."""
        self._stop.set()

    async def run(self) -> None:
        settings, workers = self.settings, self.settings.workers
        store = open_reader(settings)
        feature_names = FEATURE_NAMES
        consumer = KafkaConsumer(
            settings,
            workers.inference_group,
            [settings.kafka.topic("events-v1")],
            # The broker gathers what arrives within max_wait_ms into one fetch: a fetch per window, not per event.
            fetch_window(workers.max_wait_ms),
        )
        producer = KafkaProducer(settings, UNBOUNDED_DELIVERY)
        tracker = ModelTracker(settings, settings.triton.model_name)
        tracker.start()
        if self.health:
            self.health.add_check("models-topic", tracker.check)
        classifier = TritonClassifier(settings)
        in_flight: deque[tuple[Batch, asyncio.Task]] = deque()
        log.info("inference worker started", extra={"replica": self.replica, "group": workers.inference_group})
        try:
            # Route nothing before the announced champion and candidate are known.
            while not self._stop.is_set() and not await asyncio.to_thread(tracker.wait_caught_up, 1.0):
                if self.health:
                    self.health.beat()
            while not self._stop.is_set():
                if self.health:
                    self.health.beat()
                # Bounded in-flight work: the oldest batch must be committed before more is read.
                while in_flight and (len(in_flight) >= workers.max_in_flight or in_flight[0][1].done()):
                    await in_flight.popleft()[1]  # a batch's failure surfaces here
                    self._count_in_flight(in_flight)
                messages = await asyncio.to_thread(consumer.consume_available, workers.max_batch_size, READ_WAIT_S)
                if messages:
                    batch = Batch(messages)
                    previous = in_flight[-1][1] if in_flight else None
                    process = functools.partial(self._process, batch, store, feature_names, classifier, tracker)
                    task = asyncio.create_task(self._handle(batch, process, previous, producer, consumer))
                    in_flight.append((batch, task))
                    self._count_in_flight(in_flight)
            while in_flight:
                await in_flight.popleft()[1]
                self._count_in_flight(in_flight)
        except (*OUTAGES, DeliveryError) as exc:
            if not self._stop.is_set():
                raise
            held = len(in_flight) + 1
            log.warning("stopping during an outage (%s): %d batch(es) left uncommitted, redelivered later", exc, held)
        finally:
            # A batch half produced or committed finishes (in its thread either way) before the clients close; its
            # producer stops waiting for an unreachable broker now. The others are dropped: they are redelivered.
            self._stop.set()
            for batch, task in in_flight:
                if not batch.completing:
                    task.cancel()
            await asyncio.gather(*(task for _, task in in_flight), return_exceptions=True)
            tracker.stop()
            await classifier.close()
            producer.close()
            consumer.close()
            store.close()
            log.info("inference worker stopped", extra={"replica": self.replica})

    def _still_running(self) -> bool:
        if self.health:
            self.health.beat()  # waiting on the broker on purpose, not stuck
        return not self._stop.is_set()

    def _count_in_flight(self, in_flight: deque[tuple[Batch, asyncio.Task]]) -> None:
        self.metrics.in_flight(len(in_flight), sum(len(batch.messages) for batch, _ in in_flight))

    async def _until_available(self, dependency: str, call, classifier: TritonClassifier):
        """Await ``call()`` until it raises no outage error, waiting with exponential backoff in between.

        Raises:
            FeatureStoreNotReady | TritonUnavailable: only once the worker is stopping (the batch stays uncommitted).
        """
        delay, attempts = 0.2, 0
        while True:
            reloads = self._reloads
            try:
                return await call()
            except OUTAGES as exc:
                if self._stop.is_set():
                    raise
                attempts += 1
                self.metrics.outage(dependency)
                log.warning("%s unavailable (attempt %d, next in %.1fs): %s", dependency, attempts, delay, exc)
                if isinstance(exc, TritonModelUnhealthy) and self.settings.workers.triton_reload_unhealthy:
                    await self._reload_model(classifier, reloads)
            if self.health:
                self.health.beat()  # waiting on purpose, not stuck (readiness reports the dependency)
            try:
                await asyncio.wait_for(self._stop.wait(), delay)
            except TimeoutError:
                pass
            delay = min(delay * 2, self.settings.workers.outage_backoff_max_s)

    async def _reload_model(self, classifier: TritonClassifier, reloads_seen: int) -> None:
        """Unload + load the model, unless another batch reloaded it since ``reloads_seen``."""
        async with self._reload_lock:
            if self._reloads != reloads_seen:
                return
            log.error("Triton model %s crashed (python backend stub); unloading and loading it", classifier.model)
            try:
                await classifier.reload()
            except Exception as exc:  # noqa: BLE001 - Triton down too: the next attempt tries again
                log.warning("reloading %s failed: %s", classifier.model, exc)
                return
            self._reloads += 1
            self.metrics.model_reloaded()

    async def _handle(
        self,
        batch: Batch,
        process: Callable[[], Awaitable[None]],
        previous: asyncio.Task | None,
        producer: KafkaProducer,
        consumer: KafkaConsumer,
    ) -> None:
        """Run ``process()`` (the batch's :meth:`_process`), then, once ``previous`` (the batch read before) is
        done, produce the outputs and commit the batch. The worker reads on meanwhile; outputs go out and offsets
        are committed in the order the batches were read."""
        await process()
        if previous is not None:
            await previous
        batch.completing = True
        # A broker outage: the records stay queued in the producer (retried by it) while the worker keeps waiting;
        # only a stop gives up on them (nothing is committed, so the batch is redelivered).
        await asyncio.to_thread(producer.produce_batch, batch.outputs, keep_waiting=self._still_running)
        await asyncio.to_thread(consumer.commit_or_redeliver, batch.messages)
        self.metrics.batch_done(len(batch.messages), batch.predicted, batch.dead, time.time() - batch.read_at)

    async def _process(
        self, batch: Batch, store: OnlineReader, feature_names, classifier: TritonClassifier, tracker
    ) -> None:
        """Parse, fetch features, classify and build the outputs of one batch; one record never fails the others."""
        events = self._parse(batch)
        if not events:
            return
        started = time.time()
        entity_ids = [event.entity_id for _, event in events]
        features = await self._until_available("feast", lambda: asyncio.to_thread(store.read, entity_ids), classifier)
        features_done = time.time()
        texts = [event.text for _, event in events]
        matrix = feature_matrix(features, feature_names)
        ids = [event.event_id for _, event in events]
        served = await self._until_available(
            "triton", lambda: self._classify(classifier, tracker, ids, texts, matrix), classifier
        )
        stamps = Stamps(batch.read_at, started, features_done, time.time())
        self._answer(batch, events, served, features, feature_names, stamps)

    def _answer(
        self,
        batch: Batch,
        events: list[tuple[Message, Event]],
        served: Served,
        features: dict[str, list],
        feature_names: Sequence[str],
        stamps: Stamps,
    ) -> None:
        """Add a prediction per answer to the batch's outputs; an event whose answer failed (or whose prediction
        cannot be built) becomes a dead letter, a failed shadow answer is dropped."""
        for i, result, role in served.answers():
            msg, event = events[i]
            try:
                if isinstance(result, TritonRequestError):
                    raise result
                row = {name: _plain(features[name][i]) for name in feature_names}
                batch.outputs.append(self._prediction(msg, event, result, role, row, stamps))
                batch.predicted += role != "shadow"
            except Exception as exc:  # noqa: BLE001 - this record's fault or not, the rest of the batch goes on
                if role == "shadow":
                    continue
                stage_error = str(exc) if isinstance(exc, TritonRequestError) else f"{type(exc).__name__}: {exc}"
                batch.outputs.append(dead_letter(self.settings, msg, "inference", stage_error))
                batch.dead += 1

    def _parse(self, batch: Batch) -> list[tuple[Message, Event]]:
        """The batch's valid events; each record the contract refuses (or that fails in any other way) becomes a
        dead letter with the reason."""
        events: list[tuple[Message, Event]] = []
        max_ahead_s = self.settings.workers.max_event_ahead_s
        for msg in batch.messages:
            try:
                events.append((msg, checked_event(msg, max_ahead_s)))
            except InvalidEvent as exc:
                batch.outputs.append(dead_letter(self.settings, msg, "validate", exc.reason))
                batch.dead += 1
            except Exception as exc:  # noqa: BLE001 - an unexpected failure on one record: dead-letter it, go on
                log.exception("unexpected error validating a record", extra=_where(msg))
                batch.outputs.append(dead_letter(self.settings, msg, "validate", f"{type(exc).__name__}: {exc}"))
                batch.dead += 1
        return events

    async def _classify(self, classifier: TritonClassifier, tracker, ids, texts, matrix) -> Served:
        """One attempt: the explicit versions to call (re-read on every attempt), the champion's and candidate's
        answers, and the shadow's when enabled.

        Raises:
            TritonUnavailable: Triton does not answer, or no usable version of the model is served (held, retried).
        """
        served = await classifier.served_versions()
        champion, candidate = serving_versions(tracker.current(), served)
        if champion is None:
            classifier.forget_served()
            raise TritonUnavailable(
                f"no version of {classifier.model} that may answer is served (served: {sorted(served) or 'none'})"
            )
        versions = route(ids, champion, candidate, self.settings.workers.canary_share)
        results = await self._classify_by_version(classifier, texts, matrix, versions, champion)
        shadow: list[Result] = []
        if self.settings.workers.shadow and candidate is not None:
            try:
                shadow = await classifier.classify(texts, matrix, candidate)
            except (TritonUnavailable, VersionNotServed) as exc:  # shadow answers are a record: never hold for them
                log.warning("shadow version %s unavailable: %s", candidate, exc)
        return Served(results, shadow, candidate)

    def _prediction(
        self,
        msg: Message,
        event: Event,
        result: tuple[np.ndarray, int],
        role: str,
        features: dict[str, float | None],
        stamps: Stamps,
    ) -> Record:
        """The prediction record of one answer ``(probabilities, version)``, keyed like the event.

        Raises:
            ValueError: a probability or feature that is not finite (the caller dead-letters the event).
        """
        probs, served_version = result
        now = time.time()
        broker_ms = msg.timestamp()[1]
        trace = trace_id(msg)
        value = encode_prediction(
            {
                "event_id": event.event_id,
                "entity_id": event.entity_id,
                "event_time": event.event_time,
                "label": self.labels[int(np.argmax(probs))],
                "scores": {label: round(float(p), 6) for label, p in zip(self.labels, probs, strict=True)},
                "model": {"name": self.settings.triton.model_name, "version": int(served_version)},
                "role": role,
                "features": features,
                "timings_ms": stamps.timings(broker_ms / 1000 if broker_ms > 0 else stamps.read_at, now),
                "trace_id": trace,
                "text_stats": text_stats(event.text, self._vocab(served_version)),
                "predicted_at": datetime.fromtimestamp(now, UTC),
            }
        )
        headers = [("trace-id", trace.encode())] if trace else None
        return Record(self.settings.kafka.topic("predictions-v1"), value, key=msg.key(), headers=headers)

    def _vocab(self, version: int) -> frozenset[str] | None:
        """The serving version's tokenizer vocabulary, for ``oov_share``; None where the repository is not mounted."""
        if version not in self._vocabs:
            folder = (
                self.settings.triton.model_repository / self.settings.triton.model_name / str(version) / "tokenizer"
            )
            try:
                self._vocabs[version] = load_vocab(folder)
            except StreamsError:
                self._vocabs[version] = None
        return self._vocabs[version]

    async def _classify_by_version(
        self, classifier: TritonClassifier, texts: list[str], matrix: np.ndarray, versions: list[int], champion: int
    ) -> list[Result]:
        """Classify each group of events with its version, concurrently; a candidate that fails (or is no longer
        served) falls back to the champion, so a bad candidate costs latency, never a prediction.

        Raises:
            TritonUnavailable: the champion does not answer or is no longer served (the caller holds and retries).
        """
        results: list[Result | None] = [None] * len(texts)
        groups: dict[int, list[int]] = {}
        for i, version in enumerate(versions):
            groups.setdefault(version, []).append(i)

        async def run(version: int, rows: list[int]) -> None:
            try:
                answers = await classifier.classify([texts[i] for i in rows], matrix[rows], version)
            except VersionNotServed as exc:
                if version == champion:
                    raise TritonUnavailable(f"champion version {version} went away: {exc}") from exc
                answers = [TritonRequestError(f"candidate {version} not served")] * len(rows)
            except TritonUnavailable:
                if version == champion:
                    raise
                log.warning("candidate version %s unavailable; answering with the champion", version)
                answers = [TritonRequestError("candidate unavailable")] * len(rows)
            retry = [i for i, answer in zip(rows, answers, strict=True) if isinstance(answer, TritonRequestError)]
            for i, answer in zip(rows, answers, strict=True):
                results[i] = answer
            if version != champion and retry:
                try:
                    again = await classifier.classify([texts[i] for i in retry], matrix[retry], champion)
                except VersionNotServed as exc:
                    raise TritonUnavailable(f"champion version {champion} went away: {exc}") from exc
                for i, answer in zip(retry, again, strict=True):
                    results[i] = answer

        await asyncio.gather(*(run(version, rows) for version, rows in groups.items()))
        return results  # type: ignore[return-value]


@dataclass(frozen=True)
class Served:
    """One batch's answers: per event the champion's or the candidate's, and the shadow's when enabled."""

    results: list[Result]
    shadow: list[Result]
    candidate: int | None

    def answers(self) -> list[tuple[int, Result, str]]:
        """``(row, result, role)``: role from the version that actually answered (a candidate's failed rows are
        answered by the champion, and labelled so)."""
        rows = [(i, result, self._role(result)) for i, result in enumerate(self.results)]
        rows += [(i, r, "shadow") for i, r in enumerate(self.shadow) if not isinstance(r, TritonRequestError)]
        return rows

    def _role(self, result: Result) -> str:
        if isinstance(result, TritonRequestError):
            return "champion"
        return "candidate" if self.candidate is not None and result[1] == self.candidate else "champion"


def _where(msg: Message) -> dict:
    return {"topic": msg.topic(), "partition": msg.partition(), "offset": msg.offset()}


def _plain(value: object) -> float | None:
    return None if value is None else float(value)
