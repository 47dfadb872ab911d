"""Two real tritonservers on one model repository, as two Triton replicas in production: a publish loads and
smoke-tests the version on both, promotion and rollback change what both serve, a replica that is down during a
publish gets the version when it is back (the retraining consumer's reconcile), one that missed a withdrawal drops
the version, and a version that fails its smoke test on one replica is rolled back on both.

Replica A is the session's test server; replica B is a second server of the local stack on the same repository,
started with nothing loaded and with Triton's model-repository API behind an admin key (so every call that reaches
it proves the publisher sends the key to every replica, not only to the first). B's environment carries
``DRIFTLOOP_TEST_REPLICA=b``, which a deliberately broken version reads to fail on B alone.
"""

from __future__ import annotations

import os
import secrets
import signal
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from unittest import mock

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from prometheus_client import REGISTRY

from driftloop.stack import triton as local_triton
from foundation.settings import Settings, load_settings
from streams import ensure_topics
from tests.helpers import free_port, wait_until
from training.exceptions import VersionRejected
from training.publish import Publisher, TritonControl, promote, publish_version, rollback, withdraw
from training.registry import read_state
from training.repository import ModelRepository
from training.retrain import Retrainer

pytestmark = pytest.mark.integration

KEY = f"key-{secrets.token_urlsafe(12)}"
ON_B = "DRIFTLOOP_TEST_REPLICA"  # set to "b" in replica B's environment only


@dataclass
class Replica:
    """The second tritonserver (replica 1 of the local stack) on the session server's repository."""

    settings: Settings

    @property
    def grpc(self) -> str:
        return self.settings.triton_grpc

    def start(self) -> None:
        with mock.patch.dict(os.environ, {ON_B: "b"}):
            local_triton.start(self.settings, replica=1, load=False)
        local_triton.server(self.settings, 1).wait_ready(lambda: local_triton.is_ready(self.settings), 120, "replica B")

    def stop(self) -> None:
        local_triton.server(self.settings, 1).stop()

    def signal(self, sig: signal.Signals) -> None:
        pid = local_triton.server(self.settings, 1).pid()
        assert pid is not None, "replica B is not running"
        os.kill(pid, sig)

    def ensure_running(self) -> None:
        if local_triton.server(self.settings, 1).pid() is None:
            self.start()
        else:
            self.signal(signal.SIGCONT)


@pytest.fixture(scope="module")
def replica_b(stack_settings: Settings, triton_server) -> Iterator[Replica]:
    if triton_server.repository is None:
        pytest.skip("a second replica needs the test server's model repository on this machine")
    stack = {
        **stack_settings.stack.model_dump(),
        "triton_http_port": free_port(),
        "triton_grpc_port": free_port(),
        "triton_metrics_port": free_port(),
    }
    replica = Replica(
        load_settings(stack=stack, triton={"model_repository": triton_server.repository, "admin_key": KEY})
    )
    replica.start()
    try:
        yield replica
    finally:
        replica.stop()


@pytest.fixture
def two_replicas(replica_b: Replica, publish_settings, triton_server) -> Iterator[Settings]:
    """Publishing settings (a model name of this test's own) with replicas A and B, the admin key, a short probe
    timeout; the model is unloaded from both at the end."""
    replica_b.ensure_running()
    base = publish_settings()
    triton = base.triton.model_copy(
        update={
            "replicas": (triton_server.grpc, replica_b.grpc),
            "admin_key": replica_b.settings.triton.admin_key,
            "replica_timeout_s": 1.0,
        }
    )
    settings = base.model_copy(update={"triton": triton})
    ensure_topics(settings)
    yield settings
    replica_b.ensure_running()
    for url in (triton_server.grpc, replica_b.grpc):
        control = TritonControl(settings, url)
        try:
            control.unload(settings.triton.model_name)
        except control.error:
            pass
        finally:
            control.close()


def _ready(settings: Settings, url: str) -> set[int]:
    control = TritonControl(settings, url)
    try:
        return control.ready_versions(settings.triton.model_name)
    finally:
        control.close()


def _everywhere(settings: Settings) -> list[set[int]]:
    return [_ready(settings, url) for url in settings.triton.replicas]


def _smoke_requests(url: str, model: str, version: int) -> int:
    """Successful requests the server answered for one version (each smoke test is one request)."""
    client = grpcclient.InferenceServerClient(url)
    try:
        stats = client.get_inference_statistics(model, str(version), as_json=True)["model_stats"][0]
        return int(stats["inference_stats"]["success"].get("count", 0))
    finally:
        client.close()


def _probs(url: str, model: str, version: int) -> np.ndarray:
    control = TritonControl(load_settings(triton={"grpc_url": url}))
    try:
        return control.infer(model, version, ["great fast thanks"], np.array([[1, 5, 20, 60, 100, 10]], np.float32))
    finally:
        control.close()


def _unreachable(action: str) -> float:
    return REGISTRY.get_sample_value("driftloop_triton_replica_unreachable_total", {"action": action}) or 0.0


def _publish(settings: Settings, tiny_version) -> int:
    repo = ModelRepository(settings)
    return publish_version(settings, tiny_version.copy_to(repo.staging_dir())).version


def test_a_publish_loads_and_smoke_tests_the_version_on_every_replica(tiny_version, two_replicas) -> None:
    settings = two_replicas
    name = settings.triton.model_name

    assert _publish(settings, tiny_version) == 1

    assert _everywhere(settings) == [{1}, {1}]
    for url in settings.triton.replicas:
        assert _smoke_requests(url, name, 1) == 1, url  # one smoke request on each replica
    np.testing.assert_allclose(*[_probs(url, name, 1) for url in settings.triton.replicas], atol=1e-5)
    assert read_state(settings).candidate == 1


def test_promotion_and_rollback_change_what_every_replica_serves(tiny_version, two_replicas) -> None:
    settings = two_replicas
    assert _publish(settings, tiny_version) == 1
    promote(settings, 1, reason="first")
    assert _publish(settings, tiny_version) == 2
    assert _everywhere(settings) == [{1, 2}, {1, 2}]

    promoted = promote(settings, 2, reason="better")
    assert (promoted.champion, promoted.previous_champion) == (2, 1)
    assert _everywhere(settings) == [{1, 2}, {1, 2}]
    rolled = rollback(settings, reason="bad canary")
    assert (rolled.champion, rolled.previous_champion) == (1, None)
    assert _everywhere(settings) == [{1}, {1}]


def test_a_replica_that_is_down_during_a_publish_gets_the_version_when_it_is_back(
    tiny_version, two_replicas, replica_b: Replica
) -> None:
    settings = two_replicas
    a, b = settings.triton.replicas
    name = settings.triton.model_name
    assert _publish(settings, tiny_version) == 1
    promote(settings, 1, reason="first")

    # B is down: the publish succeeds on A alone, B is left out and counted.
    replica_b.stop()
    skipped = _unreachable("publish")
    assert _publish(settings, tiny_version) == 2
    assert _unreachable("publish") == skipped + 1
    assert _ready(settings, a) == {1, 2} and read_state(settings).candidate == 2

    # The retraining consumer reconciles every 0.3 s; B comes back with nothing loaded and gets both versions.
    consumer = settings.model_copy(
        update={
            "retrain": settings.retrain.model_copy(
                update={"reconcile_interval_s": 0.3, "group_id": f"retrain-{uuid.uuid4().hex[:6]}"}
            )
        }
    )
    retrainer = Retrainer(consumer, train=lambda *a, **k: None)
    errors: list[BaseException] = []

    def run() -> None:
        try:
            retrainer.run()
        except BaseException as exc:  # noqa: BLE001 - reported by the test
            errors.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    try:
        replica_b.start()
        wait_until(lambda: _ready(settings, b) == {1, 2} or errors, 120, "replica B serving versions 1 and 2")
        assert not errors, errors
        wait_until(lambda: all(_smoke_requests(b, name, v) >= 1 for v in (1, 2)), 60, "both smoke-tested on B")
    finally:
        retrainer.stop()
        thread.join(60)
    assert not thread.is_alive() and not errors, errors

    # B misses a withdrawal (it does not answer): it keeps serving the withdrawn version until a reconcile.
    replica_b.signal(signal.SIGSTOP)
    try:
        skipped = _unreachable("withdraw")
        assert withdraw(settings, 2, reason="canary: less accurate").candidate is None
        assert _unreachable("withdraw") == skipped + 1
        assert _ready(settings, a) == {1}
    finally:
        replica_b.signal(signal.SIGCONT)
    assert _ready(settings, b) == {1, 2}

    publisher = Publisher(settings)
    try:
        assert publisher.reconcile() == {a: [1], b: [1]}
    finally:
        publisher.close()
    assert _everywhere(settings) == [{1}, {1}]


def _fail_on_replica_b(version: Path) -> None:
    """Every request fails on the server whose environment says it is replica B; the others answer."""
    model = version / "model.py"
    model.write_text(
        model.read_text().replace(
            "    def execute(self, requests):\n",
            "    def execute(self, requests):\n"
            "        import os\n"
            f"        if os.environ.get({ON_B!r}) == 'b':\n"
            "            broken = pb_utils.TritonError('broken on B')\n"
            "            return [pb_utils.InferenceResponse(error=broken) for _ in requests]\n",
            1,
        )
    )


def test_a_version_that_fails_its_smoke_test_on_one_replica_is_rolled_back_on_every_replica(
    tiny_version, two_replicas
) -> None:
    settings = two_replicas
    a, b = settings.triton.replicas
    name = settings.triton.model_name
    repo = ModelRepository(settings)
    assert _publish(settings, tiny_version) == 1
    promote(settings, 1, reason="first")
    before = [_probs(url, name, 1) for url in (a, b)]

    staging = tiny_version.copy_to(repo.staging_dir())
    _fail_on_replica_b(staging)
    with pytest.raises(VersionRejected, match=f"{name} version 2 rejected: on Triton {b}: smoke request"):
        publish_version(settings, staging)

    assert _everywhere(settings) == [{1}, {1}]  # A had loaded 2 and answered its smoke request: unloaded again
    assert repo.versions() == [1] and repo.served() == [1]
    state = read_state(settings)
    assert (state.event, state.champion, state.candidate) == ("rejected", 1, None)
    assert state.reason.startswith("version 2: ") and b in state.reason
    for url, probs in zip((a, b), before, strict=True):
        np.testing.assert_allclose(_probs(url, name, 1), probs, atol=1e-6)
