"""Worker crashes: SIGKILL (no chance to commit, flush or leave the group) of a stream worker while events flow.

- The inference worker, killed with batches in flight: after a new one starts, every valid event has exactly one
  prediction once deduplicated by ``event_id``, every refused record one dead letter, none is lost, none answered
  wrongly (redelivered batches may duplicate outputs: at-least-once).
- The feature worker (faust), killed mid-stream: after a restart it resumes from its committed offsets and its
  changelog-restored table, and every entity's window holds each of its events exactly once - a replayed event is
  not counted twice - while the inference worker goes on answering every event.

Real broker, tritonserver (tests/streams/keyword_classifier), Feast store and worker processes.
"""

from __future__ import annotations

import time

import pytest

from tests.chaos.accounting import (
    Outputs,
    Producer,
    committed_total,
    miscounted_windows,
    read_events,
    settle,
    warm_up,
)
from tests.streams.support import group_caught_up

pytestmark = [pytest.mark.chaos, pytest.mark.integration]

EVENTS = 900
RATE = 250.0  # events per second: the stream lasts ~4 s, so the kill lands mid-stream
FEATURE_RATE = 150.0  # ~6 s of stream for the feature worker, which commits about once a second
WARMUP = 30


def test_sigkill_of_the_inference_worker_mid_batch_loses_no_event(pipeline, chaos_ledger):
    settings = pipeline.settings
    worker = pipeline.start("run", "--role", "inference")
    outputs = Outputs(settings)
    # A warm-up, so that the stream starts once the worker answers (its start takes seconds on a busy machine).
    produced = warm_up(settings, WARMUP, seed=80)
    pipeline.wait(lambda: len(outputs.poll().predictions) >= WARMUP, 90, "the warm-up predictions")
    producer = Producer(settings, EVENTS, seed=81, rate=RATE)
    producer.start()
    pipeline.wait(lambda: len(outputs.poll().predictions) >= WARMUP + 150, 90, "the first predictions")
    pipeline.kill(worker)
    at_kill = len(outputs.poll().predictions)
    pipeline.start("run", "--role", "inference")

    sent = read_events(settings, produced + producer.finish())
    failure = None
    try:
        pipeline.wait(lambda: outputs.poll().covers(sent), 120, "a prediction or dead letter for every record")
    except AssertionError as exc:
        failure = exc
    counts = settle(sent, outputs)
    chaos_ledger.record(
        "sigkill-inference-worker",
        **{k: v for k, v in counts.items() if k != "wrong"},
        wrong=counts["wrong"],
        predicted_at_kill=at_kill,
        restarts=1,
    )
    if failure:
        raise failure
    assert len(sent) == WARMUP + EVENTS and sent.refused, "the producer's records, some refused by the contract"
    assert at_kill < len(sent.ids), "the kill came after the stream was done"
    assert counts["lost"] == 0 and counts["wrong"] == 0, counts


def test_sigkill_of_the_feature_worker_replays_its_events_once(pipeline, chaos_ledger):
    settings = pipeline.settings
    events_topic, group = settings.kafka.topic("events-v1"), settings.workers.features_group
    features = pipeline.start("run", "--role", "features")
    pipeline.start("run", "--role", "inference")
    outputs = Outputs(settings)
    # A warm-up, so that the stream starts once faust has joined and is folding events.
    produced = warm_up(settings, WARMUP, seed=90)
    pipeline.wait(lambda: committed_total(settings, group, events_topic) >= WARMUP, 120, "the feature worker's start")
    producer = Producer(settings, EVENTS, seed=91, rate=FEATURE_RATE)
    producer.start()
    pipeline.wait(lambda: committed_total(settings, group, events_topic) >= WARMUP + 150, 60, "the feature worker")
    committed_at_kill = committed_total(settings, group, events_topic)
    pipeline.kill(features)
    killed_at = time.monotonic()
    pipeline.start("run", "--role", "features")

    sent = read_events(settings, produced + producer.finish())
    failure, caught_up_s = None, None
    try:
        pipeline.wait(lambda: group_caught_up(settings, group, events_topic), 90, "the restarted feature worker")
        caught_up_s = round(time.monotonic() - killed_at, 1)
        pipeline.wait(lambda: outputs.poll().covers(sent), 120, "a prediction or dead letter for every record")
    except AssertionError as exc:
        failure = exc
    entities, miscounted = miscounted_windows(settings, sent)
    counts = settle(sent, outputs)
    chaos_ledger.record(
        "sigkill-feature-worker",
        **{k: v for k, v in counts.items() if k != "wrong"},
        wrong=counts["wrong"],
        committed_at_kill=committed_at_kill,
        caught_up_s=caught_up_s,
        entities=entities,
        miscounted_entities=len(miscounted),
        restarts=1,
    )
    if failure:
        raise failure
    assert committed_at_kill < len(sent), "the kill came after the feature worker was done"
    assert len(sent) == WARMUP + EVENTS and counts["lost"] == 0 and counts["wrong"] == 0, counts
    assert not miscounted, f"{len(miscounted)} entities' windows differ from the events produced: {miscounted[:3]}"
