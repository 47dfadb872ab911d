"""A torch model in a temporary repository of a real Triton server: load, infer over HTTP and gRPC, unload."""

from __future__ import annotations

import base64
import json
import textwrap

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient

pytestmark = pytest.mark.integration

MODEL = "torch_linear"

CONFIG = textwrap.dedent(
    f"""
    name: "{MODEL}"
    backend: "python"
    max_batch_size: 32
    input [ {{ name: "X" data_type: TYPE_FP32 dims: [ 4 ] }} ]
    output [ {{ name: "Y" data_type: TYPE_FP32 dims: [ 2 ] }} ]
    dynamic_batching {{ max_queue_delay_microseconds: 2000 }}
    instance_group [ {{ kind: KIND_CPU count: 1 }} ]
    """
)

# A fixed torch layer, so the expected output is known here without torch.
MODEL_PY = textwrap.dedent(
    """
    import numpy as np
    import torch
    import triton_python_backend_utils as pb_utils


    class TritonPythonModel:
        def initialize(self, args):
            self.layer = torch.nn.Linear(4, 2)
            with torch.no_grad():
                self.layer.weight.copy_(torch.tensor([[1.0, 0.0, -1.0, 0.5], [0.0, 2.0, 0.0, 0.0]]))
                self.layer.bias.copy_(torch.tensor([0.25, -1.0]))

        def execute(self, requests):
            responses = []
            for request in requests:
                x = torch.from_numpy(pb_utils.get_input_tensor_by_name(request, "X").as_numpy())
                with torch.no_grad():
                    y = self.layer(x).numpy().astype(np.float32)
                responses.append(pb_utils.InferenceResponse([pb_utils.Tensor("Y", y)]))
            return responses
    """
)


def _expected(x: np.ndarray) -> np.ndarray:
    weight = np.array([[1.0, 0.0, -1.0, 0.5], [0.0, 2.0, 0.0, 0.0]], dtype=np.float32)
    return x @ weight.T + np.array([0.25, -1.0], dtype=np.float32)


@pytest.fixture
def loaded_model(triton_server):
    client = httpclient.InferenceServerClient(triton_server.http)
    if triton_server.repository is not None:
        (triton_server.repository / MODEL / "1").mkdir(parents=True, exist_ok=True)
        (triton_server.repository / MODEL / "config.pbtxt").write_text(CONFIG)
        (triton_server.repository / MODEL / "1" / "model.py").write_text(MODEL_PY)
        client.load_model(MODEL)
    else:  # an external server: ship the files with the load request
        client.load_model(
            MODEL,
            config=json.dumps(
                {
                    "backend": "python",
                    "max_batch_size": 32,
                    "input": [{"name": "X", "data_type": "TYPE_FP32", "dims": [4]}],
                    "output": [{"name": "Y", "data_type": "TYPE_FP32", "dims": [2]}],
                }
            ),
            files={"file:1/model.py": base64.b64encode(MODEL_PY.encode()).decode()},
        )
    yield client
    if client.is_model_ready(MODEL):
        client.unload_model(MODEL)
    client.close()


def test_load_infer_http_and_grpc_then_unload(triton_server, loaded_model):
    client = loaded_model
    assert client.is_server_live()
    assert client.is_model_ready(MODEL)
    x = np.arange(24, dtype=np.float32).reshape(6, 4) / 10

    http_input = httpclient.InferInput("X", list(x.shape), "FP32")
    http_input.set_data_from_numpy(x, binary_data=True)
    http_out = client.infer(MODEL, [http_input]).as_numpy("Y")
    np.testing.assert_allclose(http_out, _expected(x), rtol=1e-5, atol=1e-6)

    grpc = grpcclient.InferenceServerClient(triton_server.grpc)
    grpc_input = grpcclient.InferInput("X", list(x.shape), "FP32")
    grpc_input.set_data_from_numpy(x)
    grpc_out = grpc.infer(MODEL, [grpc_input]).as_numpy("Y")
    np.testing.assert_allclose(grpc_out, http_out)
    assert grpc.get_model_metadata(MODEL).name == MODEL

    client.unload_model(MODEL, unload_dependents=True)
    grpc.close()
    index = {m["name"]: m for m in client.get_model_repository_index()}
    assert index.get(MODEL, {}).get("state") in ("UNAVAILABLE", "UNLOADING", None)
    with pytest.raises(Exception, match="unknown model|no available versions|not ready"):
        client.infer(MODEL, [http_input])


def test_bad_input_shape_is_rejected_and_model_keeps_serving(triton_server, loaded_model):
    client = loaded_model
    bad = httpclient.InferInput("X", [1, 3], "FP32")
    bad.set_data_from_numpy(np.zeros((1, 3), dtype=np.float32))
    with pytest.raises(Exception, match="shape|dims"):
        client.infer(MODEL, [bad])
    good = httpclient.InferInput("X", [1, 4], "FP32")
    good.set_data_from_numpy(np.ones((1, 4), dtype=np.float32))
    np.testing.assert_allclose(client.infer(MODEL, [good]).as_numpy("Y"), _expected(np.ones((1, 4), np.float32)))
