"""The bootstrap version learns (and its drift reference holds) the features a fresh online store serves: its events
replayed in event order through the feature worker's own fold, each event seeing its entity's last pushed row."""

from __future__ import annotations

import math

import numpy as np
import pytest

from foundation.settings import load_settings
from streams.feature_app import fold
from streams.schemas import Event
from training.dataset import bootstrap_dataset, split_by_time
from training.export import reference_sample
from training.servable.runtime import FEATURE_NAMES

WINDOW_FEATURES = ("msg_count_1h", "msg_count_24h", "mean_text_length", "seconds_since_last_event")


def _missing(value: object) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def _same(a: object, b: object) -> bool:
    if _missing(a) or _missing(b):
        return _missing(a) and _missing(b)
    return float(a) == pytest.approx(float(b))


@pytest.mark.unit
def test_bootstrap_features_are_what_the_feature_worker_would_have_served() -> None:
    settings = load_settings(training={"bootstrap_samples": 600, "bootstrap_entities": 40, "bootstrap_days": 0.05})
    frame = bootstrap_dataset(settings).frame
    windows: dict[bytes, dict] = {}  # the feature worker's table, fresh
    online: dict[str, dict] = {}  # what the online store holds: the last row pushed per entity
    served: dict[str, dict] = {}
    for row in frame.itertuples(index=False):  # event order, as the worker reads an entity's partition
        served[row.event_id] = online.get(row.entity_id, {})  # the inference worker reads as the event arrives
        event = Event(event_id=row.event_id, entity_id=row.entity_id, event_time=row.event_timestamp, text=row.text)
        pushed = fold(windows, row.entity_id.encode(), event.to_bytes())
        assert pushed is not None
        online[row.entity_id] = pushed

    mismatches = [
        (row.event_id, name, getattr(row, name), served[row.event_id].get(name))
        for row in frame.itertuples(index=False)
        for name in WINDOW_FEATURES
        if not _same(getattr(row, name), served[row.event_id].get(name))
    ]
    assert mismatches == []
    assert frame["msg_count_1h"].isna().sum() == frame["entity_id"].nunique()  # each entity's first event: nothing
    assert frame[["account_age_days", "lifetime_events"]].isna().all().all()  # no profile job on a fresh stack

    # The reference rows of the version carry those same values (None where the store had nothing).
    _, holdout = split_by_time(frame, settings.training.validation_fraction)
    probs = np.tile([1.0, 0.0, 0.0], (len(holdout), 1))
    rows = reference_sample(holdout, probs, tuple(settings.training.labels), 50)
    by_time = holdout.set_index(holdout["event_timestamp"].map(lambda t: t.isoformat()))
    for entry in rows:
        source = by_time.loc[entry["event_time"]]
        source = source.iloc[0] if source.ndim == 2 else source
        assert all(_same(entry[name], source[name]) for name in FEATURE_NAMES)
