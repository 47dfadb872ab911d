"""The runtime of one classifier version: its preprocessing, its engines and batched prediction.

This file is copied verbatim into every version folder (``<repository>/<model>/<version>/runtime.py``) beside the
Triton ``model.py`` that calls it and ``network.py``, and training calls the very same functions in process to
evaluate an exported version. So a version behaves the same inside and outside Triton, and a version folder is
self-contained.

It imports nothing from driftloop, only the standard library, numpy (1.26 in Triton's serving environment, 2.x in
the workers'), tokenizers, and onnxruntime (when present, for the graph). torch, safetensors and the network
(``network.py``: a plain-torch BERT with the parameter names of ``transformers.BertModel``) are imported only when a
version runs on torch, so a CPU instance serving the graph holds ~60 MB of libraries instead of ~630 and loads in a
fraction of a second. The export checks that every engine gives the trained model's probabilities before a version
can be published.

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

import importlib
import importlib.util
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

WEIGHTS_FILE = "model.safetensors"
NETWORK_FILE = "network.py"
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
PREDICT_BATCH = 64


class InvalidInput(ValueError):
    """A request this model cannot answer. The message goes back in that request's response; others go on."""


def load_network() -> ModuleType:
    """The torch network (``network.py`` beside this file), imported on first use.

    Imported as part of a package (training), it is the package's ``network`` module; loaded by path from a version
    folder (Triton), it is that folder's own file.

    Raises:
        ValueError: the folder has no ``network.py``.
    """
    if __package__:
        return importlib.import_module(f"{__package__}.network")
    name = f"{__name__}_network"
    if name not in sys.modules:
        path = Path(__file__).with_name(NETWORK_FILE)
        if not path.is_file():
            raise ValueError(f"{path} is missing, so this version cannot run on torch")
        spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


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

    def __call__(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """``input_ids`` and ``attention_mask``, int64 ``[texts, longest]``."""
        # encode_batch_fast: the same ids and masks without character offsets (~20 % less CPU on short texts)
        encodings = self.tokenizer.encode_batch_fast(list(texts))
        ids = np.array([e.ids for e in encodings], dtype=np.int64)
        mask = np.array([e.attention_mask for e in encodings], dtype=np.int64)
        return ids, mask


def softmax(logits: np.ndarray) -> np.ndarray:
    """Probabilities over the last axis, in float32."""
    shifted = np.exp(logits.astype(np.float32, copy=False) - logits.max(axis=-1, keepdims=True))
    return shifted / shifted.sum(axis=-1, keepdims=True)


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
    """The version's ONNX graph in an ONNX Runtime session on the CPU: called like the network's ``Classifier``
    with numpy arrays, it returns the logits as a numpy array.

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

    def __call__(self, input_ids: np.ndarray, attention_mask: np.ndarray, features: np.ndarray) -> np.ndarray:
        arrays = (input_ids, attention_mask, np.ascontiguousarray(features, dtype=np.float32))
        (logits,) = self.session.run(None, dict(zip(ONNX_INPUTS, arrays, strict=True)))
        return logits


def _on_cpu(device: Any) -> bool:
    """Whether ``device`` (``"cpu"``, ``"cuda:0"``, a ``torch.device``) is the CPU."""
    return str(device).split(":")[0] == "cpu"


def resolve_engine(engine: str, version_dir: Path | str, device: Any, fp16: bool = False) -> str:
    """The engine that runs a version: ``"torch"`` or ``"onnxruntime"`` (see :data:`ENGINES`).

    Raises:
        ValueError: an unknown engine, or ``"onnxruntime"`` asked where it cannot run (a GPU, float16, no graph).
    """
    if engine not in ENGINES:
        raise ValueError(f"unknown engine {engine!r}; known: {list(ENGINES)}")
    graph = Path(version_dir) / ONNX_FILE
    runnable = _on_cpu(device) and not fp16 and graph.is_file()
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
        model: the network's ``Classifier`` in eval mode on ``device``, or its graph in ONNX Runtime
            (:class:`OnnxClassifier`).
        text_encoder: its tokenizer.
        labels: output order of the probabilities.
        feature_names: input order of the features.
        device: where the model runs (``"cpu"``, ``"cuda:0"`` or a ``torch.device``).
    """

    def __init__(
        self,
        model: Any,
        text_encoder: TextEncoder,
        labels: Sequence[str],
        feature_names: Sequence[str],
        device: Any = "cpu",
    ) -> None:
        self.model = model
        self.text_encoder = text_encoder
        self.labels = tuple(labels)
        self.feature_names = tuple(feature_names)
        self.device = str(device)

    @property
    def engine(self) -> str:
        """``"onnxruntime"`` or ``"torch"``."""
        return "onnxruntime" if isinstance(self.model, OnnxClassifier) else "torch"

    @classmethod
    def load(
        cls,
        version_dir: Path | str,
        device: Any = "cpu",
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
            threads: the engine's threads on a CPU (0: its default, one per core). torch's are the process's, so
                a version loaded on torch with threads sets them for the whole process (a Triton instance is one).

        Raises:
            ValueError: a file is missing or unreadable, the weights do not fit the architecture, or the engine
                cannot run here.
        """
        folder = Path(version_dir)
        target = str(device)
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
            model = OnnxClassifier(folder / ONNX_FILE, threads)
        else:
            model = _load_weights(folder, encoder_config, len(feature_names), len(labels), target, fp16, threads)
        return cls(model, text_encoder, labels, feature_names, target)

    def predict_proba(self, texts: Sequence[str], features: np.ndarray) -> np.ndarray:
        """Probabilities ``[rows, labels]`` (float32, label order of the version) for texts and their features."""
        rows = len(texts)
        values = np.asarray(features, dtype=np.float32).reshape(rows, len(self.feature_names))
        starts = range(0, rows, PREDICT_BATCH)
        if self.engine == "onnxruntime":
            chunks = [
                softmax(self.model(*self.text_encoder(texts[i : i + PREDICT_BATCH]), values[i : i + PREDICT_BATCH]))
                for i in starts
            ]
        else:
            chunks = self._torch_probs(texts, values, starts)
        if not chunks:
            return np.zeros((0, len(self.labels)), dtype=np.float32)
        return np.concatenate(chunks).astype(np.float32, copy=False)

    def _torch_probs(self, texts: Sequence[str], values: np.ndarray, starts: range) -> list[np.ndarray]:
        import torch

        device = torch.device(self.device)
        chunks = []
        with torch.inference_mode():
            for start in starts:
                ids, mask = self.text_encoder(texts[start : start + PREDICT_BATCH])
                feats = np.ascontiguousarray(values[start : start + PREDICT_BATCH])
                tensors = (torch.from_numpy(array).to(device) for array in (ids, mask, feats))
                chunks.append(self.model(*tensors).float().softmax(dim=-1).cpu().numpy())
        return chunks


def _load_weights(
    folder: Path, encoder_config: dict[str, Any], n_features: int, n_labels: int, device: str, fp16: bool, threads: int
) -> Any:
    """The network with the folder's weights, in eval mode on ``device`` (imports torch and ``network.py``)."""
    network = load_network()
    import torch
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    if threads and _on_cpu(device):
        torch.set_num_threads(threads)
    model = network.Classifier(network.BertEncoder(encoder_config), encoder_config["hidden_size"], n_features, n_labels)
    try:
        state = load_file(str(folder / WEIGHTS_FILE), device="cpu")
    except (OSError, SafetensorError) as exc:
        raise ValueError(f"cannot read weights {folder / WEIGHTS_FILE}: {exc}") from exc
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise ValueError(f"weights {folder / WEIGHTS_FILE} do not fit the architecture: {exc}") from exc
    model.eval().to(torch.device(device))
    if fp16:
        model.half_precision()
    return model


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
    """The threads a CPU instance's engine uses: the ``cpu_threads`` parameter of ``config.pbtxt`` (0 or none: the
    engine's default, one per core of the host). Each instance is its own stub process, so the default in every one
    of them oversubscribes the cores, and spinning threads cost more CPU than the model does.

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
