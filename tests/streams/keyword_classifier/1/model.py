"""A stand-in classifier with the serving contract of triton_repo/classifier, for worker tests that must not
depend on training: probabilities from the synthetic vocabularies; a text containing POISON is rejected."""

import numpy as np
import triton_python_backend_utils as pb_utils

VOCAB = [
    set("broken late refund angry awful cancel slow rude missing worst".split()),
    set("order delivery account address update invoice question package status schedule".split()),
    set("great fast love excellent thanks perfect helpful happy smooth recommend".split()),
]


class TritonPythonModel:
    def initialize(self, args):
        self.version = int(args["model_version"])

    def execute(self, requests):
        responses = []
        for request in requests:
            texts = pb_utils.get_input_tensor_by_name(request, "TEXT").as_numpy().reshape(-1)
            features = pb_utils.get_input_tensor_by_name(request, "FEATURES").as_numpy()
            decoded = [t.decode("utf-8") for t in texts]
            if any("POISON" in t for t in decoded):
                responses.append(pb_utils.InferenceResponse(error=pb_utils.TritonError("poisoned text")))
                continue
            counts = np.array([[len(set(t.split()) & v) for v in VOCAB] for t in decoded], dtype=np.float32)
            logits = counts * 2.0 + 0.001 * features[:, :1]
            probs = np.exp(logits - logits.max(axis=1, keepdims=True))
            probs = (probs / probs.sum(axis=1, keepdims=True)).astype(np.float32)
            responses.append(pb_utils.InferenceResponse([pb_utils.Tensor("PROBS", probs)]))
        return responses
