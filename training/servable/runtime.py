"""The runtime of one classifier version: its network, its preprocessing and batched prediction.

This file is copied verbatim into every version folder (``<repository>/<model>/<version>/runtime.py``) beside the
Triton ``model.py`` that calls it, and training calls the very same functions in process to evaluate an exported
version. So a version behaves the same inside and outside Triton, and a version folder is self-contained.

It imports nothing from driftloop, only the standard library, numpy (1.26 in Triton's serving environment, 2.x in
the workers'), torch, tokenizers and safetensors (and onnxruntime, when present, for the graph). The encoder is a
plain-torch BERT with the parameter names of ``transformers.BertModel``: training fine-tunes transformers' model,
the export saves its weights (and this network's graph), and this module loads them. Importing transformers' BERT
costs ~5 s per Triton model instance on a small CPU; this one costs nothing beyond torch. The export checks that
every engine gives the trained model's probabilities before a version can be published.

A version folder holds:

- ``model.safetensors``: the classifier's weights (encoder, feature scaler statistics, heads), float32;
- ``model.onnx``: the same network as an ONNX graph (ids, mask, features -> logits), which CPU instances run with
  ONNX Runtime when it is installed (MiniLM: about twice torch's speed per core); GPUs run the weights with torch;
- ``encoder_config.json``: the BERT configuration (``transformers.BertConfig`` keys);
- ``tokenizer/tokenizer.json`` (+ the vocabulary files): the tokenizer the encoder was trained with;
- ``metadata.json``: labels, feature names, ``max_seq_len``, lineage, metrics, the drift reference sample and a
  smoke sample (inputs with the probabilities they must give).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

WEIGHTS_FILE = "model.safetensors"
ONNX_FILE = "model.onnx"
ENCODER_CONFIG_FILE = "encoder_config.json"
TOKENIZER_DIR = "tokenizer"
TOKENIZER_FILE = "tokenizer.json"
METADATA_FILE = "metadata.json"

TEXT_INPUT = "TEXT"
FEATURES_INPUT = "FEATURES"
PROBS_OUTPUT = "PROBS"
CPU_THREADS_PARAMETER = "cpu_threads"
CPU_ENGINE_PARAMETER = "cpu_engine"
# What runs a version on the CPU: "auto" is ONNX Runtime when the version has its graph and the environment has
# onnxruntime, else torch. GPUs always run torch (float16).
ENGINES = ("auto", "onnxruntime", "torch")
# The graph's inputs and output, in the order of Classifier.forward.
ONNX_INPUTS = ("input_ids", "attention_mask", "features")
ONNX_OUTPUT = "logits"

# The contract with the inference worker: FEATURES columns, in this order; missing values arrive as 0.
FEATURE_NAMES = (
    "msg_count_1h",
    "msg_count_24h",
    "mean_text_length",
    "seconds_since_last_event",
    "account_age_days",
    "lifetime_events",
)
FEATURE_EMBEDDING = 32
SCALED_CLIP = 8.0
PREDICT_BATCH = 64

_ACTIVATIONS = {
    "gelu": F.gelu,
    "gelu_new": lambda x: F.gelu(x, approximate="tanh"),
    "gelu_pytorch_tanh": lambda x: F.gelu(x, approximate="tanh"),
    "relu": F.relu,
    "silu": F.silu,
}


class InvalidInput(ValueError):
    """A request this model cannot answer. The message goes back in that request's response; others go on."""


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


# --- tokenization ---------------------------------------------------------------------------------------------


class TextEncoder:
    """Tokenizes a batch of texts to ``input_ids`` and ``attention_mask`` (padded to the longest, truncated).

    Args:
        tokenizer_file: a ``tokenizer.json`` (Hugging Face tokenizers format).
        max_length: the longest token sequence, special tokens included.
    """

    def __init__(self, tokenizer_file: Path | str, max_length: int) -> None:
        from tokenizers import Tokenizer

        tokenizer = Tokenizer.from_file(str(tokenizer_file))
        tokenizer.enable_truncation(max_length=max_length)
        pad_token = "[PAD]" if tokenizer.token_to_id("[PAD]") is not None else None
        pad_id = tokenizer.token_to_id(pad_token) if pad_token else 0
        tokenizer.enable_padding(pad_id=pad_id, pad_token=pad_token or "[PAD]")
        self.tokenizer = tokenizer
        self.max_length = max_length

    @property
    def vocab_size(self) -> int:
        return self.tokenizer.get_vocab_size()

    def __call__(self, texts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        encodings = self.tokenizer.encode_batch(list(texts))
        ids = torch.tensor([e.ids for e in encodings], dtype=torch.long)
        mask = torch.tensor([e.attention_mask for e in encodings], dtype=torch.long)
        return ids, mask


# --- a loaded version ------------------------------------------------------------------------------------------


def read_metadata(version_dir: Path | str) -> dict[str, Any]:
    """The version's ``metadata.json`` as a dict.

    Raises:
        ValueError: the file is missing, not JSON, or lacks ``labels``, ``feature_names`` or ``max_seq_len``.
    """
    path = Path(version_dir) / METADATA_FILE
    try:
        metadata = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ValueError(f"cannot read {path}: {exc}") from exc
    missing = [key for key in ("labels", "feature_names", "max_seq_len") if key not in metadata]
    if missing:
        raise ValueError(f"{path} lacks {missing}")
    return metadata


class OnnxClassifier:
    """The version's ONNX graph in an ONNX Runtime session on the CPU: called like :class:`Classifier`, it returns
    the logits as a torch tensor.

    Args:
        path: the ``model.onnx`` file.
        threads: ONNX Runtime's intra-op threads (0: its default, one per physical core).

    Raises:
        ValueError: onnxruntime is not installed, or the file does not load or lacks the classifier's inputs.
    """

    def __init__(self, path: Path | str, threads: int = 0) -> None:
        try:
            import onnxruntime as ort
        except ImportError as exc:
            raise ValueError(f"onnxruntime is not installed, so {path} cannot run") from exc
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        # Idle threads that spin between calls take CPU from the workers and the broker on the same cores.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        options.log_severity_level = 3  # errors only: it warns about every node it leaves on the CPU provider
        try:
            self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        except Exception as exc:  # noqa: BLE001 - onnxruntime raises its own classes for every kind of bad file
            raise ValueError(f"cannot load {path}: {type(exc).__name__}: {exc}") from exc
        inputs = tuple(i.name for i in self.session.get_inputs())
        outputs = tuple(o.name for o in self.session.get_outputs())
        if sorted(inputs) != sorted(ONNX_INPUTS) or outputs != (ONNX_OUTPUT,):
            raise ValueError(
                f"{path} takes {list(inputs)} and gives {list(outputs)}; "
                f"expected {list(ONNX_INPUTS)} and {ONNX_OUTPUT!r}"
            )

    def __call__(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
        feeds = dict(zip(ONNX_INPUTS, (input_ids.numpy(), attention_mask.numpy(), features.numpy()), strict=True))
        (logits,) = self.session.run(None, feeds)
        return torch.from_numpy(logits)


def resolve_engine(engine: str, version_dir: Path | str, device: torch.device, fp16: bool = False) -> str:
    """The engine that runs a version: ``"torch"`` or ``"onnxruntime"`` (see :data:`ENGINES`).

    Raises:
        ValueError: an unknown engine, or ``"onnxruntime"`` asked where it cannot run (a GPU, float16, no graph).
    """
    if engine not in ENGINES:
        raise ValueError(f"unknown engine {engine!r}; known: {list(ENGINES)}")
    graph = Path(version_dir) / ONNX_FILE
    runnable = device.type == "cpu" and not fp16 and graph.is_file()
    if engine == "onnxruntime" and not runnable:
        raise ValueError(
            f"onnxruntime runs a version in float32 on the CPU from its {ONNX_FILE}; "
            f"asked for {device}{' in float16' if fp16 else ''} in {version_dir}"
        )
    if engine != "auto":
        return engine
    if not runnable:
        return "torch"
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        return "torch"
    return "onnxruntime"


class Predictor:
    """One loaded version, ready to predict.

    Args:
        model: the classifier in eval mode on ``device``, or its graph in ONNX Runtime (:class:`OnnxClassifier`).
        text_encoder: its tokenizer.
        labels: output order of the probabilities.
        feature_names: input order of the features.
        device: where the model runs.
    """

    def __init__(
        self,
        model: Classifier | OnnxClassifier,
        text_encoder: TextEncoder,
        labels: Sequence[str],
        feature_names: Sequence[str],
        device: torch.device,
    ) -> None:
        self.model = model
        self.text_encoder = text_encoder
        self.labels = tuple(labels)
        self.feature_names = tuple(feature_names)
        self.device = device

    @property
    def engine(self) -> str:
        """``"onnxruntime"`` or ``"torch"``."""
        return "onnxruntime" if isinstance(self.model, OnnxClassifier) else "torch"

    @classmethod
    def load(
        cls,
        version_dir: Path | str,
        device: str | torch.device = "cpu",
        fp16: bool = False,
        engine: str = "auto",
        threads: int = 0,
    ) -> Predictor:
        """Load a version folder.

        Args:
            version_dir: the folder (weights, graph, encoder config, tokenizer, metadata).
            device: ``"cpu"`` or ``"cuda:<id>"``.
            fp16: run the encoder and heads in float16 (for GPUs).
            engine: one of :data:`ENGINES`; ``"auto"`` runs the graph with ONNX Runtime on a CPU where it can.
            threads: ONNX Runtime's threads (0: one per core); torch's are the process's own setting.

        Raises:
            ValueError: a file is missing or unreadable, the weights do not fit the architecture, or the engine
                cannot run here.
        """
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        folder = Path(version_dir)
        target = torch.device(device)
        engine = resolve_engine(engine, folder, target, fp16)
        metadata = read_metadata(folder)
        try:
            encoder_config = json.loads((folder / ENCODER_CONFIG_FILE).read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise ValueError(f"cannot read {folder / ENCODER_CONFIG_FILE}: {exc}") from exc
        labels, feature_names = metadata["labels"], metadata["feature_names"]
        max_length = min(int(metadata["max_seq_len"]), int(encoder_config["max_position_embeddings"]))
        tokenizer_file = folder / TOKENIZER_DIR / TOKENIZER_FILE
        if not tokenizer_file.is_file():
            raise ValueError(f"tokenizer {tokenizer_file} is missing")
        text_encoder = TextEncoder(tokenizer_file, max_length)
        if text_encoder.vocab_size > encoder_config["vocab_size"]:
            raise ValueError(
                f"tokenizer has {text_encoder.vocab_size} tokens, the encoder only {encoder_config['vocab_size']}"
            )
        if engine == "onnxruntime":
            return cls(OnnxClassifier(folder / ONNX_FILE, threads), text_encoder, labels, feature_names, target)
        model = Classifier(BertEncoder(encoder_config), encoder_config["hidden_size"], len(feature_names), len(labels))
        try:
            state = load_file(str(folder / WEIGHTS_FILE), device="cpu")
        except (OSError, SafetensorError) as exc:
            raise ValueError(f"cannot read weights {folder / WEIGHTS_FILE}: {exc}") from exc
        try:
            model.load_state_dict(state, strict=True)
        except RuntimeError as exc:
            raise ValueError(f"weights {folder / WEIGHTS_FILE} do not fit the architecture: {exc}") from exc
        model.eval().to(target)
        if fp16:
            model.half_precision()
        return cls(model, text_encoder, labels, feature_names, target)

    def predict_proba(self, texts: Sequence[str], features: np.ndarray) -> np.ndarray:
        """Probabilities ``[rows, labels]`` (float32, label order of the version) for texts and their features."""
        rows = len(texts)
        values = np.asarray(features, dtype=np.float32).reshape(rows, len(self.feature_names))
        chunks = []
        with torch.inference_mode():
            for start in range(0, rows, PREDICT_BATCH):
                ids, mask = self.text_encoder(texts[start : start + PREDICT_BATCH])
                feats = torch.from_numpy(np.ascontiguousarray(values[start : start + PREDICT_BATCH]))
                logits = self.model(ids.to(self.device), mask.to(self.device), feats.to(self.device))
                chunks.append(logits.float().softmax(dim=-1).cpu())
        if not chunks:
            return np.zeros((0, len(self.labels)), dtype=np.float32)
        return torch.cat(chunks).numpy().astype(np.float32, copy=False)


# --- request handling (what Triton's execute does, testable without Triton) ------------------------------------


def decode_texts(array: Any) -> list[str]:
    """Texts from a ``TEXT`` tensor (``[rows, 1]`` of UTF-8 bytes; str accepted).

    Raises:
        InvalidInput: the tensor is missing or a value is not valid UTF-8.
    """
    if array is None:
        raise InvalidInput(f"input {TEXT_INPUT} is missing")
    values = np.asarray(array, dtype=object).reshape(-1)
    texts = []
    for row, value in enumerate(values):
        if isinstance(value, bytes):
            try:
                texts.append(value.decode("utf-8"))
            except UnicodeDecodeError as exc:
                reason = f"{TEXT_INPUT} row {row} is not valid UTF-8 ({exc.reason} at byte {exc.start})"
                raise InvalidInput(reason) from None
        elif isinstance(value, str):
            texts.append(value)
        else:
            raise InvalidInput(f"{TEXT_INPUT} row {row} is {type(value).__name__}, not UTF-8 bytes")
    return texts


def check_features(array: Any, rows: int, n_features: int) -> np.ndarray:
    """Features from a ``FEATURES`` tensor as float32 ``[rows, n_features]``.

    Raises:
        InvalidInput: missing, wrong shape, or a value is NaN or infinite (missing values must be sent as 0).
    """
    if array is None:
        raise InvalidInput(f"input {FEATURES_INPUT} is missing")
    values = np.asarray(array, dtype=np.float32)
    if values.shape != (rows, n_features):
        raise InvalidInput(f"{FEATURES_INPUT} has shape {list(values.shape)}; expected [{rows}, {n_features}]")
    finite = np.isfinite(values).all(axis=1)
    if not finite.all():
        bad = [int(i) for i in np.flatnonzero(~finite)[:5]]
        raise InvalidInput(f"{FEATURES_INPUT} rows {bad} hold NaN or infinity; send 0 for a missing value")
    return values


def run_requests(predictor: Predictor, requests: Sequence[tuple[Any, Any]]) -> list[np.ndarray | Exception]:
    """Answer a batch of requests: one result per request, in order; a bad request never fails the others.

    Valid requests run through the model together (one forward pass per ``PREDICT_BATCH`` rows).

    Args:
        predictor: the loaded version.
        requests: ``(text_array, features_array)`` per request, as Triton hands them over.

    Returns:
        Per request, the float32 probabilities ``[rows, labels]``, or the exception that explains its failure
        (:class:`InvalidInput` for bad inputs).
    """
    results: list[np.ndarray | Exception | None] = [None] * len(requests)
    valid: list[tuple[int, list[str], np.ndarray]] = []
    for index, (text_array, features_array) in enumerate(requests):
        try:
            texts = decode_texts(text_array)
            features = check_features(features_array, len(texts), len(predictor.feature_names))
        except InvalidInput as exc:
            results[index] = exc
            continue
        valid.append((index, texts, features))
    if valid:
        texts = [text for _, request_texts, _ in valid for text in request_texts]
        features = np.concatenate([request_features for _, _, request_features in valid])
        try:
            probs = predictor.predict_proba(texts, features)
        except Exception as exc:  # noqa: BLE001 - the failure is reported in each response, never raised
            for index, _, _ in valid:
                results[index] = RuntimeError(f"inference failed: {type(exc).__name__}: {exc}")
        else:
            start = 0
            for index, request_texts, _ in valid:
                results[index] = np.ascontiguousarray(probs[start : start + len(request_texts)])
                start += len(request_texts)
    return results  # type: ignore[return-value]


def cpu_threads(model_config: dict[str, Any]) -> int:
    """The torch threads a CPU instance uses: the ``cpu_threads`` parameter of ``config.pbtxt`` (0 or none: torch's
    default, one per core of the host).

    Raises:
        ValueError: the parameter is not a whole number >= 0.
    """
    raw = model_config.get("parameters", {}).get(CPU_THREADS_PARAMETER, {}).get("string_value", "0")
    try:
        threads = int(raw)
    except ValueError:
        threads = -1
    if threads < 0:
        raise ValueError(f"config.pbtxt parameter {CPU_THREADS_PARAMETER} is {raw!r}; it needs a whole number >= 0")
    return threads


def cpu_engine(model_config: dict[str, Any]) -> str:
    """The engine of a CPU instance: the ``cpu_engine`` parameter of ``config.pbtxt`` (none: ``"auto"``).

    Raises:
        ValueError: the parameter is not one of :data:`ENGINES`.
    """
    engine = model_config.get("parameters", {}).get(CPU_ENGINE_PARAMETER, {}).get("string_value", "auto")
    if engine not in ENGINES:
        raise ValueError(
            f"config.pbtxt parameter {CPU_ENGINE_PARAMETER} is {engine!r}; it needs one of {list(ENGINES)}"
        )
    return engine


def check_model_config(model_config: dict[str, Any], labels: Sequence[str], feature_names: Sequence[str]) -> None:
    """Check Triton's model configuration (parsed ``config.pbtxt``) against this version.

    Raises:
        ValueError: an input or output is missing or has another type or shape than this version needs.
    """
    expected_inputs = {TEXT_INPUT: ("TYPE_STRING", [1]), FEATURES_INPUT: ("TYPE_FP32", [len(feature_names)])}
    expected_outputs = {PROBS_OUTPUT: ("TYPE_FP32", [len(labels)])}
    for section, expected in (("input", expected_inputs), ("output", expected_outputs)):
        declared = {item["name"]: item for item in model_config.get(section, [])}
        for name, (data_type, dims) in expected.items():
            item = declared.get(name)
            if item is None:
                raise ValueError(f"config.pbtxt declares no {section} {name}")
            got_dims = [int(d) for d in item.get("dims", [])]
            if item.get("data_type") != data_type or got_dims != dims:
                raise ValueError(
                    f"config.pbtxt {section} {name} is {item.get('data_type')} {got_dims}; "
                    f"this version needs {data_type} {dims}"
                )
