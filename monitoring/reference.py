"""The reference sample a model version is compared with: read from the version's ``metadata.json``.

``<triton.model_repository>/<model>/<version>/metadata.json`` (written by the training stage) holds, among others::

    {"labels": ["negative", "neutral", "positive"],
     "feature_names": ["amount", "items"],
     "metrics": {"accuracy": 0.93, "macro_f1": 0.92},          # optional: the evaluation of this version
     "reference": [{"amount": 54.6, "items": 3.0, "text_length": 41, "word_count": 7, "oov_share": 0.0,
                    "label": "positive", "max_score": 0.97}, ...],
     "calibration": {...}}                                       # optional: monitoring.calibration.Calibration

``reference_row`` builds one such row from a prediction, so the training stage and the monitor agree on the shape.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from foundation.settings import Settings
from monitoring.exceptions import ReferenceSampleError
from streams.schemas import Prediction
from streams.text_stats import TEXT_STATS_COLUMNS

#: Text descriptor columns of a window and a reference.
DESCRIPTOR_COLUMNS = tuple(TEXT_STATS_COLUMNS.values())
#: Prediction columns: the predicted label (categorical) and the highest score.
PREDICTION_COLUMNS = ("label", "max_score")


@dataclass(frozen=True)
class ReferenceSample:
    """A version's reference rows as a frame with the window's columns.

    Attributes:
        model: the model name.
        version: the model version.
        labels: the model's labels, in output order.
        feature_names: numeric feature columns.
        frame: one row per reference prediction: ``feature_names``, the descriptor columns present, ``label``,
            ``max_score``.
        metrics: the version's evaluation metrics (``accuracy``, ``macro_f1``) when recorded, else empty.
        path: where it was read from.
        calibration: the stored ``Calibration.to_dict()`` of the version's thresholds, when recorded.
    """

    model: str
    version: int
    labels: tuple[str, ...]
    feature_names: tuple[str, ...]
    frame: pd.DataFrame = field(repr=False)
    metrics: dict[str, float]
    path: Path
    calibration: dict[str, Any] | None = field(default=None, repr=False)

    @property
    def descriptor_columns(self) -> tuple[str, ...]:
        return tuple(c for c in DESCRIPTOR_COLUMNS if c in self.frame.columns)


def reference_path(settings: Settings, model: str, version: int) -> Path:
    """``<triton.model_repository>/<model>/<version>/metadata.json``."""
    return settings.triton.model_repository / model / str(version) / "metadata.json"


def load_reference(settings: Settings, model: str, version: int) -> ReferenceSample:
    """Read the reference sample stored with a model version.

    Raises:
        ReferenceSampleError: the file is missing, is not JSON, or lacks a non-empty ``reference`` list; the message
            names the file.
    """
    path = reference_path(settings, model, version)
    try:
        metadata = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ReferenceSampleError(f"no reference for {model} v{version}: {path} does not exist") from None
    except (OSError, ValueError) as exc:
        raise ReferenceSampleError(f"cannot read {path}: {exc}") from exc
    return reference_from_metadata(metadata, model, version, path)


def reference_from_metadata(metadata: Any, model: str, version: int, path: Path) -> ReferenceSample:
    """Build a ``ReferenceSample`` from a parsed ``metadata.json`` (see ``load_reference``)."""
    if not isinstance(metadata, dict):
        raise ReferenceSampleError(f"{path}: metadata is not a JSON object")
    rows = metadata.get("reference")
    if not isinstance(rows, list) or not rows or not all(isinstance(r, dict) for r in rows):
        raise ReferenceSampleError(f"{path}: 'reference' must be a non-empty list of row objects")
    feature_names = metadata.get("feature_names") or []
    labels = metadata.get("labels") or []
    if not all(isinstance(n, str) for n in feature_names) or not all(isinstance(n, str) for n in labels):
        raise ReferenceSampleError(f"{path}: 'feature_names' and 'labels' must be lists of strings")

    frame = pd.DataFrame.from_records(rows)
    if "label" not in frame.columns:
        raise ReferenceSampleError(f"{path}: reference rows have no 'label' (the predicted label)")
    columns = [*feature_names, *(c for c in DESCRIPTOR_COLUMNS if c in frame.columns), *PREDICTION_COLUMNS]
    frame = frame.reindex(columns=columns)
    numeric = [c for c in columns if c != "label"]
    try:
        frame[numeric] = frame[numeric].apply(pd.to_numeric, errors="raise").astype("float64")
    except (ValueError, TypeError) as exc:
        raise ReferenceSampleError(f"{path}: a numeric reference column holds a non-number: {exc}") from exc
    frame["label"] = frame["label"].astype("object")

    metrics_raw = metadata.get("metrics") if isinstance(metadata.get("metrics"), dict) else {}
    metrics = {
        k: float(v)
        for k, v in metrics_raw.items()
        if isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)
    }
    return ReferenceSample(
        model=model,
        version=version,
        labels=tuple(labels),
        feature_names=tuple(feature_names),
        frame=frame,
        metrics=metrics,
        path=path,
        calibration=metadata["calibration"] if isinstance(metadata.get("calibration"), dict) else None,
    )


def reference_row(prediction: Prediction) -> dict[str, Any]:
    """One ``reference`` row of ``metadata.json`` from a prediction (features, text descriptors, label, max score)."""
    row: dict[str, Any] = dict(prediction.features)
    for key, column in TEXT_STATS_COLUMNS.items():
        if prediction.text_stats and key in prediction.text_stats:
            row[column] = prediction.text_stats[key]
    row["label"] = prediction.label
    row["max_score"] = max(prediction.scores.values()) if prediction.scores else None
    return row
