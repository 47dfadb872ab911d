"""Small helpers shared by tests (fixtures live in conftest.py files)."""

from __future__ import annotations

import socket
from pathlib import Path


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def worker_env(folder: Path) -> dict[str, str]:
    """Settings for worker processes started by a test: their own Feast store and faust state under ``folder``,
    a free faust web port, no metrics port, fast feature pushes. Kafka, Triton and groups are the test's to add."""
    return {
        "DRIFTLOOP_FEAST__DATA_DIR": str(folder / "feast"),
        "DRIFTLOOP_WORKERS__METRICS_PORT": "0",
        "DRIFTLOOP_WORKERS__FAUST_WEB_PORT": str(free_port()),
        "DRIFTLOOP_WORKERS__FAUST_DATA_DIR": str(folder / "faust"),
        "DRIFTLOOP_WORKERS__FEATURE_PUSH_INTERVAL_S": "0.2",
    }
