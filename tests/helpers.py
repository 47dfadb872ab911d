"""Small helpers shared by tests (fixtures live in conftest.py files)."""

from __future__ import annotations

import socket
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar

from streams.schemas import DriftEvent, WindowInfo

T = TypeVar("T")


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


def wait_until(predicate: Callable[[], T], timeout_s: float = 60.0, what: str = "condition", poll_s: float = 0.1) -> T:
    """Poll ``predicate`` until it returns something truthy, and return that; fail the test after ``timeout_s``.

    The one way a test waits: on a condition, never on a fixed sleep."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not met within {timeout_s:.0f}s")
        time.sleep(poll_s)


def drift_event(
    event_id: str,
    at: datetime,
    *,
    kind: str = "performance",
    status: str = "firing",
    model: str = "classifier",
    severity: str = "critical",
    window_start: datetime | None = None,
    size: int = 100,
    labelled: int = 50,
    metrics: dict[str, Any] | None = None,
    drifted_columns: tuple[str, ...] = (),
) -> DriftEvent:
    """A drift event of ``model`` (version 1) detected at ``at``, its window ending then."""
    return DriftEvent(
        id=event_id,
        kind=kind,
        status=status,
        severity=severity,
        model=model,
        version=1,
        dedup_key=f"driftloop/{model}/{kind}",
        window=WindowInfo(start=window_start or at, end=at, size=size, labelled=labelled),
        metrics={"accuracy": 0.4} if metrics is None else metrics,
        drifted_columns=list(drifted_columns),
        started_at=at,
        detected_at=at,
    )


def redis_command(binary: str, port: int, folder: Path, persistent: bool = False) -> list[str]:
    """A ``redis-server`` in the foreground on 127.0.0.1:``port``, data in ``folder``; ``persistent``: an append-only
    file synced on every write (what survives a restart), else nothing saved."""
    persistence = ["--appendonly", "yes", "--appendfsync", "always"] if persistent else ["--appendonly", "no"]
    return [
        binary,
        "--port",
        str(port),
        "--bind",
        "127.0.0.1",
        "--save",
        "",
        *persistence,
        "--daemonize",
        "no",
        "--dir",
        str(folder),
    ]
