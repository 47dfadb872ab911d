"""A publish SIGKILLed after Triton loaded the version but before the models-topic announcement, then a restart.

The publishing process is real (a subprocess running ``publish_version`` against the real Triton server and broker);
its announcement is made to hang, and it is killed once the version is loaded on Triton and the publish intent is on
disk — the moment the fault needs. On restart the version is announced when it answers its smoke requests (the
retraining consumer's start), or unloaded and removed when it does not; stale staging folders of killed builds go.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from streams import ensure_topics
from tests.helpers import wait_until
from training.publish import TritonControl, promote, publish_version, recover_publish
from training.registry import read_state
from training.repository import STAGING_PREFIX, ModelRepository, _host
from training.retrain import Retrainer, version_for_trigger

pytestmark = pytest.mark.integration

REPO_ROOT = Path(__file__).resolve().parents[2]

# The publishing process: publish_version as the product runs it, with an announcement that never returns.
CHILD = """
import sys, threading
from pathlib import Path
import training.publish as publish
from foundation.settings import load_settings

publish.announce = lambda *args, **kwargs: threading.Event().wait()
publish.publish_version(load_settings(), Path(sys.argv[1]), reason="built for drift-9")
"""


def _env(settings) -> dict[str, str]:
    env = {
        **os.environ,
        "DRIFTLOOP_KAFKA__BOOTSTRAP_SERVERS": settings.kafka_bootstrap,
        "DRIFTLOOP_KAFKA__TOPIC_PREFIX": settings.kafka.topic_prefix,
        "DRIFTLOOP_TRITON__URL": settings.triton_http,
        "DRIFTLOOP_TRITON__GRPC_URL": settings.triton_grpc,
        "DRIFTLOOP_TRITON__MODEL_REPOSITORY": str(settings.triton.model_repository),
        "DRIFTLOOP_TRITON__MODEL_NAME": settings.triton.model_name,
        "PYTHONPATH": str(REPO_ROOT),
    }
    env.update(
        {f"DRIFTLOOP_TRAINING__{k.upper()}": str(v) for k, v in settings.training.model_dump().items() if k != "labels"}
    )
    return env


def _kill_between_load_and_announce(settings, tiny_version) -> tuple[int, int]:
    """Run a publish in a subprocess and SIGKILL it once its version is loaded and the intent is on disk.

    Returns the version it was publishing and the dead process's id.
    """
    repo = ModelRepository(settings)
    staging = tiny_version.copy_to(repo.staging_dir())
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(staging)],
        env=_env(settings),
        cwd=REPO_ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    control = TritonControl(settings)
    try:

        def loaded() -> bool:
            assert child.poll() is None, child.stdout.read().decode(errors="replace")
            intent = repo.read_intent()
            return intent is not None and control.states(repo.name).get(intent["version"]) == "READY"

        wait_until(loaded, 120, "the version loaded on Triton with a pending intent")
        version = repo.read_intent()["version"]
        os.kill(child.pid, signal.SIGKILL)
        child.wait(30)
    finally:
        control.close()
        if child.poll() is None:
            child.kill()
    return version, child.pid


@pytest.mark.timeout(400)
def test_a_publish_killed_between_load_and_announce_is_finished_or_rolled_back(tiny_version, publish_settings):
    settings = publish_settings()
    ensure_topics(settings)
    repo = ModelRepository(settings)
    champion = publish_version(settings, tiny_version.copy_to(repo.staging_dir()), reason="bootstrap").version
    promote(settings, champion, reason="first")

    # 1. Killed after the load, before the announcement: loaded, but nobody knows it.
    version, dead_pid = _kill_between_load_and_announce(settings, tiny_version)
    assert version == champion + 1 and repo.version_dir(version).is_dir()
    assert read_state(settings).candidate is None and repo.read_intent()["version"] == version
    assert repo.metadata(version)["trigger_id"] == "test"
    # A build killed earlier left a staging folder; one of a live process (this one) stays.
    stale = repo.model_dir / f"{STAGING_PREFIX}{_host()}-{dead_pid}.1-0123456789ab"
    (stale / "tokenizer").mkdir(parents=True)
    live = repo.staging_dir()
    live.mkdir()

    # The retraining consumer's start finishes it: the version answers its smoke requests, so it is announced.
    Retrainer(settings, train=lambda *a, **k: None).recover()

    state = read_state(settings)
    assert (state.event, state.champion, state.candidate) == ("published", champion, version)
    assert "publish finished after an interruption" in state.reason and "drift-9" in state.reason
    assert repo.read_intent() is None and sorted(repo.served()) == [champion, version]
    assert not stale.exists() and live.exists()
    # A restarted run for the same drift resumes this candidate's canary instead of skipping it as built already.
    assert version_for_trigger(repo, {"test"}) == version and read_state(settings).candidate == version

    # 2. Killed at the same point, but the version no longer answers like in process: unloaded and removed.
    broken, _ = _kill_between_load_and_announce(settings, tiny_version)
    metadata_file = repo.version_dir(broken) / "metadata.json"
    metadata = json.loads(metadata_file.read_text())
    metadata["smoke"]["probs"] = [[-1.0] * len(row) for row in metadata["smoke"]["probs"]]  # nothing matches
    metadata_file.write_text(json.dumps(metadata))

    assert recover_publish(settings) is None

    state = read_state(settings)
    assert (state.event, state.champion, state.candidate) == ("rejected", champion, version)
    assert state.reason.startswith(f"version {broken}: interrupted publish rolled back")
    assert not repo.version_dir(broken).exists() and repo.read_intent() is None
    assert sorted(repo.served()) == [champion, version]
    control = TritonControl(settings)
    try:
        assert control.states(repo.name).get(broken) != "READY"
    finally:
        control.close()
