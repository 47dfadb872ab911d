"""One training run: data -> fine-tuning -> export -> evaluation against the champion -> publish -> (promote).

:func:`train_version` is what ``driftloop train`` runs, and what a retrain consumer of the drift topic calls with
the alert's id as ``trigger_id``.
"""

from __future__ import annotations

import logging
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
import torch

from foundation.settings import Settings, TrainingSettings
from monitoring.calibration import version_calibration
from streams.text_stats import load_vocab
from training.dataset import Dataset, DataWindow, bootstrap_dataset, label_ids, load_dataset, split_by_time
from training.encoders import InitialModel, from_version, initial_model
from training.evaluation import HoldoutGateRejected, Metrics, evaluate, evaluate_version
from training.exceptions import DatasetError, TrainingError
from training.export import (
    VersionMetadata,
    check_export,
    code_revision,
    export_version,
    reference_sample,
    smoke_sample,
    write_metadata,
)
from training.publish import Publication, promote, publish_version
from training.registry import ModelState, read_state
from training.repository import ModelRepository
from training.servable import runtime
from training.trainer import FitOptions, FitReport, fit

log = logging.getLogger(__name__)

PromotePolicy = Literal["auto", "if-better", "always", "never"]
PROMOTE_POLICIES: tuple[str, ...] = ("auto", "if-better", "always", "never")


@dataclass(frozen=True)
class TrainingRun:
    """The outcome of :func:`train_version`."""

    publication: Publication
    metadata: VersionMetadata
    metrics: Metrics
    champion_metrics: Metrics | None
    state: ModelState
    promoted: bool
    seconds: float

    @property
    def version(self) -> int:
        return self.publication.version


@dataclass(frozen=True)
class BuiltVersion:
    """A complete version folder, not yet published (``metadata.version`` is still unset)."""

    path: Path
    metadata: VersionMetadata
    metrics: Metrics
    champion_metrics: Metrics | None
    reason: str


def build_version(
    settings: Settings,
    dataset: Dataset,
    dest: Path,
    *,
    champion: int | None = None,
    champion_dir: Path | None = None,
    trigger_id: str | None = None,
    warm_start: bool | None = None,
    progress: bool = True,
) -> BuiltVersion:
    """Fine-tune on ``dataset``, export to ``dest``, score it and the champion on the same holdout.

    Args:
        settings: ``training.*`` (labels, encoder, hyper-parameters, reference size) and the model name.
        dataset: labelled events with features; split by time into train and holdout.
        dest: the version folder to create (must not exist).
        champion: the current champion's number (the parent in the lineage), if any.
        champion_dir: its folder, to warm-start from and to compare with.
        trigger_id: what caused this build.
        warm_start: start from the champion's weights (default ``training.warm_start``).
        progress: show a progress bar.

    Raises:
        DatasetError: too few samples or no time split. ExportError: the export does not reproduce the model.
    """
    config = settings.training
    labels = tuple(config.labels)
    train, holdout = _split(dataset, config.min_samples, config.validation_fraction, labels)
    use_champion = config.warm_start if warm_start is None else warm_start
    init = _initial(settings, champion_dir if use_champion else None, champion)
    fitted = _fine_tune(init, train, holdout, labels, config, progress=progress, source=dataset.source)
    metadata = _draft_metadata(
        settings, dataset, init, fitted, train, holdout, champion=champion, trigger_id=trigger_id
    )
    export_version(
        init.model, encoder_config=init.encoder_config, tokenizer_dir=init.tokenizer_dir, dest=dest, metadata=metadata
    )
    scores = _score(dest, fitted.predictor, holdout, labels, champion_dir)
    metadata = _complete_metadata(metadata, dest, scores, holdout, labels, config, champion=champion)
    # The drift monitor's thresholds, calibrated on the reference now, so the monitor need not at its first check.
    metadata = metadata.model_copy(
        update={"calibration": version_calibration(metadata.model_dump(mode="json"), settings.monitoring)}
    )
    write_metadata(dest, metadata)
    reason = _reason(dataset, len(train), scores, champion=champion, trigger_id=trigger_id)
    return BuiltVersion(dest, metadata, scores.metrics, scores.champion_metrics, reason)


@dataclass(frozen=True)
class _Fitted:
    """The fine-tuned model's encoder settings, training report and in-memory predictor."""

    max_len: int
    report: FitReport
    predictor: runtime.Predictor


@dataclass(frozen=True)
class _Scores:
    """The exported candidate's holdout probabilities and metrics, and the champion's on the same holdout."""

    probs: np.ndarray
    metrics: Metrics
    champion_metrics: Metrics | None


def _split(
    dataset: Dataset, min_samples: int, validation_fraction: float, labels: tuple[str, ...]
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Split ``dataset`` by time into train and holdout, refusing a dataset under ``min_samples`` events."""
    if len(dataset.frame) < min_samples:
        raise DatasetError(
            f"{len(dataset.frame)} labelled events in {dataset.window.as_dict()}; at least {min_samples} needed "
            "(settings.training.min_samples)"
        )
    train, holdout = split_by_time(dataset.frame, validation_fraction)
    if absent := sorted(set(labels) - set(train["label"])):
        log.warning("labels %s have no training example in this window", absent)
    return train, holdout


def _fine_tune(
    init: InitialModel,
    train: pd.DataFrame,
    holdout: pd.DataFrame,
    labels: tuple[str, ...],
    config: TrainingSettings,
    *,
    progress: bool,
    source: str,
) -> _Fitted:
    """Fit ``init.model`` in place on ``train`` (early stopping on ``holdout``)."""
    max_len = min(config.max_seq_len, int(init.encoder_config["max_position_embeddings"]))
    text_encoder = runtime.TextEncoder(init.tokenizer_dir / runtime.TOKENIZER_FILE, max_len)
    log.info("training on %d events, validating on %d (%s, %s)", len(train), len(holdout), init.base, source)
    report = fit(init.model, text_encoder, train, holdout, labels, FitOptions.from_settings(config, progress))
    predictor = runtime.Predictor(init.model, text_encoder, labels, runtime.FEATURE_NAMES, torch.device("cpu"))
    return _Fitted(max_len, report, predictor)


def _draft_metadata(
    settings: Settings,
    dataset: Dataset,
    init: InitialModel,
    fitted: _Fitted,
    train: pd.DataFrame,
    holdout: pd.DataFrame,
    *,
    champion: int | None,
    trigger_id: str | None,
) -> VersionMetadata:
    """The metadata known before export: lineage, encoder, data window, sample counts and the training report."""
    config = settings.training
    return VersionMetadata(
        model=settings.triton.model_name,
        parent_version=champion,
        labels=list(config.labels),
        max_seq_len=fitted.max_len,
        encoder={
            "kind": init.kind,
            "base": init.base,
            "initialised_from_version": init.parent_version,
            **{k: init.encoder_config[k] for k in ("hidden_size", "num_hidden_layers", "vocab_size")},
        },
        data_window={**dataset.window.as_dict(), "source": dataset.source},
        samples={
            "train": len(train),
            "validation": len(holdout),
            "train_per_label": train["label"].value_counts().to_dict(),
            "validation_per_label": holdout["label"].value_counts().to_dict(),
            "dataset": dataset.stats,
        },
        training=fitted.report.as_dict() | {"options": _options(config)},
        trigger_id=trigger_id,
        code_revision=code_revision(),
    )


def _score(
    dest: Path, trained: runtime.Predictor, holdout: pd.DataFrame, labels: tuple[str, ...], champion_dir: Path | None
) -> _Scores:
    """Check the export in ``dest`` reproduces ``trained``, then score it and the champion on ``holdout``."""
    probs = check_export(dest, trained, holdout)
    metrics = evaluate(probs, label_ids(holdout, labels), labels)
    compared = evaluate_version(champion_dir, holdout, labels) if champion_dir is not None else None
    return _Scores(probs, metrics, compared[0] if compared else None)


def _complete_metadata(
    metadata: VersionMetadata,
    dest: Path,
    scores: _Scores,
    holdout: pd.DataFrame,
    labels: tuple[str, ...],
    config: TrainingSettings,
    *,
    champion: int | None,
) -> VersionMetadata:
    """Add the scores, the drift reference sample and the smoke sample of the exported version."""
    champion_metrics = scores.champion_metrics
    vocab = load_vocab(dest / runtime.TOKENIZER_DIR)
    return metadata.model_copy(
        update={
            "metrics": scores.metrics.model_dump(),
            "champion_metrics": {"version": champion, **champion_metrics.model_dump()} if champion_metrics else None,
            "reference": reference_sample(holdout, scores.probs, labels, config.reference_size, config.seed, vocab),
            "smoke": smoke_sample(runtime.Predictor.load(dest), holdout),
        }
    )


def _reason(dataset: Dataset, train_size: int, scores: _Scores, *, champion: int | None, trigger_id: str | None) -> str:
    """The publication reason: data window, holdout score against the champion's, trigger."""
    champion_metrics = scores.champion_metrics
    return (
        f"trained on {train_size} events of {dataset.window.start:%Y-%m-%d %H:%M} .. "
        f"{dataset.window.end:%Y-%m-%d %H:%M} ({dataset.source}); holdout macro-F1 {scores.metrics.macro_f1:.3f}"
        + (f" vs champion v{champion} {champion_metrics.macro_f1:.3f}" if champion_metrics else "")
        + (f"; trigger {trigger_id}" if trigger_id else "")
    )


def train_version(
    settings: Settings,
    *,
    bootstrap: bool = False,
    window: DataWindow | None = None,
    trigger_id: str | None = None,
    promote_policy: PromotePolicy = "auto",
    store: Any | None = None,
    samples: int | None = None,
    progress: bool = True,
    holdout_margin: float | None = None,
) -> TrainingRun:
    """Train, export, evaluate, publish (and maybe promote) a new version of ``settings.triton.model_name``.

    Args:
        settings: everything: ``training.*`` (labels, encoder, hyper-parameters), Kafka, Feast, Triton.
        bootstrap: train on the synthetic bootstrap set (from the base encoder) instead of labelled events from
            Kafka + Feast (warm-started from the champion when ``training.warm_start``).
        window: the events' time window (default: the last ``training.window_days``); ignored with ``bootstrap``.
        trigger_id: what caused this run (a drift alert id); ``"bootstrap"`` by default with ``bootstrap``.
        promote_policy: ``auto``: promote only when there is no champion yet; ``if-better``: also when the
            candidate's macro-F1 on the holdout is at least the champion's; ``always``; ``never``.
        store: the Feast store (default: the one of the settings).
        samples: bootstrap set size (default ``training.bootstrap_samples``).
        progress: show a progress bar while training.
        holdout_margin: the holdout gate: publish only when the candidate's holdout macro-F1 is at least the
            champion's (scored on the same holdout) minus this margin; None: no gate. No champion: no gate.

    Raises:
        HoldoutGateRejected: the gate refused the candidate (nothing was published).
        DatasetError: too little data. ExportError: the export does not reproduce the model.
        VersionRejected: Triton did not load or answer the version. PublishError, RegistryError: see
        :mod:`training.publish`.
    """
    started = time.perf_counter()
    state = read_state(settings)  # fail fast when the models topic is unreachable
    repo = ModelRepository(settings)
    if bootstrap:
        dataset = bootstrap_dataset(settings, samples)
    else:
        dataset = load_dataset(settings, window or DataWindow.last(settings.training.window_days), store)
    staging = repo.staging_dir()
    try:
        built = build_version(
            settings,
            dataset,
            staging,
            champion=state.champion,
            champion_dir=_existing(repo, state.champion),
            trigger_id=trigger_id or ("bootstrap" if bootstrap else None),
            warm_start=False if bootstrap else None,
            progress=progress,
        )
        if holdout_margin is not None:
            holdout_gate(built, holdout_margin)
        publication = publish_version(settings, staging, reason=built.reason)
    finally:
        if staging.exists():  # still here only when publishing did not take it
            shutil.rmtree(staging, ignore_errors=True)

    new_state = publication.state
    promoted = _should_promote(promote_policy, new_state, built.metrics, built.champion_metrics)
    if promoted:
        why = "first version" if new_state.champion is None else f"promote policy {promote_policy}"
        new_state = promote(settings, publication.version, reason=f"{why}: {built.reason}")
    final = built.metadata.model_copy(update={"version": publication.version})
    return TrainingRun(
        publication, final, built.metrics, built.champion_metrics, new_state, promoted, time.perf_counter() - started
    )


def holdout_gate(built: BuiltVersion, margin: float) -> None:
    """Refuse a candidate whose holdout macro-F1 is below the champion's (same holdout) by more than ``margin``.

    Without champion metrics (no champion, or it cannot be scored on these labels) there is nothing to compare.

    Raises:
        HoldoutGateRejected: with both scores in the reason.
    """
    champion = built.champion_metrics
    if champion is None:
        return
    if built.metrics.macro_f1 + margin < champion.macro_f1:
        parent = built.metadata.parent_version
        raise HoldoutGateRejected(
            f"rejected by the holdout gate: candidate macro-F1 {built.metrics.macro_f1:.3f} (accuracy "
            f"{built.metrics.accuracy:.3f}) < champion v{parent} {champion.macro_f1:.3f} (accuracy "
            f"{champion.accuracy:.3f}) - margin {margin:g} on the same {built.metrics.samples} holdout events",
            built.metrics,
            champion,
        )
    log.info(
        "holdout gate passed",
        extra={"macro_f1": built.metrics.macro_f1, "champion_macro_f1": champion.macro_f1, "margin": margin},
    )


def _should_promote(policy: str, state: ModelState, metrics: Metrics, champion: Metrics | None) -> bool:
    if policy == "always":
        return True
    if policy == "never":
        return False
    if state.champion is None:
        return True
    return policy == "if-better" and champion is not None and metrics.macro_f1 >= champion.macro_f1


def _existing(repo: ModelRepository, version: int | None) -> Path | None:
    if version is None:
        return None
    folder = repo.version_dir(version)
    if folder.is_dir():
        return folder
    log.warning("champion version %d has no folder in %s", version, repo.model_dir)
    return None


def _initial(settings: Settings, champion_dir: Path | None, champion: int | None) -> InitialModel:
    config = settings.training
    if champion_dir is not None and champion is not None:
        try:
            return from_version(champion_dir, champion, tuple(config.labels))
        except TrainingError as exc:
            log.warning("warm start from the champion is not possible (%s); starting from %s", exc, config.encoder)
    return initial_model(config.encoder, len(config.labels), config.seed)


def _options(config: Any) -> dict[str, Any]:
    keys = (
        "epochs",
        "min_steps",
        "batch_size",
        "learning_rate",
        "head_learning_rate",
        "weight_decay",
        "warmup_fraction",
        "seed",
        "max_seq_len",
        "validation_fraction",
    )
    return {key: getattr(config, key) for key in keys}
