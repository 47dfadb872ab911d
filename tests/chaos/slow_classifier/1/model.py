"""A slow classifier with the serving contract of triton_repo/classifier, for the backpressure scenario: every
execute sleeps ``delay_s`` (a config parameter), then answers uniform probabilities."""

import json
import time

import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        parameters = json.loads(args["model_config"]).get("parameters", {})
        self.delay_s = float(parameters.get("delay_s", {}).get("string_value", "0.25"))

    def execute(self, requests):
        time.sleep(self.delay_s)
        responses = []
        for request in requests:
            rows = pb_utils.get_input_tensor_by_name(request, "TEXT").as_numpy().shape[0]
            probs = np.full((rows, 3), 1 / 3, dtype=np.float32)
            responses.append(pb_utils.InferenceResponse([pb_utils.Tensor("PROBS", probs)]))
        return responses
