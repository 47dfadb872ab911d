"""One drift check: a window compared with a reference sample, decided by calibrated family-wise rules.

Three kinds of drift are decided, each by one rule (``decide``):

- ``data``: the numeric features and the text descriptors; ``prediction``: the predicted label and the highest score.
  A kind drifts when the largest standardised column statistic (Kolmogorov-Smirnov distance for numeric columns,
  Jensen-Shannon distance for the label) exceeds the threshold calibrated on the version's reference to the
  false-alarm budget (``monitoring.calibration``): clean traffic fires a kind with probability ``alpha`` per check
  whatever the number of columns. ``drifted_columns`` are the columns above the threshold (the kind's culprits).
- ``performance``: a one-sided exact binomial test on the window's labelled predictions: drifted when the upper
  ``1 - alpha`` Clopper-Pearson bound of the window's accuracy is below the floor, the reference accuracy less
  ``max_accuracy_drop`` (or ``min_accuracy``, whichever is higher); undecided below ``min_labelled`` labels. Labels
  may be late and partial: only the labelled part of the window counts.

No kind is decided on a window that is not comparable with the reference: fewer than ``min_window`` events or fewer
than ``min_entities`` distinct entities (a fresh store, a short window) leave every kind undecided. A feature that looks
back over a span (``streams.windows.SPANS``: a count over the last day, say) is judged only on the events that came
once the feature store had observed that long (``observed_s``, per event), and left out of the data kind while fewer
than ``min_window`` did: on a fresh store such features grow for a day on clean traffic, so judging those values
would page for the store's youth, not for drift.

Evidently still tests each column (``columns``: its ``DataDriftPreset`` tests, chosen as Evidently chooses them, for
the HTML report of ``monitoring.report``), with one change: Evidently's default for categorical and few-valued numeric
columns is its chi-square test, which treats the reference proportions as exact and flags most windows much larger
than the reference; those columns get ``cat_stattest`` instead (Jensen-Shannon by default), as do numeric columns for
which Evidently picks a categorical-only test. Those per-column verdicts are shown, not decided on.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from evidently.legacy.calculations.stattests.registry import StatTest, get_stattest
from evidently.legacy.core import ColumnType
from scipy.stats import beta

from foundation.settings import MonitoringSettings
from monitoring.calibration import Calibration, calibrate, column_statistic, standardised
from monitoring.exceptions import DriftCheckError
from monitoring.reference import PREDICTION_COLUMNS, ReferenceSample
from monitoring.window import ENTITY_ID, TRUE_LABEL, WindowBounds
from streams.schemas import Kind, Severity
from streams.windows import SPANS

KINDS: tuple[Kind, ...] = ("data", "prediction", "performance")

_CATEGORICAL = frozenset({"label"})


@dataclass(frozen=True)
class DriftPolicy:
    """Thresholds of the decision; see ``MonitoringSettings`` for each field's meaning and default."""

    min_window: int = 500
    data_drift_share: float = 0.5
    prediction_drift_share: float = 0.5
    critical_drift_share: float = 0.8
    num_stattest: str | None = None
    num_threshold: float | None = None
    cat_stattest: str = "jensenshannon"
    cat_threshold: float | None = None
    min_labelled: int = 200
    min_accuracy: float | None = 0.7
    max_accuracy_drop: float | None = 0.1
    min_macro_f1: float | None = None
    critical_accuracy: float = 0.5
    hysteresis_checks: int = 3
    resolve_checks: int = 3
    window_size: int = 5000
    min_entities: int = 10
    check_interval_s: float = 60.0
    false_alarms_per_30_days: float = 1.0
    calibration_resamples: int = 2000
    calibration_seed: int = 0
    calibration_tail_fraction: float = 0.1

    @classmethod
    def from_settings(cls, settings: MonitoringSettings) -> DriftPolicy:
        """The policy of ``settings``; a ``min_window`` above ``window_size`` is lowered to it (else no check runs)."""
        values = {name: getattr(settings, name) for name in cls.__dataclass_fields__}
        values["min_window"] = min(settings.min_window, settings.window_size)
        return cls(**values)


@dataclass(frozen=True)
class ColumnDrift:
    """Evidently's test of one column: method name, score (p-value or distance), threshold, verdict."""

    column: str
    method: str
    score: float
    threshold: float
    drifted: bool


@dataclass(frozen=True)
class KindResult:
    """The measure of one drift kind in one check.

    ``detected`` is None when the check cannot decide (too few labels for performance).
    """

    kind: Kind
    detected: bool | None
    severity: Severity
    metrics: dict[str, float]
    drifted_columns: tuple[str, ...] = ()


@dataclass(frozen=True)
class ColumnStatistic:
    """One column's calibrated statistic in a check.

    Attributes:
        column: the column.
        method: ``ks`` or ``jensenshannon``.
        statistic: the raw statistic between reference and window.
        standardised: the statistic over its null scale at these sample sizes (what the kind's rule compares).
        threshold: the raw statistic at which this column alone would reach the kind's threshold.
        drifted: the column is above the kind's threshold.
    """

    column: str
    method: str
    statistic: float
    standardised: float
    threshold: float
    drifted: bool


@dataclass(frozen=True)
class Decision:
    """The calibrated verdict on one window: a ``KindResult`` per kind and the statistics behind it.

    ``comparable`` is False when the window is too small or has too few entities to be judged (``reason`` says why);
    every kind is then undecided.
    """

    kinds: dict[Kind, KindResult]
    statistics: dict[str, ColumnStatistic]
    comparable: bool
    reason: str | None = None
    skipped: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class DriftResult:
    """The outcome of one check of a model's window against its serving version's reference.

    ``kinds`` and ``statistics`` are the calibrated decision; ``columns`` are Evidently's per-column tests, shown in the
    HTML report.
    """

    model: str
    version: int
    window: WindowBounds
    reference_size: int
    columns: dict[str, ColumnDrift]
    kinds: dict[Kind, KindResult]
    skipped_columns: dict[str, str] = field(default_factory=dict)
    duration_s: float = 0.0
    statistics: dict[str, ColumnStatistic] = field(default_factory=dict)
    comparable: bool = True
    calibration: Calibration | None = field(default=None, repr=False)

    def column_scores(self, names: tuple[str, ...] | list[str]) -> dict[str, ColumnDrift]:
        return {n: self.columns[n] for n in names if n in self.columns}


def check_drift(
    current: pd.DataFrame,
    reference: ReferenceSample,
    policy: DriftPolicy,
    window: WindowBounds | None = None,
    calibration: Calibration | None = None,
    observed_s: float | Sequence[float] | np.ndarray | None = None,
) -> DriftResult:
    """Compare a window frame (``SlidingWindow.frame``) with a reference sample: the decision and Evidently's tests.

    Args:
        current: the window: the reference's feature and descriptor columns, ``label``, ``max_score`` and
            optionally ``true_label`` and ``entity_id``.
        reference: the serving version's reference sample.
        policy: thresholds, budget and test choices.
        window: the window's bounds, reported in the result (derived from ``current`` when omitted).
        calibration: the reference's calibration; calibrated here (seconds) when omitted.
        observed_s: how long the feature store has been observing (see :func:`decide`).

    Raises:
        DriftCheckError: the window is empty, or no data column can be compared.
    """
    started = time.perf_counter()
    if current.empty:
        raise DriftCheckError(f"{reference.model}: the window is empty")
    window = window or WindowBounds(None, None, len(current), _labelled(current))
    calibration = calibration or calibrate(reference, policy)

    data_columns = [*reference.feature_names, *reference.descriptor_columns]
    columns: dict[str, ColumnDrift] = {}
    skipped: dict[str, str] = {}
    for name in [*data_columns, *PREDICTION_COLUMNS]:
        if name not in current.columns:
            skipped[name] = "not in the window"
            continue
        try:
            columns[name] = column_drift(name, reference.frame[name], current[name], policy)
        except _Skip as exc:
            skipped[name] = str(exc)
    if not any(name in columns for name in data_columns):
        raise DriftCheckError(f"{reference.model} v{reference.version}: no data column could be compared: {skipped}")

    decision = decide(current, reference, calibration, policy, observed_s)
    return DriftResult(
        model=reference.model,
        version=reference.version,
        window=window,
        reference_size=len(reference.frame),
        columns=columns,
        kinds=decision.kinds,
        skipped_columns={**skipped, **decision.skipped},
        duration_s=time.perf_counter() - started,
        statistics=decision.statistics,
        comparable=decision.comparable,
        calibration=calibration,
    )


def decide(
    current: pd.DataFrame,
    reference: ReferenceSample,
    calibration: Calibration,
    policy: DriftPolicy | None = None,
    observed_s: float | Sequence[float] | np.ndarray | None = None,
) -> Decision:
    """The calibrated decision on a window frame (see the module docstring).

    Args:
        current: the window: the reference's columns, ``label``, ``max_score``, optionally ``true_label`` (NaN when
            not labelled) and ``entity_id`` (for the comparability check).
        reference: the serving version's reference sample.
        calibration: ``calibrate(reference, settings)`` (or the one stored with the version).
        policy: ``min_window``, ``min_entities``, the performance settings and ``critical_*``; defaults when omitted.
        observed_s: per event of ``current``, how long the feature store had been observing when it came (one number:
            the same for every event; None: long enough for every feature).
    """
    policy = policy or DriftPolicy()
    statistics: dict[str, ColumnStatistic] = {}
    current, skipped = mature_features(current, reference.feature_names, observed_s, policy.min_window)
    kinds: dict[Kind, KindResult] = {}
    for kind in ("data", "prediction"):
        kinds[kind] = _calibrated_kind(kind, current, reference, calibration, policy, statistics, skipped)
    kinds["performance"] = _performance(current, reference, policy, calibration.alpha)

    reason = _not_comparable(current, policy)
    if reason is not None:
        kinds = {k: KindResult(k, None, "warning", {**v.metrics, "comparable": 0.0}, ()) for k, v in kinds.items()}
    return Decision(kinds, statistics, reason is None, reason, skipped)


def mature_features(
    current: pd.DataFrame,
    feature_names: tuple[str, ...] | list[str],
    observed_s: float | Sequence[float] | np.ndarray | None,
    min_rows: int,
) -> tuple[pd.DataFrame, dict[str, str]]:
    """``current`` with each spanned feature's values blanked (NaN) on the events that came before the store had
    observed its span, and the features left with fewer than ``min_rows`` values, with why (not judged)."""
    if observed_s is None:
        return current, {}
    ages = np.broadcast_to(np.asarray(observed_s, dtype="float64"), (len(current),))
    frame, skipped = current, {}
    for name in feature_names:
        span = SPANS.get(name)
        if span is None or name not in current.columns:
            continue
        mature = ages >= span
        if mature.all():
            continue
        if mature.sum() < min_rows:
            skipped[name] = (
                f"warming up: {int(mature.sum())} of {len(current)} events came once the store had observed the "
                f"{span / 3600:.0f} h it covers"
            )
            continue
        if frame is current:
            frame = current.copy()
        frame.loc[~mature, name] = np.nan
    return frame, skipped


def _not_comparable(current: pd.DataFrame, policy: DriftPolicy) -> str | None:
    if len(current) < policy.min_window:
        return f"{len(current)} events in the window, fewer than min_window ({policy.min_window})"
    if ENTITY_ID in current.columns:
        entities = current[ENTITY_ID].nunique(dropna=True)
        if entities < policy.min_entities:
            return f"{entities} distinct entities in the window, fewer than min_entities ({policy.min_entities})"
    return None


def _calibrated_kind(
    kind: Kind,
    current: pd.DataFrame,
    reference: ReferenceSample,
    calibration: Calibration,
    policy: DriftPolicy,
    statistics: dict[str, ColumnStatistic],
    skipped: dict[str, str],
) -> KindResult:
    threshold = calibration.thresholds.get(kind)
    names = calibration.kinds.get(kind, ())
    tested: list[ColumnStatistic] = []
    for name in names:
        if name in skipped:
            continue  # warming up
        if name not in current.columns or name not in reference.frame.columns:
            skipped.setdefault(name, "not in the window")
            continue
        method = calibration.tests[name]
        try:
            raw, n_ref, n_cur = column_statistic(method, reference.frame[name], current[name])
        except ValueError as exc:
            skipped.setdefault(name, str(exc))
            continue
        scale = calibration.scales[name]
        z = standardised(method, raw, n_ref, n_cur) / scale
        raw_threshold = math.inf if threshold is None else threshold * scale * math.sqrt(1 / n_ref + 1 / n_cur)
        stat = ColumnStatistic(name, method, raw, z, raw_threshold, threshold is not None and z > threshold)
        statistics[name] = stat
        tested.append(stat)
    if not tested or threshold is None:
        return KindResult(kind, None, "warning", {"column_count": float(len(tested))})
    top = max(s.standardised for s in tested)
    drifted = tuple(s.column for s in sorted(tested, key=lambda s: -s.standardised) if s.drifted)
    share = len(drifted) / len(tested)
    return KindResult(
        kind=kind,
        detected=top > threshold,
        severity="critical" if share >= policy.critical_drift_share else "warning",
        metrics={
            "statistic": top,
            "threshold": threshold,
            "alpha": calibration.alpha,
            "drift_share": share,
            "drifted_count": float(len(drifted)),
            "column_count": float(len(tested)),
        },
        drifted_columns=drifted,
    )


def column_drift(name: str, reference: pd.Series, current: pd.Series, policy: DriftPolicy) -> ColumnDrift:
    """Evidently's drift test of one column (``label`` categorical, every other column numeric)."""
    ref = _clean(reference)
    cur = _clean(current)
    if ref.empty or cur.empty:
        raise _Skip("no values in the " + ("reference" if ref.empty else "window"))
    test, column_type, threshold = resolve_stattest(name, ref, cur, policy)
    try:
        result = test(ref, cur, column_type, threshold)
    except (ValueError, ZeroDivisionError, FloatingPointError) as exc:
        raise _Skip(f"{test.name} failed: {exc}") from exc
    score = float(result.drift_score)
    if not math.isfinite(score):
        raise _Skip(f"{test.name} gave a non-finite score")
    return ColumnDrift(name, test.name, score, float(result.actual_threshold), bool(result.drifted))


def resolve_stattest(
    name: str, reference: pd.Series, current: pd.Series, policy: DriftPolicy
) -> tuple[StatTest, ColumnType, float | None]:
    """The Evidently test, column type and threshold (None: the test's default) for one column."""
    if name in _CATEGORICAL:
        return (
            get_stattest(reference, current, ColumnType.Categorical, policy.cat_stattest),
            ColumnType.Categorical,
            (policy.cat_threshold),
        )
    if policy.num_stattest:
        return (
            get_stattest(reference, current, ColumnType.Numerical, policy.num_stattest),
            ColumnType.Numerical,
            (policy.num_threshold),
        )
    test = get_stattest(reference, current, ColumnType.Numerical, None)
    if ColumnType.Numerical not in test.allowed_feature_types:  # few distinct values: see the module docstring
        return (
            get_stattest(reference, current, ColumnType.Numerical, policy.cat_stattest),
            ColumnType.Numerical,
            (policy.cat_threshold),
        )
    return test, ColumnType.Numerical, policy.num_threshold


class _Skip(Exception):
    """A column that cannot be tested in this check (reason in the message)."""


def _clean(series: pd.Series) -> pd.Series:
    if series.dtype == object:
        return series.dropna()
    return series.replace([np.inf, -np.inf], np.nan).dropna()


def _labelled(frame: pd.DataFrame) -> int:
    return int(frame[TRUE_LABEL].notna().sum()) if TRUE_LABEL in frame.columns else 0


def _performance(current: pd.DataFrame, reference: ReferenceSample, policy: DriftPolicy, alpha: float) -> KindResult:
    if TRUE_LABEL not in current.columns:
        return KindResult("performance", None, "warning", {"labelled": 0.0})
    labelled = current[current[TRUE_LABEL].notna()]
    metrics: dict[str, float] = {"labelled": float(len(labelled))}
    if labelled.empty:
        return KindResult("performance", None, "warning", metrics)
    truth = labelled[TRUE_LABEL].to_numpy()
    accuracy, macro_f1 = classification_scores(truth, labelled["label"].to_numpy())
    metrics.update(accuracy=accuracy, macro_f1=macro_f1)
    reference_accuracy = reference.metrics.get("accuracy")
    if reference_accuracy is not None:
        metrics.update(reference_accuracy=reference_accuracy, accuracy_drop=reference_accuracy - accuracy)
    if len(labelled) < policy.min_labelled:
        return KindResult("performance", None, "warning", metrics)

    floors = []
    if policy.min_accuracy is not None:
        floors.append(("accuracy", policy.min_accuracy))
    if policy.max_accuracy_drop is not None and reference_accuracy is not None:
        floors.append(("accuracy_drop", reference_accuracy - policy.max_accuracy_drop))
    correct = int(round(accuracy * len(labelled)))
    upper = accuracy_upper_bound(correct, len(labelled), alpha)
    metrics.update(accuracy_upper_bound=upper, alpha=alpha)
    reasons = [name for name, floor in floors if upper < floor]
    if floors:
        metrics["accuracy_floor"] = max(floor for _, floor in floors)
    if policy.min_macro_f1 is not None and macro_f1 < policy.min_macro_f1:
        reasons.append("macro_f1")
    return KindResult(
        kind="performance",
        detected=bool(reasons),
        severity="critical" if accuracy < policy.critical_accuracy else "warning",
        metrics=metrics,
        drifted_columns=tuple(reasons),
    )


def accuracy_upper_bound(correct: int, labelled: int, alpha: float) -> float:
    """The one-sided ``1 - alpha`` Clopper-Pearson upper bound of an accuracy of ``correct`` out of ``labelled``."""
    if correct >= labelled:
        return 1.0
    return float(beta.ppf(1 - alpha, correct + 1, labelled - correct))


def classification_scores(truth: np.ndarray, predicted: np.ndarray) -> tuple[float, float]:
    """Accuracy and macro-F1 over the labels present in either array (as scikit-learn's defaults)."""
    truth = truth.astype(str)
    predicted = predicted.astype(str)
    accuracy = float(np.mean(truth == predicted))
    f1s = []
    for label in np.union1d(truth, predicted):
        tp = np.sum((predicted == label) & (truth == label))
        fp = np.sum((predicted == label) & (truth != label))
        fn = np.sum((predicted != label) & (truth == label))
        f1s.append(0.0 if tp == 0 else 2 * tp / (2 * tp + fp + fn))
    return accuracy, float(np.mean(f1s))
