"""Evidently HTML reports of a check, kept under the reports folder with a retention limit.

The report is ``Report([DataDriftPreset(...)])`` run on the same columns, with the same tests and thresholds the check
resolved (``DriftResult.columns``), so the HTML shows the numbers the decision used. Performance figures (accuracy,
macro-F1) are in the drift event and the metrics, not in the HTML: Evidently's classification metrics need the
ground-truth column in the reference, which a reference sample of predictions does not have.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import warnings
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd
from evidently import DataDefinition, Dataset, Report
from evidently.presets import DataDriftPreset

from monitoring.drift import DriftResult
from monitoring.exceptions import ReportError
from monitoring.reference import ReferenceSample

log = logging.getLogger(__name__)

REPORT_GLOB = "drift-*.html"
_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]+")


def build_report(result: DriftResult, current: pd.DataFrame, reference: ReferenceSample, drift_share: float) -> Report:
    """The Evidently report of a check (not yet run): a ``DataDriftPreset`` over the tested columns."""
    columns = list(result.columns)
    return Report(
        [
            DataDriftPreset(
                columns=columns,
                drift_share=drift_share,
                per_column_method={c: d.method for c, d in result.columns.items()},
                per_column_threshold={c: d.threshold for c, d in result.columns.items()},
            )
        ],
        metadata={
            "model": result.model,
            "version": str(result.version),
            "window_size": str(result.window.size),
            "window_labelled": str(result.window.labelled),
            **{f"{kind}_drift": str(k.detected) for kind, k in result.kinds.items()},
            **{
                f"{kind}.{name}": f"{value:.4g}"
                for kind, k in result.kinds.items()
                for name, value in k.metrics.items()
            },
        },
        tags=["driftloop", result.model, f"v{result.version}"],
    )


def save_report(
    result: DriftResult,
    current: pd.DataFrame,
    reference: ReferenceSample,
    reports_dir: Path,
    keep: int,
    drift_share: float = 0.5,
    now: datetime | None = None,
) -> Path:
    """Run the Evidently report of a check and save it as HTML; then keep only the ``keep`` newest reports.

    Returns:
        The report's path: ``<reports_dir>/drift-<model>-v<version>-<UTC time>.html``.

    Raises:
        ReportError: Evidently failed, or the file could not be written.
    """
    now = now or datetime.now(UTC)
    columns = list(result.columns)
    definition = DataDefinition(
        numerical_columns=[c for c in columns if c != "label"],
        categorical_columns=[c for c in columns if c == "label"],
    )
    name = f"drift-{_UNSAFE.sub('_', result.model)}-v{result.version}-{now:%Y%m%dT%H%M%S%fZ}.html"
    path = reports_dir / name
    partial = path.with_suffix(".html.partial")
    try:
        # Evidently's figures divide by the spread of constant columns: numpy warns, the report is fine.
        with warnings.catch_warnings(), np.errstate(all="ignore"):
            warnings.simplefilter("ignore", RuntimeWarning)
            snapshot = build_report(result, current, reference, drift_share).run(
                Dataset.from_pandas(current[columns], data_definition=definition),
                Dataset.from_pandas(reference.frame[columns], data_definition=definition),
                timestamp=now,
                name=f"{result.model} v{result.version} drift",
            )
        reports_dir.mkdir(parents=True, exist_ok=True)
        snapshot.save_html(str(partial))
        os.replace(partial, path)
    except Exception as exc:  # noqa: BLE001 - any failure of Evidently or the disk is a report not saved, not a crash
        with contextlib.suppress(OSError):
            partial.unlink(missing_ok=True)
        raise ReportError(f"cannot save the drift report {path}: {type(exc).__name__}: {exc}") from exc
    prune_reports(reports_dir, keep)
    return path


def prune_reports(reports_dir: Path, keep: int) -> list[Path]:
    """Delete all but the ``keep`` newest ``drift-*.html`` reports; other files are left alone.

    Returns:
        The deleted paths.
    """
    reports = sorted(reports_dir.glob(REPORT_GLOB), key=lambda p: (p.stat().st_mtime_ns, p.name), reverse=True)
    removed = []
    for old in reports[keep:]:
        try:
            old.unlink()
            removed.append(old)
        except FileNotFoundError:
            pass
    if removed:
        log.info("drift reports pruned", extra={"removed": len(removed), "kept": keep, "reports_dir": str(reports_dir)})
    return removed
