"""The benchmark's null model: a Triton python-backend model with the classifier's contract that does no work.

``bench/pipeline.py`` copies this file as ``model.py`` into a version folder of its own model repository (beside the
classifier version's ``metadata.json`` and ``tokenizer/``), so that the pipeline's own cost (Kafka, validation,
Feast, the Triton round trip, building predictions) is measured apart from the network's. Inputs ``TEXT`` (BYTES
``[1]``) and ``FEATURES`` (FP32 ``[n]``); output ``PROBS`` (FP32 ``[labels]``): the same uniform distribution for every
row. A request whose inputs are missing or whose row counts differ gets its own error response.
"""

import json

import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        outputs = {item["name"]: item for item in config.get("output", [])}
        labels = int(outputs["PROBS"]["dims"][0])
        self.row = np.full((1, labels), 1.0 / labels, dtype=np.float32)

    def execute(self, requests):
        responses = []
        for request in requests:
            text = pb_utils.get_input_tensor_by_name(request, "TEXT")
            features = pb_utils.get_input_tensor_by_name(request, "FEATURES")
            if text is None or features is None:
                responses.append(pb_utils.InferenceResponse(error=pb_utils.TritonError("TEXT and FEATURES are needed")))
                continue
            rows = text.as_numpy().shape[0]
            if features.as_numpy().shape[0] != rows:
                responses.append(pb_utils.InferenceResponse(error=pb_utils.TritonError("row counts differ")))
                continue
            probs = np.repeat(self.row, rows, axis=0)
            responses.append(pb_utils.InferenceResponse(output_tensors=[pb_utils.Tensor("PROBS", probs)]))
        return responses
