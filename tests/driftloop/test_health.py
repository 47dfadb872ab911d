"""The health server, for real over HTTP on a free port: liveness, readiness, metrics, errors."""

from __future__ import annotations

import json
import socket
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator

import pytest
from prometheus_client import CollectorRegistry, Counter

from foundation.health import HealthServer, main, probe
from tests.helpers import wait_until

pytestmark = pytest.mark.unit


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def get(url: str) -> tuple[int, dict[str, str], bytes]:
    """Status, headers and body of a GET, for 2xx and error statuses alike."""
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read()


@pytest.fixture
def health_factory() -> Iterator[Callable[..., HealthServer]]:
    """Start health servers on free ports (port 0) on the loopback; stop them all after the test."""
    started: list[HealthServer] = []

    def make(**kwargs) -> HealthServer:
        kwargs.setdefault("registry", CollectorRegistry())
        server = HealthServer(0, "127.0.0.1", **kwargs).start()
        started.append(server)
        return server

    yield make
    for server in started:
        server.stop()


def test_liveness_is_ok_while_the_loop_beats(health_factory) -> None:
    clock = FakeClock()
    health = health_factory(stale_after_s=10, clock=clock)
    clock.now += 9
    health.beat()
    clock.now += 9.5

    status, headers, body = get(health.url + "/healthz")

    assert status == 200
    assert headers["Content-Type"] == "application/json"
    assert json.loads(body) == {"status": "alive", "last_beat_s_ago": 9.5, "stale_after_s": 10}


def test_liveness_fails_once_the_heartbeat_is_stale(health_factory) -> None:
    clock = FakeClock()
    health = health_factory(stale_after_s=10, clock=clock)
    clock.now += 10.5

    status, _, body = get(health.url + "/healthz")

    assert status == 503
    assert json.loads(body)["status"] == "stale"
    health.beat()
    assert get(health.url + "/healthz")[0] == 200


def test_a_worker_that_never_beats_turns_stale(health_factory) -> None:
    clock = FakeClock()
    health = health_factory(stale_after_s=5, clock=clock)

    assert get(health.url + "/healthz")[0] == 200
    clock.now += 6
    assert get(health.url + "/healthz")[0] == 503


def test_readiness_without_checks_is_ready(health_factory) -> None:
    status, _, body = get(health_factory().url + "/readyz")

    assert status == 200
    assert json.loads(body) == {"status": "ready", "checks": {}}


def test_readiness_reports_every_check_when_all_pass(health_factory) -> None:
    health = health_factory()
    health.add_check("kafka", lambda: "assigned 3 partitions").add_check("triton", lambda: True)
    health.add_check("feast", lambda: None)

    status, _, body = get(health.url + "/readyz")

    assert status == 200
    result = json.loads(body)
    assert result["status"] == "ready"
    assert set(result["checks"]) == {"kafka", "triton", "feast"}
    assert result["checks"]["kafka"]["ok"] is True
    assert result["checks"]["kafka"]["detail"] == "assigned 3 partitions"
    assert all(check["ok"] and check["ms"] >= 0 for check in result["checks"].values())


def test_readiness_fails_when_a_check_returns_false(health_factory) -> None:
    health = health_factory().add_check("kafka", lambda: True).add_check("triton", lambda: False)

    status, _, body = get(health.url + "/readyz")

    assert status == 503
    result = json.loads(body)
    assert result["status"] == "not ready"
    assert result["checks"]["kafka"]["ok"] is True
    assert result["checks"]["triton"] == {
        "ok": False,
        "detail": "check returned False",
        "ms": pytest.approx(0, abs=1000),
    }


def test_readiness_fails_when_a_check_raises_and_names_the_error(health_factory) -> None:
    def broken() -> bool:
        raise ConnectionError("triton:8000 refused")

    health = health_factory().add_check("triton", broken)

    status, _, body = get(health.url + "/readyz")

    assert status == 503
    assert json.loads(body)["checks"]["triton"]["detail"] == "ConnectionError: triton:8000 refused"


def test_readiness_fails_when_a_check_hangs(health_factory) -> None:
    release = threading.Event()
    health = health_factory(check_timeout_s=0.2).add_check("slow", lambda: release.wait(10))
    try:
        started = time.monotonic()
        status, _, body = get(health.url + "/readyz")
        elapsed = time.monotonic() - started
    finally:
        release.set()

    assert status == 503
    assert json.loads(body)["checks"]["slow"]["detail"] == "timed out after 0.2s"
    assert elapsed < 3


def test_checks_can_be_replaced_and_removed(health_factory) -> None:
    health = health_factory().add_check("kafka", lambda: False)
    assert get(health.url + "/readyz")[0] == 503

    health.add_check("kafka", lambda: True)
    assert get(health.url + "/readyz")[0] == 200

    health.add_check("triton", lambda: False)
    health.remove_check("triton")
    health.remove_check("never-added")
    assert get(health.url + "/readyz")[0] == 200


def test_metrics_serves_the_given_registry(health_factory) -> None:
    registry = CollectorRegistry()
    Counter("driftloop_test_events", "Events", ["worker"], registry=registry).labels("inference").inc(3)
    health = health_factory(registry=registry)

    status, headers, body = get(health.url + "/metrics")

    assert status == 200
    assert headers["Content-Type"].startswith("text/plain; version=")
    assert 'driftloop_test_events_total{worker="inference"} 3.0' in body.decode()


def test_metrics_serves_the_default_registry_by_default() -> None:
    with HealthServer(0, "127.0.0.1") as health:
        status, _, body = get(health.url + "/metrics")

    assert status == 200
    assert b"python_info" in body  # prometheus_client's default collectors live in the default registry


def test_unknown_paths_are_404_and_query_strings_are_ignored(health_factory) -> None:
    health = health_factory()

    status, _, body = get(health.url + "/nope")
    assert status == 404
    assert json.loads(body)["endpoints"] == ["/healthz", "/readyz", "/metrics"]
    assert get(health.url + "/healthz?verbose=1")[0] == 200
    assert get(health.url + "/readyz/")[0] == 200


def test_head_requests_answer_without_a_body(health_factory) -> None:
    health = health_factory()
    request = urllib.request.Request(health.url + "/healthz", method="HEAD")

    with urllib.request.urlopen(request, timeout=5) as response:
        assert response.status == 200
        assert int(response.headers["Content-Length"]) > 0
        assert response.read() == b""


def test_concurrent_requests_are_served_while_a_check_is_slow(health_factory) -> None:
    entered, release = threading.Event(), threading.Event()

    def slow_check() -> bool:
        entered.set()
        return release.wait(5)

    health = health_factory(check_timeout_s=5).add_check("slow", slow_check)
    slow = threading.Thread(target=get, args=(health.url + "/readyz",))
    slow.start()
    try:
        wait_until(entered.is_set, 5, "the slow readiness check running")
        started = time.monotonic()
        assert get(health.url + "/healthz")[0] == 200
        assert time.monotonic() - started < 1
    finally:
        release.set()
        slow.join(5)


def test_stop_closes_the_port_and_is_idempotent() -> None:
    health = HealthServer(0, "127.0.0.1", registry=CollectorRegistry()).start()
    port = health.port
    assert get(health.url + "/healthz")[0] == 200

    health.stop()
    health.stop()

    with socket.socket() as sock:
        assert sock.connect_ex(("127.0.0.1", port)) != 0


def test_binding_a_busy_port_names_host_and_port() -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]

        with pytest.raises(OSError, match=f"cannot bind 127.0.0.1:{port}"):
            HealthServer(port, "127.0.0.1").start()


def test_starting_twice_is_refused(health_factory) -> None:
    health = health_factory()

    with pytest.raises(RuntimeError, match="already serving"):
        health.start()


def test_invalid_timeouts_and_empty_check_names_are_refused() -> None:
    with pytest.raises(ValueError, match="positive"):
        HealthServer(0, stale_after_s=0)
    with pytest.raises(ValueError, match="name"):
        HealthServer(0).add_check("", lambda: True)


def test_ipv6_loopback_is_served() -> None:
    if not socket.has_ipv6:
        pytest.skip("this machine has no IPv6")
    try:
        health = HealthServer(0, "::1", registry=CollectorRegistry()).start()
    except OSError as exc:
        pytest.skip(f"no IPv6 loopback here: {exc}")
    try:
        assert health.url.startswith("http://[::1]:")
        assert get(health.url + "/healthz")[0] == 200
    finally:
        health.stop()


def test_probe_and_the_command_line_follow_the_status(health_factory) -> None:
    health = health_factory().add_check("kafka", lambda: False)

    assert probe(health.url + "/healthz") is True
    assert probe(health.url + "/readyz") is False
    assert main([health.url + "/healthz"]) == 0
    assert main([health.url + "/readyz", "1"]) == 1
    assert main([]) == 2


def test_probe_of_a_closed_port_is_false() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]

    assert probe(f"http://127.0.0.1:{port}/healthz", timeout_s=1) is False
