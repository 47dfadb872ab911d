"""``fit`` on a few synthetic rows with the tiny encoder: the epoch plan, the report, and the best epoch kept."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from foundation.settings import load_settings
from training import trainer
from training.dataset import bootstrap_dataset, feature_matrix, split_by_time
from training.encoders import initial_model
from training.evaluation import Metrics
from training.servable import runtime
from training.trainer import FitOptions, fit, plan_epochs

pytestmark = pytest.mark.unit


@pytest.mark.parametrize(
    ("rows", "batch_size", "epochs", "min_steps", "plan"),
    [
        (60, 16, 1, 0, (4, 1)),
        (64, 16, 2, 0, (4, 2)),
        (60, 16, 1, 10, (4, 3)),  # whole epochs until at least 10 steps
        (60, 16, 4, 10, (4, 4)),  # the epochs already give more
        (5, 32, 1, 3, (1, 3)),
    ],
)
def test_the_epoch_plan_covers_every_row_and_reaches_min_steps(rows, batch_size, epochs, min_steps, plan) -> None:
    assert plan_epochs(rows, FitOptions(epochs=epochs, min_steps=min_steps, batch_size=batch_size)) == plan


def test_fit_keeps_the_best_validation_epoch_and_ends_on_the_cpu_in_eval_mode(monkeypatch) -> None:
    settings = load_settings(training={"encoder": "tiny"})
    labels = tuple(settings.training.labels)
    train, validation = split_by_time(bootstrap_dataset(settings, samples=40).frame, 0.25)  # 30 rows: 2 batches
    init = initial_model("tiny", len(labels), seed=3)
    encoder = runtime.TextEncoder(init.tokenizer_dir / runtime.TOKENIZER_FILE, 32)
    scripted_f1 = iter([0.4, 0.9, 0.2])  # the second epoch is the best; the last one must not be kept
    after_epoch: list[dict[str, torch.Tensor]] = []

    def scripted_validate(model, text_encoder, frame, labels, device) -> Metrics:
        assert frame is validation
        after_epoch.append({k: v.detach().clone() for k, v in model.state_dict().items()})
        return Metrics(samples=len(frame), accuracy=0.5, macro_f1=next(scripted_f1), log_loss=1.0, per_class={})

    monkeypatch.setattr(trainer, "_validate", scripted_validate)
    options = FitOptions(epochs=3, batch_size=16, learning_rate=3e-3, seed=3, device="cpu", progress=False)

    report = fit(init.model, encoder, train, validation, labels, options)

    assert (report.device, report.train_samples, report.validation_samples) == ("cpu", 30, 10)
    assert report.steps == 6 and report.best_epoch == 2 and report.seconds > 0
    assert [e["val_macro_f1"] for e in report.epochs] == [0.4, 0.9, 0.2]
    assert all(np.isfinite(e["train_loss"]) and e["train_loss"] > 0 for e in report.epochs)
    kept = init.model.state_dict()
    for name, value in kept.items():
        assert value.device.type == "cpu"
        torch.testing.assert_close(value, after_epoch[1][name], rtol=0, atol=0, msg=name)
    assert any(not torch.equal(after_epoch[1][k], after_epoch[2][k]) for k in kept)  # the last epoch did change it
    assert not init.model.training
    expected_mean = init.model.scaler.transform(torch.from_numpy(feature_matrix(train)).double()).mean(dim=0)
    torch.testing.assert_close(init.model.scaler.mean, expected_mean.float())
