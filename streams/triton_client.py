"""The one place that talks to Triton (tritonclient, gRPC): :class:`TritonClassifier`, the async client of the
inference workers, and :class:`TritonAdmin`, the synchronous calls of the stack, publishing and readiness checks
(health, repository index, load and unload). The classifier contract: TEXT (BYTES) + FEATURES (FP32) in, PROBS
(FP32) out.

A batch goes to Triton as one request (as requests of the version's ``max_batch_size``, in turn, when it is larger),
always for an explicit model version (never Triton's default, which is the highest loaded version: possibly a
candidate). When a request fails, the batch is bisected; only an event that fails *alone*, twice, with an error that
is the request's (e.g. a text the model refuses) is reported as failed (it goes to the dead-letter topic); the rest
are answered. A failure that is the server's, not the request's - out of memory,
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

import logging
import time
from collections.abc import Sequence

import numpy as np
import tritonclient.grpc.aio as grpcclient
from tritonclient.grpc import InferenceServerClient as SyncClient
from tritonclient.utils import InferenceServerException

from foundation.retry import async_policy
from foundation.settings import Settings
from streams.exceptions import StreamsError

log = logging.getLogger(__name__)

_UNAVAILABLE = (
    "StatusCode.UNAVAILABLE",
    "StatusCode.DEADLINE_EXCEEDED",
    "StatusCode.CANCELLED",
    "Socket closed",
    "failed to connect",
    "Connection refused",
    "Stub process",
)
# Failures that are the server's, not the request's: a smaller batch may pass, an event is never dead-lettered for them.
_SERVER_FAULTS = (
    "out of memory",
    "outofmemoryerror",
    "cuda error",
    "cudnn_status",
    "cublas_status",
    "bad_alloc",
    "memoryerror",
    "internal error",
    "resource_exhausted",
    "resource exhausted",
)
SERVED_TTL_S = 2.0  # how long the list of served versions is trusted
# The classifier contract (triton_repo/classifier/config.pbtxt).
TEXT_INPUT, FEATURES_INPUT, PROBS_OUTPUT = "TEXT", "FEATURES", "PROBS"


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


#: The header that carries ``triton.admin_key`` on model-repository requests (tritonserver's restricted API). Over
#: HTTP it is sent as is; over gRPC tritonserver expects it prefixed with ``triton-grpc-protocol-``.
ADMIN_KEY_HEADER = "driftloop-admin-key"
GRPC_ADMIN_KEY_HEADER = f"triton-grpc-protocol-{ADMIN_KEY_HEADER}"


def admin_headers(settings: Settings) -> dict[str, str] | None:
    """The gRPC headers of a model-repository request: the admin key when Triton's repository API is restricted."""
    key = settings.triton.admin_key
    return {GRPC_ADMIN_KEY_HEADER: key.get_secret_value()} if key else None


class TritonClassifier:
    def __init__(self, settings: Settings) -> None:
        self.model = settings.triton.model_name
        self.timeout_s = settings.workers.triton_timeout_s
        self.retries = settings.workers.triton_retries
        self._client = grpcclient.InferenceServerClient(settings.triton_grpc)
        self._admin_headers = admin_headers(settings)
        self._served: frozenset[int] = frozenset()
        self._served_at = float("-inf")
        self._max_batch: dict[int, int] = {}

    async def close(self) -> None:
        await self._client.close()

    async def reload(self, timeout_s: float = 60.0) -> None:
        """Unload and load the model (all its versions), e.g. to restart a crashed python backend stub.

        Triton (explicit model-control mode) waits for the unload to finish before it loads again.

        Raises:
            InferenceServerException: Triton refused or did not answer either request within ``timeout_s``.
        """
        await self._client.unload_model(self.model, headers=self._admin_headers, client_timeout=timeout_s)
        await self._client.load_model(self.model, headers=self._admin_headers, client_timeout=timeout_s)

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
        limit = await self.max_batch_size(version)
        if limit and len(texts) > limit:
            return await self._classify_in_chunks(texts, features, version, limit)
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

    async def max_batch_size(self, version: int) -> int:
        """The version's ``max_batch_size`` in its Triton config (0: none declared, or not known yet), read once."""
        if version not in self._max_batch:
            try:
                response = await self._client.get_model_config(self.model, str(version), client_timeout=self.timeout_s)
            except InferenceServerException:
                return 0  # not known now: the request itself tells what is wrong (not served, unreachable, ...)
            self._max_batch[version] = int(response.config.max_batch_size)
        return self._max_batch[version]

    async def _classify_in_chunks(self, texts, features, version: int, limit: int) -> list[Result]:
        """:meth:`classify` of chunks of at most ``limit`` texts, one after the other, answers in the order of
        ``texts``. Not side by side: Triton's dynamic batcher would run concurrent chunks as one execution, larger than
        the version takes (a model that runs out of memory above a size would then fail even single events)."""
        results: list[Result] = []
        for start in range(0, len(texts), limit):
            results += await self.classify(texts[start : start + limit], features[start : start + limit], version)
        return results

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
        """``_infer``, its error classified (:func:`classify_error`); only an unreachable server is retried."""
        async for attempt in async_policy(
            retry_on=_is_unreachable,
            attempts=self.retries + 1,
            initial_s=0.2,
            max_s=5.0,
            what=f"Triton infer {self.model} version {version}",
        ):
            with attempt:
                try:
                    return await self._infer(texts, features, version)
                except InferenceServerException as exc:
                    error = classify_error(exc, self.model, version)
                    if isinstance(error, VersionNotServed):
                        self.forget_served()
                    raise error from exc
        raise AssertionError("unreachable: the policy returns or raises")

    async def _infer(self, texts, features, version) -> tuple[np.ndarray, int]:
        result = await self._client.infer(
            self.model,
            _inputs(texts, features),
            model_version=str(version),
            outputs=[grpcclient.InferRequestedOutput(PROBS_OUTPUT)],
            client_timeout=self.timeout_s,
        )
        return result.as_numpy(PROBS_OUTPUT), int(result.get_response().model_version)


def classify_error(exc: InferenceServerException, model: str, version: int) -> StreamsError:
    """What a failed infer call means: the version is not served, the model's stub crashed, a server fault, the
    server is unreachable (:class:`TritonUnavailable` itself: the only kind worth retrying the same call for), or
    else the request's own error."""
    message = str(exc)
    lowered = message.lower()
    if "unknown model" in lowered or "is not found" in lowered:
        return VersionNotServed(f"{model} version {version} is not served: {message}")
    if "Stub process" in message and "not healthy" in message:
        return TritonModelUnhealthy(f"{model}: {message}")
    if any(marker in lowered for marker in _SERVER_FAULTS):
        return TritonServerFault(f"{model} version {version}: {message}")
    if any(marker in message for marker in _UNAVAILABLE):
        return TritonUnavailable(f"Triton unavailable: {message}")
    return TritonRequestError(message)


def _is_unreachable(error: BaseException) -> bool:
    return type(error) is TritonUnavailable


def _inputs(texts: Sequence[str], features: np.ndarray) -> list[grpcclient.InferInput]:
    """The classifier's request tensors (the gRPC and gRPC-aio clients share these classes)."""
    text = grpcclient.InferInput(TEXT_INPUT, [len(texts), 1], "BYTES")
    text.set_data_from_numpy(np.array([t.encode("utf-8") for t in texts], dtype=np.object_).reshape(-1, 1))
    feats = grpcclient.InferInput(FEATURES_INPUT, list(features.shape), "FP32")
    feats.set_data_from_numpy(np.ascontiguousarray(features, dtype=np.float32))
    return [text, feats]


class TritonAdmin:
    """The synchronous calls to Triton (gRPC, safe to share between threads): server health and metadata, the
    repository index, load and unload (explicit model-control mode), model readiness, and one-off classifier
    requests (publishing's smoke test). A failure raises tritonclient's ``InferenceServerException`` (an unreachable
    server included: ``StatusCode.UNAVAILABLE``), like the async classifier's calls.

    Args:
        url: the gRPC endpoint, ``host:port`` (``settings.triton_grpc``).
        timeout_s: the deadline of each call.
        headers: sent with the model-repository calls (:func:`admin_headers`: the admin key of a restricted API).
    """

    def __init__(self, url: str, timeout_s: float = 5.0, headers: dict[str, str] | None = None) -> None:
        self.url, self.timeout_s = url, timeout_s
        self._client = SyncClient(url)
        self._headers = headers

    @classmethod
    def of(cls, settings: Settings, timeout_s: float = 5.0) -> TritonAdmin:
        """The admin client of ``settings``' Triton, with its admin key."""
        return cls(settings.triton_grpc, timeout_s, admin_headers(settings))

    def __enter__(self) -> TritonAdmin:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._client.close()

    def is_live(self, timeout_s: float | None = None) -> bool:
        """Whether the server answers "live" (``timeout_s``: this call's deadline, default the client's)."""
        return self._client.is_server_live(client_timeout=timeout_s or self.timeout_s)

    def is_ready(self) -> bool:
        return self._client.is_server_ready(client_timeout=self.timeout_s)

    def metadata(self) -> dict:
        """The server's name, version and extensions."""
        return self._client.get_server_metadata(as_json=True, client_timeout=self.timeout_s)

    def repository_index(self) -> list[dict]:
        """Every model of the repository: ``name``, ``version`` (when loaded), ``state`` (``READY``, ...)."""
        index = self._client.get_model_repository_index(
            headers=self._headers, as_json=True, client_timeout=self.timeout_s
        )
        return index.get("models", [])

    def loaded(self) -> list[str]:
        """``name:version`` of every ready model version."""
        return [f"{m['name']}:{m.get('version', '?')}" for m in self.repository_index() if m.get("state") == "READY"]

    def load(self, model: str) -> None:
        """Load (or reload) ``model`` from the repository: versions already loaded keep serving."""
        self._client.load_model(model, headers=self._headers, client_timeout=self.timeout_s)

    def unload(self, model: str) -> None:
        self._client.unload_model(model, headers=self._headers, client_timeout=self.timeout_s)

    def model_ready(self, model: str, version: int | None = None) -> bool:
        return self._client.is_model_ready(
            model, "" if version is None else str(version), client_timeout=self.timeout_s
        )

    def infer(self, model: str, version: int, texts: Sequence[str], features: np.ndarray) -> np.ndarray:
        """``PROBS`` of one version for a batch of texts and their features."""
        result = self._client.infer(
            model,
            _inputs(texts, features),
            model_version=str(version),
            outputs=[grpcclient.InferRequestedOutput(PROBS_OUTPUT)],
            client_timeout=self.timeout_s,
        )
        return result.as_numpy(PROBS_OUTPUT)


def server_ready(settings: Settings, timeout_s: float = 2.0) -> bool:
    """Whether the Triton of ``settings`` answers "ready" (False when it cannot be reached)."""
    try:
        with TritonAdmin.of(settings, timeout_s) as admin:
            return admin.is_ready()
    except InferenceServerException:
        return False
