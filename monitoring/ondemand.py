"""One drift check now, outside the worker: the tail of the predictions topic against a version's reference."""

from __future__ import annotations

import logging
from pathlib import Path

from foundation.settings import Settings
from monitoring.exceptions import MonitoringError
from monitoring.monitor import CheckOutcome, Monitor
from monitoring.reference import load_reference
from monitoring.sources import read_model_states, read_tail
from streams.schemas import InvalidRecord, Prediction, bounded_time, parse_label, parse_prediction

log = logging.getLogger(__name__)


def check_now(
    settings: Settings,
    model: str | None = None,
    version: int | None = None,
    window_size: int | None = None,
    reports_dir: Path | None = None,
    save_html: bool = True,
) -> CheckOutcome:
    """Check the latest ``window_size`` champion predictions of a model and save the Evidently HTML report.

    Args:
        settings: root settings.
        model: the model name (default ``triton.model_name``).
        version: the version whose reference to compare with (default: the models topic's champion, else the
            highest version among the predictions read).
        window_size: how many recent predictions (default ``monitoring.window_size``).
        reports_dir: where to save the report (default ``monitoring.reports_dir``).
        save_html: save the HTML report.

    Raises:
        MonitoringError: no predictions of the model to check, or no reference for the version.
    """
    model = model or settings.triton.model_name
    window_size = window_size or settings.monitoring.window_size
    overrides = {"window_size": window_size, "min_window": min(window_size, settings.monitoring.min_window)}
    if reports_dir is not None:
        overrides["reports_dir"] = reports_dir
    settings = settings.model_copy(update={"monitoring": settings.monitoring.model_copy(update=overrides)})

    predictions = [p for p in _predictions(settings, window_size) if p.model.name == model and p.role == "champion"]
    if version is None:
        version = read_model_states(settings).get(model)
    if version is None and predictions:
        version = max(p.model.version for p in predictions)
    predictions = sorted((p for p in predictions if p.model.version == version), key=_predicted_at)
    predictions = predictions[-window_size:]
    if not predictions:
        raise MonitoringError(
            f"no champion predictions of {model}"
            + (f" v{version}" if version is not None else "")
            + f" on {settings.kafka.topic('predictions-v1')}"
        )

    load_reference(settings, model, predictions[0].model.version)  # fail early, naming the missing file

    monitor = Monitor(settings)
    monitor.observe_champion(model, predictions[0].model.version)
    wanted = {p.event_id for p in predictions}
    for raw in read_tail(settings, "labels-v1", per_partition=window_size):
        try:
            label = parse_label(raw)
        except InvalidRecord:
            continue
        if label.event_id in wanted:
            monitor.pending_labels.put(label.event_id, label.label)
    for prediction in predictions:
        try:
            monitor.observe_prediction(prediction)
        except MonitoringError:  # UnusableRecord: a label the version does not have
            continue

    outcome = monitor.check(model, force=True, save_html=save_html)
    if outcome is None:  # pragma: no cover - the reference was read above and the window is not empty
        raise MonitoringError(f"the check of {model} could not run")
    return outcome


def _predictions(settings: Settings, window_size: int) -> list[Prediction]:
    """The valid predictions of the topic's tail (invalid ones, and those with an unusable ``predicted_at``, left
    out: they are the worker's dead letters)."""
    predictions = []
    for raw in read_tail(settings, "predictions-v1", per_partition=window_size):
        try:
            prediction = parse_prediction(raw)
            _predicted_at(prediction)
        except (InvalidRecord, ValueError):
            continue
        predictions.append(prediction)
    return predictions


def _predicted_at(prediction: Prediction):
    """``predicted_at`` in UTC; ValueError when it has no time zone or lies out of the contracts' range."""
    return bounded_time(prediction.predicted_at)
