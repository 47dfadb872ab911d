"""The change point of a fired window: where it starts to differ from the reference."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import numpy as np
import pandas as pd
import pytest

from monitoring.calibration import KS
from monitoring.changepoint import MIN_SUFFIX, change_point, onset_time

pytestmark = pytest.mark.unit

T0 = datetime(2026, 11, 30, tzinfo=UTC)


@pytest.mark.parametrize("step_at", [100, 400, 650])
def test_a_step_change_is_found_where_it_happened(step_at):
    rng = np.random.default_rng(step_at)
    reference = pd.Series(rng.normal(0, 1, 600))
    window = pd.Series(np.concatenate([rng.normal(0, 1, step_at), rng.normal(1.0, 1, 800 - step_at)]))
    grid_step = (800 - MIN_SUFFIX) / 39
    assert abs(change_point(KS, reference, window) - step_at) <= 2 * grid_step + 10  # within ~6 % of the window


def test_onset_time_is_the_event_time_there_despite_a_late_event():
    rng = np.random.default_rng(1)
    reference = pd.Series(rng.normal(0, 1, 600))
    window = pd.Series(np.concatenate([rng.normal(0, 1, 300), rng.normal(2.0, 1, 300)]))
    times = [T0 + timedelta(seconds=i) for i in range(600)]
    times[305] = T0 - timedelta(days=1)  # one event arrived a day late among the first drifted ones
    onset = onset_time(KS, reference, window, times)
    assert T0 + timedelta(seconds=280) <= onset <= T0 + timedelta(seconds=320)


def test_a_window_too_short_to_split_has_no_change_point():
    assert change_point(KS, pd.Series(np.arange(100.0)), pd.Series(np.arange(2 * MIN_SUFFIX - 1.0))) is None
