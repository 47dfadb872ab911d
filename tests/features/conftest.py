"""Fixtures of the features tests: one real Feast store per online store kind and session, applied in a temporary
folder (DuckDB offline store in both cases).

Every store test runs twice, once per online store: ``sqlite`` (a file in the store folder) and ``redis`` (a real
``redis-server`` that this module starts on a free port for the session and stops at the end). Tests share a
store, so each test uses entity ids of its own.
"""

from __future__ import annotations

import shutil
import socket
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import pandas as pd
import pytest
from feast import FeatureStore

from driftloop.stack.process import ServerProcess
from features import apply_repo
from foundation.settings import Settings, load_settings
from streams import ensure_topics
from tests.helpers import free_port, redis_command

ONLINE_STORES = ("sqlite", "redis")
REDIS_PACKAGE = "redis-server"  # Debian's package; make setup installs it


@dataclass(frozen=True)
class OnlineStore:
    """Which online store a test runs against; ``connection_string`` is set for redis."""

    kind: str
    connection_string: str | None = None

    def settings(self, data_dir: Path, **feast: object) -> Settings:
        """Settings of a Feast store under ``data_dir`` using this online store; kwargs override ``feast``."""
        section: dict[str, object] = {"data_dir": data_dir, "online_store": self.kind}
        if self.connection_string:
            section["redis_connection_string"] = self.connection_string
        section.update(feast)
        return load_settings(feast=section)


@dataclass(frozen=True)
class FeastTestStore:
    settings: Settings
    store: FeatureStore
    online: OnlineStore


def _redis_answers(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(16).startswith(b"+PONG")
    except OSError:
        return False


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A private ``redis-server`` on a free loopback port for the session: ``host:port``. Persistence is off."""
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.fail(
            f"redis-server is not on PATH: install Debian's package {REDIS_PACKAGE!r} "
            f"(apt-get install -y {REDIS_PACKAGE}); make setup installs it",
            pytrace=False,
        )
    workdir = tmp_path_factory.mktemp("redis")
    port = free_port()
    server = ServerProcess("redis", workdir)
    server.start(redis_command(binary, port, workdir))
    try:
        server.wait_ready(lambda: _redis_answers(port), 15, f"PING on port {port}")
        yield f"127.0.0.1:{port}"
    finally:
        server.stop(timeout_s=10)


@pytest.fixture(scope="session", params=ONLINE_STORES)
def online_store(request: pytest.FixtureRequest) -> OnlineStore:
    """Each online store kind in turn; redis starts the session's ``redis_server`` on first use."""
    if request.param == "redis":
        return OnlineStore("redis", request.getfixturevalue("redis_server"))
    return OnlineStore(request.param)


@pytest.fixture(scope="session")
def feast_store(online_store: OnlineStore, tmp_path_factory: pytest.TempPathFactory) -> FeastTestStore:
    """The definitions applied to a store (sqlite or redis online, DuckDB offline) under a temporary folder."""
    settings = online_store.settings(tmp_path_factory.mktemp(f"feast-{online_store.kind}"))
    return FeastTestStore(settings=settings, store=apply_repo(settings), online=online_store)


@pytest.fixture
def stream_rows_factory() -> Callable[..., pd.DataFrame]:
    """Build rows for ``push_stream_features``: ``factory([(entity_id, event_time, msg_count_1h), ...])``.

    The other features derive from ``msg_count_1h`` so a test can tell which row a value came from.
    """

    def factory(rows: list[tuple[str, datetime, int]]) -> pd.DataFrame:
        return pd.DataFrame(
            {
                "entity_id": [entity_id for entity_id, _, _ in rows],
                "event_timestamp": [event_time for _, event_time, _ in rows],
                "msg_count_1h": [count for _, _, count in rows],
                "msg_count_24h": [count * 10 for _, _, count in rows],
                "mean_text_length": [float(count) / 2 for _, _, count in rows],
                "seconds_since_last_event": [float(count) + 0.5 for _, _, count in rows],
            }
        )

    return factory


@pytest.fixture
def feature_worker_settings(settings_factory, tmp_path) -> Callable[..., Settings]:
    """Settings of an in-process feature worker on the session's broker with a Feast store of its own (topics made,
    store applied); kwargs override the ``workers`` section."""

    def make(**workers: object) -> Settings:
        defaults = {
            "features_group": f"features-{uuid.uuid4().hex[:6]}",
            "faust_data_dir": tmp_path / "faust",
            "metrics_port": 0,
        }
        settings = settings_factory(feast={"data_dir": tmp_path / "feast"}, workers=defaults | workers)
        ensure_topics(settings)
        apply_repo(settings)
        return settings

    return make
