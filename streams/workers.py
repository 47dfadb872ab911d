"""Running the stream workers: one role per process, several replicas per role in one consumer group."""

from __future__ import annotations

import asyncio
import logging
import signal
import subprocess
import sys
import time
from collections.abc import Sequence

from foundation.health import HealthServer
from foundation.settings import Settings
from foundation.shutdown import exit_after
from driftloop.stack.triton import is_ready as triton_ready

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
            health.add_check("triton", lambda: triton_ready(settings))
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
    await worker.run()


def supervise(
    child_argv: Sequence[str], roles: Sequence[str], replicas: int, restart_delay_s: float = 2.0,
    grace_s: float = 30.0,
) -> int:  # fmt: skip
    """Start ``replicas`` processes per role (``child_argv + [--role R --replica I]``), restart any that dies,
    and stop them all on SIGTERM/SIGINT: SIGTERM, then SIGKILL for any still running ``grace_s`` later.
    Returns 0 after a clean stop."""
    procs: dict[tuple[str, int], subprocess.Popen] = {}
    stopping = False
    kill_at = float("inf")

    def spawn(role: str, replica: int) -> None:
        argv = [*child_argv, "--role", role, "--replica", str(replica)]
        procs[(role, replica)] = subprocess.Popen(argv)  # noqa: S603 - our own command line
        log.info("started %s worker %d", role, replica, extra={"pid": procs[(role, replica)].pid})

    def on_signal(signum: int, _frame: object) -> None:
        nonlocal stopping, kill_at
        if not stopping:
            kill_at = time.monotonic() + grace_s
        stopping = True
        for proc in procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    for role in roles:
        for replica in range(replicas):
            spawn(role, replica)
    while True:
        time.sleep(0.5)
        if stopping:
            running = [proc for proc in procs.values() if proc.poll() is None]
            if not running:
                return 0
            if time.monotonic() >= kill_at:
                for proc in running:
                    log.error("worker %d did not stop within %.0fs; SIGKILL", proc.pid, grace_s)
                    proc.kill()
                kill_at = float("inf")
            continue
        for (role, replica), proc in list(procs.items()):
            if proc.poll() is not None:
                log.error("%s worker %d exited with %s; restarting", role, replica, proc.returncode)
                time.sleep(restart_delay_s)
                spawn(role, replica)


def child_argv(config: str | None) -> list[str]:
    argv = [sys.executable, "-m", "driftloop.cli"]
    if config:
        argv += ["--config", config]
    return [*argv, "workers", "run"]
