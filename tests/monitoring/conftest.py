"""Fixtures of the monitoring tests: a real Alertmanager, local webhook receivers, a synthetic model and reference.

Alertmanager is Debian's ``prometheus-alertmanager`` (binary ``/usr/bin/prometheus-alertmanager``, or
``$ALERTMANAGER_BIN``), run by the session on a free port with a temporary configuration and storage, clustering off.
Its one receiver is a webhook to a local recorder, so tests can see what Alertmanager itself notifies.
"""

from __future__ import annotations

import json
import os
import shutil
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from driftloop.stack.process import ServerProcess
from monitoring.reference import ReferenceSample, reference_from_metadata
from monitoring.synthetic import WordModel, version_metadata, write_version_metadata
from streams.schemas import Prediction
from streams.synthetic import SyntheticStream
from tests.helpers import free_port

ALERTMANAGER_PACKAGE = "prometheus-alertmanager"
ALERTMANAGER_BIN = "/usr/bin/prometheus-alertmanager"


# -- local webhook receivers ----------------------------------------------------------------------------------------


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: Any


@dataclass
class Recorder:
    """A real HTTP server that records every POST (JSON bodies) and answers scripted status codes."""

    url: str
    requests: list[Received] = field(default_factory=list)
    statuses: list[int] = field(default_factory=list)  # answered in order, then 200
    lock: threading.Lock = field(default_factory=threading.Lock)

    def bodies(self, path: str | None = None) -> list[Any]:
        with self.lock:
            return [r.body for r in self.requests if path is None or r.path == path]

    def wait_for(
        self, predicate: Callable[[list[Any]], bool], path: str | None = None, timeout_s: float = 20.0
    ) -> list:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            bodies = self.bodies(path)
            if predicate(bodies):
                return bodies
            time.sleep(0.1)
        raise AssertionError(
            f"recorder {self.url}{path or ''}: condition not met in {timeout_s}s; got {self.bodies(path)}"
        )


def _start_recorder() -> tuple[Recorder, ThreadingHTTPServer]:
    port = free_port()
    recorder = Recorder(url=f"http://127.0.0.1:{port}")

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 - http.server's naming
            raw = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            try:
                body = json.loads(raw)
            except ValueError:
                body = raw.decode(errors="replace")
            with recorder.lock:
                recorder.requests.append(Received(self.path, dict(self.headers), body))
                status = recorder.statuses.pop(0) if recorder.statuses else 200
            payload = b'{"status":"success","message":"Event processed"}' if status < 300 else b'{"status":"error"}'
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return recorder, server


@pytest.fixture
def recorder_factory() -> Iterator[Callable[[], Recorder]]:
    """Start local HTTP receivers for this test: ``recorder_factory()`` -> ``Recorder``."""
    servers: list[ThreadingHTTPServer] = []

    def make() -> Recorder:
        recorder, server = _start_recorder()
        servers.append(server)
        return recorder

    yield make
    for server in servers:
        server.shutdown()
        server.server_close()


# -- Alertmanager -------------------------------------------------------------------------------------------------


@dataclass
class AlertmanagerServer:
    url: str
    notifications: Recorder  # what Alertmanager itself sends to its webhook receiver

    def alerts(self, **labels: str) -> list[dict]:
        """Active alerts (``GET /api/v2/alerts``) matching the labels."""
        query = urllib.parse.urlencode([("filter", f'{k}="{v}"') for k, v in labels.items()])
        with urllib.request.urlopen(f"{self.url}/api/v2/alerts?{query}", timeout=5) as response:
            return json.loads(response.read())

    def wait_alerts(self, predicate: Callable[[list[dict]], bool], timeout_s: float = 20.0, **labels: str) -> list:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            alerts = self.alerts(**labels)
            if predicate(alerts):
                return alerts
            time.sleep(0.2)
        raise AssertionError(
            f"Alertmanager alerts {labels}: condition not met in {timeout_s}s; got {self.alerts(**labels)}"
        )


def _alertmanager_binary() -> str:
    binary = os.environ.get("ALERTMANAGER_BIN") or shutil.which("prometheus-alertmanager") or ALERTMANAGER_BIN
    if not Path(binary).is_file():
        pytest.fail(
            f"Alertmanager is not installed: no {binary}. Install Debian's package: "
            f"`apt-get install -y {ALERTMANAGER_PACKAGE}` (or set ALERTMANAGER_BIN)",
            pytrace=False,
        )
    return binary


@contextmanager
def running_alertmanager(folder: Path, config: str) -> Iterator[str]:
    """Run a real Alertmanager with ``config`` (YAML text) on a free port; yields its URL."""
    binary = _alertmanager_binary()
    config_file = folder / "alertmanager.yml"
    config_file.write_text(config)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    server = ServerProcess("alertmanager", folder)
    server.start(
        [
            binary,
            f"--config.file={config_file}",
            f"--storage.path={folder / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
            "--cluster.listen-address=",
            "--log.level=warn",
        ]
    )
    try:
        server.wait_ready(lambda: _answers(f"{url}/-/ready"), 30, f"{url}/-/ready")
        yield url
    finally:
        server.stop(timeout_s=10)


@pytest.fixture(scope="session")
def alertmanager(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AlertmanagerServer]:
    """A real Alertmanager for the session (its systemd service is not used)."""
    recorder, recorder_server = _start_recorder()
    config = (
        "route:\n"
        "  receiver: recorder\n"
        "  group_by: [alertname, model, kind]\n"
        "  group_wait: 1s\n"
        "  group_interval: 1s\n"
        "  repeat_interval: 1h\n"
        "receivers:\n"
        "  - name: recorder\n"
        "    webhook_configs:\n"
        f"      - url: {recorder.url}/alertmanager\n"
        "        send_resolved: true\n"
    )
    try:
        with running_alertmanager(tmp_path_factory.mktemp("alertmanager"), config) as url:
            yield AlertmanagerServer(url, recorder)
    finally:
        recorder_server.shutdown()
        recorder_server.server_close()


def _answers(url: str) -> bool:
    with urllib.request.urlopen(url, timeout=1) as response:
        return response.status == 200


# -- a model, its reference, its predictions ------------------------------------------------------------------------


@dataclass(frozen=True)
class SyntheticSetup:
    model: WordModel
    metadata: dict

    def reference(self) -> ReferenceSample:
        return reference_from_metadata(self.metadata, self.model.name, self.model.version, Path("metadata.json"))

    def write(self, repository: Path) -> Path:
        return write_version_metadata(repository, self.metadata)

    def predictions(self, n: int, seed: int, drift_at: int | None = None) -> list[tuple[Prediction, str]]:
        """``n`` predictions of the synthetic stream (drifted from ``drift_at`` on) with their true labels."""
        stream = SyntheticStream(seed=seed).stream(n, drift_at=drift_at)
        return [(self.model.predict(example.event), example.label) for example in stream]


@pytest.fixture
def synthetic_factory() -> Callable[..., SyntheticSetup]:
    """``synthetic_factory(name="classifier", version=1, reference_size=600)``: a fitted ``WordModel`` and the
    ``metadata.json`` of its version, with a reference of predictions of a stable synthetic stream."""

    def make(name: str = "classifier", version: int = 1, reference_size: int = 600) -> SyntheticSetup:
        model = WordModel(name, version).fit(SyntheticStream(seed=1).stream(1500))
        reference = [model.predict(e.event) for e in SyntheticStream(seed=2).stream(reference_size)]
        return SyntheticSetup(model, version_metadata(model, reference, metrics={"accuracy": 0.98, "macro_f1": 0.98}))

    return make
