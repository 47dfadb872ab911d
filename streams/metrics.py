"""Prometheus metrics of the stream workers (served by ``driftloop workers`` on ``workers.metrics_port``)."""

from __future__ import annotations

from prometheus_client import Counter, Histogram

EVENTS = Counter("driftloop_events_total", "Events read", ["worker"])
PREDICTIONS = Counter("driftloop_predictions_total", "Predictions produced", ["worker"])
DEAD_LETTERS = Counter("driftloop_dead_letters_total", "Records sent to the dead-letter topic", ["worker"])
BATCH_SECONDS = Histogram(
    "driftloop_batch_seconds", "Read-to-commit time of a micro-batch", ["worker"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)  # fmt: skip


class WorkerMetrics:
    def __init__(self, worker: str) -> None:
        self._events = EVENTS.labels(worker)
        self._predictions = PREDICTIONS.labels(worker)
        self._dead = DEAD_LETTERS.labels(worker)
        self._batch = BATCH_SECONDS.labels(worker)

    def batch_done(self, events: int, predicted: int, dead: int, seconds: float) -> None:
        self._events.inc(events)
        self._predictions.inc(predicted)
        self._dead.inc(dead)
        self._batch.observe(seconds)
