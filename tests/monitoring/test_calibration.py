"""Calibrated decisions on seeded synthetic streams: quiet when nothing changes, firing on each kind of drift, and a
false-alarm rate within its budget."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy.stats import beta

from monitoring.calibration import (
    Calibration,
    calibrate,
    check_alpha,
    stored_calibration,
    tail_quantile,
    version_calibration,
)
from monitoring.drift import DriftPolicy, accuracy_upper_bound, decide
from monitoring.policy import DriftState
from monitoring.reference import ReferenceSample, reference_from_metadata

pytestmark = pytest.mark.unit

LABELS = ("negative", "neutral", "positive")
FEATURES = ("amount", "items")
WINDOW = 500
STEP = 100  # events between checks: successive windows overlap by 80 %, as the monitor's do
POLICY = DriftPolicy(window_size=WINDOW, min_window=WINDOW, check_interval_s=60, hysteresis_checks=3, min_labelled=50)


def _events(rng, n, *, shift=0.0, oov=0.1, prior=(1 / 3, 1 / 3, 1 / 3), relabel=0.0, label_share=1.0):
    """``n`` events of a synthetic model's traffic: features, text descriptors, prediction, (partial) ground truth.

    ``shift`` moves the log of ``amount`` (covariate shift), ``oov`` is the share of texts with unknown words
    (vocabulary shift), ``prior`` the class balance (prior shift), ``relabel`` the share of events whose true label
    moves to the next class while the texts, hence the predictions, stay (concept drift).
    """
    true = rng.choice(3, n, p=prior)
    predicted = np.where(rng.random(n) < 0.92, true, (true + 1) % 3)
    truth = np.where(rng.random(n) < relabel, (true + 1) % 3, true)
    names = np.array(LABELS, dtype=object)
    return pd.DataFrame(
        {
            "amount": rng.lognormal(3.5 + shift, 0.6, n),
            "items": rng.integers(1, 6, n).astype("float64"),
            "text_length": rng.normal(40 + 4 * true, 9, n).round(),
            "word_count": rng.poisson(7 + true, n).astype("float64"),
            "oov_share": np.where(rng.random(n) < oov, rng.uniform(0.05, 0.5, n), 0.0),
            "label": names[predicted],
            "max_score": rng.beta(9 - 2 * (predicted != true), 1.5, n),
            "true_label": np.where(rng.random(n) < label_share, names[truth], None),
            "entity_id": rng.integers(0, 200, n).astype(str),
        }
    )


def _reference(rng, n=600) -> ReferenceSample:
    frame = _events(rng, n)
    accuracy = float(np.mean(frame["label"] == frame["true_label"]))
    columns = [*FEATURES, "text_length", "word_count", "oov_share", "label", "max_score"]
    return ReferenceSample("m", 1, LABELS, FEATURES, frame[columns], {"accuracy": accuracy}, Path("metadata.json"))


def _sliding_checks(stream: pd.DataFrame, reference, calibration, policy=POLICY):
    """The decision on every window of ``WINDOW`` events, one check every ``STEP`` events."""
    for end in range(WINDOW, len(stream) + 1, STEP):
        yield end, decide(stream.iloc[end - WINDOW : end].reset_index(drop=True), reference, calibration, policy)


@pytest.fixture(scope="module")
def calibrated():
    reference = _reference(np.random.default_rng(1))
    return reference, calibrate(reference, POLICY)


def test_alpha_follows_the_budget_the_cadence_and_the_hysteresis():
    base = check_alpha(POLICY)
    assert base == pytest.approx(1 * 3 / (30 * 86_400 / 60) / 3)
    assert check_alpha(DriftPolicy(check_interval_s=120, hysteresis_checks=3)) == pytest.approx(2 * base)
    assert check_alpha(DriftPolicy(false_alarms_per_30_days=10, hysteresis_checks=3)) == pytest.approx(10 * base)


def test_a_stationary_stream_fires_zero_times_over_thousands_of_checks(calibrated):
    reference, calibration = calibrated
    stream = _events(np.random.default_rng(2), WINDOW + STEP * 2999, label_share=0.5)
    states = {kind: DriftState() for kind in ("data", "prediction", "performance")}
    checks = fired = detected = 0
    largest = 0.0
    for _, decision in _sliding_checks(stream, reference, calibration):
        checks += 1
        assert decision.comparable
        for kind, result in decision.kinds.items():
            detected += bool(result.detected)
            fired += states[kind].update(result.detected, POLICY.hysteresis_checks, POLICY.resolve_checks) == "fired"
        largest = max(largest, decision.kinds["data"].metrics["statistic"] / calibration.thresholds["data"])
    assert checks == 3000 and fired == 0 and detected == 0
    assert 0.3 < largest < 1  # the threshold is not out of reach of the null either


@pytest.mark.parametrize(
    ("drift", "kind", "culprit"),
    [
        ({"shift": 0.3}, "data", "amount"),  # covariate shift of a numeric feature
        ({"oov": 0.35}, "data", "oov_share"),  # vocabulary shift
        ({"relabel": 0.4}, "performance", "accuracy_drop"),  # concept drift: same inputs, other labels
        ({"prior": (0.6, 0.2, 0.2)}, "prediction", "label"),  # prior shift: the class balance moves
    ],
)
def test_each_injected_drift_fires_its_kind_and_nothing_fires_before(calibrated, drift, kind, culprit):
    reference, calibration = calibrated
    rng = np.random.default_rng(3)
    onset = WINDOW + 20 * STEP
    stream = pd.concat([_events(rng, onset, label_share=0.5), _events(rng, 10 * STEP, label_share=0.5, **drift)])
    state = DriftState()
    fired_at = None
    for end, decision in _sliding_checks(stream.reset_index(drop=True), reference, calibration):
        if end <= onset:
            assert not any(k.detected for k in decision.kinds.values()), f"detected before the onset at {end}"
        result = decision.kinds[kind]
        if state.update(result.detected, POLICY.hysteresis_checks, POLICY.resolve_checks) == "fired":
            fired_at = end
            assert culprit in result.drifted_columns
            break
    assert fired_at is not None, f"{drift} never fired {kind}"
    assert fired_at - onset <= WINDOW + POLICY.hysteresis_checks * STEP  # within about a window of the onset


def test_the_calibration_holds_its_budget_on_a_synthetic_null():
    """Over fresh references and independent null windows, each kind fires at about the calibrated rate, not above.

    The rate given one reference varies from reference to reference (the alpha holds on average over them), so the
    checks spread over 20 references; the 99 % interval of the rate must reach alpha from below and not be far under.
    """
    alpha = 0.02
    policy = DriftPolicy(window_size=300, min_window=300, calibration_resamples=1000, min_labelled=10_000)
    rng = np.random.default_rng(4)
    alarms = {"data": 0, "prediction": 0}
    checks = 0
    for _ in range(20):
        reference = _reference(rng, 400)
        calibration = calibrate(reference, policy, alpha=alpha, seed=int(rng.integers(1 << 30)))
        for _ in range(100):
            decision = decide(_events(rng, 300), reference, calibration, policy)
            checks += 1
            for kind in alarms:
                alarms[kind] += bool(decision.kinds[kind].detected)
    for kind, count in alarms.items():
        low = beta.ppf(0.005, count, checks - count + 1) if count else 0.0
        high = beta.ppf(0.995, count + 1, checks - count)
        assert low <= alpha and high >= alpha / 2, f"{kind}: {count} alarms in {checks} checks at alpha {alpha}"


def test_the_tail_is_extrapolated_to_alphas_no_resample_reaches():
    # P(X > x) = exp(-x**2 / 2) (Rayleigh): the exact 1 - alpha quantile is sqrt(2 ln(1 / alpha)).
    samples = np.random.default_rng(5).rayleigh(1.0, 4000)
    for alpha in (1e-3, 1e-5, 1e-7):
        assert tail_quantile(samples, alpha) == pytest.approx(math.sqrt(2 * math.log(1 / alpha)), rel=0.05)
    assert tail_quantile(samples, 0.2) == pytest.approx(np.quantile(samples, 0.8))


def test_performance_is_a_binomial_test_on_the_labelled_part(calibrated):
    reference, calibration = calibrated
    rng = np.random.default_rng(6)
    policy = DriftPolicy(window_size=WINDOW, min_window=WINDOW, min_labelled=100, min_accuracy=None)
    few = decide(_events(rng, WINDOW, relabel=0.5, label_share=0.1), reference, calibration, policy)
    assert few.kinds["performance"].detected is None  # ~50 labels, under min_labelled
    late = decide(_events(rng, WINDOW, relabel=0.5, label_share=0.3), reference, calibration, policy)
    performance = late.kinds["performance"]
    assert performance.detected and performance.metrics["labelled"] < 200
    assert performance.metrics["accuracy_upper_bound"] < performance.metrics["accuracy_floor"]
    slight = decide(_events(rng, WINDOW, relabel=0.12, label_share=0.3), reference, calibration, policy)
    assert slight.kinds["performance"].detected is False  # a drop near the tolerance is not significant
    # The bound: 90 of 100 right is not evidence against 0.9, 60 of 100 is evidence against 0.8.
    assert accuracy_upper_bound(90, 100, 1e-5) > 0.9 and accuracy_upper_bound(60, 100, 1e-5) < 0.8
    assert accuracy_upper_bound(100, 100, 1e-5) == 1.0


def test_a_short_window_or_few_entities_is_not_judged(calibrated):
    reference, calibration = calibrated
    drifted = _events(np.random.default_rng(7), WINDOW, shift=1.0, oov=0.9)
    assert decide(drifted, reference, calibration, POLICY).kinds["data"].detected
    short = decide(drifted.iloc[: WINDOW - 1], reference, calibration, POLICY)
    assert not short.comparable and "min_window" in short.reason
    one_entity = decide(drifted.assign(entity_id="e1"), reference, calibration, POLICY)
    assert not one_entity.comparable and "entities" in one_entity.reason
    assert all(k.detected is None for d in (short, one_entity) for k in d.kinds.values())


def test_a_calibration_is_stored_with_its_version_and_reused_only_for_the_same_settings(calibrated):
    reference, _ = calibrated
    rows = reference.frame.to_dict("records")
    metadata = {
        "model": "m",
        "version": 1,
        "labels": list(LABELS),
        "feature_names": list(FEATURES),
        "reference": rows,
        "metrics": reference.metrics,
    }
    policy = DriftPolicy(window_size=WINDOW, calibration_resamples=500)
    metadata["calibration"] = version_calibration(metadata, policy)
    loaded = reference_from_metadata(metadata, "m", 1, Path("metadata.json"))
    stored = stored_calibration(loaded, policy)
    assert stored == Calibration.from_dict(metadata["calibration"])
    assert stored.thresholds.keys() == {"data", "prediction"}
    assert stored.kinds["data"] == (*FEATURES, "text_length", "word_count", "oov_share")
    assert stored_calibration(loaded, DriftPolicy(window_size=WINDOW * 2, calibration_resamples=500)) is None
    assert stored_calibration(loaded, DriftPolicy(window_size=WINDOW, hysteresis_checks=5)) is None
    broken = reference_from_metadata({**metadata, "calibration": {"alpha": "x"}}, "m", 1, Path("metadata.json"))
    assert stored_calibration(broken, policy) is None
