"""A read larger than the served version's ``max_batch_size`` goes to the real Triton in requests it takes."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest
import tritonclient.http as httpclient

from foundation.settings import load_settings
from streams.triton_client import TritonClassifier, TritonRequestError

pytestmark = pytest.mark.integration

VERSION = 1  # tests/streams/keyword_classifier/1, max_batch_size 64


def test_a_batch_over_the_max_batch_size_is_sent_in_requests_triton_takes(triton_server, keyword_model):
    settings = load_settings(
        triton={"url": triton_server.http, "grpc_url": triton_server.grpc, "model_name": keyword_model}
    )
    stats = httpclient.InferenceServerClient(triton_server.http)

    def requests() -> tuple[int, int]:
        inference = stats.get_inference_statistics(keyword_model, str(VERSION))["model_stats"][0]["inference_stats"]
        return inference["success"]["count"], inference["fail"]["count"]

    texts = [f"great service {i}" for i in range(150)]

    async def run():
        client = TritonClassifier(settings)
        try:
            return await client.max_batch_size(VERSION), await client.classify(
                texts, np.zeros((len(texts), 6), np.float32), VERSION
            )
        finally:
            await client.close()

    before = requests()
    declared, results = asyncio.run(run())
    after = requests()
    stats.close()

    assert declared == 64
    assert len(results) == len(texts) and not any(isinstance(r, TritonRequestError) for r in results)
    assert {version for _, version in results} == {VERSION}
    # three requests (64, 64, 22): without chunks Triton refuses 150 and 75 (uncounted) and the client bisects to 4
    assert (after[0] - before[0], after[1] - before[1]) == (3, 0)
