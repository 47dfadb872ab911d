"""The keyword classifier's answers, on a "GPU" that runs out of memory: an execution of more than ``max_rows`` rows
(a config parameter) fails every request in it with CUDA's out-of-memory message, the way the served model reports
a torch error (a per-request error, see training/servable/model.py). No row is bad: none may be dead-lettered."""

import json

import numpy as np
import triton_python_backend_utils as pb_utils

VOCAB = [
    set("broken late refund angry awful cancel slow rude missing worst".split()),
    set("order delivery account address update invoice question package status schedule".split()),
    set("great fast love excellent thanks perfect helpful happy smooth recommend".split()),
]
OOM = "OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB (GPU 0; 79.11 GiB total capacity)"


class TritonPythonModel:
    def initialize(self, args):
        parameters = json.loads(args["model_config"]).get("parameters", {})
        self.max_rows = int(parameters.get("max_rows", {}).get("string_value", "2"))

    def execute(self, requests):
        inputs = [
            (
                pb_utils.get_input_tensor_by_name(request, "TEXT").as_numpy().reshape(-1),
                pb_utils.get_input_tensor_by_name(request, "FEATURES").as_numpy(),
            )
            for request in requests
        ]
        if sum(len(texts) for texts, _ in inputs) > self.max_rows:
            return [pb_utils.InferenceResponse(error=pb_utils.TritonError(OOM)) for _ in requests]
        responses = []
        for texts, features in inputs:
            decoded = [t.decode("utf-8") for t in texts]
            counts = np.array([[len(set(t.split()) & v) for v in VOCAB] for t in decoded], dtype=np.float32)
            logits = counts * 2.0 + 0.001 * features[:, :1]
            probs = np.exp(logits - logits.max(axis=1, keepdims=True))
            probs = (probs / probs.sum(axis=1, keepdims=True)).astype(np.float32)
            responses.append(pb_utils.InferenceResponse([pb_utils.Tensor("PROBS", probs)]))
        return responses
