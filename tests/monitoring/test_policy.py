"""Hysteresis: k detections to fire, m clean checks to resolve; undecided checks change nothing."""

from __future__ import annotations

import pytest

from foundation.settings import MonitoringSettings
from monitoring import DriftPolicy, DriftState

pytestmark = pytest.mark.unit


def _run(verdicts, k=3, m=2):
    state = DriftState()
    return [state.update(v, k, m) for v in verdicts], state


def test_one_noisy_check_does_not_fire():
    steps, state = _run([True, False, True, True, False, None, True])
    assert steps == ["quiet"] * 7 and not state.firing


def test_fires_after_k_consecutive_and_resolves_after_m_clean():
    steps, state = _run([True, True, True, True, False, True, False, None, False, False])
    assert steps == ["quiet", "quiet", "fired", "firing", "firing", "firing", "firing", "firing", "resolved", "quiet"]
    assert not state.firing


def test_k_of_one_fires_at_once_and_reset_keeps_an_open_alert():
    steps, state = _run([True], k=1)
    assert steps == ["fired"]
    state.reset_streaks()
    assert state.firing and state.drift_streak == 0 and state.clean_streak == 0


def test_policy_reads_every_field_from_settings():
    settings = MonitoringSettings(hysteresis_checks=5, data_drift_share=0.3, cat_stattest="psi", min_window=50)
    policy = DriftPolicy.from_settings(settings)
    assert (policy.hysteresis_checks, policy.data_drift_share, policy.cat_stattest, policy.min_window) == (
        5,
        0.3,
        "psi",
        50,
    )
    assert DriftPolicy.from_settings(MonitoringSettings()) == DriftPolicy()
    assert DriftPolicy.from_settings(MonitoringSettings(window_size=100, min_window=500)).min_window == 100
