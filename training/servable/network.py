"""The network of a classifier version in plain torch: a BERT encoder with ``transformers.BertModel``'s parameter
names, the feature scaler and the heads.

Copied verbatim into every version folder beside ``runtime.py``, which imports it only when a version runs on torch
(a GPU, or a CPU without the version's ONNX graph): an instance serving the graph with ONNX Runtime never imports
torch (~570 MB and ~3 s per Triton instance here). Training builds, fine-tunes and exports this same network.

It imports nothing from driftloop, only numpy and torch.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

FEATURE_EMBEDDING = 32
SCALED_CLIP = 8.0

_ACTIVATIONS = {
    "gelu": F.gelu,
    "gelu_new": lambda x: F.gelu(x, approximate="tanh"),
    "gelu_pytorch_tanh": lambda x: F.gelu(x, approximate="tanh"),
    "relu": F.relu,
    "silu": F.silu,
}


# --- encoder: BERT in plain torch, parameter names as in transformers.BertModel(add_pooling_layer=False) ---------


class _Embeddings(nn.Module):
    def __init__(self, cfg: dict[str, Any]) -> None:
        super().__init__()
        hidden = cfg["hidden_size"]
        self.word_embeddings = nn.Embedding(cfg["vocab_size"], hidden, padding_idx=cfg.get("pad_token_id", 0))
        self.position_embeddings = nn.Embedding(cfg["max_position_embeddings"], hidden)
        self.token_type_embeddings = nn.Embedding(cfg.get("type_vocab_size", 2), hidden)
        self.LayerNorm = nn.LayerNorm(hidden, eps=cfg.get("layer_norm_eps", 1e-12))

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        positions = torch.arange(input_ids.shape[1], device=input_ids.device)
        embedded = self.word_embeddings(input_ids) + self.position_embeddings(positions)[None]
        # One segment: every token has token type 0, as transformers assumes without token_type_ids.
        return self.LayerNorm(embedded + self.token_type_embeddings.weight[0])


class _SelfAttention(nn.Module):
    def __init__(self, cfg: dict[str, Any]) -> None:
        super().__init__()
        hidden = cfg["hidden_size"]
        self.heads = cfg["num_attention_heads"]
        self.query = nn.Linear(hidden, hidden)
        self.key = nn.Linear(hidden, hidden)
        self.value = nn.Linear(hidden, hidden)

    def forward(self, hidden: torch.Tensor, key_mask: torch.Tensor) -> torch.Tensor:
        batch, length, width = hidden.shape

        def split(x: torch.Tensor) -> torch.Tensor:
            return x.view(batch, length, self.heads, width // self.heads).transpose(1, 2)

        context = F.scaled_dot_product_attention(
            split(self.query(hidden)), split(self.key(hidden)), split(self.value(hidden)), attn_mask=key_mask
        )
        return context.transpose(1, 2).reshape(batch, length, width)


class _DenseNorm(nn.Module):
    def __init__(self, width_in: int, cfg: dict[str, Any]) -> None:
        super().__init__()
        self.dense = nn.Linear(width_in, cfg["hidden_size"])
        self.LayerNorm = nn.LayerNorm(cfg["hidden_size"], eps=cfg.get("layer_norm_eps", 1e-12))

    def forward(self, hidden: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        return self.LayerNorm(self.dense(hidden) + residual)


class _Attention(nn.Module):
    def __init__(self, cfg: dict[str, Any]) -> None:
        super().__init__()
        self.self = _SelfAttention(cfg)
        self.output = _DenseNorm(cfg["hidden_size"], cfg)

    def forward(self, hidden: torch.Tensor, key_mask: torch.Tensor) -> torch.Tensor:
        return self.output(self.self(hidden, key_mask), hidden)


class _Intermediate(nn.Module):
    def __init__(self, cfg: dict[str, Any]) -> None:
        super().__init__()
        self.dense = nn.Linear(cfg["hidden_size"], cfg["intermediate_size"])
        self.activation = _ACTIVATIONS[cfg.get("hidden_act", "gelu")]

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.activation(self.dense(hidden))


class _Layer(nn.Module):
    def __init__(self, cfg: dict[str, Any]) -> None:
        super().__init__()
        self.attention = _Attention(cfg)
        self.intermediate = _Intermediate(cfg)
        self.output = _DenseNorm(cfg["intermediate_size"], cfg)

    def forward(self, hidden: torch.Tensor, key_mask: torch.Tensor) -> torch.Tensor:
        attended = self.attention(hidden, key_mask)
        return self.output(self.intermediate(attended), attended)


class _Layers(nn.Module):
    def __init__(self, cfg: dict[str, Any]) -> None:
        super().__init__()
        self.layer = nn.ModuleList(_Layer(cfg) for _ in range(cfg["num_hidden_layers"]))


class BertEncoder(nn.Module):
    """A BERT encoder (absolute positions, one segment) returning the last hidden states ``[batch, length, hidden]``.

    Args:
        cfg: a ``transformers.BertConfig`` as a dict (``encoder_config.json``).

    Raises:
        ValueError: the configuration asks for something this encoder does not implement.
    """

    def __init__(self, cfg: dict[str, Any]) -> None:
        super().__init__()
        if cfg.get("hidden_act", "gelu") not in _ACTIVATIONS:
            raise ValueError(f"unsupported hidden_act {cfg.get('hidden_act')!r}; known: {sorted(_ACTIVATIONS)}")
        if cfg.get("position_embedding_type", "absolute") != "absolute":
            raise ValueError(f"unsupported position_embedding_type {cfg.get('position_embedding_type')!r}")
        if cfg["hidden_size"] % cfg["num_attention_heads"]:
            raise ValueError("hidden_size must be a multiple of num_attention_heads")
        self.config = dict(cfg)
        self.embeddings = _Embeddings(cfg)
        self.encoder = _Layers(cfg)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        hidden = self.embeddings(input_ids)
        key_mask = attention_mask.bool()[:, None, None, :]  # [batch, 1 (heads), 1 (queries), keys]
        for layer in self.encoder.layer:
            hidden = layer(hidden, key_mask)
        return hidden


# --- the classifier: mean-pooled text encoding + scaled numeric features -> label logits --------------------------


class FeatureScaler(nn.Module):
    """Signed log1p, then standardisation with statistics of the training set (saved with the weights)."""

    def __init__(self, n_features: int) -> None:
        super().__init__()
        self.register_buffer("mean", torch.zeros(n_features))
        self.register_buffer("scale", torch.ones(n_features))

    @staticmethod
    def transform(x: torch.Tensor) -> torch.Tensor:
        return torch.sign(x) * torch.log1p(torch.abs(x))

    def fit(self, features: np.ndarray) -> None:
        """Set the statistics from training features ``[rows, n_features]`` (missing values as 0)."""
        values = self.transform(torch.as_tensor(np.asarray(features, dtype=np.float64)))
        std = values.std(dim=0, unbiased=False) if len(values) > 1 else torch.ones(values.shape[1])
        with torch.no_grad():
            self.mean.copy_(values.mean(dim=0).float() if len(values) else torch.zeros_like(self.mean))
            self.scale.copy_(torch.where(std > 1e-6, std, torch.ones_like(std)).float())

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        # Always in float32: raw counts and seconds overflow float16.
        scaled = (self.transform(features.float()) - self.mean.float()) / self.scale.float()
        return scaled.clamp(-SCALED_CLIP, SCALED_CLIP)


class Classifier(nn.Module):
    """Text encoder + numeric features -> logits over the labels.

    Args:
        encoder: a module called as ``encoder(input_ids=..., attention_mask=...)`` that returns the last hidden
            states, or an object with ``last_hidden_state`` (``transformers.BertModel`` in training,
            :class:`BertEncoder` at inference; their parameter names are the same).
        hidden_size: width of the encoder's hidden states.
        n_features: number of numeric features.
        n_labels: number of labels.
        dropout: dropout of the head (inactive at inference).
    """

    def __init__(self, encoder: nn.Module, hidden_size: int, n_features: int, n_labels: int, dropout: float = 0.1):
        super().__init__()
        self.encoder = encoder
        self.scaler = FeatureScaler(n_features)
        self.features = nn.Sequential(nn.Linear(n_features, FEATURE_EMBEDDING), nn.GELU())
        self.head = nn.Sequential(
            nn.Dropout(dropout),
            nn.Linear(hidden_size + FEATURE_EMBEDDING, hidden_size),
            nn.GELU(),
            nn.Dropout(dropout),
            nn.Linear(hidden_size, n_labels),
        )

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
        hidden = self.encoder(input_ids=input_ids, attention_mask=attention_mask)
        hidden = getattr(hidden, "last_hidden_state", hidden)
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1.0)
        encoded = self.features(self.scaler(features).to(hidden.dtype))
        return self.head(torch.cat([pooled, encoded], dim=-1))

    def half_precision(self) -> Classifier:
        """Cast everything but the feature scaler to float16 (the scaler works on raw values in float32)."""
        self.encoder.half()
        self.features.half()
        self.head.half()
        return self
