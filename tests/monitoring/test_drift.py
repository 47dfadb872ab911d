"""One drift check: the calibrated decision of the three kinds, and Evidently's tests per column for the report."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pandas as pd
import pytest
from evidently.legacy.calculations.stattests.registry import get_stattest
from evidently.legacy.core import ColumnType

from monitoring import DriftCheckError, DriftPolicy, check_drift
from monitoring.drift import classification_scores, column_drift, mature_features
from monitoring.window import SlidingWindow
from streams.windows import DAY, HOUR

pytestmark = pytest.mark.unit


def _policy(**overrides):
    """A policy for windows of 200-1000 events, calibrated quickly."""
    return DriftPolicy(**{"min_window": 200, "window_size": 1000, "calibration_resamples": 1000, **overrides})


def _window(setup, n, seed, drift_at=None, labelled=True):
    window = SlidingWindow(max_size=n)
    for prediction, label in setup.predictions(n, seed, drift_at):
        window.add(prediction, true_label=label if labelled else None)
    return window


def _check(setup, window, policy=None):
    reference = setup.reference()
    return check_drift(window.frame(reference.feature_names), reference, policy or _policy(), window.bounds())


def test_stable_window_has_no_drift_of_any_kind(synthetic_factory):
    setup = synthetic_factory()
    result = _check(setup, _window(setup, 1000, seed=3))
    assert {k: v.detected for k, v in result.kinds.items()} == {
        "data": False,
        "prediction": False,
        "performance": False,
    }
    data = result.kinds["data"]
    assert data.metrics["statistic"] < data.metrics["threshold"] and not data.drifted_columns
    assert {k: data.metrics[k] for k in ("drift_share", "drifted_count", "column_count")} == {
        "drift_share": 0.0,
        "drifted_count": 0.0,
        "column_count": 5.0,
    }
    assert result.comparable and set(result.statistics) == set(result.columns)
    assert result.statistics["amount"].method == "ks" and result.statistics["label"].method == "jensenshannon"
    assert result.kinds["performance"].metrics["accuracy"] > 0.95
    assert set(result.columns) == {"amount", "items", "text_length", "word_count", "oov_share", "label", "max_score"}
    assert result.window.size == 1000 and result.window.labelled == 1000 and result.reference_size == 600


def test_shifted_features_and_text_are_data_prediction_and_performance_drift(synthetic_factory):
    setup = synthetic_factory()
    result = _check(setup, _window(setup, 1000, seed=3, drift_at=0))
    data = result.kinds["data"]
    assert data.detected and data.severity == "critical"
    assert {"amount", "items", "oov_share"} <= set(data.drifted_columns)
    assert result.kinds["prediction"].detected and "max_score" in result.kinds["prediction"].drifted_columns
    performance = result.kinds["performance"]
    assert performance.detected and performance.severity == "critical"
    assert performance.metrics["accuracy"] < 0.5 and "accuracy" in performance.drifted_columns
    assert performance.metrics["accuracy_drop"] == pytest.approx(0.98 - performance.metrics["accuracy"])
    # Evidently's choice by size: KS for a reference of up to 1000 rows.
    assert result.columns["amount"].method == "ks" and result.columns["amount"].threshold == 0.05


def test_one_calibrated_threshold_per_kind_names_the_columns_above_it(synthetic_factory):
    setup = synthetic_factory()
    result = _check(setup, _window(setup, 600, seed=3, drift_at=0), _policy(critical_drift_share=1.0))
    prediction = result.kinds["prediction"]
    assert prediction.detected and prediction.drifted_columns == ("max_score",)  # the label's mix did not move
    assert prediction.severity == "warning"  # 1 of 2 columns, below a critical share of 1.0
    assert prediction.metrics["statistic"] == result.statistics["max_score"].standardised
    threshold = prediction.metrics["threshold"]
    for name in ("label", "max_score"):
        stat = result.statistics[name]
        assert stat.drifted is (stat.standardised > threshold) is (stat.statistic > stat.threshold)


def test_a_window_not_comparable_with_the_reference_is_not_judged(synthetic_factory):
    setup = synthetic_factory()
    drifted = _window(setup, 300, seed=3, drift_at=0)
    short = _check(setup, drifted, _policy(min_window=301))
    assert not short.comparable and all(k.detected is None for k in short.kinds.values())
    few_entities = _check(setup, drifted, _policy(min_entities=10_000))
    assert not few_entities.comparable and all(k.detected is None for k in few_entities.kinds.values())
    assert _check(setup, drifted).kinds["data"].detected


def test_performance_is_undecided_below_min_labelled_and_uses_every_rule(synthetic_factory):
    setup = synthetic_factory()
    unlabelled = _check(setup, _window(setup, 300, seed=3, labelled=False))
    assert unlabelled.kinds["performance"].detected is None
    assert unlabelled.kinds["performance"].metrics == {"labelled": 0.0}
    few = _check(setup, _window(setup, 300, seed=3, drift_at=0), _policy(min_labelled=301))
    assert few.kinds["performance"].detected is None and few.kinds["performance"].metrics["accuracy"] < 0.5

    stable = _window(setup, 300, seed=3)
    assert (
        _check(setup, stable, _policy(min_accuracy=None, max_accuracy_drop=None)).kinds["performance"].detected is False
    )
    by_f1 = _check(setup, stable, _policy(min_accuracy=None, max_accuracy_drop=None, min_macro_f1=1.01))
    assert by_f1.kinds["performance"].drifted_columns == ("macro_f1",)
    by_drop = _check(setup, stable, _policy(min_accuracy=None, max_accuracy_drop=-0.1))
    assert by_drop.kinds["performance"].drifted_columns == ("accuracy_drop",)


def test_categorical_and_few_valued_columns_avoid_evidentlys_chi_square(synthetic_factory):
    # Evidently's chi-square takes the reference proportions as exact: with a window 10x the reference it flags
    # identical distributions. The policy's categorical test (Jensen-Shannon) does not.
    rng = np.random.default_rng(0)
    reference = pd.Series(rng.choice(["a", "b", "c"], 1000))
    current = pd.Series(rng.choice(["a", "b", "c"], 10_000))
    chi = get_stattest(reference, current, ColumnType.Categorical, None)
    assert chi.name == "chisquare"
    flagged = sum(
        chi(
            pd.Series(rng.choice(["a", "b", "c"], 1000)),
            pd.Series(rng.choice(["a", "b", "c"], 10_000)),
            ColumnType.Categorical,
            None,
        ).drifted
        for _ in range(20)
    )
    assert flagged >= 5
    assert not column_drift("label", reference, current, DriftPolicy()).drifted
    assert column_drift("label", reference, current, DriftPolicy()).method == "jensenshannon"
    few_values = pd.Series(rng.integers(1, 6, 1000) * 1.0), pd.Series(rng.integers(1, 6, 10_000) * 1.0)
    items = column_drift("items", *few_values, DriftPolicy())
    assert items.method == "jensenshannon" and not items.drifted
    binary = column_drift("oov_share", pd.Series([0.0, 1.0] * 50), pd.Series([0.0, 1.0] * 500), DriftPolicy())
    assert binary.method == "jensenshannon"


def test_configured_tests_and_thresholds_are_used(synthetic_factory):
    setup = synthetic_factory()
    policy = _policy(num_stattest="wasserstein", num_threshold=0.5, cat_stattest="psi", cat_threshold=0.2)
    result = _check(setup, _window(setup, 400, seed=3), policy)
    assert result.columns["amount"].method == "wasserstein" and result.columns["amount"].threshold == 0.5
    assert result.columns["label"].method == "psi" and result.columns["label"].threshold == 0.2


def test_columns_without_values_are_skipped_not_fatal(synthetic_factory):
    setup = synthetic_factory()
    reference = setup.reference()
    frame = _window(setup, 300, seed=3).frame(reference.feature_names)
    frame["amount"] = np.nan
    result = check_drift(frame.drop(columns=["max_score"]), reference, _policy())
    assert result.skipped_columns == {"amount": "no values in the window", "max_score": "not in the window"}
    assert result.kinds["prediction"].metrics["column_count"] == 1.0


def test_an_empty_window_or_no_comparable_column_is_an_error(synthetic_factory):
    setup = synthetic_factory()
    reference = setup.reference()
    frame = _window(setup, 300, seed=3).frame(reference.feature_names)
    with pytest.raises(DriftCheckError, match="empty"):
        check_drift(frame.iloc[:0], reference, _policy())
    with pytest.raises(DriftCheckError, match="no data column"):
        check_drift(frame[["label", "max_score"]], reference, _policy())


def test_classification_scores_match_scikit_learn():
    from sklearn.metrics import accuracy_score, f1_score

    rng = np.random.default_rng(1)
    truth = rng.choice(["a", "b", "c", "d"], 500)
    predicted = np.where(rng.random(500) < 0.6, truth, rng.choice(["a", "b", "c"], 500))
    accuracy, macro_f1 = classification_scores(truth, predicted)
    assert accuracy == pytest.approx(accuracy_score(truth, predicted))
    assert macro_f1 == pytest.approx(f1_score(truth, predicted, average="macro"))


def test_features_over_a_span_the_store_has_not_observed_are_not_judged(synthetic_factory):
    setup = synthetic_factory()
    # The synthetic "amount" feature stands for a day-long count here: it drifts in this window.
    renamed = {"amount": "msg_count_24h"}
    reference = setup.reference()
    reference = replace(
        reference,
        feature_names=tuple(renamed.get(n, n) for n in reference.feature_names),
        frame=reference.frame.rename(columns=renamed),
    )
    window = _window(setup, 1000, seed=3, drift_at=0)
    current = window.frame(setup.reference().feature_names).rename(columns=renamed)

    young = check_drift(current, reference, _policy(), window.bounds(), observed_s=2 * HOUR)
    assert "msg_count_24h" not in young.statistics and "msg_count_24h" not in young.kinds["data"].drifted_columns
    assert young.skipped_columns["msg_count_24h"].startswith("warming up: 0 of 1000 events came once the store")
    assert "items" in young.kinds["data"].drifted_columns  # a feature without a span is judged all the same

    for observed_s in (DAY, None):  # a day observed, or nothing known about the store's age
        grown = check_drift(current, reference, _policy(), window.bounds(), observed_s=observed_s)
        assert "msg_count_24h" in grown.kinds["data"].drifted_columns and "msg_count_24h" not in grown.skipped_columns


def test_a_spanned_feature_is_judged_only_on_events_that_came_once_the_store_had_observed_its_span():
    frame = pd.DataFrame({"msg_count_1h": [1.0, 2.0, 3.0, 4.0], "msg_count_24h": [5.0, 6.0, 7.0, 8.0], "amount": 1.0})
    ages = [10 * 60, 2 * HOUR, 3 * HOUR, 30 * HOUR]  # seconds the store had observed when each event came
    mature, skipped = mature_features(frame, ["msg_count_1h", "msg_count_24h", "amount"], ages, min_rows=2)
    assert mature["msg_count_1h"].tolist()[1:] == [2.0, 3.0, 4.0] and np.isnan(mature["msg_count_1h"][0])
    assert skipped == {"msg_count_24h": "warming up: 1 of 4 events came once the store had observed the 24 h it covers"}
    assert mature["amount"].tolist() == [1.0] * 4  # no span: every value counts
    assert frame["msg_count_1h"][0] == 1.0  # the window itself is left alone

    assert mature_features(frame, ["msg_count_24h"], DAY, min_rows=2) == (frame, {})
    assert mature_features(frame, ["msg_count_24h"], None, min_rows=2) == (frame, {})
