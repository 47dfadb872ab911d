"""Health, readiness and metrics of a worker, on one HTTP port.

Every driftloop worker (stream workers, drift monitor, retraining consumer) serves, on one port:

- ``GET /healthz`` (liveness): 200 while the worker's loop is alive, i.e. it called :meth:`HealthServer.beat`
  within the last ``stale_after_s`` seconds; 503 once the heartbeat is stale (a stuck loop: restart the process).
- ``GET /readyz`` (readiness): runs the named checks; 200 with each check's result as JSON when all pass,
  503 when any fails, raises or takes longer than ``check_timeout_s``.
- ``GET /metrics``: the Prometheus registry (``prometheus_client``'s default one unless another is given).

Kubernetes probes, the compose healthchecks and Prometheus all use this one port.

Example::

    health = HealthServer(settings.workers.metrics_port)
    health.add_check("kafka", consumer_is_assigned).add_check("triton", triton_is_ready)
    health.start()
    try:
        while running:
            health.beat()
            ...
    finally:
        health.stop()

A check is a callable taking no arguments. It passes when it returns ``None`` or anything truthy, fails when it
returns a falsy value other than ``None`` or raises; a returned string is reported as its detail. Checks run on
the server's request thread, so keep them cheap (report cached state, or probe with a short timeout).

For healthchecks in containers that have no curl: ``python -m foundation.health http://127.0.0.1:9400/readyz``
exits 0 when the endpoint answers 2xx and 1 otherwise.
"""

from __future__ import annotations

import json
import logging
import socket
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, CollectorRegistry, generate_latest

log = logging.getLogger(__name__)

Check = Callable[[], object]

LIVENESS_PATH = "/healthz"
READINESS_PATH = "/readyz"
METRICS_PATH = "/metrics"


class HealthServer:
    """A threaded HTTP server (daemon threads) for ``/healthz``, ``/readyz`` and ``/metrics``.

    Args:
        port: TCP port to listen on; 0 picks a free one (see :attr:`port` after :meth:`start`). Workers pass
            ``settings.workers.metrics_port`` (env ``DRIFTLOOP_WORKERS__METRICS_PORT``, default 9400) or
            ``settings.monitoring.metrics_port`` (default 9410).
        host: address to bind, default ``0.0.0.0`` (all IPv4 interfaces, as probes come from the kubelet);
            an address containing ``:`` binds IPv6.
        stale_after_s: liveness fails when the last :meth:`beat` is older than this (default 60 s). The clock
            starts at construction, so a worker that never beats turns unhealthy after this long.
        check_timeout_s: a readiness check still running after this long counts as failed (default 2 s).
        registry: the Prometheus registry served on ``/metrics`` (default: ``prometheus_client.REGISTRY``).
        clock: monotonic seconds; tests inject a fake one.
    """

    def __init__(
        self,
        port: int,
        host: str = "0.0.0.0",
        *,
        stale_after_s: float = 60.0,
        check_timeout_s: float = 2.0,
        registry: CollectorRegistry = REGISTRY,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if stale_after_s <= 0 or check_timeout_s <= 0:
            raise ValueError("stale_after_s and check_timeout_s must be positive")
        self.host = host
        self.stale_after_s = stale_after_s
        self.check_timeout_s = check_timeout_s
        self.registry = registry
        self._requested_port = port
        self._clock = clock
        self._last_beat = clock()
        self._checks: dict[str, Check] = {}
        self._lock = threading.Lock()
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # What the worker calls.

    def add_check(self, name: str, check: Check) -> HealthServer:
        """Register (or replace) a readiness check under ``name``. Returns the server, for chaining."""
        if not name:
            raise ValueError("a readiness check needs a name")
        with self._lock:
            self._checks[name] = check
        return self

    def remove_check(self, name: str) -> None:
        """Forget a readiness check; unknown names are ignored."""
        with self._lock:
            self._checks.pop(name, None)

    def beat(self) -> None:
        """Record that the worker's loop is alive. Cheap: call it on every iteration."""
        self._last_beat = self._clock()

    def start(self) -> HealthServer:
        """Bind the port and serve in a daemon thread. Returns the server.

        Raises:
            OSError: the port cannot be bound (in use, or privileged); the message names host and port.
            RuntimeError: the server is already running.
        """
        if self._httpd is not None:
            raise RuntimeError(f"health server already serving on port {self.port}")
        server_class = _IPv6Server if ":" in self.host else _Server
        try:
            httpd = server_class((self.host, self._requested_port), _Handler)
        except OSError as exc:
            raise OSError(
                exc.errno, f"health server cannot bind {self.host}:{self._requested_port}: {exc.strerror}"
            ) from exc
        httpd.health = self
        self._httpd = httpd
        self._thread = threading.Thread(
            target=httpd.serve_forever, kwargs={"poll_interval": 0.1}, name=f"health-{self.port}", daemon=True
        )
        self._thread.start()
        log.info("health and metrics served", extra={"port": self.port, "host": self.host})
        return self

    def stop(self) -> None:
        """Stop serving and close the port. Idempotent."""
        httpd, thread = self._httpd, self._thread
        if httpd is None:
            return
        self._httpd = self._thread = None
        httpd.shutdown()
        httpd.server_close()
        if thread is not None:
            thread.join(timeout=5)

    def __enter__(self) -> HealthServer:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    @property
    def port(self) -> int:
        """The bound port once started (useful with ``port=0``), else the requested one."""
        return self._httpd.server_address[1] if self._httpd is not None else self._requested_port

    @property
    def url(self) -> str:
        """``http://host:port`` of the running server, with ``127.0.0.1`` for a wildcard host."""
        host = {"0.0.0.0": "127.0.0.1", "::": "[::1]", "": "127.0.0.1"}.get(self.host, self.host)
        if ":" in host and not host.startswith("["):
            host = f"[{host}]"
        return f"http://{host}:{self.port}"

    # What the endpoints answer (plain methods: testable without HTTP).

    def liveness(self) -> tuple[bool, dict[str, Any]]:
        """``(alive, body)``: alive when the last beat is at most ``stale_after_s`` old."""
        age = max(0.0, self._clock() - self._last_beat)
        alive = age <= self.stale_after_s
        return alive, {
            "status": "alive" if alive else "stale",
            "last_beat_s_ago": round(age, 3),
            "stale_after_s": self.stale_after_s,
        }

    def readiness(self) -> tuple[bool, dict[str, Any]]:
        """``(ready, body)``: runs every check (each bounded by ``check_timeout_s``); ready when all pass."""
        with self._lock:
            checks = list(self._checks.items())
        results = {name: self._run_check(check) for name, check in checks}
        ready = all(result["ok"] for result in results.values())
        return ready, {"status": "ready" if ready else "not ready", "checks": results}

    def _run_check(self, check: Check) -> dict[str, Any]:
        outcome: dict[str, Any] = {}

        def run() -> None:
            try:
                outcome["value"] = check()
            except Exception as exc:  # noqa: BLE001 - any failure of a check means "not ready", with its reason
                outcome["error"] = f"{type(exc).__name__}: {exc}"

        started = self._clock()
        worker = threading.Thread(target=run, name="health-check", daemon=True)
        worker.start()
        worker.join(self.check_timeout_s)
        elapsed_ms = round((self._clock() - started) * 1000, 3)
        if worker.is_alive():
            return {"ok": False, "detail": f"timed out after {self.check_timeout_s:g}s", "ms": elapsed_ms}
        if "error" in outcome:
            return {"ok": False, "detail": outcome["error"], "ms": elapsed_ms}
        value = outcome.get("value")
        ok = value is None or bool(value)
        result: dict[str, Any] = {"ok": ok, "ms": elapsed_ms}
        if isinstance(value, str) and value:
            result["detail"] = value
        elif not ok:
            result["detail"] = f"check returned {value!r}"
        return result


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    health: HealthServer


class _IPv6Server(_Server):
    address_family = socket.AF_INET6


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    server_version = "driftloop-health"
    protocol_version = "HTTP/1.1"
    timeout = 30  # seconds an idle keep-alive connection (Prometheus keeps one) may hold its thread

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        self._answer(with_body=True)

    def do_HEAD(self) -> None:  # noqa: N802
        self._answer(with_body=False)

    def _answer(self, with_body: bool) -> None:
        health = self.server.health
        path = self.path.split("?", 1)[0].rstrip("/") or "/"
        if path == METRICS_PATH:
            self._send(200, generate_latest(health.registry), CONTENT_TYPE_LATEST, with_body)
            return
        if path == LIVENESS_PATH:
            ok, body = health.liveness()
        elif path == READINESS_PATH:
            ok, body = health.readiness()
        else:
            body = {"error": f"no such endpoint {path}", "endpoints": [LIVENESS_PATH, READINESS_PATH, METRICS_PATH]}
            self._send(404, _json(body), "application/json", with_body)
            return
        self._send(200 if ok else 503, _json(body), "application/json", with_body)

    def _send(self, status: int, payload: bytes, content_type: str, with_body: bool) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(payload)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        if with_body:
            self.wfile.write(payload)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - http.server's signature
        log.debug("health %s %s", self.address_string(), format % args)


def _json(body: dict[str, Any]) -> bytes:
    return json.dumps(body, sort_keys=True).encode("utf-8")


def probe(url: str, timeout_s: float = 3.0) -> bool:
    """True when ``url`` answers a 2xx status within ``timeout_s``; False on any other status or error."""
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as response:  # noqa: S310 - a local health URL
            return 200 <= response.status < 300
    except (urllib.error.URLError, OSError, ValueError):
        return False


def main(argv: list[str] | None = None) -> int:
    """``python -m foundation.health URL [TIMEOUT_S]``: exit 0 when the URL answers 2xx, else 1."""
    args = sys.argv[1:] if argv is None else argv
    if not 1 <= len(args) <= 2:
        print("usage: python -m foundation.health URL [TIMEOUT_S]", file=sys.stderr)
        return 2
    return 0 if probe(args[0], float(args[1]) if len(args) == 2 else 3.0) else 1


if __name__ == "__main__":
    sys.exit(main())
