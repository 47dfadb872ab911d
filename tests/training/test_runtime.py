"""The runtime every version carries: the BERT encoder, prediction, per-request errors, config checks."""

from __future__ import annotations

import ast
import importlib.util
import json

import numpy as np
import pytest
import torch
from transformers import BertConfig, BertModel

from training.dataset import feature_matrix
from training.repository import render_config
from training.servable import SERVABLE_DIR, SERVABLE_FILES, network, runtime

pytestmark = pytest.mark.unit


def test_the_encoder_matches_transformers_bert_with_padding() -> None:
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=500,
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=96,
        max_position_embeddings=40,
    )
    reference = BertModel(config, add_pooling_layer=False).eval()
    encoder = network.BertEncoder(config.to_dict()).eval()
    encoder.load_state_dict(reference.state_dict(), strict=True)
    ids = torch.randint(1, 500, (3, 17))
    mask = torch.ones_like(ids)
    mask[1, 9:] = 0
    mask[2, 3:] = 0

    with torch.no_grad():
        want = reference(input_ids=ids, attention_mask=mask).last_hidden_state
        got = encoder(input_ids=ids, attention_mask=mask)

    keep = mask.bool()
    torch.testing.assert_close(got[keep], want[keep], atol=2e-5, rtol=1e-4)


def test_the_encoder_refuses_what_it_does_not_implement() -> None:
    base = {
        "vocab_size": 10,
        "hidden_size": 8,
        "num_hidden_layers": 1,
        "num_attention_heads": 2,
        "intermediate_size": 8,
        "max_position_embeddings": 8,
    }
    with pytest.raises(ValueError, match="hidden_act"):
        network.BertEncoder({**base, "hidden_act": "swishy"})
    with pytest.raises(ValueError, match="position_embedding_type"):
        network.BertEncoder({**base, "position_embedding_type": "relative_key"})


def test_the_scaler_is_finite_for_huge_and_negative_values_and_fp16() -> None:
    scaler = network.FeatureScaler(2)
    scaler.fit(np.array([[0, 10], [5, 1000], [10, 100000]], dtype=np.float32))
    out = scaler(torch.tensor([[1e30, -50.0], [0.0, 0.0]]).half())
    assert out.dtype == torch.float32 and torch.isfinite(out).all()
    assert out.abs().max() <= network.SCALED_CLIP


def test_texts_are_decoded_or_refused_per_row() -> None:
    good = np.array([[b"caf\xc3\xa9"], [b""], ["already text"]], dtype=object)
    assert runtime.decode_texts(good) == ["café", "", "already text"]
    with pytest.raises(runtime.InvalidInput, match="row 1 is not valid UTF-8"):
        runtime.decode_texts(np.array([[b"ok"], [b"\xff"]], dtype=object))
    with pytest.raises(runtime.InvalidInput, match="int"):
        runtime.decode_texts(np.array([[3]], dtype=object))
    with pytest.raises(runtime.InvalidInput, match="missing"):
        runtime.decode_texts(None)


def test_features_are_checked_for_shape_and_finite_values() -> None:
    assert runtime.check_features(np.ones((2, 6)), 2, 6).dtype == np.float32
    with pytest.raises(runtime.InvalidInput, match=r"shape \[2, 5\]; expected \[2, 6\]"):
        runtime.check_features(np.ones((2, 5)), 2, 6)
    bad = np.ones((3, 6), np.float32)
    bad[2, 4] = np.inf
    with pytest.raises(runtime.InvalidInput, match=r"rows \[2\] hold NaN or infinity"):
        runtime.check_features(bad, 3, 6)


def test_a_batch_answers_every_request_even_when_some_are_bad(tiny_version) -> None:
    predictor = runtime.Predictor.load(tiny_version.path)
    holdout = tiny_version.holdout.head(5)
    texts = np.array([[t.encode()] for t in holdout["text"]], dtype=object)
    features = feature_matrix(holdout)
    nan = features[:1].copy()
    nan[0, 0] = np.nan

    results = runtime.run_requests(
        predictor,
        [
            (texts[:2], features[:2]),
            (np.array([[b"\xc3"]], dtype=object), features[:1]),
            (texts[2:3], nan),
            (texts[2:], features[2:]),
            (texts[:1], features[:2]),
        ],
    )

    expected = predictor.predict_proba(holdout["text"].tolist(), features)
    np.testing.assert_allclose(results[0], expected[:2], atol=1e-6)
    assert isinstance(results[1], runtime.InvalidInput) and "UTF-8" in str(results[1])
    assert isinstance(results[2], runtime.InvalidInput) and "NaN" in str(results[2])
    np.testing.assert_allclose(results[3], expected[2:], atol=1e-6)
    assert isinstance(results[4], runtime.InvalidInput) and "shape" in str(results[4])
    assert results[0].dtype == np.float32 and results[0].flags["C_CONTIGUOUS"]


def test_an_inference_failure_is_reported_per_request_not_raised(tiny_version) -> None:
    predictor = runtime.Predictor.load(tiny_version.path)

    def explode(*_: object) -> None:
        raise RuntimeError("device lost")

    predictor.predict_proba = explode  # type: ignore[method-assign]
    results = runtime.run_requests(predictor, [(np.array([[b"a"]], dtype=object), np.zeros((1, 6)))] * 2)
    assert [str(r) for r in results] == ["inference failed: RuntimeError: device lost"] * 2


def test_predictions_are_probabilities_in_label_order(tiny_version) -> None:
    predictor = runtime.Predictor.load(tiny_version.path)
    assert predictor.labels == ("negative", "neutral", "positive")
    probs = predictor.predict_proba(["awful rude refund", "great love thanks", ""] * 30, np.zeros((90, 6)))
    assert probs.shape == (90, 3) and probs.dtype == np.float32
    np.testing.assert_allclose(probs.sum(axis=1), 1, atol=1e-5)
    assert predictor.predict_proba([], np.zeros((0, 6))).shape == (0, 3)


def _triton_config(text: str) -> dict:
    """The JSON Triton hands to initialize for a config.pbtxt (only the parts the check reads)."""
    import re

    def section(name: str) -> list[dict]:
        block = re.search(rf"{name} \[(.*?)\n\]", text, re.S).group(1)
        return [
            {"name": n, "data_type": t, "dims": [d.strip() for d in dims.split(",")]}
            for n, t, dims in re.findall(r'name: "(\w+)" data_type: (\w+) dims: \[ ([\d, ]+) \]', block)
        ]

    return {"input": section("input"), "output": section("output")}


def test_the_config_check_accepts_the_rendered_config_and_names_mismatches() -> None:
    labels, names = ("a", "b", "c"), runtime.FEATURE_NAMES
    runtime.check_model_config(_triton_config(render_config("m", 3, [1])), labels, names)
    with pytest.raises(ValueError, match=r"output PROBS is TYPE_FP32 \[4\]; this version needs TYPE_FP32 \[3\]"):
        runtime.check_model_config(_triton_config(render_config("m", 4, [1])), labels, names)
    with pytest.raises(ValueError, match="no input FEATURES"):
        runtime.check_model_config(
            {"input": [{"name": "TEXT", "data_type": "TYPE_STRING", "dims": ["1"]}], "output": []}, labels, names
        )


def test_cpu_threads_come_from_the_config_parameter() -> None:
    def config(value: str | None) -> dict:
        return {} if value is None else {"parameters": {"cpu_threads": {"string_value": value}}}

    assert runtime.cpu_threads(config(None)) == 0
    assert runtime.cpu_threads(config("0")) == 0
    assert runtime.cpu_threads(config("3")) == 3
    for bad in ("-1", "two", "1.5", ""):
        with pytest.raises(ValueError, match="cpu_threads is"):
            runtime.cpu_threads(config(bad))


def test_cpu_engine_comes_from_the_config_parameter() -> None:
    assert runtime.cpu_engine({}) == "auto"
    for engine in runtime.ENGINES:
        assert runtime.cpu_engine({"parameters": {"cpu_engine": {"string_value": engine}}}) == engine
    with pytest.raises(ValueError, match="cpu_engine is 'tensorrt'"):
        runtime.cpu_engine({"parameters": {"cpu_engine": {"string_value": "tensorrt"}}})


def test_onnx_runtime_gives_torch_probabilities_for_every_batch_shape(tiny_version) -> None:
    """A CPU instance runs the version's graph; it must answer as the weights do for any batch and text length."""
    graph = runtime.Predictor.load(tiny_version.path)
    weights = runtime.Predictor.load(tiny_version.path, engine="torch")
    assert (graph.engine, weights.engine) == ("onnxruntime", "torch")
    holdout = tiny_version.holdout
    texts, features = holdout["text"].tolist(), feature_matrix(holdout)
    # one row; rows past a forward pass (PREDICT_BATCH); texts past the encoder's window; empty and non-ASCII texts
    cases = [
        (texts[:1], features[:1]),
        (texts * 3, np.concatenate([features] * 3)),
        ([" ".join(["word"] * 600), "", "é ✓ 漢字"], np.full((3, 6), 1e6, np.float32)),
    ]
    for case_texts, case_features in cases:
        got = graph.predict_proba(case_texts, case_features)
        assert got.shape == (len(case_texts), len(graph.labels)) and got.dtype == np.float32
        np.testing.assert_allclose(got, weights.predict_proba(case_texts, case_features), atol=1e-5)


def test_the_engine_follows_the_device_the_graph_and_the_request(tiny_version, tmp_path) -> None:
    cpu = torch.device("cpu")
    assert runtime.resolve_engine("auto", tiny_version.path, cpu) == "onnxruntime"
    assert runtime.resolve_engine("auto", tiny_version.path, cpu, fp16=True) == "torch"
    assert runtime.resolve_engine("auto", tiny_version.path, torch.device("cuda:0")) == "torch"
    assert runtime.resolve_engine("torch", tiny_version.path, cpu) == "torch"
    with pytest.raises(ValueError, match="unknown engine"):
        runtime.resolve_engine("tensorrt", tiny_version.path, cpu)
    # A version exported before the graph existed serves with torch; asked for onnxruntime, it says why not.
    older = tiny_version.copy_to(tmp_path / "older")
    (older / runtime.ONNX_FILE).unlink()
    assert runtime.Predictor.load(older).engine == "torch"
    with pytest.raises(ValueError, match="from its model.onnx"):
        runtime.Predictor.load(older, engine="onnxruntime")
    with pytest.raises(ValueError, match="float16"):
        runtime.resolve_engine("onnxruntime", tiny_version.path, cpu, fp16=True)


def test_a_broken_graph_fails_the_load(tiny_version, tmp_path) -> None:
    """Triton keeps the version it serves when a new one fails to load: a damaged graph must fail, not fall back."""
    broken = tiny_version.copy_to(tmp_path / "broken")
    graph = broken / runtime.ONNX_FILE
    graph.write_bytes(graph.read_bytes()[:5000])
    with pytest.raises(ValueError, match="cannot load .*model.onnx"):
        runtime.Predictor.load(broken)


def test_servable_files_import_nothing_from_the_project() -> None:
    allowed = {
        "__future__",
        "json",
        "collections",
        "pathlib",
        "typing",
        "numpy",
        "torch",
        "tokenizers",
        "safetensors",
        "onnxruntime",  # optional: the serving environment's, for a CPU version's graph
        "importlib",
        "sys",
        "types",
        "triton_python_backend_utils",
    }
    for name in SERVABLE_FILES:
        tree = ast.parse((SERVABLE_DIR / name).read_text(encoding="utf-8"))
        imported = {
            (node.module if isinstance(node, ast.ImportFrom) else alias.name).split(".")[0]
            for node in ast.walk(tree)
            if isinstance(node, ast.Import | ast.ImportFrom)
            for alias in node.names
        }
        assert imported <= allowed, (name, imported - allowed)


def test_a_version_folder_loads_with_its_metadata(tiny_version) -> None:
    metadata = json.loads((tiny_version.path / runtime.METADATA_FILE).read_bytes())
    predictor = runtime.Predictor.load(tiny_version.path)
    assert list(predictor.labels) == metadata["labels"]
    assert list(predictor.feature_names) == metadata["feature_names"] == list(runtime.FEATURE_NAMES)
    assert predictor.text_encoder.max_length == metadata["max_seq_len"]


def test_half_precision_stays_close_to_float32(tiny_version) -> None:
    """What a GPU instance runs (fp16 encoder and heads, fp32 feature scaler), checked on the CPU."""
    full = runtime.Predictor.load(tiny_version.path)
    half = runtime.Predictor.load(tiny_version.path, fp16=True)
    assert next(half.model.encoder.parameters()).dtype == torch.float16
    assert half.model.scaler.mean.dtype == torch.float32
    holdout = tiny_version.holdout
    features = feature_matrix(holdout)
    features[:3] = 1e7  # raw values beyond float16's range go through the float32 scaler
    got = half.predict_proba(holdout["text"].tolist(), features)
    assert got.dtype == np.float32 and np.isfinite(got).all()
    np.testing.assert_allclose(got, full.predict_proba(holdout["text"].tolist(), features), atol=0.02)


_SERVE_FROM_FOLDER = """
import importlib.util, json, sys
from pathlib import Path

folder = Path(sys.argv[1])
spec = importlib.util.spec_from_file_location("version_runtime", folder / "runtime.py")
runtime = importlib.util.module_from_spec(spec)
sys.modules["version_runtime"] = runtime
spec.loader.exec_module(runtime)
graph = runtime.Predictor.load(folder, threads=1)
probs = graph.predict_proba(["an order that was late"], [[1, 2, 3, 4, 5, 6]])
report = {"engine": graph.engine, "torch_after_graph": "torch" in sys.modules, "probs": probs.tolist()}
weights = runtime.Predictor.load(folder, engine="torch")
report["network"] = type(weights.model).__module__
report["weights_probs"] = weights.predict_proba(["an order that was late"], [[1, 2, 3, 4, 5, 6]]).tolist()
print(json.dumps(report))
"""


def test_a_version_folder_serves_its_graph_without_torch_and_its_weights_with_its_own_network(tiny_version) -> None:
    """What a Triton CPU instance does: load the folder's runtime by path. The graph needs neither torch nor the
    network (~570 MB and ~3 s per instance); the weights load the network file of that folder, not the project's."""
    import subprocess
    import sys

    done = subprocess.run(
        [sys.executable, "-c", _SERVE_FROM_FOLDER, str(tiny_version.path)],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    report = json.loads(done.stdout.splitlines()[-1])
    assert report["engine"] == "onnxruntime" and report["torch_after_graph"] is False
    assert report["network"] == "version_runtime_network"
    np.testing.assert_allclose(report["probs"], report["weights_probs"], atol=1e-5)
    assert sum(report["probs"][0]) == pytest.approx(1.0, abs=1e-5)


def test_a_folder_without_its_network_says_so_when_asked_for_torch(tiny_version, tmp_path) -> None:
    folder = tiny_version.copy_to(tmp_path / "no-network")
    (folder / runtime.NETWORK_FILE).unlink()
    spec = importlib.util.spec_from_file_location("no_network_runtime", folder / "runtime.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.Predictor.load(folder).engine == "onnxruntime"
    with pytest.raises(ValueError, match="network.py is missing"):
        module.Predictor.load(folder, engine="torch")


def test_the_text_encoder_gives_the_tokenizers_ids_and_masks(tiny_version) -> None:
    """It encodes without character offsets (encode_batch_fast); the ids and masks must be encode_batch's."""
    encoder = runtime.TextEncoder(tiny_version.path / runtime.TOKENIZER_DIR / runtime.TOKENIZER_FILE, 32)
    texts = ["", "é ✓ 漢字", " ".join(["word"] * 600), "Café déjà vu!!! 123", "\x00\t\n", *tiny_version.holdout["text"]]
    ids, mask = encoder(texts)
    slow = encoder.tokenizer.encode_batch(texts)
    assert ids.dtype == mask.dtype == np.int64 and ids.shape == mask.shape == (len(texts), 32)
    assert ids.tolist() == [e.ids for e in slow] and mask.tolist() == [e.attention_mask for e in slow]
