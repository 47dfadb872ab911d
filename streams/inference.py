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
import logging
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

import numpy as np
from confluent_kafka import KafkaError, KafkaException, Message

from driftloop.health import HealthServer
from driftloop.settings import Settings
from features.exceptions import FeatureStoreNotReady
from features.store import online_features, open_store
from streams.canary import route
from streams.client import KafkaConsumer, KafkaProducer, Record
from streams.exceptions import KafkaClientError, StreamsError
from streams.metrics import WorkerMetrics
from streams.models_topic import ModelTracker
from streams.schemas import (
    MAX_DEAD_LETTER_BYTES,
    DeadLetter,
    Event,
    InvalidEvent,
    ModelRef,
    Prediction,
    Source,
    Timings,
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


@dataclass
class Batch:
    """Messages read together; ``outputs`` are produced before ``messages`` are committed."""

    messages: list[Message]
    read_at: float = field(default_factory=time.time)
    outputs: list[Record] = field(default_factory=list)
    predicted: int = 0
    dead: int = 0


def dead_letter(settings: Settings, msg: Message, stage: str, error: str) -> Record:
    letter = DeadLetter.of(stage, error, Source(topic=msg.topic(), partition=msg.partition(), offset=msg.offset()),
                           msg.key(), msg.value())  # fmt: skip
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
        store = open_store(settings)
        feature_names = _feature_names()
        consumer = KafkaConsumer(settings, workers.inference_group, [settings.kafka.topic("events-v1")])
        producer = KafkaProducer(settings)
        tracker = ModelTracker(settings, settings.triton.model_name)
        tracker.start()
        classifier = TritonClassifier(settings)
        in_flight: deque[tuple[Batch, asyncio.Task]] = deque()
        log.info("inference worker started", extra={"replica": self.replica, "group": workers.inference_group})
        try:
            while not self._stop.is_set():
                if self.health:
                    self.health.beat()
                messages = await asyncio.to_thread(
                    consumer.consume_batch, workers.max_batch_size, workers.max_wait_ms / 1000
                )
                if messages:
                    batch = Batch(messages)
                    task = asyncio.create_task(self._process(batch, store, feature_names, classifier, tracker))
                    in_flight.append((batch, task))
                    self._count_in_flight(in_flight)
                # Bounded in-flight work: the oldest batch must finish before more is read.
                while in_flight and (len(in_flight) >= workers.max_in_flight or in_flight[0][1].done() or not messages):
                    await self._complete(*in_flight.popleft(), producer, consumer)
                    self._count_in_flight(in_flight)
            while in_flight:
                await self._complete(*in_flight.popleft(), producer, consumer)
                self._count_in_flight(in_flight)
        except OUTAGES as exc:
            if not self._stop.is_set():
                raise
            held = len(in_flight) + 1
            log.warning("stopping during an outage (%s): %d batch(es) left uncommitted, redelivered later", exc, held)
        finally:
            for _, task in in_flight:
                task.cancel()
            tracker.stop()
            await classifier.close()
            producer.close()
            consumer.close()
            log.info("inference worker stopped", extra={"replica": self.replica})

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

    async def _complete(
        self, batch: Batch, task: asyncio.Task, producer: KafkaProducer, consumer: KafkaConsumer
    ) -> None:
        await task
        await asyncio.to_thread(producer.produce_batch, batch.outputs)
        try:
            await asyncio.to_thread(consumer.commit, batch.messages)
        except KafkaClientError as exc:
            error = exc.__cause__.args[0] if isinstance(exc.__cause__, KafkaException) else None
            if not isinstance(error, KafkaError) or error.fatal():
                raise
            # The group moved on (a broker restart, a rebalance: "Unknown member"): the outputs are out, and the
            # uncommitted records are redelivered to the partitions' owner - duplicates to dedupe, never losses.
            log.warning("commit failed (%s); %d records will be redelivered", error, len(batch.messages))
        self.metrics.batch_done(len(batch.messages), batch.predicted, batch.dead, time.time() - batch.read_at)

    async def _process(self, batch: Batch, store, feature_names, classifier: TritonClassifier, tracker) -> None:
        settings = self.settings
        events: list[tuple[Message, Event]] = []
        for msg in batch.messages:
            try:
                event = parse_event(msg.value())
                if msg.key() != event.entity_id.encode():
                    raise InvalidEvent(
                        f"the record key must be the entity_id {event.entity_id!r}, got {msg.key() if msg.key() is None else msg.key()[:64]!r}"
                    )
                events.append((msg, event))
            except InvalidEvent as exc:
                batch.outputs.append(dead_letter(settings, msg, "validate", exc.reason))
                batch.dead += 1
        if not events:
            return

        started = time.time()
        entity_ids = [event.entity_id for _, event in events]
        features = await self._until_available(
            "feast", lambda: asyncio.to_thread(online_features, store, entity_ids), classifier
        )
        features_done = time.time()

        state = tracker.current()
        texts = [event.text for _, event in events]
        matrix = feature_matrix(features, feature_names)
        versions = route([event.event_id for _, event in events], state, settings.workers.canary_share)
        champion = state.champion if state else None
        results = await self._until_available(
            "triton", lambda: self._classify_by_version(classifier, texts, matrix, versions, champion), classifier
        )
        shadow: list[Result] = []
        if settings.workers.shadow and state and state.candidate and state.candidate != champion:
            try:
                shadow = await classifier.classify(texts, matrix, state.candidate)
            except TritonUnavailable as exc:  # shadow answers are a record, not a prediction: never hold for them
                log.warning("shadow version %s unavailable: %s", state.candidate, exc)
        inference_done = time.time()

        answers = [(i, result, "champion") for i, result in enumerate(results)]
        answers += [
            (i, result, "shadow") for i, result in enumerate(shadow) if not isinstance(result, TritonRequestError)
        ]
        for i, result, role in answers:
            msg, event = events[i]
            if isinstance(result, TritonRequestError):
                batch.outputs.append(dead_letter(settings, msg, "inference", str(result)))
                batch.dead += 1
                continue
            probs, served_version = result
            if role == "champion" and versions[i] is not None and versions[i] != champion:
                role = "candidate"
            now = time.time()
            broker_ts = msg.timestamp()[1] / 1000 if msg.timestamp()[1] > 0 else batch.read_at
            prediction = Prediction(
                event_id=event.event_id,
                entity_id=event.entity_id,
                event_time=event.event_time,
                label=self.labels[int(np.argmax(probs))],
                scores={label: round(float(p), 6) for label, p in zip(self.labels, probs, strict=True)},
                model=ModelRef(name=settings.triton.model_name, version=served_version),
                role=role,
                features={name: _plain(features[name][i]) for name in feature_names},
                timings_ms=Timings(
                    queue=round((started - broker_ts) * 1000, 3),
                    features=round((features_done - started) * 1000, 3),
                    inference=round((inference_done - features_done) * 1000, 3),
                    end_to_end=round((now - broker_ts) * 1000, 3),
                ),
                trace_id=trace_id(msg),
                text_stats=text_stats(event.text, self._vocab(served_version)),
                predicted_at=datetime.fromtimestamp(now, UTC),
            )
            batch.outputs.append(
                Record(settings.kafka.topic("predictions-v1"), prediction.to_bytes(), key=msg.key(),
                       headers=[("trace-id", prediction.trace_id.encode())] if prediction.trace_id else None)
            )  # fmt: skip
            batch.predicted += role != "shadow"

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
        self, classifier: TritonClassifier, texts: list[str], matrix: np.ndarray, versions: list[int | None],
        champion: int | None,
    ) -> list[Result]:  # fmt: skip
        """Classify each group of events with its version, concurrently; a candidate that fails falls back to the
        champion, so a bad candidate costs latency, never a prediction."""
        results: list[Result | None] = [None] * len(texts)
        groups: dict[int | None, list[int]] = {}
        for i, version in enumerate(versions):
            groups.setdefault(version, []).append(i)

        async def run(version: int | None, rows: list[int]) -> None:
            try:
                answers = await classifier.classify([texts[i] for i in rows], matrix[rows], version)
            except VersionNotServed:
                if version == champion:  # announced before this server loaded it: Triton's default version answers
                    log.warning("champion version %s not served; using the server's default version", version)
                    answers = await classifier.classify([texts[i] for i in rows], matrix[rows], None)
                else:
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
                for i, answer in zip(
                    retry, await classifier.classify([texts[i] for i in retry], matrix[retry], champion), strict=True
                ):
                    results[i] = answer

        await asyncio.gather(*(run(version, rows) for version, rows in groups.items()))
        return results  # type: ignore[return-value]


def _feature_names() -> list[str]:
    from features.definitions import inference_v1

    return [feature.name for projection in inference_v1.feature_view_projections for feature in projection.features]


def _plain(value: object) -> float | None:
    return None if value is None else float(value)
