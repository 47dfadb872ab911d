"""Fine-tuning: AdamW with linear warm-up and decay, seeded, on the CPU or a CUDA GPU, with a progress bar.

The encoder learns at ``learning_rate`` and the new layers (feature projection, head) at ``head_learning_rate``.
After each epoch the model is scored on the validation set; the best epoch (macro-F1) is kept.
"""

from __future__ import annotations

import logging
import math
import random
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch.nn import functional as F
from tqdm.auto import tqdm
from transformers import get_linear_schedule_with_warmup

from foundation.settings import TrainingSettings
from training.dataset import feature_matrix, label_ids
from training.evaluation import Metrics, evaluate
from training.exceptions import TrainingError
from training.servable import network, runtime

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class FitOptions:
    """How to fine-tune; :meth:`from_settings` reads ``settings.training`` (``DRIFTLOOP_TRAINING__*``)."""

    epochs: int = 2
    min_steps: int = 0
    batch_size: int = 32
    learning_rate: float = 5e-5
    head_learning_rate: float = 1e-3
    weight_decay: float = 0.01
    warmup_fraction: float = 0.1
    seed: int = 0
    device: str = "auto"
    max_seq_len: int = 64
    progress: bool = True

    @classmethod
    def from_settings(cls, training: TrainingSettings, progress: bool = True) -> FitOptions:
        return cls(
            epochs=training.epochs,
            min_steps=training.min_steps,
            batch_size=training.batch_size,
            learning_rate=training.learning_rate,
            head_learning_rate=training.head_learning_rate,
            weight_decay=training.weight_decay,
            warmup_fraction=training.warmup_fraction,
            seed=training.seed,
            device=training.device,
            max_seq_len=training.max_seq_len,
            progress=progress,
        )


@dataclass
class FitReport:
    """What happened during fine-tuning (goes into the version's metadata)."""

    device: str
    train_samples: int
    validation_samples: int
    steps: int = 0
    seconds: float = 0.0
    best_epoch: int = 0
    epochs: list[dict[str, float]] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def resolve_device(name: str) -> torch.device:
    """``"auto"``: the first CUDA device when there is one, else the CPU.

    Raises:
        TrainingError: CUDA was asked for but is not available.
    """
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise TrainingError(f"training device {name!r} asked for, but CUDA is not available")
    return device


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def warm_up() -> None:
    """Take one AdamW step on a scalar: the first step of a process imports torch's compiler stack (~3 s here)."""
    weight = torch.zeros(1, requires_grad=True)
    optimizer = torch.optim.AdamW([weight])
    weight.sum().backward()
    optimizer.step()


def fit(
    model: network.Classifier,
    text_encoder: runtime.TextEncoder,
    train: pd.DataFrame,
    validation: pd.DataFrame,
    labels: tuple[str, ...],
    options: FitOptions,
) -> FitReport:
    """Fine-tune ``model`` in place on ``train``; keep the epoch with the best validation macro-F1.

    The feature scaler's statistics are set from ``train`` first. The model ends on the CPU in eval mode.

    Args:
        model: the classifier (encoder: ``transformers.BertModel``).
        text_encoder: its tokenizer.
        train: labelled rows with features (see :mod:`training.dataset`).
        validation: the holdout, later in time than ``train``.
        labels: the label order of the model's outputs.
        options: see :class:`FitOptions`.

    Returns:
        The report: device, steps, seconds, per-epoch loss and validation scores, best epoch.
    """
    seed_everything(options.seed)
    device = resolve_device(options.device)
    started = time.perf_counter()
    rows = _TrainingRows.of(train, labels)
    model.scaler.fit(rows.features.numpy())
    model.to(device)
    steps_per_epoch, epochs = plan_epochs(len(rows.texts), options)
    stepper = _Stepper.create(model, options, device, total_steps=steps_per_epoch * epochs)
    generator = torch.Generator().manual_seed(options.seed)
    report = FitReport(device=str(device), train_samples=len(train), validation_samples=len(validation))
    best_score, best_state = -1.0, None

    for epoch in range(1, epochs + 1):
        bar = tqdm(
            total=steps_per_epoch,
            desc=f"epoch {epoch}/{epochs}",
            unit="batch",
            disable=not options.progress,
            leave=False,
        )
        train_loss = _train_epoch(
            stepper, text_encoder, rows, torch.randperm(len(rows.texts), generator=generator), options.batch_size, bar
        )
        report.steps += steps_per_epoch
        scores = _validate(model, text_encoder, validation, labels, device)
        _record_epoch(report, epoch, epochs, train_loss, scores)
        if scores.macro_f1 > best_score:
            best_score, report.best_epoch = scores.macro_f1, epoch
            best_state = {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}

    model.to("cpu")
    if best_state is not None:
        model.load_state_dict(best_state)
    model.eval()
    report.seconds = time.perf_counter() - started
    return report


def plan_epochs(rows: int, options: FitOptions) -> tuple[int, int]:
    """Steps per epoch and epochs for ``rows`` training rows: ``options.epochs``, or more to reach ``min_steps``."""
    steps_per_epoch = math.ceil(rows / options.batch_size)
    # A drift window is small: a few batches per epoch. min_steps adds epochs until the optimiser has taken that many.
    return steps_per_epoch, max(options.epochs, math.ceil(options.min_steps / steps_per_epoch))


@dataclass(frozen=True)
class _TrainingRows:
    """The training set as the model takes it: texts, feature matrix, label ids."""

    texts: list[str]
    features: torch.Tensor
    targets: torch.Tensor

    @classmethod
    def of(cls, frame: pd.DataFrame, labels: tuple[str, ...]) -> _TrainingRows:
        return cls(
            frame["text"].tolist(), torch.from_numpy(feature_matrix(frame)), torch.from_numpy(label_ids(frame, labels))
        )


@dataclass(frozen=True)
class _Stepper:
    """One optimisation step: forward (bf16 autocast on a GPU that has it), loss, clipped backward, AdamW, schedule."""

    model: network.Classifier
    optimizer: torch.optim.Optimizer
    scheduler: Any
    device: torch.device
    autocast: bool

    @classmethod
    def create(cls, model: network.Classifier, options: FitOptions, device: torch.device, total_steps: int) -> _Stepper:
        optimizer = _optimizer(model, options)
        warmup = int(total_steps * options.warmup_fraction)
        scheduler = get_linear_schedule_with_warmup(optimizer, warmup, total_steps)
        autocast = device.type == "cuda" and torch.cuda.is_bf16_supported()
        return cls(model, optimizer, scheduler, device, autocast)

    def step(self, ids: torch.Tensor, mask: torch.Tensor, features: torch.Tensor, targets: torch.Tensor) -> float:
        """Take one step on a batch; returns its mean loss."""
        device = self.device
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=self.autocast):
            logits = self.model(ids.to(device), mask.to(device), features.to(device))
        loss = F.cross_entropy(logits.float(), targets.to(device))
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), 1.0)
        self.optimizer.step()
        self.scheduler.step()
        return loss.item()


def _optimizer(model: network.Classifier, options: FitOptions) -> torch.optim.AdamW:
    """AdamW: the encoder at ``learning_rate`` (no weight decay on biases and norms), the new layers at ``head_*``."""
    head_params = [p for name, p in model.named_parameters() if not name.startswith("encoder.")]
    decay = [p for name, p in model.encoder.named_parameters() if p.ndim > 1]
    no_decay = [p for name, p in model.encoder.named_parameters() if p.ndim <= 1]
    return torch.optim.AdamW(
        [
            {"params": decay, "lr": options.learning_rate, "weight_decay": options.weight_decay},
            {"params": no_decay, "lr": options.learning_rate, "weight_decay": 0.0},
            {"params": head_params, "lr": options.head_learning_rate, "weight_decay": options.weight_decay},
        ]
    )


def _train_epoch(
    stepper: _Stepper,
    text_encoder: runtime.TextEncoder,
    rows: _TrainingRows,
    order: torch.Tensor,
    batch_size: int,
    bar: Any,
) -> float:
    """One pass over ``rows`` in ``order``, a step per batch; returns the mean training loss."""
    stepper.model.train()
    running, seen = 0.0, 0
    for start in range(0, len(rows.texts), batch_size):
        index = order[start : start + batch_size]
        ids, mask = (torch.from_numpy(a) for a in text_encoder([rows.texts[i] for i in index.tolist()]))
        running += stepper.step(ids, mask, rows.features[index], rows.targets[index]) * len(index)
        seen += len(index)
        bar.set_postfix(loss=f"{running / seen:.4f}")
        bar.update()
    bar.close()
    return running / max(1, seen)


def _validate(
    model: network.Classifier,
    text_encoder: runtime.TextEncoder,
    validation: pd.DataFrame,
    labels: tuple[str, ...],
    device: torch.device,
) -> Metrics:
    """Score the model (put in eval mode) on the validation rows."""
    model.eval()
    predictor = runtime.Predictor(model, text_encoder, labels, runtime.FEATURE_NAMES, device)
    probs = predictor.predict_proba(validation["text"].tolist(), feature_matrix(validation))
    return evaluate(probs, label_ids(validation, labels), labels)


def _record_epoch(report: FitReport, epoch: int, epochs: int, train_loss: float, scores: Metrics) -> None:
    report.epochs.append(
        {
            "epoch": epoch,
            "train_loss": train_loss,
            "val_loss": scores.log_loss,
            "val_accuracy": scores.accuracy,
            "val_macro_f1": scores.macro_f1,
        }
    )
    log.info(
        "epoch %d/%d: train loss %.4f, validation accuracy %.3f, macro-F1 %.3f",
        epoch,
        epochs,
        train_loss,
        scores.accuracy,
        scores.macro_f1,
    )
