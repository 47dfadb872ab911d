"""The local stack: a real Kafka broker, a real Triton server and a Feast store, on one machine without Docker.

A component whose server is configured (``KAFKA_BOOTSTRAP_SERVERS``, ``TRITON_URL``) is "external": the stack
starts nothing for it and only probes it.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from driftloop.stack import kafka, triton
from driftloop.stack.exceptions import ComponentNotFound, StackError
from driftloop.stack.process import ServerProcess
from foundation.settings import Settings

COMPONENTS = ("kafka", "triton", "feast")

__all__ = ["COMPONENTS", "ComponentNotFound", "ComponentStatus", "StackError", "down", "logs", "status", "up"]


@dataclass(frozen=True)
class ComponentStatus:
    """What ``driftloop stack status`` reports for one component."""

    name: str
    mode: str  # "local" (started by the stack), "external" (configured server) or "store" (Feast: files)
    healthy: bool
    pid: int | None
    detail: str

    def as_dict(self) -> dict:
        return {"name": self.name, "mode": self.mode, "healthy": self.healthy, "pid": self.pid, "detail": self.detail}


def _external(settings: Settings, name: str) -> bool:
    return (name == "kafka" and settings.kafka.bootstrap_servers is not None) or (
        name == "triton" and settings.triton.url is not None
    )


def _server(settings: Settings, name: str) -> ServerProcess | None:
    return {"kafka": kafka.server, "triton": triton.server}.get(name, lambda _: None)(settings)


def up(settings: Settings, only: tuple[str, ...] = COMPONENTS, report: Callable[[str], None] = print) -> None:
    """Start (or reuse) each component and wait until it is ready, reporting one line per step.

    Raises:
        StackError: a component did not come up; the message carries its log tail.
    """
    for name in only:
        started = time.monotonic()
        if _external(settings, name):
            report(f"{name}: external, not started ({_describe(settings, name)})")
            continue
        if name == "kafka":
            topics = kafka.up(settings)
            created = sum(1 for state in topics.values() if state == "created")
            detail = f"{settings.kafka_bootstrap}, {len(topics)} topics ({created} created)"
        elif name == "triton":
            models = triton.up(settings)
            detail = f"http://{settings.triton_http} grpc {settings.triton_grpc}, models: {', '.join(models) or 'none'}"
        else:
            from features.store import apply_repo  # the feature repo imports feast: only load it when needed

            apply_repo(settings)
            detail = f"repository applied in {settings.feast_dir}"
        report(f"{name}: ready in {time.monotonic() - started:.1f}s - {detail}")


def down(settings: Settings, only: tuple[str, ...] = COMPONENTS) -> list[str]:
    """Stop the local servers (reverse order); returns the names of those that were running."""
    stopped = []
    for name in reversed(only):
        proc = _server(settings, name)
        if proc is not None and proc.stop():
            stopped.append(name)
    return stopped


def status(settings: Settings, only: tuple[str, ...] = COMPONENTS) -> list[ComponentStatus]:
    """Probe every component; never raises for an unhealthy one."""
    result = []
    for name in only:
        proc = _server(settings, name)
        pid = proc.pid() if proc else None
        mode = "external" if _external(settings, name) else ("store" if name == "feast" else "local")
        if mode == "local" and pid is None:
            result.append(ComponentStatus(name, mode, False, None, "not running"))
            continue
        try:
            result.append(ComponentStatus(name, mode, True, pid, _describe(settings, name)))
        except Exception as exc:  # noqa: BLE001 - any probe failure is "unhealthy", with its reason
            result.append(ComponentStatus(name, mode, False, pid, f"{type(exc).__name__}: {exc}"))
    return result


def _describe(settings: Settings, name: str) -> str:
    if name == "kafka":
        return kafka.describe(settings)
    if name == "triton":
        return triton.describe(settings)
    from features.store import check_health

    return check_health(settings)


def logs(settings: Settings, name: str) -> ServerProcess:
    """The server whose log to show; Feast has no server (and so no log)."""
    proc = _server(settings, name)
    if proc is None:
        raise StackError(f"{name} has no server process and no log")
    return proc
