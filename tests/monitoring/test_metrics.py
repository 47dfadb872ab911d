"""Prometheus metrics of a check, and the /metrics endpoint."""

from __future__ import annotations

import urllib.request

import pytest

from foundation.health import HealthServer
from monitoring import DriftPolicy, MonitorMetrics, check_drift
from monitoring.window import SlidingWindow

pytestmark = pytest.mark.unit


def _result(setup, n, drift_at=None, policy=None):
    reference = setup.reference()
    window = SlidingWindow(n)
    for prediction, label in setup.predictions(n, seed=3, drift_at=drift_at):
        window.add(prediction, true_label=label)
    return check_drift(window.frame(reference.feature_names), reference, policy or DriftPolicy(), window.bounds())


def test_a_check_sets_share_scores_window_and_accuracy_gauges(synthetic_factory):
    metrics = MonitorMetrics()
    result = _result(synthetic_factory(), 400, drift_at=0)
    metrics.observe_check(result)
    value = metrics.registry.get_sample_value
    assert (
        value("driftloop_drift_share", {"model": "classifier", "kind": "data"})
        == result.kinds["data"].metrics["drift_share"]
    )
    assert value("driftloop_drift_score", {"model": "classifier", "column": "amount", "method": "ks"}) < 0.05
    assert value("driftloop_drift_column_drifted", {"model": "classifier", "column": "amount"}) == 1.0
    assert value("driftloop_drift_window_size", {"model": "classifier"}) == 400
    assert value("driftloop_drift_window_labelled", {"model": "classifier"}) == 400
    assert value("driftloop_live_accuracy", {"model": "classifier"}) < 0.5
    assert value("driftloop_drift_checks_total", {"model": "classifier"}) == 1
    assert value("driftloop_drift_check_seconds_count") == 1


def test_a_changed_test_replaces_the_score_series(synthetic_factory):
    metrics = MonitorMetrics()
    setup = synthetic_factory()
    metrics.observe_check(_result(setup, 300))
    metrics.observe_check(_result(setup, 300, policy=DriftPolicy(num_stattest="wasserstein")))
    value = metrics.registry.get_sample_value
    assert value("driftloop_drift_score", {"model": "classifier", "column": "amount", "method": "ks"}) is None
    assert value("driftloop_drift_score", {"model": "classifier", "column": "amount", "method": "wasserstein"}) >= 0


def test_the_registry_is_served_by_the_health_server(synthetic_factory):
    metrics = MonitorMetrics()
    metrics.observe_check(_result(synthetic_factory(), 300))
    with HealthServer(0, host="127.0.0.1", registry=metrics.registry) as server:
        text = urllib.request.urlopen(f"{server.url}/metrics", timeout=5).read().decode()
    assert 'driftloop_drift_share{kind="data",model="classifier"} 0.0' in text
    assert "driftloop_live_accuracy" in text and "driftloop_drift_window_size" in text
