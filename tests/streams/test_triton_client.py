"""The Triton client's error policy, without a server: ``_infer`` replaced by a scripted stand-in.

Only an event that fails alone, twice, with the request's own error is reported as failed; a failure that is the
server's (out of memory, internal error) is answered in smaller batches or raised as an outage, never blamed on an
event.
"""

from __future__ import annotations

import asyncio

import numpy as np
import pytest
from tritonclient.utils import InferenceServerException

from foundation.settings import load_settings
from streams.triton_client import (
    TritonClassifier,
    TritonModelUnhealthy,
    TritonRequestError,
    TritonServerFault,
    TritonUnavailable,
    VersionNotServed,
    classify_error,
)

pytestmark = pytest.mark.unit

OOM = "OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB"


class Scripted(TritonClassifier):
    """Answers like a server that runs out of memory above ``max_rows`` and refuses texts containing ``POISON``."""

    def __init__(
        self, max_rows: int = 64, flaky: int = 0, fault: str = OOM, retries: int = 0, declared: int = 0
    ) -> None:
        super().__init__(load_settings(triton={"url": "127.0.0.1:1"}, workers={"triton_retries": retries}))
        self.max_rows, self.flaky, self.fault, self.calls = max_rows, flaky, fault, []
        self.declared = declared  # the version's max_batch_size in its config (0: none)

    async def max_batch_size(self, version: int) -> int:
        return self.declared

    async def _infer(self, texts, features, version):
        self.calls.append(len(texts))
        if len(texts) > self.max_rows:
            raise InferenceServerException(self.fault)
        if any("POISON" in t for t in texts):
            raise InferenceServerException("poisoned text")
        if self.flaky:
            self.flaky -= 1
            raise InferenceServerException("a transient refusal")
        return np.full((len(texts), 3), 1 / 3, dtype=np.float32), version


def classify(make, texts: list[str], version: int = 3, calls: list | None = None):
    """Build the client with ``make()`` inside an event loop (grpc.aio needs one), classify, close."""

    async def run():
        client = make()
        try:
            return await client.classify(texts, np.zeros((len(texts), 6), np.float32), version)
        finally:
            if calls is not None:
                calls.extend(client.calls)
            await client.close()

    return asyncio.run(run())


def test_a_batch_over_the_declared_max_batch_size_goes_in_chunks_answered_in_order():
    calls: list[int] = []
    texts = [f"text {i}" for i in range(150)] + ["POISON"] + ["more"] * 19
    results = classify(lambda: Scripted(max_rows=64, declared=64), texts, calls=calls)
    assert calls[:3] == [64, 64, 42]  # one after the other, none refused for its size
    assert [isinstance(r, TritonRequestError) for r in results] == [False] * 150 + [True] + [False] * 19


def test_a_chunk_that_fails_fails_the_batch_and_the_rest_is_not_sent():
    calls: list[int] = []
    with pytest.raises(TritonServerFault):
        classify(lambda: Scripted(max_rows=0, declared=64), ["x"] * 130, calls=calls)
    assert calls == [64, 32, 16, 8, 4, 2, 1]  # the first chunk, halved down to one event: a server fault, held


def test_out_of_memory_above_a_size_is_answered_in_halves_without_a_dead_letter():
    calls: list[int] = []
    results = classify(lambda: Scripted(max_rows=8), [f"text {i}" for i in range(64)], calls=calls)
    assert all(not isinstance(r, TritonRequestError) for r in results) and len(results) == 64
    assert max(n for n in calls if n <= 8) == 8


def test_a_server_fault_even_for_one_event_is_an_outage():
    with pytest.raises(TritonServerFault):
        classify(lambda: Scripted(max_rows=0), ["a", "b", "c"])
    with pytest.raises(TritonUnavailable):
        classify(lambda: Scripted(max_rows=0, fault="Internal error: the backend crashed"), ["a"])


def test_only_the_event_that_fails_alone_twice_is_reported():
    results = classify(Scripted, ["fine", "also fine", "POISON here", "fine again"])
    assert [isinstance(r, TritonRequestError) for r in results] == [False, False, True, False]


def test_a_transient_refusal_of_one_event_is_retried_not_reported():
    # The batch, then the first half alone, are refused once each.
    results = classify(lambda: Scripted(flaky=2), ["one", "two"])
    assert not any(isinstance(r, TritonRequestError) for r in results)


def test_unknown_version_is_version_not_served():
    class Gone(Scripted):
        async def _infer(self, texts, features, version):
            raise InferenceServerException("Request for unknown model: 'classifier' version 3 is not found")

    with pytest.raises(VersionNotServed):
        classify(Gone, ["a"])


UNREACHABLE = "[StatusCode.UNAVAILABLE] failed to connect to all addresses; last error: Connection refused"


@pytest.mark.parametrize(
    ("message", "kind"),
    [
        ("Request for unknown model: 'classifier' version 3 is not found", VersionNotServed),
        (
            "Failed to process the request(s) for model 'classifier', message: Stub process 'x' is not healthy.",
            TritonModelUnhealthy,
        ),
        (OOM, TritonServerFault),
        ("[StatusCode.INTERNAL] Internal error: the backend crashed", TritonServerFault),
        ("[StatusCode.RESOURCE_EXHAUSTED] resource exhausted", TritonServerFault),
        (UNREACHABLE, TritonUnavailable),
        ("[StatusCode.DEADLINE_EXCEEDED] Deadline Exceeded", TritonUnavailable),
        ("[StatusCode.INVALID_ARGUMENT] unexpected shape for input 'FEATURES'", TritonRequestError),
        ("poisoned text", TritonRequestError),
    ],
)
def test_an_infer_error_is_classified_by_whose_failure_it_is(message, kind):
    error = classify_error(InferenceServerException(message), "classifier", 3)
    assert type(error) is kind
    assert message in str(error)


class Unreachable(Scripted):
    """Unreachable for the first ``down`` calls, then answers."""

    def __init__(self, down: int, retries: int, message: str = UNREACHABLE) -> None:
        super().__init__(retries=retries)
        self.down, self.message = down, message

    async def _infer(self, texts, features, version):
        self.calls.append(len(texts))
        if self.down:
            self.down -= 1
            raise InferenceServerException(self.message)
        return np.full((len(texts), 3), 1 / 3, dtype=np.float32), version


def test_an_unreachable_server_is_retried_within_the_configured_retries():
    calls: list[int] = []
    results = classify(lambda: Unreachable(down=2, retries=2), ["a", "b"], calls=calls)
    assert len(results) == 2 and calls == [2, 2, 2]


def test_an_unreachable_server_after_the_retries_is_an_outage_not_a_dead_letter():
    calls: list[int] = []
    with pytest.raises(TritonUnavailable) as raised:
        classify(lambda: Unreachable(down=5, retries=1), ["a", "b"], calls=calls)
    assert type(raised.value) is TritonUnavailable and calls == [2, 2]  # the batch was held, never bisected


def test_a_crashed_stub_is_raised_at_once_without_retries():
    calls: list[int] = []
    stub = "Stub process 'classifier_0_0' is not healthy."
    with pytest.raises(TritonModelUnhealthy):
        classify(lambda: Unreachable(down=5, retries=3, message=stub), ["a", "b"], calls=calls)
    assert calls == [2]


def test_an_unknown_version_makes_the_client_read_the_served_versions_again():
    class Gone(Scripted):
        async def _infer(self, texts, features, version):
            raise InferenceServerException("Request for unknown model: 'classifier' version 3 is not found")

    async def run():
        client = Gone()
        client._served_at = 0.0  # as if the served versions had just been read
        try:
            with pytest.raises(VersionNotServed):
                await client.classify(["a"], np.zeros((1, 6), np.float32), 3)
            return client._served_at
        finally:
            await client.close()

    assert asyncio.run(run()) == float("-inf")
