"""Triton's model-repository API behind the admin key: a real tritonserver started by the stack with
``triton.admin_key`` refuses load, unload and index without the key, on gRPC and HTTP, and still serves inference."""

from __future__ import annotations

import secrets
import textwrap
from collections.abc import Iterator

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from driftloop.stack import triton as local_triton
from foundation.settings import Settings, load_settings
from streams.triton_client import ADMIN_KEY_HEADER, GRPC_ADMIN_KEY_HEADER, TritonAdmin
from tests.helpers import free_port, wait_until

pytestmark = pytest.mark.integration

MODEL = "doubler"
KEY = f"key-{secrets.token_urlsafe(12)}"

CONFIG = textwrap.dedent(
    f"""
    name: "{MODEL}"
    backend: "python"
    max_batch_size: 8
    input [ {{ name: "X" data_type: TYPE_FP32 dims: [ 2 ] }} ]
    output [ {{ name: "Y" data_type: TYPE_FP32 dims: [ 2 ] }} ]
    instance_group [ {{ kind: KIND_CPU count: 1 }} ]
    """
)
MODEL_PY = textwrap.dedent(
    """
    import triton_python_backend_utils as pb_utils


    class TritonPythonModel:
        def execute(self, requests):
            doubled = [2 * pb_utils.get_input_tensor_by_name(r, "X").as_numpy() for r in requests]
            return [pb_utils.InferenceResponse([pb_utils.Tensor("Y", y)]) for y in doubled]
    """
)


@pytest.fixture(scope="module")
def restricted(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Settings]:
    repository = tmp_path_factory.mktemp("restricted-repo")
    (repository / MODEL / "1").mkdir(parents=True)
    (repository / MODEL / "config.pbtxt").write_text(CONFIG)
    (repository / MODEL / "1" / "model.py").write_text(MODEL_PY)
    settings = load_settings(
        stack={
            "run_dir": tmp_path_factory.mktemp("restricted-stack"),
            "triton_http_port": free_port(),
            "triton_grpc_port": free_port(),
            "triton_metrics_port": free_port(),
        },
        triton={"model_repository": repository, "admin_key": KEY, "url": None, "grpc_url": None},
    )
    proc = local_triton.server(settings)
    local_triton.start(settings)
    try:
        proc.wait_ready(lambda: local_triton.is_ready(settings), 120, "restricted tritonserver")
        yield settings
    finally:
        proc.stop()


def _infer(settings: Settings) -> np.ndarray:
    client = grpcclient.InferenceServerClient(settings.triton_grpc)
    x = grpcclient.InferInput("X", [1, 2], "FP32")
    x.set_data_from_numpy(np.array([[1.0, 2.5]], dtype=np.float32))
    return client.infer(MODEL, [x]).as_numpy("Y")


def test_an_unload_without_the_key_is_refused_on_grpc_and_http(restricted: Settings) -> None:
    with pytest.raises(InferenceServerException), TritonAdmin(restricted.triton_grpc) as anonymous:
        anonymous.unload(MODEL)
    with pytest.raises(InferenceServerException):
        httpclient.InferenceServerClient(restricted.triton_http).unload_model(MODEL)
    with pytest.raises(InferenceServerException):
        httpclient.InferenceServerClient(restricted.triton_http).unload_model(MODEL, headers={ADMIN_KEY_HEADER: "x"})
    with pytest.raises(InferenceServerException):
        grpcclient.InferenceServerClient(restricted.triton_grpc).unload_model(
            MODEL, headers={GRPC_ADMIN_KEY_HEADER: "a-wrong-key"}
        )
    with TritonAdmin.of(restricted) as admin:
        assert admin.model_ready(MODEL)  # nothing was unloaded
    np.testing.assert_allclose(_infer(restricted), [[2.0, 5.0]])  # inference is not restricted


def test_the_key_is_not_written_to_the_servers_log(restricted: Settings) -> None:
    log_text = local_triton.server(restricted).log_file.read_text(errors="replace")
    assert "--grpc-restricted-protocol=model-repository:driftloop-admin-key=***" in log_text
    assert KEY not in log_text


def test_the_stack_and_the_publisher_use_the_key(restricted: Settings) -> None:
    assert f"{MODEL}:1" in local_triton.up(restricted)  # the repository index, with the key
    with TritonAdmin.of(restricted) as admin:
        admin.unload(MODEL)
        wait_until(lambda: not admin.model_ready(MODEL), 30, "the model unloaded")
        admin.load(MODEL)
        assert admin.model_ready(MODEL)
    http = httpclient.InferenceServerClient(restricted.triton_http)
    http.unload_model(MODEL, headers={ADMIN_KEY_HEADER: KEY})  # over HTTP the header goes as is
    http.load_model(MODEL, headers={ADMIN_KEY_HEADER: KEY})
    np.testing.assert_allclose(_infer(restricted), [[2.0, 5.0]])
