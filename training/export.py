"""Export a trained classifier as a self-contained version folder, and describe it in ``metadata.json``.

A version folder holds ``model.py``, ``runtime.py`` and ``network.py`` (copied from :mod:`training.servable`, with
their bytecode), ``model.safetensors``, ``model.onnx`` (the network as an ONNX graph, :func:`export_graph`),
``encoder_config.json``, ``tokenizer/`` and ``metadata.json``. After writing, the folder is loaded back with the
runtime Triton uses, with each engine (torch, ONNX Runtime), and must give the trained model's probabilities
(:func:`check_export`).

``metadata.json`` (:class:`VersionMetadata`) carries what the inference worker and the drift monitor read:
``labels``, ``feature_names``, ``version``, ``parent_version``, ``metrics``, ``data_window``, ``created_at``,
``trigger_id``, ``code_revision`` and ``reference`` (rows of feature values, ``text_length``, ``word_count``,
``oov_share``, the predicted ``label`` and its ``max_score``), plus ``smoke``: inputs with the probabilities they
give in process, which publishing compares with Triton's answers.
"""

from __future__ import annotations

import json
import logging
import os
import py_compile
import shutil
import subprocess
import uuid
import warnings
from collections.abc import Collection
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from pydantic import BaseModel, ConfigDict, Field
from safetensors.torch import save_file

from foundation.paths import REPO_ROOT
from streams.text_stats import TEXT_STATS_COLUMNS, text_stats
from training.dataset import feature_matrix
from training.encoders import TOKENIZER_FILES
from training.exceptions import ExportError
from training.servable import SERVABLE_DIR, SERVABLE_FILES, network, runtime

FORMAT_VERSION = 1
EXPORT_ATOL = 1e-4


class VersionMetadata(BaseModel):
    """``metadata.json`` of a version (extra keys are kept)."""

    model_config = ConfigDict(extra="allow")

    format: int = FORMAT_VERSION
    model: str
    version: int | None = None
    parent_version: int | None = None
    labels: list[str]
    feature_names: list[str] = Field(default_factory=lambda: list(runtime.FEATURE_NAMES))
    max_seq_len: int
    encoder: dict[str, Any] = Field(default_factory=dict)
    data_window: dict[str, Any] = Field(default_factory=dict)
    samples: dict[str, Any] = Field(default_factory=dict)
    training: dict[str, Any] = Field(default_factory=dict)
    metrics: dict[str, Any] = Field(default_factory=dict)
    champion_metrics: dict[str, Any] | None = None
    trigger_id: str | None = None
    created_at: datetime = Field(default_factory=lambda: datetime.now(UTC))
    code_revision: str = "unknown"
    reference: list[dict[str, Any]] = Field(default_factory=list)
    smoke: dict[str, Any] = Field(default_factory=dict)


def write_metadata(version_dir: Path, metadata: VersionMetadata) -> None:
    """Atomically (re)write ``metadata.json``."""
    path = version_dir / runtime.METADATA_FILE
    partial = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}")
    partial.write_text(metadata.model_dump_json(indent=2) + "\n", encoding="utf-8")
    os.replace(partial, path)


def read_metadata(version_dir: Path) -> VersionMetadata:
    """Parse a version's ``metadata.json``.

    Raises:
        ExportError: missing or invalid.
    """
    path = version_dir / runtime.METADATA_FILE
    try:
        return VersionMetadata.model_validate_json(path.read_bytes())
    except (OSError, ValueError) as exc:
        raise ExportError(f"cannot read {path}: {exc}") from exc


def write_version_files(
    dest: Path, *, encoder_config: dict[str, Any], tokenizer_dir: Path, metadata: VersionMetadata
) -> Path:
    """A new version folder at ``dest`` (which must not exist) with all but the weights and the graph: the servable
    code with its bytecode, ``encoder_config.json``, ``tokenizer/`` and ``metadata.json``.

    Raises:
        ExportError: ``dest`` exists, or a file cannot be written or copied.
    """
    if dest.exists():
        raise ExportError(f"export target {dest} already exists")
    try:
        dest.mkdir(parents=True)
        for name in SERVABLE_FILES:
            shutil.copy2(SERVABLE_DIR / name, dest / name)
            # Bytecode now, not when Triton imports the file: a file appearing in a loaded version's folder makes
            # Triton reload that version at its next load request. (A serving Python of another version still
            # writes its own once.)
            py_compile.compile(str(dest / name), doraise=True)
        (dest / runtime.ENCODER_CONFIG_FILE).write_text(json.dumps(encoder_config, indent=2) + "\n", encoding="utf-8")
        tokenizer = dest / runtime.TOKENIZER_DIR
        tokenizer.mkdir()
        if not (tokenizer_dir / runtime.TOKENIZER_FILE).is_file():
            raise ExportError(f"{tokenizer_dir} has no {runtime.TOKENIZER_FILE}")
        for name in TOKENIZER_FILES:
            if (tokenizer_dir / name).is_file():
                shutil.copy2(tokenizer_dir / name, tokenizer / name)
        write_metadata(dest, metadata)
    except OSError as exc:
        raise ExportError(f"cannot write version folder {dest}: {exc}") from exc
    return dest


def export_version(
    model: network.Classifier,
    *,
    encoder_config: dict[str, Any],
    tokenizer_dir: Path,
    dest: Path,
    metadata: VersionMetadata,
) -> Path:
    """Write a complete version folder at ``dest`` (which must not exist).

    Args:
        model: the trained classifier (any encoder with BertModel parameter names); weights are saved as float32.
        encoder_config: the encoder's BertConfig as a dict.
        tokenizer_dir: folder with ``tokenizer.json`` and, when present, the vocabulary files.
        dest: the new folder.
        metadata: the version's metadata (completed later with metrics, reference and smoke sample).

    Raises:
        ExportError: ``dest`` exists, or a file cannot be written or copied.
    """
    write_version_files(dest, encoder_config=encoder_config, tokenizer_dir=tokenizer_dir, metadata=metadata)
    state = {k: v.detach().to("cpu", torch.float32).contiguous() for k, v in model.state_dict().items()}
    try:
        save_file(state, str(dest / runtime.WEIGHTS_FILE), metadata={"format": "pt"})
        (dest / runtime.WEIGHTS_FILE).chmod(0o644)  # readable by a Triton running as another user
    except OSError as exc:
        raise ExportError(f"cannot write version folder {dest}: {exc}") from exc
    export_graph(dest)
    return dest


# A batch of three texts of another length than three: torch.export would take equal example sizes for one dimension.
_GRAPH_EXAMPLE = ("an example", "a longer example text to trace the network with", "")


def export_graph(version_dir: Path) -> Path:
    """Write ``model.onnx``: the network the runtime loads from the folder's weights, traced by torch's ONNX exporter
    with the batch and the sequence length left free, so that one graph takes every batch the runtime forms.

    Raises:
        ExportError: the folder does not load with torch, or the network cannot be exported or written.
    """
    try:
        predictor = runtime.Predictor.load(version_dir, engine="torch")
    except ValueError as exc:
        raise ExportError(f"the exported version does not load: {exc}") from exc
    ids, mask = (torch.from_numpy(a) for a in predictor.text_encoder(list(_GRAPH_EXAMPLE)))
    features = torch.zeros(len(_GRAPH_EXAMPLE), len(predictor.feature_names))
    batch, length = torch.export.Dim("batch"), torch.export.Dim("length")
    path = version_dir / runtime.ONNX_FILE
    exporter_log = logging.getLogger("torch.onnx")
    level = exporter_log.level
    exporter_log.setLevel(logging.ERROR)  # it warns about every optional operator library it does not find
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            program = torch.onnx.export(
                predictor.model,
                (ids, mask, features),
                input_names=list(runtime.ONNX_INPUTS),
                output_names=[runtime.ONNX_OUTPUT],
                dynamic_shapes=({0: batch, 1: length}, {0: batch, 1: length}, {0: batch}),
                dynamo=True,
                optimize=True,
                verbose=False,
            )
        program.save(str(path), external_data=False)
        path.chmod(0o644)
    except OSError as exc:
        raise ExportError(f"cannot write {path}: {exc}") from exc
    except Exception as exc:  # noqa: BLE001 - the exporter raises many kinds; each means no graph for this version
        raise ExportError(f"cannot export the network to ONNX: {type(exc).__name__}: {exc}") from exc
    finally:
        exporter_log.setLevel(level)
    return path


def engines(version_dir: Path) -> list[str]:
    """The engines whose files a version folder carries: torch (``model.safetensors``), ONNX Runtime (``model.onnx``).
    Neither for a folder whose ``model.py`` is not the runtime's (a model of the user's own with the same contract)."""
    carried = {"torch": runtime.WEIGHTS_FILE, "onnxruntime": runtime.ONNX_FILE}
    return [engine for engine, name in carried.items() if (version_dir / name).is_file()]


def check_engines(
    version_dir: Path, texts: list[str], features: np.ndarray, want: np.ndarray, atol: float, against: str
) -> np.ndarray:
    """Load the folder with each of its :func:`engines`, in process; each must give ``want`` within ``atol``.

    Returns:
        The probabilities of the last engine: the one a CPU instance serves the version with.

    Raises:
        ExportError: the folder does not load with an engine, or a probability differs by more than ``atol``.
    """
    found = engines(version_dir)
    if not found:
        raise ExportError(f"{version_dir} has neither {runtime.WEIGHTS_FILE} nor {runtime.ONNX_FILE}")
    for engine in found:
        try:
            loaded = runtime.Predictor.load(version_dir, engine=engine)
        except ValueError as exc:
            raise ExportError(f"the version does not load with {engine}: {exc}") from exc
        got = loaded.predict_proba(texts, features)
        diff = float(np.max(np.abs(got - want))) if len(got) else 0.0
        if diff > atol:
            raise ExportError(f"the version differs from {against} by {diff:.2e} (> {atol:.0e}) with {engine}")
    return got


def check_export(
    version_dir: Path, trained: runtime.Predictor, frame: pd.DataFrame, atol: float = EXPORT_ATOL
) -> np.ndarray:
    """Compare the exported folder, with each engine it runs on (:func:`check_engines`), with the trained model.

    Returns:
        The exported version's probabilities on ``frame``, from the engine a CPU instance serves it with.

    Raises:
        ExportError: the folder does not load, or a probability differs by more than ``atol``.
    """
    texts, features = frame["text"].tolist(), feature_matrix(frame)
    return check_engines(
        version_dir, texts, features, trained.predict_proba(texts, features), atol, "the trained model"
    )


def smoke_sample(predictor: runtime.Predictor, frame: pd.DataFrame, rows: int = 6) -> dict[str, Any]:
    """Inputs for the smoke requests and the probabilities they give in process (CPU, float32).

    A few holdout rows plus edge cases: an empty text with all-zero features, and a text longer than the encoder's
    window (truncation).
    """
    picked = frame.head(rows)
    texts = [*picked["text"].tolist(), "", " ".join(["word"] * 400) + " é ✓"]
    features = np.concatenate([feature_matrix(picked), np.zeros((1, 6), np.float32), np.full((1, 6), 1e6, np.float32)])
    probs = predictor.predict_proba(texts, features)
    return {"texts": texts, "features": features.tolist(), "probs": probs.tolist()}


def reference_sample(
    frame: pd.DataFrame,
    probs: np.ndarray,
    labels: tuple[str, ...],
    size: int,
    seed: int = 0,
    vocab: Collection[str] | None = None,
) -> list[dict[str, Any]]:
    """The drift monitor's reference: up to ``size`` holdout rows (seeded random pick) with the model's answers.

    Rows have the shape of ``monitoring.reference.reference_row`` (what a prediction becomes in a drift window):
    the six features (None where Feast knew nothing, as predictions report them), the text descriptors of
    :func:`streams.text_stats.text_stats` (``text_length``, ``word_count`` and, with ``vocab``, ``oov_share``), the
    predicted ``label`` and its ``max_score``; plus the ``true_label`` and the ``event_time``.
    """
    rng = np.random.default_rng(seed)
    index = np.sort(rng.choice(len(frame), size=min(size, len(frame)), replace=False))
    rows = []
    for i in index:
        row = frame.iloc[int(i)]
        entry: dict[str, Any] = {
            name: (None if pd.isna(row[name]) else float(row[name])) for name in runtime.FEATURE_NAMES
        }
        entry.update({TEXT_STATS_COLUMNS[k]: v for k, v in text_stats(row["text"], vocab).items()})
        entry.update(
            label=labels[int(np.argmax(probs[i]))],
            max_score=float(np.max(probs[i])),
            true_label=row["label"],
            event_time=pd.Timestamp(row["event_timestamp"]).isoformat(),
        )
        rows.append(entry)
    return rows


def code_revision(root: Path = REPO_ROOT) -> str:
    """``git describe``-like revision of the checkout (``<sha>`` or ``<sha>-dirty``), or ``"unknown"``."""
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, check=True, timeout=10
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=root,
            capture_output=True,
            text=True,
            check=True,
            timeout=10,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return f"{sha}-dirty" if dirty else sha
