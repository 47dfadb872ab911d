"""Session fixtures for real servers.

Kafka: ``KAFKA_BOOTSTRAP_SERVERS`` when set; else testcontainers' Kafka module when a Docker engine answers; else the
local stack's broker (jars from Maven Central), started in a temporary run folder on free ports.
Triton: ``TRITON_URL`` when set; else the local stack's tritonserver on a temporary model repository.
Each test gets its own topic prefix and consumer groups, so tests never see each other's records.
"""

from __future__ import annotations

import logging
import os
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

import features  # noqa: F401 - before any feast import: keeps prometheus_client in-process (see features/__init__)
from driftloop.stack import kafka as local_kafka
from driftloop.stack import triton as local_triton
from foundation.paths import REPO_ROOT
from foundation.settings import Settings, load_settings
from tests.helpers import free_port

# Fixtures shared across folders, found by every test that names them: the keyword model and a pipeline
# (tests/streams, tests/chaos), and the closed loop's settings (tests/e2e, tests/chaos).
pytest_plugins = ("tests.streams.support", "tests.e2e.loop")

log = logging.getLogger(__name__)


@pytest.fixture(scope="session")
def stack_settings(tmp_path_factory: pytest.TempPathFactory) -> Settings:
    """Settings of a private local stack: temporary run folder, free ports, the checkout's serving venv."""
    serving = Path(os.environ.get("DRIFTLOOP_STACK__SERVING_VENV", REPO_ROOT / ".venv-serving"))
    return load_settings(
        stack={
            "run_dir": tmp_path_factory.mktemp("stack"),
            "serving_venv": serving,
            "kafka_port": free_port(),
            "kafka_controller_port": free_port(),
            "triton_http_port": free_port(),
            "triton_grpc_port": free_port(),
            "triton_metrics_port": free_port(),
            "kafka_heap": "512m",
        },
    )


def _docker_answers() -> bool:
    try:
        import docker

        docker.from_env(timeout=3).ping()
    except Exception:  # noqa: BLE001 - no engine, no socket, no package: all mean "no Docker"
        return False
    return True


@pytest.fixture(scope="session")
def kafka_bootstrap(stack_settings: Settings) -> Iterator[str]:
    """Bootstrap servers of a real broker for the whole session."""
    if os.environ.get("KAFKA_BOOTSTRAP_SERVERS"):
        yield os.environ["KAFKA_BOOTSTRAP_SERVERS"]
        return
    if _docker_answers():
        from testcontainers.kafka import KafkaContainer

        with KafkaContainer().with_kraft() as container:
            yield container.get_bootstrap_server()
        return
    proc = local_kafka.server(stack_settings)
    local_kafka.start(stack_settings)
    try:
        proc.wait_ready(lambda: local_kafka.is_ready(stack_settings), 120, "test broker")
        yield stack_settings.kafka_bootstrap
    finally:
        proc.stop()


@pytest.fixture
def settings_factory(stack_settings: Settings, kafka_bootstrap: str) -> Callable[..., Settings]:
    """Build settings for this test: the session's broker, a unique topic prefix; kwargs override sections."""
    prefix = f"t{uuid.uuid4().hex[:8]}-"

    def make(**sections: dict) -> Settings:
        kafka = {"bootstrap_servers": kafka_bootstrap, "topic_prefix": prefix, "session_timeout_ms": 6000}
        kafka.update(sections.pop("kafka", {}))
        stack = stack_settings.stack.model_dump()
        stack.update(sections.pop("stack", {}))
        return load_settings(kafka=kafka, stack=stack, **sections)

    return make


@dataclass(frozen=True)
class TritonEndpoint:
    """A running Triton server; ``repository`` and ``log`` are None when it is an external server (load with file
    overrides)."""

    http: str
    grpc: str
    repository: Path | None
    log: Path | None = None


@pytest.fixture(scope="session")
def triton_server(stack_settings: Settings, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TritonEndpoint]:
    """A real Triton server for the whole session."""
    if os.environ.get("TRITON_URL"):
        http = os.environ["TRITON_URL"].split("://", 1)[-1]
        grpc = os.environ.get("TRITON_GRPC_URL", "").split("://", 1)[-1] or http.rsplit(":", 1)[0] + ":8001"
        yield TritonEndpoint(http, grpc, None)
        return
    repository = tmp_path_factory.mktemp("triton_repo")
    settings = load_settings(stack=stack_settings.stack.model_dump(), triton={"model_repository": repository})
    proc = local_triton.server(settings)
    local_triton.start(settings)
    try:
        proc.wait_ready(lambda: local_triton.is_ready(settings), 120, "test tritonserver")
        yield TritonEndpoint(settings.triton_http, settings.triton_grpc, repository, proc.log_file)
    finally:
        proc.stop()
