"""Evaluation on a holdout: accuracy, macro-F1, log loss and per-class precision / recall / F1.

The candidate and the champion are scored on the same holdout through the same runtime code Triton runs.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd
from pydantic import BaseModel

from training.dataset import feature_matrix, label_ids
from training.exceptions import TrainingError
from training.servable import runtime

log = logging.getLogger(__name__)


class ClassMetrics(BaseModel):
    precision: float
    recall: float
    f1: float
    support: int


class Metrics(BaseModel):
    """Scores of one model on one holdout."""

    samples: int
    accuracy: float
    macro_f1: float
    log_loss: float
    per_class: dict[str, ClassMetrics]


class HoldoutGateRejected(TrainingError):
    """A retrained candidate scored worse than the champion on the same holdout: it is not published."""

    def __init__(self, reason: str, metrics: Metrics, champion_metrics: Metrics) -> None:
        super().__init__(reason)
        self.metrics, self.champion_metrics = metrics, champion_metrics


def evaluate(probs: np.ndarray, y_true: np.ndarray, labels: tuple[str, ...]) -> Metrics:
    """Score probabilities ``[rows, labels]`` against true label indices.

    Macro-F1 averages the F1 of every label, including labels absent from the holdout (F1 0 when predicted,
    excluded when neither true nor predicted anywhere).
    """
    probs = np.asarray(probs, dtype=np.float64)
    y_true = np.asarray(y_true, dtype=np.int64)
    predicted = probs.argmax(axis=1) if len(probs) else np.zeros(0, dtype=np.int64)
    per_class: dict[str, ClassMetrics] = {}
    f1s = []
    for index, label in enumerate(labels):
        true_positive = int(np.sum((predicted == index) & (y_true == index)))
        predicted_count = int(np.sum(predicted == index))
        support = int(np.sum(y_true == index))
        precision = true_positive / predicted_count if predicted_count else 0.0
        recall = true_positive / support if support else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        per_class[label] = ClassMetrics(precision=precision, recall=recall, f1=f1, support=support)
        if support or predicted_count:
            f1s.append(f1)
    rows = len(y_true)
    picked = probs[np.arange(rows), y_true] if rows else np.zeros(0)
    return Metrics(
        samples=rows,
        accuracy=float(np.mean(predicted == y_true)) if rows else 0.0,
        macro_f1=float(np.mean(f1s)) if f1s else 0.0,
        log_loss=float(-np.mean(np.log(np.clip(picked, 1e-12, 1.0)))) if rows else 0.0,
        per_class=per_class,
    )


def evaluate_version(
    version_dir: Path, holdout: pd.DataFrame, labels: tuple[str, ...]
) -> tuple[Metrics, np.ndarray] | None:
    """Load a version with the runtime and score it on ``holdout``.

    Its probabilities are reordered to ``labels`` when it knows the same labels in another order.

    Returns:
        The metrics and the probabilities ``[rows, labels]``; None when the version has another label set or
        cannot be loaded (the reason is logged).
    """
    try:
        predictor = runtime.Predictor.load(version_dir)
    except ValueError as exc:
        log.warning("cannot evaluate %s: %s", version_dir, exc)
        return None
    if set(predictor.labels) != set(labels):
        log.warning("cannot compare with %s: labels %s differ from %s", version_dir, predictor.labels, labels)
        return None
    probs = predictor.predict_proba(holdout["text"].tolist(), feature_matrix(holdout))
    probs = probs[:, [predictor.labels.index(label) for label in labels]]
    return evaluate(probs, label_ids(holdout, labels), labels), probs
