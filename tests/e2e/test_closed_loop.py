"""The whole loop with the tiny model: drift → alert → retrain → canary → promotion, on real servers.

Runs what `make demo` runs (driftloop.demo.run_loop: the stream workers, the monitor and the retraining consumer as
real processes), with the tiny BERT instead of MiniLM so it fits in CI.
"""

from __future__ import annotations

import pytest

from driftloop.demo import DemoPlan, run_loop

pytestmark = pytest.mark.e2e


@pytest.mark.timeout(600)  # the plan's own timeout (300 s) after up to 180 s of worker start-up
def test_drift_is_detected_retrained_canaried_and_promoted(loop_settings, tmp_path):
    from training.pipeline import train_version

    settings, config_file = loop_settings
    first = train_version(settings, bootstrap=True, progress=False)
    assert first.promoted and first.version == 1

    plan = DemoPlan(rate=20.0, drift_after_s=25.0, timeout_s=300.0, after_promotion_s=15.0, seed=3)
    summary = run_loop(settings, plan, config_file, tmp_path / "demo", print)

    assert summary["time_to_detect_s"] is not None, summary  # a drift alert
    assert summary["new_version"] and summary["new_version"] > 1, summary
    assert summary["time_to_promote_s"] is not None, summary
    assert summary["accuracy_after_promotion"] > summary["accuracy_after_drift"], summary
    # Healed, not merely better: measured 0.95-0.98 of the pre-drift accuracy in the 15 s after the promotion.
    assert summary["accuracy_after_promotion"] >= 0.8 * summary["accuracy_before_drift"], summary
    assert summary["failed_predictions"] == 0
    assert summary["events_lost"] == 0
    assert summary["restarts"] == {}  # no worker died
    assert (tmp_path / "demo" / "summary.json").exists() and (tmp_path / "demo" / "accuracy.png").exists()
    print(summary)
