"""Bounded shutdown of the feature worker: SIGTERM ends it within ``workers.shutdown_grace_s`` even when both Kafka
and Feast are unreachable, and what it held is redelivered.

A private broker (the session's is shared) and a feature worker whose Redis online store is down: the worker folds
the events it reads and holds their batch, unacknowledged, pushing again with backoff; nothing is committed. Then the
broker stops (SIGTERM) and the worker gets SIGTERM: faust alone would wait minutes for the broker; the worker exits
within the grace period. The broker and Redis come back and a new worker writes every entity's features: the held
events were redelivered, not lost.
"""

from __future__ import annotations

import signal
import subprocess
import time

import pytest

from driftloop.stack import kafka as local_kafka
from features.store import online_features, open_store
from tests.chaos.accounting import committed_total, read_events, warm_up
from tests.chaos.test_redis_outage import HOLDING, NO_TRITON, PersistentRedis
from tests.streams.support import group_caught_up, open_pipeline

pytestmark = [pytest.mark.chaos, pytest.mark.integration, pytest.mark.timeout(600)]

EVENTS = 40
GRACE_S = 8.0
MARGIN_S = 6.0  # interpreter start-up is not in it: the clock starts at SIGTERM


def _exit_seconds(proc: subprocess.Popen, timeout_s: float) -> float:
    """SIGTERM ``proc``; the seconds it took to exit (``timeout_s`` + 1 if it did not, then it is killed)."""
    started = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=10)
        return timeout_s + 1
    return time.monotonic() - started


def test_sigterm_ends_the_feature_worker_with_kafka_and_feast_down(
    private_broker, settings_factory, tmp_path, monkeypatch, chaos_ledger
):
    redis = PersistentRedis(tmp_path / "redis")  # not started yet: the online store is down from the start
    base = settings_factory(kafka={"bootstrap_servers": private_broker.kafka_bootstrap})
    pipeline = open_pipeline(
        base,
        NO_TRITON,
        "unused",
        tmp_path,
        monkeypatch,
        DRIFTLOOP_FEAST__ONLINE_STORE="redis",
        DRIFTLOOP_FEAST__REDIS_CONNECTION_STRING=redis.address,
        DRIFTLOOP_WORKERS__SHUTDOWN_GRACE_S=str(GRACE_S),
    )
    settings, broker = pipeline.settings, local_kafka.server(private_broker)
    group, topic = settings.workers.features_group, settings.kafka.topic("events-v1")
    worker = pipeline.start("run", "--role", "features")
    details: dict[str, object] = {"grace_s": GRACE_S}
    try:
        produced = warm_up(settings, EVENTS, seed=160)
        pipeline.wait(lambda: HOLDING in pipeline.log(worker), 120, "the worker to hold its first batch")
        details["committed_while_held"] = committed_total(settings, group, topic)

        broker.stop()  # SIGTERM: the worker's group coordinator and every partition leader are gone
        pipeline.killed.add(worker.pid)  # its exit is expected from here on
        details["exit_s"] = round(_exit_seconds(worker, GRACE_S + 60), 1)
        details["exit_code"] = worker.returncode

        local_kafka.start(private_broker)  # same ports and storage
        broker.wait_ready(lambda: local_kafka.is_ready(private_broker), 120, "restarted private broker")
        sent = read_events(settings, produced, timeout_s=120)  # the topic answers again (leaders, coordinator)
        redis.start()
        again = pipeline.start("run", "--role", "features")
        pipeline.wait(lambda: group_caught_up(settings, group, topic), 180, "the new worker to push and commit all")
        details["new_worker_alive"] = again.poll() is None
        entities = sorted(set(sent.entity.values()))
        written = online_features(open_store(settings), entities)["msg_count_24h"]
        details["entities_unwritten"] = sum(1 for value in written if value is None)
    finally:
        log = pipeline.log(worker)
        pipeline.close()
        redis.stop()
    chaos_ledger.record(
        "feature-worker-sigterm-offline",
        produced=len(sent),
        predicted=0,
        dead_lettered=0,
        lost=details["entities_unwritten"],
        duplicates=0,
        restarts=0,
        **details,
    )
    assert details["committed_while_held"] == 0, "offsets were committed for events whose push did not succeed"
    assert details["exit_s"] <= GRACE_S + MARGIN_S, f"exit took {details['exit_s']}s:\n{log[-3000:]}"
    assert "left unacknowledged" in log, log[-3000:]
    assert len(sent) == EVENTS
    assert details["entities_unwritten"] == 0, "events held at the SIGTERM were not redelivered"
    assert details["new_worker_alive"]
