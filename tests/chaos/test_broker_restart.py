"""Broker restart and outage: a private Kafka broker (the session's is shared) is stopped with SIGTERM and started
again on the same ports and storage while events flow to an inference worker and a feature worker - at once
(a restart), or after 60 s down (an outage longer than the producer's 30 s flush timeout). The producer's idempotent
retries and both workers reconnect by themselves: afterwards every valid event has exactly one prediction (after
dedupe by ``event_id``), every refused record one dead letter, nothing is lost, neither worker exits, and the
feature worker's windows hold each event exactly once.

Bounded shutdown: with the broker stopped, SIGTERM ends an inference worker within ``workers.shutdown_grace_s``
(it cannot leave its group or flush; what it did not commit is redelivered).
"""

from __future__ import annotations

import signal
import subprocess
import time

import pytest

from driftloop.stack import kafka as local_kafka
from tests.chaos.accounting import (
    Outputs,
    Producer,
    committed_total,
    miscounted_windows,
    read_events,
    settle,
    warm_up,
)
from tests.streams.support import group_caught_up, open_pipeline

pytestmark = [pytest.mark.chaos, pytest.mark.integration]

WARMUP, EVENTS = 20, 800  # 8 s of stream at 100 events/s; the broker goes down ~1 s in


@pytest.mark.parametrize("down_s", [0, 60], ids=["restart", "outage-60s"])
def test_broker_restart_mid_stream_loses_no_event(
    down_s,
    private_broker,
    settings_factory,
    triton_server,
    keyword_model,
    tmp_path,
    monkeypatch,
    chaos_ledger,
):
    base = settings_factory(kafka={"bootstrap_servers": private_broker.kafka_bootstrap})
    pipeline = open_pipeline(base, triton_server, keyword_model, tmp_path, monkeypatch)
    settings, broker = pipeline.settings, local_kafka.server(private_broker)
    events_topic, group = settings.kafka.topic("events-v1"), settings.workers.features_group
    features = pipeline.start("run", "--role", "features")
    worker = pipeline.start("run", "--role", "inference")
    outputs = Outputs(settings)
    failure, details = None, {"restarts": 1}
    try:
        produced = warm_up(settings, WARMUP, seed=130)
        pipeline.wait(lambda: len(outputs.poll().predictions) >= WARMUP, 90, "the warm-up predictions")
        pipeline.wait(lambda: committed_total(settings, group, events_topic) >= WARMUP, 90, "the feature worker")
        producer = Producer(settings, EVENTS, seed=131, rate=100.0)
        producer.start()
        pipeline.wait(lambda: len(outputs.poll().predictions) >= WARMUP + 100, 90, "the first predictions")

        stopped = time.monotonic()
        broker.stop()  # SIGTERM: a controlled shutdown, as an orchestrator's restart does
        details["stop_s"] = round(time.monotonic() - stopped, 1)
        time.sleep(max(0.0, down_s - (time.monotonic() - stopped)))  # the outage itself: nothing to wait on
        local_kafka.start(private_broker)  # same ports, same storage
        broker.wait_ready(lambda: local_kafka.is_ready(private_broker), 120, "restarted private broker")
        details["down_s"] = round(time.monotonic() - stopped, 1)

        sent = read_events(settings, produced + producer.finish())
        pipeline.wait(lambda: outputs.poll().covers(sent), 180, "a prediction or dead letter for every record")
        details["fault_to_all_answered_s"] = round(time.monotonic() - stopped, 1)
        pipeline.wait(lambda: group_caught_up(settings, group, events_topic), 120, "the feature worker")
        details["worker_alive_at_end"] = worker.poll() is None and features.poll() is None
    except AssertionError as exc:  # a dead worker or a timeout: account for what happened, then fail
        failure = exc
        sent = read_events(settings, WARMUP + EVENTS, timeout_s=20)
    counts = settle(sent, outputs)
    _, miscounted = miscounted_windows(settings, sent)
    scenario = "broker-restart" if not down_s else f"broker-outage-{down_s}s"
    chaos_ledger.record(
        scenario,
        **{k: v for k, v in counts.items() if k != "wrong"},
        wrong=counts["wrong"],
        worker_alive=worker.poll() is None,
        feature_worker_alive=features.poll() is None,
        worker_restarts=int(worker.poll() is not None) + int(features.poll() is not None),
        commits_refused=pipeline.log(worker).count("commit failed"),
        miscounted_entities=len(miscounted),
        **details,
    )
    pipeline.close()
    if failure:
        raise failure
    assert len(sent) == WARMUP + EVENTS and sent.refused
    assert counts["lost"] == 0 and counts["wrong"] == 0, counts
    assert not miscounted, f"{len(miscounted)} entities' windows differ from the events produced: {miscounted[:3]}"
    assert "Traceback" not in pipeline.log(worker), pipeline.log(worker)[-3000:]
    assert details["worker_alive_at_end"], "a worker exited during the broker outage"


def test_sigterm_with_the_broker_down_ends_the_inference_worker_in_time(
    private_broker,
    settings_factory,
    triton_server,
    keyword_model,
    tmp_path,
    monkeypatch,
):
    grace_s = 8.0
    base = settings_factory(kafka={"bootstrap_servers": private_broker.kafka_bootstrap})
    pipeline = open_pipeline(
        base, triton_server, keyword_model, tmp_path, monkeypatch, DRIFTLOOP_WORKERS__SHUTDOWN_GRACE_S=str(grace_s)
    )
    settings, broker = pipeline.settings, local_kafka.server(private_broker)
    worker = pipeline.start("run", "--role", "inference")
    outputs = Outputs(settings)
    try:
        warm_up(settings, WARMUP, seed=140)
        pipeline.wait(lambda: len(outputs.poll().predictions) >= WARMUP, 90, "the warm-up predictions")
        outputs.close()
        broker.stop()
        worker.send_signal(signal.SIGTERM)
        signalled = time.monotonic()
        try:
            worker.wait(grace_s + 15)
        except subprocess.TimeoutExpired:
            pass
        took = time.monotonic() - signalled
    finally:
        pipeline.close()
        local_kafka.start(private_broker)
        broker.wait_ready(lambda: local_kafka.is_ready(private_broker), 120, "restarted private broker")
    assert worker.returncode is not None and took <= grace_s + 5, f"the worker took {took:.1f}s (grace {grace_s}s)"
