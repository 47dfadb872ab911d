"""Prometheus metrics of the stream workers (served by ``driftloop workers`` on ``workers.metrics_port``)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

EVENTS = Counter("driftloop_events_total", "Events read", ["worker"])
PREDICTIONS = Counter("driftloop_predictions_total", "Predictions produced", ["worker"])
DEAD_LETTERS = Counter("driftloop_dead_letters_total", "Records sent to the dead-letter topic", ["worker"])
BATCH_SECONDS = Histogram(
    "driftloop_batch_seconds",
    "Read-to-commit time of a micro-batch",
    ["worker"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
IN_FLIGHT_BATCHES = Gauge("driftloop_in_flight_batches", "Batches read and not yet committed", ["worker"])
IN_FLIGHT_EVENTS = Gauge("driftloop_in_flight_events", "Events read and not yet committed", ["worker"])
OUTAGE_RETRIES = Counter(
    "driftloop_outage_retries_total",
    "Attempts that found a dependency unavailable (the batch was held and retried)",
    ["worker", "dependency"],
)
MODEL_RELOADS = Counter(
    "driftloop_triton_model_reloads_total", "Unload + load of a Triton model whose backend process crashed", ["worker"]
)

COMMIT_GAP_REREADS = Counter(
    "driftloop_commit_gap_rereads_total",
    "Partitions read again from an offset whose events were fetched and never delivered, none after them",
    ["worker"],
)
RECOVERY_RESTARTS = Counter(
    "driftloop_table_recovery_restarts_total",
    "Table recoveries restarted because nothing came from their changelogs for a while",
    ["worker"],
)
DROPPED_EVENTS_RECOVERED = Counter(
    "driftloop_dropped_events_recovered_total",
    "Events faust fetched and never delivered, folded from the fetch ledger when a later event revealed them",
    ["worker"],
)


class WorkerMetrics:
    def __init__(self, worker: str) -> None:
        self.worker = worker
        self._events = EVENTS.labels(worker)
        self._predictions = PREDICTIONS.labels(worker)
        self._dead = DEAD_LETTERS.labels(worker)
        self._batch = BATCH_SECONDS.labels(worker)
        self._in_flight_batches = IN_FLIGHT_BATCHES.labels(worker)
        self._in_flight_events = IN_FLIGHT_EVENTS.labels(worker)
        self._reloads = MODEL_RELOADS.labels(worker)

    def batch_done(self, events: int, predicted: int, dead: int, seconds: float) -> None:
        self._events.inc(events)
        self._predictions.inc(predicted)
        self._dead.inc(dead)
        self._batch.observe(seconds)

    def in_flight(self, batches: int, events: int) -> None:
        self._in_flight_batches.set(batches)
        self._in_flight_events.set(events)

    def outage(self, dependency: str) -> None:
        """One attempt found ``dependency`` (``triton``, ``feast``) unavailable."""
        OUTAGE_RETRIES.labels(self.worker, dependency).inc()

    def model_reloaded(self) -> None:
        self._reloads.inc()
