"""When did a drift begin? The most likely change point of a fired window, for the alert's ``onset_at``.

A window that fires holds clean predictions before the drift and drifted ones after it; its start is not the drift's
start (a window of 800 events at 10 events/s starts 80 s before its newest event). For the column that drifted most,
each suffix of the window (the rows from ``k`` on, in arrival order) is compared with the reference by the column's
calibrated statistic, standardised by size (``monitoring.calibration``). Under a step change at ``k*`` the suffix
from ``k*`` is all drifted, and a longer suffix is diluted by clean rows while a shorter one is smaller: the
standardised statistic peaks at ``k*``. A gradual drift peaks where it becomes noticeable. The retraining consumer
anchors its data window and counts the post-drift labels from there.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

import numpy as np
import pandas as pd

from monitoring.calibration import column_statistic, standardised

#: The estimate looks at about this many split points, and never at a suffix shorter than MIN_SUFFIX rows.
SPLITS = 40
MIN_SUFFIX = 30


def change_point(method: str, reference: pd.Series, window: pd.Series) -> int | None:
    """The row of ``window`` (in its order) from which it differs most from ``reference``; None when too short."""
    n = len(window)
    if n < 2 * MIN_SUFFIX:
        return None
    best, best_k = -np.inf, None
    for k in np.unique(np.linspace(0, n - MIN_SUFFIX, SPLITS).astype(int)):
        try:
            raw, n_ref, n_cur = column_statistic(method, reference, window.iloc[k:])
        except ValueError:
            continue
        score = standardised(method, raw, n_ref, n_cur)
        if score > best:
            best, best_k = score, int(k)
    return best_k


def onset_time(method: str, reference: pd.Series, window: pd.Series, times: Sequence[datetime]) -> datetime | None:
    """The event time at the change point, or None.

    Rows are in arrival order, so an event that came late may sit among the first drifted ones: the time is the 10th
    percentile of the event times of the change point's first ``MIN_SUFFIX`` rows.
    """
    k = change_point(method, reference, window)
    if k is None:
        return None
    first = sorted(times[k : k + MIN_SUFFIX])
    return first[len(first) // 10]
