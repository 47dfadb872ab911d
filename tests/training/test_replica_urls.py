"""Which Triton replicas a publish acts on: the configured ones, those a headless-service name resolves to, else the
one Triton of the settings; and a replica that does not answer is left out, not a failure, unless none answers."""

from __future__ import annotations

import logging
import socket

import pytest
from prometheus_client import REGISTRY

from foundation.settings import load_settings
from training.exceptions import PublishError
from training.publish import TritonReplicas, replica_urls

pytestmark = pytest.mark.unit


def _resolver(*addresses: tuple[socket.AddressFamily, str], calls: list | None = None):
    """A ``getaddrinfo`` that answers ``addresses`` (what a headless Service's A/AAAA records give)."""

    def resolve(host: str, port: int, type: int = 0) -> list:  # noqa: A002 - getaddrinfo's own keyword
        if calls is not None:
            calls.append((host, port, type))
        return [(family, socket.SOCK_STREAM, 6, "", (address, port)) for family, address in addresses]

    return resolve


def test_one_triton_by_default_is_the_configured_grpc_endpoint() -> None:
    settings = load_settings(triton={"url": "triton.internal:8000"})
    assert replica_urls(settings) == ["triton.internal:8001"]
    assert replica_urls(load_settings(triton={"grpc_url": "grpc://t:9001/"})) == ["t:9001"]


def test_a_headless_service_resolves_to_every_replica_at_each_call() -> None:
    settings = load_settings(triton={"replicas_dns": "driftloop-triton-replicas:8001"})
    calls: list = []
    two = _resolver(
        (socket.AF_INET, "10.0.0.7"), (socket.AF_INET, "10.0.0.5"), (socket.AF_INET, "10.0.0.7"), calls=calls
    )
    assert replica_urls(settings, two) == ["10.0.0.5:8001", "10.0.0.7:8001"]  # sorted, each address once
    assert calls == [("driftloop-triton-replicas", 8001, socket.SOCK_STREAM)]
    three = _resolver((socket.AF_INET, "10.0.0.5"), (socket.AF_INET, "10.0.0.9"), (socket.AF_INET6, "fd00::3"))
    assert replica_urls(settings, three) == ["10.0.0.5:8001", "10.0.0.9:8001", "[fd00::3]:8001"]


def test_listed_replicas_come_first_and_the_resolved_ones_join_them() -> None:
    settings = load_settings(triton={"replicas": ["b:8001", "a:8001"], "replicas_dns": "replicas:8001"})
    urls = replica_urls(settings, _resolver((socket.AF_INET, "10.0.0.5")))
    assert urls == ["b:8001", "a:8001", "10.0.0.5:8001"]


def test_a_name_that_does_not_resolve_adds_nothing(caplog: pytest.LogCaptureFixture) -> None:
    def fails(*_args: object, **_kwargs: object) -> list:
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    settings = load_settings(triton={"replicas_dns": "driftloop-triton-replicas:8001"})
    with caplog.at_level(logging.WARNING, logger="training.publish"):
        assert replica_urls(settings, fails) == []
    assert "driftloop-triton-replicas:8001 does not resolve" in caplog.text
    assert replica_urls(load_settings(triton={"replicas": ["a:8001"], "replicas_dns": "x:8001"}), fails) == ["a:8001"]


def test_the_replicas_name_must_be_host_and_port() -> None:
    with pytest.raises(ValueError, match="replicas_dns"):
        load_settings(triton={"replicas_dns": "driftloop-triton-replicas"})


class FakeControl:
    """A replica's control that answers or not, as the test says."""

    def __init__(self, url: str, live: set[str]) -> None:
        self.url, self._live, self.closed = url, live, False
        self.verified: set[int] = set()

    def answers(self) -> bool:
        return self.url in self._live

    def close(self) -> None:
        self.closed = True


def _unreachable(action: str) -> float:
    return REGISTRY.get_sample_value("driftloop_triton_replica_unreachable_total", {"action": action}) or 0.0


def test_a_replica_that_does_not_answer_is_left_out_and_counted_and_forgotten() -> None:
    live = {"a:8001", "b:8001"}
    made: list[FakeControl] = []

    def connect(url: str) -> FakeControl:
        made.append(FakeControl(url, live))
        return made[-1]

    replicas = TritonReplicas(load_settings(triton={"replicas": ["a:8001", "b:8001"]}), connect=connect)
    first = replicas.reachable("publish")
    assert [c.url for c in first] == ["a:8001", "b:8001"]
    first[1].verified.add(3)

    live.discard("b:8001")
    before = _unreachable("publish")
    second = replicas.reachable("publish")
    assert [c.url for c in second] == ["a:8001"] and second[0] is first[0]  # kept while it answers
    assert _unreachable("publish") == before + 1
    assert first[1].closed and replicas.held(first) == [first[0]]

    live.add("b:8001")  # back (maybe restarted): a new control, nothing verified on it
    third = replicas.reachable("reconcile")
    assert third[1] is not first[1] and third[1].verified == set()
    assert replicas.primary is first[0]

    live.clear()
    with pytest.raises(PublishError, match=r"no Triton replica is reachable \(a:8001, b:8001\)"):
        replicas.reachable("publish")
    replicas.close()
    assert all(c.closed for c in made)


def test_one_unreachable_triton_keeps_its_message() -> None:
    replicas = TritonReplicas(load_settings(triton={"grpc_url": "t:8001"}), connect=lambda url: FakeControl(url, set()))
    with pytest.raises(PublishError, match="Triton at t:8001 is not reachable"):
        replicas.reachable("publish")
