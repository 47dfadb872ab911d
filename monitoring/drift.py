"""One drift check: a window compared with a reference sample, with Evidently's statistical tests.

Three kinds of drift are measured, each decided on its own:

- ``data``: the numeric features and the text descriptors; drifted when the share of drifted columns reaches
  ``data_drift_share``.
- ``prediction``: the predicted label and the highest score; drifted when their share of drifted columns reaches
  ``prediction_drift_share``.
- ``performance``: accuracy and macro-F1 on the window's labelled predictions; undecided below ``min_labelled``.

The per-column tests are Evidently's (``evidently.legacy.calculations.stattests``, the functions its
``DataDriftPreset`` and ``ValueDrift`` call), chosen as Evidently chooses them, with one change: Evidently's default for
categorical and few-valued numeric columns is its chi-square test, which treats the reference proportions as exact and
so flags drift on most windows much larger than the reference even when nothing changed (measured: 72 % of 10,000-row
windows against a 1,000-row reference of the same distribution). Those columns get ``cat_stattest`` instead
(Jensen-Shannon distance by default), as do numeric columns for which Evidently picks a categorical-only test (its
z-test, for two distinct values), which its ``Report`` would then refuse. The HTML report (``monitoring.report``) is
run with the methods resolved here, so its numbers match the decision's.

A check runs the tests only, without Evidently's ``Report``: building a report renders plotly figures for every column
(about 0.5 s for a 10,000-row window on two cores), which the monitor pays only when a report is saved.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from evidently.legacy.calculations.stattests.registry import StatTest, get_stattest
from evidently.legacy.core import ColumnType

from foundation.settings import MonitoringSettings
from monitoring.exceptions import DriftCheckError
from monitoring.reference import PREDICTION_COLUMNS, ReferenceSample
from monitoring.window import TRUE_LABEL, WindowBounds
from streams.schemas import Kind, Severity

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
class DriftResult:
    """The outcome of one check of a model's window against its serving version's reference."""

    model: str
    version: int
    window: WindowBounds
    reference_size: int
    columns: dict[str, ColumnDrift]
    kinds: dict[Kind, KindResult]
    skipped_columns: dict[str, str] = field(default_factory=dict)
    duration_s: float = 0.0

    def column_scores(self, names: tuple[str, ...] | list[str]) -> dict[str, ColumnDrift]:
        return {n: self.columns[n] for n in names if n in self.columns}


def check_drift(
    current: pd.DataFrame, reference: ReferenceSample, policy: DriftPolicy, window: WindowBounds | None = None
) -> DriftResult:
    """Compare a window frame (``SlidingWindow.frame``) with a reference sample.

    Args:
        current: the window: the reference's feature and descriptor columns, ``label``, ``max_score`` and
            optionally ``true_label``.
        reference: the serving version's reference sample.
        policy: thresholds and test choices.
        window: the window's bounds, reported in the result (derived from ``current`` when omitted).

    Raises:
        DriftCheckError: the window is empty, or no data column can be compared.
    """
    started = time.perf_counter()
    if current.empty:
        raise DriftCheckError(f"{reference.model}: the window is empty")
    window = window or WindowBounds(None, None, len(current), _labelled(current))

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

    data_tested = [columns[n] for n in data_columns if n in columns]
    prediction_tested = [columns[n] for n in PREDICTION_COLUMNS if n in columns]
    kinds: dict[Kind, KindResult] = {
        "data": _share_kind("data", data_tested, policy.data_drift_share, policy),
        "prediction": _share_kind("prediction", prediction_tested, policy.prediction_drift_share, policy),
        "performance": _performance(current, reference, policy),
    }
    return DriftResult(
        model=reference.model,
        version=reference.version,
        window=window,
        reference_size=len(reference.frame),
        columns=columns,
        kinds=kinds,
        skipped_columns=skipped,
        duration_s=time.perf_counter() - started,
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


def _share_kind(kind: Kind, tested: list[ColumnDrift], share_threshold: float, policy: DriftPolicy) -> KindResult:
    if not tested:
        return KindResult(kind, None, "warning", {"column_count": 0.0})
    drifted = tuple(c.column for c in tested if c.drifted)
    share = len(drifted) / len(tested)
    return KindResult(
        kind=kind,
        detected=share >= share_threshold,
        severity="critical" if share >= policy.critical_drift_share else "warning",
        metrics={"drift_share": share, "drifted_count": float(len(drifted)), "column_count": float(len(tested))},
        drifted_columns=drifted,
    )


def _performance(current: pd.DataFrame, reference: ReferenceSample, policy: DriftPolicy) -> KindResult:
    if TRUE_LABEL not in current.columns:
        return KindResult("performance", None, "warning", {"labelled": 0.0})
    labelled = current[current[TRUE_LABEL].notna()]
    metrics: dict[str, float] = {"labelled": float(len(labelled))}
    if labelled.empty:
        return KindResult("performance", None, "warning", metrics)
    accuracy, macro_f1 = classification_scores(labelled[TRUE_LABEL].to_numpy(), labelled["label"].to_numpy())
    metrics.update(accuracy=accuracy, macro_f1=macro_f1)
    reference_accuracy = reference.metrics.get("accuracy")
    if reference_accuracy is not None:
        metrics.update(reference_accuracy=reference_accuracy, accuracy_drop=reference_accuracy - accuracy)
    if len(labelled) < policy.min_labelled:
        return KindResult("performance", None, "warning", metrics)

    reasons = []
    if policy.min_accuracy is not None and accuracy < policy.min_accuracy:
        reasons.append("accuracy")
    if (
        policy.max_accuracy_drop is not None
        and reference_accuracy is not None
        and reference_accuracy - accuracy > policy.max_accuracy_drop
    ):
        reasons.append("accuracy_drop")
    if policy.min_macro_f1 is not None and macro_f1 < policy.min_macro_f1:
        reasons.append("macro_f1")
    return KindResult(
        kind="performance",
        detected=bool(reasons),
        severity="critical" if accuracy < policy.critical_accuracy else "warning",
        metrics=metrics,
        drifted_columns=tuple(reasons),
    )


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
