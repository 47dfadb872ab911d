"""Running the stream workers: one role per process, several replicas per role in one consumer group."""

from __future__ import annotations

import asyncio
import logging
import signal
import sys
from collections.abc import Sequence

from foundation.health import HealthServer
from foundation.heap import freeze_startup_heap
from foundation.settings import Settings
from foundation.shutdown import exit_after
from foundation.supervisor import Child, Supervisor

log = logging.getLogger(__name__)

ROLES = ("features", "inference")


def health_port(settings: Settings, role: str, replica: int) -> int:
    """The port of a worker's /healthz, /readyz and /metrics: ``metrics_port`` + 2 x replica + role index."""
    return settings.workers.metrics_port + replica * len(ROLES) + ROLES.index(role)


def run_worker(settings: Settings, role: str, replica: int) -> None:
    """Run one worker in this process until SIGTERM or SIGINT; in-flight batches finish first."""
    if role not in ROLES:
        raise ValueError(f"unknown role {role!r}; choose from {ROLES}")
    # Port 0 in the settings disables the endpoint; the worker still beats a (never served) heartbeat.
    health = HealthServer(health_port(settings, role, replica) if settings.workers.metrics_port else 0)
    if settings.workers.metrics_port:
        health.start()
    try:
        if role == "features":
            from streams.feature_app import run

            run(settings, replica, health)
        else:
            from streams.triton_client import TritonAdmin

            # One client for every probe: the gRPC client is thread-safe (probes run in the health server's threads).
            with TritonAdmin.of(settings, timeout_s=2.0) as triton:
                health.add_check("triton", triton.is_ready)
                asyncio.run(_run_inference(settings, replica, health))
    finally:
        health.stop()


async def _run_inference(settings: Settings, replica: int, health: HealthServer) -> None:
    from streams.inference import InferenceWorker

    worker = InferenceWorker(settings, replica, health)
    loop = asyncio.get_running_loop()

    def stop() -> None:
        exit_after(settings.workers.shutdown_grace_s, "the inference worker")
        worker.stop()

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop)
    freeze_startup_heap()
    await worker.run()


def supervise(
    child_argv: Sequence[str],
    roles: Sequence[str],
    replicas: int,
    restart_delay_s: float = 2.0,
    grace_s: float = 30.0,
) -> int:
    """Start ``replicas`` processes per role (``child_argv + [--role R --replica I]``), restart any that dies (after
    ``restart_delay_s``, doubled for each quick exit in a row), and stop them all on SIGTERM/SIGINT: SIGTERM, then
    SIGKILL for any still running ``grace_s`` later. Returns 0 after a clean stop."""
    children = [
        Child(f"{role}-{replica}", [*child_argv, "--role", role, "--replica", str(replica)])
        for role in roles
        for replica in range(replicas)
    ]
    return Supervisor(children, restart_delay_s=restart_delay_s, grace_s=grace_s).run()


def child_argv(config: str | None) -> list[str]:
    argv = [sys.executable, "-m", "driftloop.cli"]
    if config:
        argv += ["--config", config]
    return [*argv, "workers", "run"]
