"""Fine-tuning and export of the tiny model: it learns, it is seeded, the folder reproduces it, metadata is complete."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

from foundation.settings import load_settings
from training.dataset import bootstrap_dataset, split_by_time
from training.encoders import initial_model, minilm_dir
from training.exceptions import ExportError, TrainingError
from training.export import check_export, engines, export_graph, read_metadata
from training.pipeline import build_version
from training.servable import network, runtime
from training.trainer import FitOptions, fit, resolve_device

pytestmark = pytest.mark.unit

CONTRACT_KEYS = {
    "labels",
    "feature_names",
    "version",
    "parent_version",
    "metrics",
    "data_window",
    "created_at",
    "trigger_id",
    "code_revision",
    "reference",
}


def test_the_tiny_model_learns_the_synthetic_task(tiny_version) -> None:
    metrics = tiny_version.built.metrics
    assert metrics.samples == len(tiny_version.holdout) == 60
    assert metrics.accuracy > 0.9 and metrics.macro_f1 > 0.9
    assert set(metrics.per_class) == {"negative", "neutral", "positive"}


def test_metadata_carries_the_contract_and_lineage(tiny_version) -> None:
    raw = json.loads((tiny_version.path / runtime.METADATA_FILE).read_bytes())
    metadata = read_metadata(tiny_version.path)

    assert CONTRACT_KEYS <= set(raw)
    assert metadata.labels == ["negative", "neutral", "positive"]
    assert metadata.feature_names == list(runtime.FEATURE_NAMES)
    assert (metadata.version, metadata.parent_version, metadata.trigger_id) == (None, None, "test")
    assert metadata.data_window["source"] == "synthetic" and metadata.data_window["start"] < metadata.data_window["end"]
    assert metadata.samples["train"] == 240 and metadata.samples["validation"] == 60
    assert metadata.training["device"] == "cpu" and len(metadata.training["epochs"]) == 3
    assert metadata.metrics["macro_f1"] == tiny_version.built.metrics.macro_f1
    assert metadata.encoder["kind"] == "tiny" and metadata.encoder["hidden_size"] == 64
    assert metadata.code_revision != ""
    row = metadata.reference[0]
    assert len(metadata.reference) == 40
    assert set(row) == {
        *runtime.FEATURE_NAMES,
        "text_length",
        "word_count",
        "oov_share",
        "label",
        "max_score",
        "true_label",
        "event_time",
    }
    assert row["label"] in metadata.labels and 1 / 3 <= row["max_score"] <= 1
    assert 0 <= row["oov_share"] <= 1 and row["word_count"] >= 1 and row["text_length"] >= row["word_count"]
    assert len(metadata.smoke["texts"]) == len(metadata.smoke["probs"]) == len(metadata.smoke["features"])


def test_the_drift_monitor_reads_the_reference(tiny_version) -> None:
    reference = pytest.importorskip("monitoring.reference")
    raw = json.loads((tiny_version.path / runtime.METADATA_FILE).read_bytes())

    sample = reference.reference_from_metadata(raw, "classifier", 1, tiny_version.path / runtime.METADATA_FILE)

    assert len(sample.frame) == 40 and sample.feature_names == runtime.FEATURE_NAMES
    assert set(sample.descriptor_columns) == {"text_length", "word_count", "oov_share"}
    assert sample.frame["max_score"].between(0, 1).all() and set(sample.frame["label"]) <= set(sample.labels)
    assert sample.metrics["macro_f1"] == tiny_version.built.metrics.macro_f1


def test_the_folder_reproduces_the_model_and_a_changed_one_is_caught(tiny_version, tmp_path) -> None:
    holdout = tiny_version.holdout
    trained = runtime.Predictor.load(tiny_version.path)
    check_export(tiny_version.path, trained, holdout)  # the same weights: passes

    changed = tiny_version.copy_to(tmp_path / "changed")
    from safetensors.torch import load_file, save_file

    weights = load_file(str(changed / runtime.WEIGHTS_FILE))
    weights["scaler.mean"] = weights["scaler.mean"] + 3.0
    save_file(weights, str(changed / runtime.WEIGHTS_FILE))
    with pytest.raises(ExportError, match="differs from the trained model by .* with torch"):
        check_export(changed, trained, holdout)
    # A graph traced from other weights than the folder's is caught as well: each engine is checked.
    export_graph(changed)
    shutil.copy2(tiny_version.path / runtime.WEIGHTS_FILE, changed / runtime.WEIGHTS_FILE)
    with pytest.raises(ExportError, match="differs from the trained model by .* with onnxruntime"):
        check_export(changed, trained, holdout)
    (changed / runtime.WEIGHTS_FILE).write_bytes(b"nonsense")
    with pytest.raises(ExportError, match="does not load with torch"):
        check_export(changed, trained, holdout)
    shutil.copy2(tiny_version.path / runtime.WEIGHTS_FILE, changed / runtime.WEIGHTS_FILE)
    assert engines(changed) == ["torch", "onnxruntime"]
    (changed / runtime.ONNX_FILE).unlink()
    assert engines(changed) == ["torch"]
    check_export(changed, trained, holdout)  # a folder exported before graphs existed: its weights are checked
    (changed / runtime.WEIGHTS_FILE).unlink()
    assert engines(changed) == []  # a model.py of the user's own: nothing for the runtime to check
    with pytest.raises(ExportError, match="has neither"):
        check_export(changed, trained, holdout)
    shutil.copy2(tiny_version.path / runtime.WEIGHTS_FILE, changed / runtime.WEIGHTS_FILE)
    shutil.rmtree(changed / runtime.TOKENIZER_DIR)
    with pytest.raises(ValueError, match="tokenizer"):
        runtime.Predictor.load(changed)


def test_training_is_seeded(tmp_path) -> None:
    settings = load_settings(training={"encoder": "tiny", "epochs": 1, "learning_rate": 3e-3})
    frame = bootstrap_dataset(settings, samples=96).frame
    train, validation = split_by_time(frame, 0.25)

    def train_once() -> dict[str, torch.Tensor]:
        init = initial_model("tiny", 3, seed=5)
        encoder = runtime.TextEncoder(init.tokenizer_dir / "tokenizer.json", 32)
        fit(
            init.model,
            encoder,
            train,
            validation,
            settings.training.labels,
            FitOptions(epochs=1, batch_size=16, learning_rate=3e-3, seed=5, progress=False),
        )
        return init.model.state_dict()

    first, second = train_once(), train_once()
    for name, value in first.items():
        torch.testing.assert_close(value, second[name], rtol=0, atol=0, msg=name)


def test_a_small_window_trains_for_min_steps(tmp_path) -> None:
    settings = load_settings(training={"encoder": "tiny"})
    train, validation = split_by_time(bootstrap_dataset(settings, samples=80).frame, 0.25)  # 60 rows: 4 batches

    def steps(epochs: int, min_steps: int) -> tuple[int, int]:
        init = initial_model("tiny", 3, seed=5)
        encoder = runtime.TextEncoder(init.tokenizer_dir / "tokenizer.json", 32)
        report = fit(
            init.model,
            encoder,
            train,
            validation,
            settings.training.labels,
            FitOptions(epochs=epochs, min_steps=min_steps, batch_size=16, progress=False),
        )
        return report.steps, len(report.epochs)

    assert steps(1, 0) == (4, 1)
    assert steps(1, 10) == (12, 3)  # whole epochs until at least 10 steps
    assert steps(4, 10) == (16, 4)  # epochs already give more


def test_a_retrain_warm_starts_from_the_champion_and_compares_on_the_same_holdout(tiny_version, tmp_path) -> None:
    settings = load_settings(training={**tiny_version.settings.training.model_dump(), "epochs": 1, "seed": 9})
    dataset = bootstrap_dataset(settings, samples=120)

    built = build_version(
        settings,
        dataset,
        tmp_path / "v2",
        champion=1,
        champion_dir=tiny_version.path,
        trigger_id="drift-1",
        progress=False,
    )

    metadata = built.metadata
    assert metadata.parent_version == 1 and metadata.encoder["initialised_from_version"] == 1
    assert metadata.encoder["kind"] == "tiny"
    assert metadata.champion_metrics["version"] == 1
    assert metadata.champion_metrics["samples"] == metadata.metrics["samples"] == 24
    assert built.champion_metrics is not None and "vs champion v1" in built.reason


def test_devices_and_encoders() -> None:
    assert resolve_device("cpu").type == "cpu"
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    if not torch.cuda.is_available():
        with pytest.raises(TrainingError, match="CUDA"):
            resolve_device("cuda")
    with pytest.raises(TrainingError, match="unknown encoder"):
        initial_model("huge", 3, 0)
    assert (minilm_dir() / "model.safetensors").is_file()


def test_minilm_loads_offline_with_its_pretrained_weights() -> None:
    init = initial_model("minilm", 3, seed=0)
    assert init.encoder_config["hidden_size"] == 384 and init.encoder_config["num_hidden_layers"] == 6
    from safetensors.torch import load_file

    shipped = load_file(str(minilm_dir() / "model.safetensors"))
    torch.testing.assert_close(
        init.model.encoder.embeddings.word_embeddings.weight, shipped["embeddings.word_embeddings.weight"]
    )
    # The runtime encoder gives the same hidden states as transformers' model for MiniLM.
    encoder = network.BertEncoder(init.encoder_config).eval()
    encoder.load_state_dict(init.model.encoder.state_dict())
    encoded = runtime.TextEncoder(init.tokenizer_dir / "tokenizer.json", 16)(["the order was late", "thanks"])
    tokens = tuple(torch.from_numpy(a) for a in encoded)
    with torch.no_grad():
        want = init.model.encoder.eval()(input_ids=tokens[0], attention_mask=tokens[1]).last_hidden_state
        got = encoder(*tokens)
    keep = tokens[1].bool()
    assert np.abs((got - want)[keep].numpy()).max() < 1e-4
