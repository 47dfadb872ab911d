"""Prometheus metrics of the monitor, on a registry of their own (the worker serves it on ``monitoring.metrics_port``
with ``foundation.health.HealthServer``, beside ``/healthz`` and ``/readyz``)."""

from __future__ import annotations

from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from monitoring.drift import DriftResult
from streams.skips import SkippedRecords


@dataclass
class MonitorMetrics:
    """The monitor's gauges and counters.

    Gauges (labels):
        ``driftloop_drift_share`` (model, kind): share of drifted columns of the kind (data, prediction).
        ``driftloop_drift_score`` (model, column, method): Evidently's score of each column (p-value or distance).
        ``driftloop_drift_column_drifted`` (model, column): 1 when the column is above its kind's calibrated threshold.
        ``driftloop_drift_window_size`` (model): predictions in the window.
        ``driftloop_drift_window_labelled`` (model): of which labelled.
        ``driftloop_live_accuracy`` / ``driftloop_live_macro_f1`` (model): on the window's labelled predictions.
        ``driftloop_drift_alert_firing`` (model, kind): 1 while an alert is open.
    Counters: ``driftloop_drift_checks_total`` (model), ``driftloop_drift_events_total`` (model, kind, status),
        ``driftloop_monitor_records_total`` (topic, outcome), ``driftloop_alert_deliveries_total``
        (receiver, outcome), ``driftloop_drift_check_errors_total`` (model, error): checks that raised,
        ``driftloop_skipped_records_total`` (topic, reason): labels, drift events and model states skipped
        (``skipped``, a ``streams.skips.SkippedRecords`` on this registry).
    Histogram: ``driftloop_drift_check_seconds``.
    """

    registry: CollectorRegistry = field(default_factory=CollectorRegistry)

    def __post_init__(self) -> None:
        r = self.registry
        self.drift_share = Gauge("driftloop_drift_share", "Share of drifted columns", ["model", "kind"], registry=r)
        self.drift_score = Gauge(
            "driftloop_drift_score", "Evidently drift score per column", ["model", "column", "method"], registry=r
        )
        self.column_drifted = Gauge(
            "driftloop_drift_column_drifted",
            "1 when the column is above its kind's calibrated threshold",
            ["model", "column"],
            registry=r,
        )
        self.window_size = Gauge("driftloop_drift_window_size", "Predictions in the window", ["model"], registry=r)
        self.window_labelled = Gauge(
            "driftloop_drift_window_labelled", "Labelled predictions in the window", ["model"], registry=r
        )
        self.accuracy = Gauge("driftloop_live_accuracy", "Accuracy on the labelled window", ["model"], registry=r)
        self.macro_f1 = Gauge("driftloop_live_macro_f1", "Macro-F1 on the labelled window", ["model"], registry=r)
        self.firing = Gauge(
            "driftloop_drift_alert_firing", "1 while a drift alert is open", ["model", "kind"], registry=r
        )
        self.checks = Counter("driftloop_drift_checks", "Drift checks run", ["model"], registry=r)
        self.events = Counter(
            "driftloop_drift_events", "Drift events produced", ["model", "kind", "status"], registry=r
        )
        self.records = Counter("driftloop_monitor_records", "Records read", ["topic", "outcome"], registry=r)
        self.deliveries = Counter(
            "driftloop_alert_deliveries", "Alert notifications by outcome", ["receiver", "outcome"], registry=r
        )
        self.check_errors = Counter(
            "driftloop_drift_check_errors",
            "Drift checks that raised (logged; the worker goes on)",
            ["model", "error"],
            registry=r,
        )
        self.skipped = SkippedRecords(registry=r)
        self.check_seconds = Histogram(
            "driftloop_drift_check_seconds",
            "Duration of the statistical part of a drift check",
            buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0),
            registry=r,
        )
        self._methods: dict[tuple[str, str], str] = {}

    def observe_check(self, result: DriftResult) -> None:
        model = result.model
        self.checks.labels(model).inc()
        self.check_seconds.observe(result.duration_s)
        self.window_size.labels(model).set(result.window.size)
        self.window_labelled.labels(model).set(result.window.labelled)
        for kind, outcome in result.kinds.items():
            if "drift_share" in outcome.metrics:
                self.drift_share.labels(model, kind).set(outcome.metrics["drift_share"])
        for column, drift in result.columns.items():
            previous = self._methods.get((model, column))
            if previous is not None and previous != drift.method:  # the test changed (reference resized)
                self.drift_score.remove(model, column, previous)
            self._methods[(model, column)] = drift.method
            self.drift_score.labels(model, column, drift.method).set(drift.score)
        for column, statistic in result.statistics.items():  # the calibrated decision, not Evidently's own tests
            self.column_drifted.labels(model, column).set(1.0 if statistic.drifted else 0.0)
        performance = result.kinds["performance"].metrics
        if "accuracy" in performance:
            self.accuracy.labels(model).set(performance["accuracy"])
            self.macro_f1.labels(model).set(performance["macro_f1"])
