"""bench/drift_quality.py on a tiny configuration: the JSON's shape, the features as the feature worker serves them,
the run-length interval, and every clear injected drift found by the kind that should find it."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest

from foundation.settings import load_settings
from streams.windows import add_event

pytestmark = pytest.mark.unit

_PATH = Path(__file__).resolve().parents[2] / "bench" / "drift_quality.py"


def _load():
    spec = importlib.util.spec_from_file_location("bench_drift_quality", _PATH)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


dq = _load()


def test_served_features_match_the_feature_worker():
    rng = np.random.default_rng(3)
    n = 500
    entity = rng.integers(0, 8, n)
    times = np.cumsum(rng.exponential(900.0, n))  # some entities go quiet for more than a day
    lengths = rng.integers(3, 80, n).astype(float)

    states: dict[int, dict] = {}
    served: dict[int, dict] = {}
    expected = []
    for i in range(n):
        e = int(entity[i])
        expected.append([served.get(e, {}).get(k) for k in dq.WINDOW_FEATURES])
        states[e], served[e] = add_event(states.get(e), f"event-{i}", float(times[i]), int(lengths[i]))
    expected_array = np.array([[np.nan if v is None else v for v in row] for row in expected], dtype=float)

    got = dq.served_features(entity, times, lengths)
    np.testing.assert_allclose(got, expected_array, equal_nan=True)
    assert np.isnan(got[:, 0]).sum() == len(set(entity.tolist()))  # an entity's first event: nothing served yet


def test_arl0_interval_is_the_exact_poisson_one():
    none = dq.arl0(10_000, 0)
    assert none["arl0"] is None and none["arl0_ci95"][1] is None
    assert none["arl0_ci95"][0] == pytest.approx(10_000 / 3.689, rel=1e-3)  # -ln(0.025)
    four = dq.arl0(10_000, 4)
    assert four["arl0"] == 2500.0
    low, high = four["arl0_ci95"]
    assert 10_000 / 10.24 == pytest.approx(low, rel=1e-2) and 10_000 / 1.09 == pytest.approx(high, rel=1e-2)
    assert not four["meets_target"]
    assert dq.arl0(40_000, 0)["meets_target"]


#: The kind of the monitor each clear drift must page on.
_EXPECTED = {
    "covariate/clear": "data",
    "vocabulary/clear": "data",
    "concept/clear": "performance",
    "prior/clear": "prediction",
    "gradual/clear": "data",
}


def test_tiny_benchmark_shape_and_clear_drifts_detected():
    config = dq.Config(
        model="word", replays=1, checks=60, trials=1, horizon=8, pre_checks=2, pool=2000, baseline_replays=1
    )
    line = dq.run(config, load_settings(training=dq.TINY_TRAINING))
    assert json.loads(json.dumps(line)) == line  # one JSON line, no NaN or numpy types

    stationary = line["stationary"]
    assert stationary["monitor"]["any"]["checks"] == 60
    assert set(stationary["monitor"]["kinds"]) == set(dq.KINDS)
    for row in (*stationary["monitor"]["kinds"].values(), stationary["baseline_evidently"]["kinds"]["dataset"]):
        assert {"false_alarms", "arl0", "arl0_ci95", "flag_rate", "fresh_store_alarms", "meets_target"} <= set(row)
        low, high = row["arl0_ci95"]
        assert low > 0 and (high is None or high >= low)

    expected_drifts = {
        f"{kind}/{size}"
        for kind in ("covariate", "vocabulary", "concept", "prior", "gradual")
        for size in ("subtle", "clear")
    }
    assert set(line["drifts"]) == expected_drifts
    for row in line["drifts"].values():
        assert set(row["monitor"]) == set(dq.KINDS)
        assert {"detected", "missed", "arl1_checks", "arl1_events"} <= set(row["baseline_evidently"])
    for name, kind in _EXPECTED.items():
        found = line["drifts"][name]["monitor"][kind]
        assert found["missed"] == 0, (name, kind, found)
        assert 0 < found["arl1_checks"] <= config.horizon
