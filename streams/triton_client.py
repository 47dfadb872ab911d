"""Async Triton client for the classifier contract: TEXT (BYTES) + FEATURES (FP32) in, PROBS (FP32) out.

A batch goes to Triton as one request. When Triton rejects a request, the batch is bisected so that only the events
that fail on their own are reported as failed (they go to the dead-letter topic); the rest are answered. When the
server is unreachable, the call is retried with exponential backoff and then raises ``TritonUnavailable``. When the
model's python backend stub has crashed (Triton keeps the model "ready", but every request fails with "Stub process
... is not healthy" until the model is unloaded and loaded again), retrying the same call cannot help: it raises
``TritonModelUnhealthy`` at once, and :meth:`TritonClassifier.reload` is the cure.

    StreamsError
    ├── TritonUnavailable       (no answer after the retries; the batch is redelivered)
    │   └── TritonModelUnhealthy  (the model's backend process crashed: reload the model)
    ├── VersionNotServed
    └── TritonRequestError      (one event's request was rejected)
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence

import numpy as np
import tritonclient.grpc.aio as grpcclient
from tritonclient.utils import InferenceServerException

from driftloop.settings import Settings
from streams.exceptions import StreamsError

log = logging.getLogger(__name__)

_UNAVAILABLE = ("StatusCode.UNAVAILABLE", "StatusCode.DEADLINE_EXCEEDED", "StatusCode.CANCELLED", "Socket closed",
                "failed to connect", "Connection refused", "Stub process")  # fmt: skip


class TritonUnavailable(StreamsError):
    """Triton did not answer after the configured retries; the batch stays uncommitted and will be redelivered."""


class TritonModelUnhealthy(TritonUnavailable):
    """The model's backend process (python backend stub) crashed; requests fail until the model is reloaded."""


class VersionNotServed(StreamsError):
    """The requested model version is not loaded on the server."""


class TritonRequestError(StreamsError):
    """Triton rejected one event's request (e.g. a text the model cannot take)."""


Result = tuple[np.ndarray, int] | TritonRequestError


class TritonClassifier:
    def __init__(self, settings: Settings) -> None:
        self.model = settings.triton.model_name
        self.timeout_s = settings.workers.triton_timeout_s
        self.retries = settings.workers.triton_retries
        self._client = grpcclient.InferenceServerClient(settings.triton_grpc)

    async def close(self) -> None:
        await self._client.close()

    async def reload(self, timeout_s: float = 60.0) -> None:
        """Unload and load the model (all its versions), e.g. to restart a crashed python backend stub.

        Triton (explicit model-control mode) waits for the unload to finish before it loads again.

        Raises:
            InferenceServerException: Triton refused or did not answer either request within ``timeout_s``.
        """
        await self._client.unload_model(self.model, client_timeout=timeout_s)
        await self._client.load_model(self.model, client_timeout=timeout_s)

    async def classify(self, texts: Sequence[str], features: np.ndarray, version: int | None) -> list[Result]:
        """Probabilities and the serving version per text, or a TritonRequestError for texts Triton rejected."""
        if not texts:
            return []
        try:
            probs, served = await self._infer_with_retries(texts, features, version)
        except TritonRequestError as exc:
            if len(texts) == 1:
                return [exc]
            middle = len(texts) // 2
            return [
                *await self.classify(texts[:middle], features[:middle], version),
                *await self.classify(texts[middle:], features[middle:], version),
            ]
        return [(row, served) for row in probs]

    async def _infer_with_retries(self, texts, features, version) -> tuple[np.ndarray, int]:
        delay = 0.2
        for attempt in range(self.retries + 1):
            try:
                return await self._infer(texts, features, version)
            except InferenceServerException as exc:
                message = str(exc)
                if version is not None and "unknown model" in message.lower():
                    raise VersionNotServed(f"{self.model} version {version} is not served: {message}") from exc
                if "Stub process" in message and "not healthy" in message:
                    raise TritonModelUnhealthy(f"{self.model}: {message}") from exc
                # "unknown model" with no version asked: no version is loaded - a server stopping, starting or
                # reloading the model (or one never loaded). An outage to wait out, never a reason to dead-letter.
                if "unknown model" not in message.lower() and not any(marker in message for marker in _UNAVAILABLE):
                    raise TritonRequestError(message) from exc
                if attempt == self.retries:
                    raise TritonUnavailable(f"Triton unavailable after {self.retries} retries: {message}") from exc
                log.warning("Triton call failed (%s); retry %d in %.1fs", message, attempt + 1, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)
        raise AssertionError("unreachable")

    async def _infer(self, texts, features, version) -> tuple[np.ndarray, int]:
        text = grpcclient.InferInput("TEXT", [len(texts), 1], "BYTES")
        text.set_data_from_numpy(np.array([t.encode("utf-8") for t in texts], dtype=np.object_).reshape(-1, 1))
        feats = grpcclient.InferInput("FEATURES", list(features.shape), "FP32")
        feats.set_data_from_numpy(np.ascontiguousarray(features, dtype=np.float32))
        result = await self._client.infer(
            self.model,
            [text, feats],
            model_version="" if version is None else str(version),
            outputs=[grpcclient.InferRequestedOutput("PROBS")],
            client_timeout=self.timeout_s,
        )
        return result.as_numpy("PROBS"), int(result.get_response().model_version)
