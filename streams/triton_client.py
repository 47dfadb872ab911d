"""Async Triton client for the classifier contract: TEXT (BYTES) + FEATURES (FP32) in, PROBS (FP32) out.

A batch goes to Triton as one request, always for an explicit model version (never Triton's default, which is the
highest loaded version: possibly a candidate). When a request fails, the batch is bisected; only an event that fails
*alone*, twice, with an error that is the request's (e.g. a text the model refuses) is reported as failed (it goes to
the dead-letter topic); the rest are answered. A failure that is the server's, not the request's - out of memory,
an internal error, a crashed stub - is never blamed on an event: a smaller batch may pass (a batch too large for the
GPU is answered in halves), and where even one event fails that way the call raises ``TritonServerFault`` and the
worker holds the batch and retries. When the server is unreachable, the call is retried with exponential backoff and
then raises ``TritonUnavailable``. When the model's python backend stub has crashed (Triton keeps the model "ready",
but every request fails with "Stub process ... is not healthy" until the model is unloaded and loaded again),
retrying the same call cannot help: it raises ``TritonModelUnhealthy`` at once, and :meth:`TritonClassifier.reload`
is the cure.

    StreamsError
    ├── TritonUnavailable       (no answer after the retries; the batch is held and retried)
    │   ├── TritonModelUnhealthy  (the model's backend process crashed: reload the model)
    │   └── TritonServerFault     (the server failed a request for its own reason: out of memory, internal error)
    ├── VersionNotServed
    └── TritonRequestError      (one event's request was rejected)
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence

import numpy as np
import tritonclient.grpc.aio as grpcclient
from tritonclient.utils import InferenceServerException

from foundation.settings import Settings
from streams.exceptions import StreamsError

log = logging.getLogger(__name__)

_UNAVAILABLE = ("StatusCode.UNAVAILABLE", "StatusCode.DEADLINE_EXCEEDED", "StatusCode.CANCELLED", "Socket closed",
                "failed to connect", "Connection refused", "Stub process")  # fmt: skip
# Failures that are the server's, not the request's: a smaller batch may pass, an event is never dead-lettered for them.
_SERVER_FAULTS = ("out of memory", "outofmemoryerror", "cuda error", "cudnn_status", "cublas_status", "bad_alloc",
                  "memoryerror", "internal error", "resource_exhausted", "resource exhausted")  # fmt: skip
SERVED_TTL_S = 2.0  # how long the list of served versions is trusted


class TritonUnavailable(StreamsError):
    """Triton did not answer after the configured retries; the batch stays uncommitted and will be redelivered."""


class TritonModelUnhealthy(TritonUnavailable):
    """The model's backend process (python backend stub) crashed; requests fail until the model is reloaded."""


class TritonServerFault(TritonUnavailable):
    """Triton failed a request for a reason that is not the request's (out of memory, internal error)."""


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
        self._served: frozenset[int] = frozenset()
        self._served_at = float("-inf")

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

    async def served_versions(self, refresh: bool = False) -> frozenset[int]:
        """The versions of the model that Triton serves now (cached for ``SERVED_TTL_S``).

        Raises:
            TritonUnavailable: the server does not answer (an empty set means: the model has no ready version).
        """
        now = time.monotonic()
        if refresh or now - self._served_at > SERVED_TTL_S:
            try:
                metadata = await self._client.get_model_metadata(self.model, client_timeout=self.timeout_s)
                self._served = frozenset(int(v) for v in metadata.versions if v.isdigit())
            except InferenceServerException as exc:
                if "unknown model" not in str(exc).lower() and "not found" not in str(exc).lower():
                    raise TritonUnavailable(f"Triton metadata of {self.model}: {exc}") from exc
                self._served = frozenset()
            self._served_at = now
        return self._served

    def forget_served(self) -> None:
        """Read the served versions again on the next call (a version came or went)."""
        self._served_at = float("-inf")

    async def classify(self, texts: Sequence[str], features: np.ndarray, version: int) -> list[Result]:
        """Probabilities and the serving version per text, or a TritonRequestError for texts Triton rejected alone.

        Raises:
            VersionNotServed: ``version`` is not loaded.
            TritonUnavailable: no answer, or a server fault even for a single text (the caller holds the batch).
        """
        if not texts:
            return []
        try:
            probs, served = await self._infer_with_retries(texts, features, version)
        except (TritonRequestError, TritonServerFault) as exc:
            if len(texts) == 1:
                return [await self._alone(texts, features, version, exc)]
            middle = len(texts) // 2
            return [
                *await self.classify(texts[:middle], features[:middle], version),
                *await self.classify(texts[middle:], features[middle:], version),
            ]
        return [(row, served) for row in probs]

    async def _alone(self, texts, features, version: int, error: StreamsError) -> Result:
        """One text that failed alone: a server fault is raised (hold); a request error counts only if it fails twice
        (a transient failure of a valid event must not send it to the dead-letter topic)."""
        if isinstance(error, TritonServerFault):
            raise error
        try:
            probs, served = await self._infer_with_retries(texts, features, version)
        except TritonRequestError as again:
            return again
        return probs[0], served

    async def _infer_with_retries(self, texts, features, version: int) -> tuple[np.ndarray, int]:
        delay = 0.2
        for attempt in range(self.retries + 1):
            try:
                return await self._infer(texts, features, version)
            except InferenceServerException as exc:
                message = str(exc)
                lowered = message.lower()
                if "unknown model" in lowered or "is not found" in lowered:
                    self.forget_served()
                    raise VersionNotServed(f"{self.model} version {version} is not served: {message}") from exc
                if "Stub process" in message and "not healthy" in message:
                    raise TritonModelUnhealthy(f"{self.model}: {message}") from exc
                if any(marker in lowered for marker in _SERVER_FAULTS):
                    raise TritonServerFault(f"{self.model} version {version}: {message}") from exc
                if not any(marker in message for marker in _UNAVAILABLE):
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
            model_version=str(version),
            outputs=[grpcclient.InferRequestedOutput("PROBS")],
            client_timeout=self.timeout_s,
        )
        return result.as_numpy("PROBS"), int(result.get_response().model_version)
