"""Redis outage under the feature worker: the Redis online store is stopped for 30 s mid-stream, then started again
on the same port and data folder (append-only file on, so what was written before survives, as a production Redis
with persistence does).

The documented behaviour (docs/fault-suite.md, "Outages are waited out"): the feature worker holds the batch it
could not push, unacknowledged, retries with backoff for as long as Redis is down, and commits nothing it has not
written. Afterwards
every entity's online features equal a recomputation from the events topic (``streams.windows.add_event`` over the
entity's events in topic order, the newest event's features being the ones served, as Redis keeps the newest row),
the faust table holds each event once, and the worker never restarted (neither the process nor faust's agent).

Ledger (scenario ``redis-outage``): ``lost`` counts the valid events of entities whose online features differ from the
recomputation; there is no inference worker here, so nothing is predicted or dead-lettered.
"""

from __future__ import annotations

import shutil
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace

import pytest

from driftloop.stack.process import ServerProcess
from features.store import online_features, open_store
from foundation.settings import Settings
from streams import KafkaConsumer
from streams.schemas import Event, InvalidEvent, parse_event
from streams.windows import FEATURES, add_event
from tests.chaos.accounting import Producer, Sent, committed_total, miscounted_windows, warm_up
from tests.features.conftest import _redis_answers
from tests.helpers import free_port, redis_command
from tests.streams.support import group_caught_up, open_pipeline

pytestmark = [pytest.mark.chaos, pytest.mark.integration]

WARMUP, EVENTS, RATE = 20, 1500, 75.0  # 20 s of stream; Redis goes down ~2 s in and stays down past its end
OUTAGE_S = 30.0
HOLDING = "feast unavailable (attempt"
NO_TRITON = SimpleNamespace(http="127.0.0.1:1", grpc="127.0.0.1:1")  # the feature worker never calls Triton
RESTART_MARKS = ("Restarting dead", "Crashed reason", "Traceback")


class PersistentRedis:
    """A private ``redis-server`` on a fixed free port with its append-only file in ``folder``: stop and start it
    again and it comes back with its data."""

    def __init__(self, folder: Path) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            pytest.fail("redis-server is not on PATH (Debian's package redis-server)", pytrace=False)
        self.port = free_port()
        self.folder = folder
        self.process = ServerProcess("redis", folder)
        self._argv = redis_command(binary, self.port, folder, persistent=True)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        self.process.start(self._argv)
        self.process.wait_ready(lambda: _redis_answers(self.port), 30, f"PING on port {self.port}")

    def stop(self) -> None:
        self.process.stop(timeout_s=15)  # SIGTERM: Redis syncs its append-only file and exits


@dataclass
class Stream:
    """The events topic read back: ``sent`` for the shared accounting, and each entity's valid events in order."""

    sent: Sent = field(default_factory=Sent)
    by_entity: dict[str, list[Event]] = field(default_factory=dict)


def read_stream(settings: Settings, expected: int, timeout_s: float = 60.0) -> Stream:
    """Read the events topic from the start until ``expected`` records were seen (partition order = entity order)."""
    stream = Stream()
    with KafkaConsumer(settings, f"readback-{uuid.uuid4().hex[:6]}", [settings.kafka.topic("events-v1")]) as consumer:
        deadline = time.monotonic() + timeout_s
        while len(stream.sent) < expected and time.monotonic() < deadline:
            for msg in consumer.consume_batch(1000, 0.5):
                position = (msg.partition(), msg.offset())
                try:
                    event = parse_event(msg.value())
                except InvalidEvent:
                    stream.sent.refused.add(position)
                    continue
                if msg.key() != event.entity_id.encode():
                    stream.sent.refused.add(position)
                    continue
                stream.sent.valid[position] = event.event_id
                stream.sent.entity[event.event_id] = event.entity_id
                stream.by_entity.setdefault(event.entity_id, []).append(event)
    return stream


def recompute(events: list[Event]) -> dict:
    """The features an entity's online row must hold: fold every event in topic order; keep the features made for
    the newest event by event time (the first of equals), as the Redis online store keeps the newest row."""
    state, newest, served = None, None, None
    for event in events:
        state, features = add_event(state, event.event_id, event.event_time.timestamp(), len(event.text))
        if newest is None or event.event_time > newest:
            newest, served = event.event_time, features
    return served


def differs(online: dict, expected: dict) -> bool:
    """Whether the online values differ from the recomputation (floats are stored as float32)."""
    for name in FEATURES:
        got, want = online[name], expected[name]
        if (got is None) != (want is None) or (want is not None and got != pytest.approx(want, rel=1e-5, abs=1e-3)):
            return True
    return False


def restarts_in(log: str, alive: bool) -> int:
    """Restarts seen: the process exited, or faust's supervisor restarted a crashed agent."""
    return int(not alive) + sum(log.count(mark) for mark in RESTART_MARKS)


def test_redis_outage_commits_nothing_unwritten(settings_factory, tmp_path, monkeypatch, chaos_ledger):
    redis = PersistentRedis(tmp_path / "redis")
    redis.start()
    pipeline = open_pipeline(
        settings_factory(),
        NO_TRITON,
        "unused",
        tmp_path,
        monkeypatch,
        DRIFTLOOP_FEAST__ONLINE_STORE="redis",
        DRIFTLOOP_FEAST__REDIS_CONNECTION_STRING=redis.address,
        DRIFTLOOP_WORKERS__OUTAGE_BACKOFF_MAX_S="2",
    )
    settings = pipeline.settings
    group, topic = settings.workers.features_group, settings.kafka.topic("events-v1")
    committed = lambda: committed_total(settings, group, topic)  # noqa: E731
    worker = pipeline.start("run", "--role", "features")
    details: dict[str, object] = {}
    failure, producer = None, None
    try:
        produced = warm_up(settings, WARMUP, seed=150)
        pipeline.wait(lambda: committed() >= WARMUP, 120, "the feature worker's first commits")
        producer = Producer(settings, EVENTS, seed=151, rate=RATE)
        producer.start()
        pipeline.wait(lambda: committed() >= WARMUP + 100, 60, "the stream to be pushed mid-way")

        redis.stop()
        stopped = time.monotonic()
        details["committed_at_stop"] = committed()
        pipeline.wait(lambda: pipeline.log(worker).count(HOLDING) >= 2, 90, "the worker to hold its batch")
        held_commits = committed()
        pipeline.wait(lambda: time.monotonic() - stopped >= OUTAGE_S, OUTAGE_S + 10, "the end of the outage")
        details["committed_while_down"] = committed() - held_commits
        redis.start()
        details["down_s"] = round(time.monotonic() - stopped, 1)

        produced += producer.finish()
        pipeline.wait(lambda: group_caught_up(settings, group, topic), 180, "every event pushed and committed")
        details["fault_to_caught_up_s"] = round(time.monotonic() - stopped, 1)
    except AssertionError as exc:  # a dead worker or a timeout: account for what happened, then fail
        failure = exc
        produced = WARMUP + (producer.acknowledged if producer else 0)
        if redis.process.pid() is None:
            redis.start()  # the accounting reads the online store

    stream = read_stream(settings, produced)
    entities = sorted(stream.by_entity)
    online = online_features(open_store(settings), entities)
    served = [{name: online[name][i] for name in FEATURES} for i in range(len(entities))]
    mismatched = [
        entity
        for entity, row in zip(entities, served, strict=True)
        if differs(row, recompute(stream.by_entity[entity]))
    ]
    _, miscounted = miscounted_windows(settings, stream.sent)
    log = pipeline.log(worker)
    restarts = restarts_in(log, worker.poll() is None)
    chaos_ledger.record(
        "redis-outage",
        produced=len(stream.sent),
        predicted=0,
        dead_lettered=0,
        lost=sum(len(stream.by_entity[e]) for e in mismatched),
        duplicates=0,
        restarts=restarts,
        entities=len(entities),
        mismatched_entities=len(mismatched),
        miscounted_entities=len(miscounted),
        outage_retries=log.count(HOLDING),
        **details,
    )
    pipeline.close()
    redis.stop()
    if failure:
        raise failure
    assert len(stream.sent) == WARMUP + EVENTS and stream.sent.refused
    assert details["committed_while_down"] == 0, "offsets were committed while no push could succeed"
    assert not mismatched, f"{len(mismatched)} entities' online features differ from a recomputation: {mismatched[:3]}"
    assert not miscounted, f"{len(miscounted)} entities' windows differ from the events produced: {miscounted[:3]}"
    assert restarts == 0, log[-3000:]
