"""Broker restart: a private Kafka broker (the session's is shared) is stopped with SIGTERM and started again on the
same ports and storage while events flow to an inference worker and a feature worker. The producer's idempotent
retries and both workers reconnect by themselves: afterwards every valid event has exactly one prediction (after
dedupe by ``event_id``), every refused record one dead letter, nothing is lost, neither worker exits, and the
feature worker's windows hold each event exactly once.
"""

from __future__ import annotations

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
from tests.helpers import free_port
from tests.streams.support import group_caught_up, keyword_model, open_pipeline  # noqa: F401 - fixtures

pytestmark = [pytest.mark.chaos, pytest.mark.integration]

WARMUP, EVENTS = 20, 800  # 8 s of stream at 100 events/s; the broker goes down ~1 s in


@pytest.fixture
def private_broker(stack_settings, tmp_path_factory, kafka_bootstrap):
    """Settings of a broker of this test only (free ports, its own storage); stopped at the end."""
    if "127.0.0.1" not in kafka_bootstrap or stack_settings.kafka.bootstrap_servers:
        pytest.skip("needs the local broker's jars (no external or containerised broker)")
    stack = {**stack_settings.stack.model_dump(), "run_dir": tmp_path_factory.mktemp("private_broker"),
             "kafka_port": free_port(), "kafka_controller_port": free_port()}  # fmt: skip
    settings = stack_settings.model_copy(update={"stack": stack_settings.stack.model_copy(update=stack)})
    proc = local_kafka.server(settings)
    local_kafka.start(settings)
    try:
        proc.wait_ready(lambda: local_kafka.is_ready(settings), 120, "private broker")
        yield settings
    finally:
        proc.stop()


def test_broker_restart_mid_stream_loses_no_event(
    private_broker, settings_factory, triton_server, keyword_model, tmp_path, monkeypatch, chaos_ledger  # noqa: F811
):  # fmt: skip
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
        local_kafka.start(private_broker)  # same ports, same storage
        broker.wait_ready(lambda: local_kafka.is_ready(private_broker), 120, "restarted private broker")
        details["down_s"] = round(time.monotonic() - stopped, 1)

        sent = read_events(settings, produced + producer.finish())
        pipeline.wait(lambda: outputs.poll().covers(sent), 180, "a prediction or dead letter for every record")
        details["fault_to_all_answered_s"] = round(time.monotonic() - stopped, 1)
        pipeline.wait(lambda: group_caught_up(settings, group, events_topic), 120, "the feature worker")
    except AssertionError as exc:  # a dead worker or a timeout: account for what happened, then fail
        failure = exc
        sent = read_events(settings, WARMUP + EVENTS, timeout_s=20)
    counts = settle(sent, outputs)
    _, miscounted = miscounted_windows(settings, sent)
    chaos_ledger.record("broker-restart", **{k: v for k, v in counts.items() if k != "wrong"}, wrong=counts["wrong"],
                        worker_alive=worker.poll() is None, feature_worker_alive=features.poll() is None,
                        commits_refused=pipeline.log(worker).count("commit failed"),
                        miscounted_entities=len(miscounted), **details)  # fmt: skip
    pipeline.close()
    if failure:
        raise failure
    assert len(sent) == WARMUP + EVENTS and sent.refused
    assert counts["lost"] == 0 and counts["wrong"] == 0, counts
    assert not miscounted, f"{len(miscounted)} entities' windows differ from the events produced: {miscounted[:3]}"
    assert "Traceback" not in pipeline.log(worker), pipeline.log(worker)[-3000:]
