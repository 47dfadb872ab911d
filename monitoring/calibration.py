"""Calibrated drift thresholds: one family-wise rule per drift kind, set on the reference to a false-alarm budget.

Why: testing each column on its own at p < 0.05 and firing when a share of columns drift gives a false flag in about
a third of the checks on clean traffic. Here each kind (``data``: features and text descriptors; ``prediction``:
predicted label and highest score) is decided by ONE statistic, the largest standardised column statistic,

    T = max_j  s_j / (sqrt(1/n_j + 1/m_j) * c_j),

where ``s_j`` is the column's two-sample statistic between reference and window (Kolmogorov-Smirnov distance for
numeric columns, Jensen-Shannon distance for the categorical ``label``: the statistics of the tests Evidently runs,
computed here with numpy), ``n_j`` and ``m_j`` the reference's and window's non-missing counts (dividing by
``sqrt(1/n + 1/m)`` makes the statistic comparable across window sizes), and ``c_j`` the column's null scale (root
mean square of the standardised statistic under the null). The kind drifts when ``T`` exceeds its threshold ``t*``,
the ``1 - alpha`` quantile of ``T`` under the null.

The null is simulated: ``resamples`` pairs (reference, window) are drawn with replacement from the reference rows
(``reference_size`` and ``window_size`` rows; whole rows, so that correlated columns stay correlated), and ``T``
computed on each pair. Resampling both sides gives the null of two independent samples of the same distribution, as a
live window and the reference are: the false-alarm rate holds on average over the draw of the reference (given one
reference it is somewhat above or below). Row draws are multinomial counts over the reference rows, so a
column's statistic is a cumulative sum over its sorted reference values: thousands of resamples take well under a
second per thousand reference rows.

``alpha`` is far below what a few thousand resamples see (1e-5 for the defaults), so the quantile is extrapolated
from the tail: above the ``tail_fraction`` quantile ``u`` of the simulated ``T``, ``T**2 - u**2`` is taken as
exponential (its mean ``theta`` fitted on the exceedances), which is the tail of the Kolmogorov distribution
(``P(K > x) ~ 2 exp(-2 x**2)``) and of a chi-square (the Jensen-Shannon distance squared is about a chi-square
statistic), hence ``t*^2 = u^2 + theta * ln(tail_fraction / alpha)``.

The budget: ``false_alarms_per_30_days`` pages at one check every ``check_interval_s``. A page needs
``hysteresis_checks`` consecutive detections, and the runs of detections behind different pages are disjoint, so
pages <= detections / hysteresis_checks whatever the overlap of successive windows; the budget is split evenly over
the three kinds (Bonferroni). Hence ``alpha = budget * hysteresis_checks / (checks_per_30_days * 3)`` per kind and
check. The performance kind uses the same ``alpha`` in its one-sided binomial test (``monitoring.drift``). The cadence
is ``check_interval_s``: where traffic makes ``check_every_events`` run checks more often, the budget is spent faster
(lower ``false_alarms_per_30_days`` in proportion, or raise ``check_every_events``).

Not controlled here: the reference must look like serving traffic (a reference built from other data than what the
inference worker sees is a real difference, and is flagged as one).

A ``Calibration`` is stored with its version in ``metadata.json`` (``"calibration"``, next to ``"reference"``); the
monitor recomputes it when absent or made for other settings (``Calibration.matches``).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import pandas as pd

from monitoring.exceptions import ReferenceSampleError
from monitoring.reference import PREDICTION_COLUMNS, ReferenceSample, reference_from_metadata

log = logging.getLogger(__name__)

#: Bump when the statistic or the null changes: a stored calibration of another scheme is recomputed.
SCHEME = 1
#: Drift kinds the budget is shared by (data, prediction, performance).
KIND_COUNT = 3
SECONDS_PER_30_DAYS = 30 * 86_400

KS = "ks"
JENSEN_SHANNON = "jensenshannon"
CATEGORICAL_COLUMNS = frozenset({"label"})

# A column constant in the reference has a null scale of 0; this floor keeps its standardised statistic finite, so a
# window where a few per cent of its values differ still counts as drift.
_MIN_SCALE = 0.05
_CHUNK_CELLS = 4_000_000  # resamples x reference rows per chunk: bounds memory to ~100 MB


class CalibrationSettings(Protocol):
    """What calibration reads: ``MonitoringSettings`` or ``monitoring.drift.DriftPolicy``."""

    window_size: int
    check_interval_s: float
    hysteresis_checks: int
    false_alarms_per_30_days: float
    calibration_resamples: int
    calibration_seed: int
    calibration_tail_fraction: float


def check_alpha(settings: CalibrationSettings) -> float:
    """The false-alarm probability allowed per check and kind by the budget (see the module docstring)."""
    checks = SECONDS_PER_30_DAYS / settings.check_interval_s
    alpha = settings.false_alarms_per_30_days * settings.hysteresis_checks / (checks * KIND_COUNT)
    return min(alpha, 0.5)


@dataclass(frozen=True)
class Calibration:
    """A version's calibrated thresholds.

    Attributes:
        alpha: false-alarm probability per check and kind the thresholds are set to.
        window_size: window rows the null was simulated with.
        reference_size: reference rows.
        resamples: simulated (reference, window) pairs.
        seed: the random seed of the simulation.
        tail_fraction: share of the simulated null above which the tail is fitted.
        kinds: column names per kind (``data``, ``prediction``) in the order they were calibrated.
        tests: each column's statistic (``ks`` or ``jensenshannon``).
        scales: each column's null scale ``c_j``.
        thresholds: per kind, ``t*`` on the standardised maximum.
        null_quantiles: per kind, the simulated null's 0.5, 0.9, 0.99 quantiles of ``T`` (for reports).
        duration_s: seconds the calibration took.
        scheme: the calibration scheme (``SCHEME``).
    """

    alpha: float
    window_size: int
    reference_size: int
    resamples: int
    seed: int
    tail_fraction: float
    kinds: dict[str, tuple[str, ...]]
    tests: dict[str, str]
    scales: dict[str, float]
    thresholds: dict[str, float]
    null_quantiles: dict[str, tuple[float, float, float]] = field(default_factory=dict)
    duration_s: float = 0.0
    scheme: int = SCHEME

    def matches(self, settings: CalibrationSettings, reference: ReferenceSample) -> bool:
        """Whether this calibration was made for these settings and this reference (else recalibrate)."""
        return (
            self.scheme == SCHEME
            and self.window_size == settings.window_size
            and self.reference_size == len(reference.frame)
            and math.isclose(self.alpha, check_alpha(settings), rel_tol=1e-6)
            and self.resamples >= settings.calibration_resamples
            and self.kinds == _kind_columns(reference)
        )

    def to_dict(self) -> dict[str, Any]:
        """The JSON form stored in ``metadata.json``."""
        data = asdict(self)
        data["kinds"] = {k: list(v) for k, v in self.kinds.items()}
        data["null_quantiles"] = {k: list(v) for k, v in self.null_quantiles.items()}
        return data

    @classmethod
    def from_dict(cls, data: Any) -> Calibration:
        """Parse the JSON form; raises ``ValueError`` when it is malformed."""
        if not isinstance(data, dict):
            raise ValueError("calibration is not an object")
        try:
            return cls(
                alpha=float(data["alpha"]),
                window_size=int(data["window_size"]),
                reference_size=int(data["reference_size"]),
                resamples=int(data["resamples"]),
                seed=int(data["seed"]),
                tail_fraction=float(data["tail_fraction"]),
                kinds={str(k): tuple(str(c) for c in v) for k, v in data["kinds"].items()},
                tests={str(k): str(v) for k, v in data["tests"].items()},
                scales={str(k): float(v) for k, v in data["scales"].items()},
                thresholds={str(k): float(v) for k, v in data["thresholds"].items()},
                null_quantiles={
                    str(k): tuple(float(x) for x in v)  # type: ignore[misc]
                    for k, v in data.get("null_quantiles", {}).items()
                },
                duration_s=float(data.get("duration_s", 0.0)),
                scheme=int(data.get("scheme", 0)),
            )
        except (KeyError, TypeError, AttributeError) as exc:
            raise ValueError(f"malformed calibration: {exc!r}") from exc


def calibrate(
    reference: ReferenceSample,
    settings: CalibrationSettings,
    *,
    resamples: int | None = None,
    seed: int | None = None,
    alpha: float | None = None,
) -> Calibration:
    """Calibrate the thresholds of ``reference`` for the monitor of ``settings`` (see the module docstring).

    Args:
        reference: the version's reference sample.
        settings: ``window_size``, the budget (``false_alarms_per_30_days``, ``check_interval_s``,
            ``hysteresis_checks``), ``calibration_resamples`` and ``calibration_seed``.
        resamples: override ``calibration_resamples``.
        seed: override ``calibration_seed``.
        alpha: override the alpha derived from the budget.
    """
    started = time.perf_counter()
    resamples = resamples or settings.calibration_resamples
    seed = settings.calibration_seed if seed is None else seed
    alpha = check_alpha(settings) if alpha is None else alpha
    tail_fraction = settings.calibration_tail_fraction
    kinds = _kind_columns(reference)
    frame = reference.frame
    columns = [c for names in kinds.values() for c in names]
    tests = {c: column_test(c) for c in columns}

    z = null_standardised(frame, columns, tests, settings.window_size, resamples, np.random.default_rng(seed))
    scales = {c: max(float(np.sqrt(np.mean(z[c] ** 2))), _MIN_SCALE) for c in columns}
    thresholds: dict[str, float] = {}
    quantiles: dict[str, tuple[float, float, float]] = {}
    for kind, names in kinds.items():
        if not names:
            continue
        t = np.max(np.stack([z[c] / scales[c] for c in names]), axis=0)
        thresholds[kind] = tail_quantile(t, alpha, tail_fraction)
        quantiles[kind] = tuple(float(q) for q in np.quantile(t, [0.5, 0.9, 0.99]))  # type: ignore[assignment]
    return Calibration(
        alpha=alpha,
        window_size=settings.window_size,
        reference_size=len(frame),
        resamples=resamples,
        seed=seed,
        tail_fraction=tail_fraction,
        kinds=kinds,
        tests=tests,
        scales=scales,
        thresholds=thresholds,
        null_quantiles=quantiles,
        duration_s=time.perf_counter() - started,
    )


def version_calibration(metadata: dict[str, Any], settings: CalibrationSettings) -> dict[str, Any] | None:
    """The ``"calibration"`` entry of a version's ``metadata.json`` from its other entries (the training stage calls
    this when it writes the version); None, logged, when its reference cannot be read (the monitor says so too)."""
    try:
        reference = reference_from_metadata(
            metadata, str(metadata.get("model")), int(metadata.get("version") or 0), Path("metadata.json")
        )
    except ReferenceSampleError as exc:
        log.warning("no calibration: the reference cannot be read", extra={"reason": str(exc)})
        return None
    calibration = calibrate(reference, settings)
    log.info(
        "calibration computed",
        extra={
            "model": reference.model,
            "alpha": calibration.alpha,
            "thresholds": calibration.thresholds,
            "duration_s": round(calibration.duration_s, 3),
        },
    )
    return calibration.to_dict()


def stored_calibration(reference: ReferenceSample, settings: CalibrationSettings) -> Calibration | None:
    """The calibration stored with ``reference``'s version when it was made for ``settings``, else None."""
    if reference.calibration is None:
        return None
    try:
        calibration = Calibration.from_dict(reference.calibration)
    except ValueError:
        return None
    return calibration if calibration.matches(settings, reference) else None


def column_test(name: str) -> str:
    """The statistic of a column: Jensen-Shannon for the categorical ``label``, Kolmogorov-Smirnov otherwise."""
    return JENSEN_SHANNON if name in CATEGORICAL_COLUMNS else KS


def tail_quantile(samples: np.ndarray, alpha: float, tail_fraction: float = 0.1) -> float:
    """The ``1 - alpha`` quantile of ``samples``' distribution, extrapolated below ``tail_fraction``.

    Above ``u``, the ``1 - tail_fraction`` quantile, ``x**2 - u**2`` is fitted as exponential (mean of the
    exceedances); an ``alpha`` at or above ``tail_fraction`` is read from the samples.
    """
    samples = np.asarray(samples, dtype="float64")
    if alpha >= tail_fraction:
        return float(np.quantile(samples, 1 - alpha))
    u = float(np.quantile(samples, 1 - tail_fraction))
    exceed = samples[samples > u]
    theta = float(np.mean(exceed**2 - u**2)) if exceed.size else 0.0
    if theta <= 0:  # a degenerate null (every column constant): nothing above u was seen
        return u
    return math.sqrt(u * u + theta * math.log(tail_fraction / alpha))


def standardised(test: str, statistic: float, n_reference: int, n_window: int) -> float:
    """``statistic / sqrt(1/n + 1/m)``: comparable across sample sizes (before the column's null scale)."""
    return statistic / math.sqrt(1.0 / n_reference + 1.0 / n_window)


def column_statistic(test: str, reference: Iterable[Any], window: Iterable[Any]) -> tuple[float, int, int]:
    """A column's statistic between reference and window values, and their non-missing counts.

    Raises:
        ValueError: no value on one side.
    """
    ref = _values(test, reference)
    cur = _values(test, window)
    if not len(ref) or not len(cur):
        raise ValueError("no values in the " + ("reference" if not len(ref) else "window"))
    if test == KS:
        return ks_distance(ref, cur), len(ref), len(cur)
    categories = np.union1d(ref, cur)
    p = np.searchsorted(categories, ref)
    q = np.searchsorted(categories, cur)
    p_counts = np.bincount(p, minlength=len(categories)).astype("float64")
    q_counts = np.bincount(q, minlength=len(categories)).astype("float64")
    return float(js_distance(p_counts[None, :], q_counts[None, :])[0]), len(ref), len(cur)


def ks_distance(reference: np.ndarray, window: np.ndarray) -> float:
    """The two-sample Kolmogorov-Smirnov distance (ties handled exactly)."""
    reference = np.sort(reference)
    window = np.sort(window)
    points = np.concatenate([reference, window])
    cdf_ref = np.searchsorted(reference, points, side="right") / len(reference)
    cdf_win = np.searchsorted(window, points, side="right") / len(window)
    return float(np.max(np.abs(cdf_ref - cdf_win)))


def js_distance(p_counts: np.ndarray, q_counts: np.ndarray) -> np.ndarray:
    """Row-wise Jensen-Shannon distance (natural log, as ``scipy.spatial.distance.jensenshannon``) of count rows."""
    p = p_counts / np.maximum(p_counts.sum(axis=1, keepdims=True), 1e-300)
    q = q_counts / np.maximum(q_counts.sum(axis=1, keepdims=True), 1e-300)
    m = (p + q) / 2
    with np.errstate(divide="ignore", invalid="ignore"):
        kl_p = np.where(p > 0, p * np.log(p / m), 0.0).sum(axis=1)
        kl_q = np.where(q > 0, q * np.log(q / m), 0.0).sum(axis=1)
    return np.sqrt(np.maximum((kl_p + kl_q) / 2, 0.0))


def null_standardised(
    frame: pd.DataFrame,
    columns: list[str],
    tests: dict[str, str],
    window_size: int,
    resamples: int,
    rng: np.random.Generator,
) -> dict[str, np.ndarray]:
    """Each column's standardised statistic (before its null scale) on ``resamples`` simulated null pairs."""
    n = len(frame)
    prepared = {c: _prepare(frame[c], tests[c]) for c in columns}
    out: dict[str, list[np.ndarray]] = {c: [] for c in columns}
    uniform = np.full(n, 1.0 / n)
    chunk = max(1, min(resamples, _CHUNK_CELLS // max(n, 1)))
    done = 0
    while done < resamples:
        size = min(chunk, resamples - done)
        ref_counts = rng.multinomial(n, uniform, size=size).astype("float64")
        win_counts = rng.multinomial(window_size, uniform, size=size).astype("float64")
        for c in columns:
            out[c].append(_boot_statistic(tests[c], prepared[c], ref_counts, win_counts))
        done += size
    return {c: np.concatenate(v) if v else np.zeros(0) for c, v in out.items()}


def _kind_columns(reference: ReferenceSample) -> dict[str, tuple[str, ...]]:
    data = [*reference.feature_names, *reference.descriptor_columns]
    usable = [c for c in data if c in reference.frame.columns and reference.frame[c].notna().any()]
    prediction = [c for c in PREDICTION_COLUMNS if c in reference.frame.columns and reference.frame[c].notna().any()]
    return {"data": tuple(usable), "prediction": tuple(prediction)}


def _values(test: str, values: Iterable[Any]) -> np.ndarray:
    array = values.to_numpy() if isinstance(values, pd.Series) else np.asarray(list(values))
    if test == KS:
        if array.dtype.kind not in "fiub":
            array = pd.to_numeric(pd.Series(array, dtype="object"), errors="coerce").to_numpy()
        array = array.astype("float64", copy=False)
        return array[np.isfinite(array)]
    array = array.astype(object)
    return array[pd.notna(array)].astype(str)


@dataclass(frozen=True)
class _Prepared:
    rows: np.ndarray  # reference row indices with a value, in sorted value order (KS) or any order (JS)
    cuts: np.ndarray  # KS: last position of each distinct value; JS: category code of each row in ``rows``
    categories: int = 0


def _prepare(series: pd.Series, test: str) -> _Prepared:
    if test == KS:
        values = np.asarray(pd.to_numeric(series, errors="coerce"), dtype="float64")
        valid = np.flatnonzero(np.isfinite(values))
        order = valid[np.argsort(values[valid], kind="stable")]
        ordered = values[order]
        cuts = np.flatnonzero(np.r_[ordered[1:] != ordered[:-1], True]) if len(ordered) else np.zeros(0, dtype=int)
        return _Prepared(order, cuts)
    valid = np.flatnonzero(series.notna().to_numpy())
    codes, uniques = pd.factorize(series.iloc[valid].astype(str))
    return _Prepared(valid, np.asarray(codes), len(uniques))


def _boot_statistic(test: str, prepared: _Prepared, ref_counts: np.ndarray, win_counts: np.ndarray) -> np.ndarray:
    ref = ref_counts[:, prepared.rows]
    win = win_counts[:, prepared.rows]
    n_ref = ref.sum(axis=1)
    n_win = win.sum(axis=1)
    ok = (n_ref > 0) & (n_win > 0)
    n_ref_safe = np.where(ok, n_ref, 1.0)
    n_win_safe = np.where(ok, n_win, 1.0)
    if test == KS:
        if not len(prepared.cuts):
            return np.zeros(len(ref))
        cdf_ref = np.cumsum(ref, axis=1)[:, prepared.cuts] / n_ref_safe[:, None]
        cdf_win = np.cumsum(win, axis=1)[:, prepared.cuts] / n_win_safe[:, None]
        statistic = np.max(np.abs(cdf_ref - cdf_win), axis=1)
    else:
        onehot = np.zeros((len(prepared.rows), max(prepared.categories, 1)))
        onehot[np.arange(len(prepared.rows)), prepared.cuts] = 1.0
        statistic = js_distance(ref @ onehot, win @ onehot)
    z = statistic / np.sqrt(1.0 / n_ref_safe + 1.0 / n_win_safe)
    return np.where(ok, z, 0.0)
