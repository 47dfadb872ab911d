"""Triton python-backend model of a driftloop classifier version (copied verbatim into each version folder).

Inputs ``TEXT`` (TYPE_STRING ``[1]``, UTF-8) and ``FEATURES`` (TYPE_FP32 ``[6]``); output ``PROBS`` (TYPE_FP32
``[labels]``). The work is done by ``runtime.py`` beside this file (and ``network.py`` when the version runs on
torch), the same code training runs in process.

- The device comes from the instance: ``KIND_GPU`` runs on ``cuda:<model_instance_device_id>`` in float16,
  ``KIND_CPU`` on the CPU in float32 (``config.pbtxt`` asks for ``KIND_AUTO``: a GPU when Triton has one).
- ``initialize`` checks the configuration against the version and fails the load with a message naming the model.
- A CPU instance runs the version's ONNX graph with ONNX Runtime when it can (``cpu_engine``: ``auto``, the default;
  ``onnxruntime``; or ``torch``, the weights), on ``cpu_threads`` threads (``config.pbtxt`` parameters; 0 threads:
  the engine's default).
- ``execute`` answers every request: a bad request (not UTF-8, NaN features, wrong row counts) gets its own error
  response and the others in the batch are answered; nothing is raised from ``execute``.
"""

import importlib.util
import json
import sys
from pathlib import Path

import triton_python_backend_utils as pb_utils


def _load_runtime(version_dir: Path):
    """Import ``runtime.py`` of this version by path (several versions may be loaded, each its own module).

    No bytecode is written: a new file in the version folder makes Triton reload the version on its next load.
    """
    sys.dont_write_bytecode = True
    name = f"driftloop_classifier_runtime_{abs(hash(str(version_dir)))}"
    spec = importlib.util.spec_from_file_location(name, version_dir / "runtime.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


class TritonPythonModel:
    def initialize(self, args):
        self.model_name = args["model_name"]
        self.version = args["model_version"]
        version_dir = Path(args["model_repository"]) / self.version
        kind = args["model_instance_kind"]
        device = f"cuda:{args['model_instance_device_id']}" if kind == "GPU" else "cpu"
        try:
            self.runtime = _load_runtime(version_dir)
            model_config = json.loads(args["model_config"])
            threads = self.runtime.cpu_threads(model_config)
            engine = self.runtime.cpu_engine(model_config) if kind != "GPU" else "torch"
            self.predictor = self.runtime.Predictor.load(
                version_dir, device=device, fp16=kind == "GPU", engine=engine, threads=threads
            )
            self.runtime.check_model_config(model_config, self.predictor.labels, self.predictor.feature_names)
        except Exception as exc:
            raise pb_utils.TritonModelException(
                f"model {self.model_name} version {self.version} failed to load: {type(exc).__name__}: {exc}"
            ) from exc
        pb_utils.Logger.log_info(
            f"model {self.model_name} version {self.version} ready on {device}"
            f" ({'torch fp16' if kind == 'GPU' else self.predictor.engine}); labels {list(self.predictor.labels)}"
        )

    def execute(self, requests):
        try:
            batch = []
            for request in requests:
                text = pb_utils.get_input_tensor_by_name(request, self.runtime.TEXT_INPUT)
                features = pb_utils.get_input_tensor_by_name(request, self.runtime.FEATURES_INPUT)
                batch.append(
                    (
                        text.as_numpy() if text is not None else None,
                        features.as_numpy() if features is not None else None,
                    )
                )
            results = self.runtime.run_requests(self.predictor, batch)
        except Exception as exc:  # never fail the whole batch by raising: answer each request with the error
            results = [RuntimeError(f"{type(exc).__name__}: {exc}")] * len(requests)
        responses = []
        for result in results:
            if isinstance(result, Exception):
                responses.append(pb_utils.InferenceResponse(error=pb_utils.TritonError(str(result))))
            else:
                responses.append(
                    pb_utils.InferenceResponse(output_tensors=[pb_utils.Tensor(self.runtime.PROBS_OUTPUT, result)])
                )
        return responses

    def finalize(self):
        self.predictor = None
