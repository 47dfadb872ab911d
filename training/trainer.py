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
from training.evaluation import evaluate
from training.exceptions import TrainingError
from training.servable import runtime

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
    model: runtime.Classifier,
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
    texts = train["text"].tolist()
    features = torch.from_numpy(feature_matrix(train))
    targets = torch.from_numpy(label_ids(train, labels))
    model.scaler.fit(features.numpy())
    model.to(device)

    head_params = [p for name, p in model.named_parameters() if not name.startswith("encoder.")]
    decay = [p for name, p in model.encoder.named_parameters() if p.ndim > 1]
    no_decay = [p for name, p in model.encoder.named_parameters() if p.ndim <= 1]
    optimizer = torch.optim.AdamW(
        [
            {"params": decay, "lr": options.learning_rate, "weight_decay": options.weight_decay},
            {"params": no_decay, "lr": options.learning_rate, "weight_decay": 0.0},
            {"params": head_params, "lr": options.head_learning_rate, "weight_decay": options.weight_decay},
        ]
    )
    steps_per_epoch = math.ceil(len(texts) / options.batch_size)
    # A drift window is small: a few batches per epoch. min_steps adds epochs until the optimiser has taken that many.
    epochs = max(options.epochs, math.ceil(options.min_steps / steps_per_epoch))
    total_steps = steps_per_epoch * epochs
    scheduler = get_linear_schedule_with_warmup(optimizer, int(total_steps * options.warmup_fraction), total_steps)
    generator = torch.Generator().manual_seed(options.seed)
    autocast = device.type == "cuda" and torch.cuda.is_bf16_supported()
    report = FitReport(device=str(device), train_samples=len(train), validation_samples=len(validation))
    best_score, best_state = -1.0, None

    for epoch in range(1, epochs + 1):
        model.train()
        order = torch.randperm(len(texts), generator=generator)
        running, seen = 0.0, 0
        bar = tqdm(total=steps_per_epoch, desc=f"epoch {epoch}/{epochs}", unit="batch",
                   disable=not options.progress, leave=False)  # fmt: skip
        for start in range(0, len(texts), options.batch_size):
            index = order[start : start + options.batch_size]
            ids, mask = text_encoder([texts[i] for i in index.tolist()])
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast):
                logits = model(ids.to(device), mask.to(device), features[index].to(device))
            loss = F.cross_entropy(logits.float(), targets[index].to(device))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            scheduler.step()
            report.steps += 1
            running += loss.item() * len(index)
            seen += len(index)
            bar.set_postfix(loss=f"{running / seen:.4f}")
            bar.update()
        bar.close()
        model.eval()
        predictor = runtime.Predictor(model, text_encoder, labels, runtime.FEATURE_NAMES, device)
        probs = predictor.predict_proba(validation["text"].tolist(), feature_matrix(validation))
        scores = evaluate(probs, label_ids(validation, labels), labels)
        report.epochs.append(
            {"epoch": epoch, "train_loss": running / max(1, seen), "val_loss": scores.log_loss,
             "val_accuracy": scores.accuracy, "val_macro_f1": scores.macro_f1}
        )  # fmt: skip
        log.info(
            "epoch %d/%d: train loss %.4f, validation accuracy %.3f, macro-F1 %.3f",
            epoch, epochs, running / max(1, seen), scores.accuracy, scores.macro_f1,
        )  # fmt: skip
        if scores.macro_f1 > best_score:
            best_score, report.best_epoch = scores.macro_f1, epoch
            best_state = {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}

    model.to("cpu")
    if best_state is not None:
        model.load_state_dict(best_state)
    model.eval()
    report.seconds = time.perf_counter() - started
    return report
