"""Publishing against the real Triton server and Kafka broker: round trip, rejection of broken versions, roles."""

from __future__ import annotations

import json
import textwrap
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import torch
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from safetensors.torch import load_file, save_file
from tritonclient.utils import InferenceServerException

from streams import ensure_topics
from training.dataset import feature_matrix
from training.exceptions import RegistryError, VersionRejected
from training.export import export_graph
from training.publish import Publisher, promote, publish_version, rollback, withdraw
from training.registry import read_state
from training.repository import ModelRepository, served_versions
from training.servable import runtime

pytestmark = pytest.mark.integration


def _infer_grpc(url: str, model: str, version: int, texts: list[bytes], features: np.ndarray) -> np.ndarray:
    client = grpcclient.InferenceServerClient(url)
    try:
        text = grpcclient.InferInput("TEXT", [len(texts), 1], "BYTES")
        text.set_data_from_numpy(np.array(texts, dtype=np.object_).reshape(-1, 1))
        feats = grpcclient.InferInput("FEATURES", list(features.shape), "FP32")
        feats.set_data_from_numpy(np.ascontiguousarray(features, dtype=np.float32))
        return client.infer(model, [text, feats], model_version=str(version)).as_numpy("PROBS")
    finally:
        client.close()


def test_round_trip_export_load_infer_equals_in_process(tiny_version, publish_settings, triton_server) -> None:
    # A long batching window, so the concurrent requests below share batches with the bad ones.
    settings = publish_settings(max_queue_delay_us=200_000)
    ensure_topics(settings)
    repo = ModelRepository(settings)

    publication = publish_version(settings, tiny_version.copy_to(repo.staging_dir()), reason="round trip")

    assert publication.version == 1
    assert publication.path == repo.version_dir(1)
    # (__pycache__ aside: Triton's python backend compiles model.py into the folder when it loads it)
    assert sorted(p.name for p in publication.path.iterdir() if not p.name.startswith("__")) == [
        "encoder_config.json",
        "metadata.json",
        "model.onnx",
        "model.py",
        "model.safetensors",
        "network.py",
        "runtime.py",
        "tokenizer",
    ]
    assert json.loads((publication.path / "metadata.json").read_bytes())["version"] == 1
    assert served_versions(repo.config_path.read_text()) == [1]
    state = read_state(settings)
    assert (state.event, state.candidate, state.champion) == ("published", 1, None)

    holdout = tiny_version.holdout
    texts, features = holdout["text"].tolist(), feature_matrix(holdout)
    expected = runtime.Predictor.load(publication.path).predict_proba(texts, features)
    name = settings.triton.model_name

    def one(i: int) -> np.ndarray:
        return _infer_grpc(triton_server.grpc, name, 1, [texts[i].encode()], features[i : i + 1])[0]

    def bad_text(_: int) -> str:
        with pytest.raises(InferenceServerException) as info:
            _infer_grpc(triton_server.grpc, name, 1, [b"\xff\xfe broken"], np.zeros((1, 6), np.float32))
        return str(info.value)

    def bad_features(_: int) -> str:
        with pytest.raises(InferenceServerException) as info:
            _infer_grpc(triton_server.grpc, name, 1, [b"fine text"], np.full((1, 6), np.nan, np.float32))
        return str(info.value)

    with ThreadPoolExecutor(max_workers=12) as pool:
        bad = [pool.submit(bad_text, 0), pool.submit(bad_features, 0)]
        singles = list(pool.map(one, range(len(texts))))
    np.testing.assert_allclose(np.stack(singles), expected, atol=1e-5)
    assert "not valid UTF-8" in bad[0].result()
    assert "NaN or infinity" in bad[1].result()

    # The whole holdout as one HTTP request gives the same answer too.
    http = httpclient.InferenceServerClient(triton_server.http)
    stats = http.get_inference_statistics(name, "1")["model_stats"][0]
    batch = Publisher(settings).triton.infer(name, 1, texts, features)
    np.testing.assert_allclose(batch, expected, atol=1e-5)
    # Dynamic batching merged requests: fewer executions than inferences.
    assert stats["execution_count"] < stats["inference_count"]
    # Triton hands the CPU thread count and engine to the stub, which runs the version's graph in ONNX Runtime.
    parameters = http.get_model_config(name)["parameters"]
    assert parameters["cpu_threads"] == {"string_value": "1"} and parameters["cpu_engine"] == {"string_value": "auto"}
    if triton_server.log is not None:
        assert f"model {name} version 1 ready on cpu (onnxruntime)" in triton_server.log.read_text(errors="replace")
    http.close()


def _truncate_weights(version: Path) -> None:
    weights = version / runtime.WEIGHTS_FILE
    weights.write_bytes(weights.read_bytes()[:1000])


def _raise_in_initialize(version: Path) -> None:
    model = version / "model.py"
    model.write_text(
        model.read_text().replace(
            '        self.model_name = args["model_name"]', '        raise RuntimeError("broken on purpose")'
        )
    )


def _raise_in_execute(version: Path) -> None:
    (version / "model.py").write_text(
        textwrap.dedent(
            """
        import triton_python_backend_utils as pb_utils


        class TritonPythonModel:
            def initialize(self, args):
                pass

            def execute(self, requests):
                raise RuntimeError("fails every batch")
        """
        )
    )


def _shift_the_head(version: Path) -> None:
    weights = load_file(str(version / runtime.WEIGHTS_FILE))
    weights["head.4.bias"] = weights["head.4.bias"] + torch.tensor([6.0, 0.0, -6.0])
    save_file(weights, str(version / runtime.WEIGHTS_FILE))


def _truncate_graph(version: Path) -> None:
    graph = version / runtime.ONNX_FILE
    graph.write_bytes(graph.read_bytes()[:5000])


def _graph_of_other_weights(version: Path) -> None:
    """The weights answer right and the graph (what a CPU instance runs) wrong."""
    weights = (version / runtime.WEIGHTS_FILE).read_bytes()
    _shift_the_head(version)
    export_graph(version)
    (version / runtime.WEIGHTS_FILE).write_bytes(weights)


BREAKAGES = {
    "bad weights": _truncate_weights,
    "initialize raises": _raise_in_initialize,
    "execute raises": _raise_in_execute,
    "wrong answers": _shift_the_head,
    "bad graph": _truncate_graph,
    "graph answers otherwise": _graph_of_other_weights,
}


def test_broken_versions_are_rejected_and_the_champion_keeps_answering(
    tiny_version, publish_settings, triton_server
) -> None:
    settings = publish_settings()
    ensure_topics(settings)
    repo = ModelRepository(settings)
    name = settings.triton.model_name
    publish_version(settings, tiny_version.copy_to(repo.staging_dir()))
    promote(settings, 1, reason="first")
    probe = ([b"great fast thanks"], np.array([[1, 5, 20, 60, 100, 10]], dtype=np.float32))
    before = _infer_grpc(triton_server.grpc, name, 1, *probe)

    for number, (what, breakage) in enumerate(BREAKAGES.items(), start=2):
        staging = tiny_version.copy_to(repo.staging_dir())
        breakage(staging)
        with pytest.raises(VersionRejected, match=f"{name} version {number} rejected"):
            publish_version(settings, staging)

        assert repo.versions() == [1], what
        assert not staging.exists(), what
        assert served_versions(repo.config_path.read_text()) == [1], what
        state = read_state(settings)
        assert (state.event, state.champion, state.candidate) == ("rejected", 1, None), what
        assert state.reason.startswith(f"version {number}: "), what
        np.testing.assert_allclose(_infer_grpc(triton_server.grpc, name, 1, *probe), before, atol=1e-6)

    # The numbers of rejected versions are never reused.
    assert publish_version(settings, tiny_version.copy_to(repo.staging_dir())).version == 2 + len(BREAKAGES)


def test_the_first_broken_version_leaves_nothing_loaded(tiny_version, publish_settings, triton_server) -> None:
    settings = publish_settings()
    ensure_topics(settings)
    repo = ModelRepository(settings)
    staging = tiny_version.copy_to(repo.staging_dir())
    _truncate_weights(staging)

    with pytest.raises(VersionRejected):
        publish_version(settings, staging)

    assert repo.versions() == []
    assert not repo.config_path.exists()
    client = httpclient.InferenceServerClient(triton_server.http)
    assert not client.is_model_ready(settings.triton.model_name)
    client.close()
    assert read_state(settings).champion is None


def test_promote_rollback_and_keep_the_last_versions(tiny_version, publish_settings, triton_server) -> None:
    settings = publish_settings(keep_versions=1)
    ensure_topics(settings)
    repo = ModelRepository(settings)
    name = settings.triton.model_name

    def publish() -> int:
        return publish_version(settings, tiny_version.copy_to(repo.staging_dir())).version

    assert publish() == 1
    assert promote(settings).champion == 1
    assert publish() == 2
    assert publish() == 3  # replaces candidate 2, which stops being served and is pruned (keep 1 + roles)
    state = read_state(settings)
    assert (state.champion, state.candidate, state.previous_champion) == (1, 3, None)
    assert repo.versions() == [1, 3]
    assert repo.served() == [1, 3]

    promoted = promote(settings, reason="better")
    assert (promoted.event, promoted.champion, promoted.previous_champion) == ("promoted", 3, 1)
    assert promoted.candidate is None
    assert repo.served() == [1, 3]
    rolled = rollback(settings, reason="bad canary")
    assert (rolled.event, rolled.champion, rolled.previous_champion) == ("rolled_back", 1, None)
    assert repo.served() == [1]
    assert read_state(settings) == rolled

    client = httpclient.InferenceServerClient(triton_server.http)
    assert client.is_model_ready(name, "1")
    assert not client.is_model_ready(name, "3")
    client.close()
    with pytest.raises(RegistryError, match="no previous champion"):
        rollback(settings)
    # A kept version without a role can be promoted back: it is loaded again first.
    assert promote(settings, 3).champion == 3
    assert repo.served() == [1, 3]
    # A candidate that fails its canary is withdrawn: the champion stays.
    assert publish() == 4
    withdrawn = withdraw(settings, 4, reason="canary: less accurate")
    assert (withdrawn.event, withdrawn.champion, withdrawn.candidate) == ("rejected", 3, None)
    assert repo.served() == [1, 3]
    assert repo.versions() == [1, 3, 4]  # keep 1 (the newest) + the versions with a role
