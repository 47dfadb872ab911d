"""Feast online store unavailable: the sqlite online store is locked (an exclusive transaction held by another
process) while events flow to an inference worker.

The documented behaviour (docs/fault-suite.md): the lookup fails after sqlite's busy timeout,
the worker holds the batch uncommitted and retries with backoff for as long as the store is locked; it never
predicts with missing or made-up features and never dead-letters a valid event. Once the lock is released every
valid event gets exactly one prediction, carrying the features that were pushed for its entity.
"""

from __future__ import annotations

import json
import sqlite3
import time
from datetime import UTC, datetime

import pandas as pd
import pytest

from features.store import ONLINE_STORE_FILE, open_store, push_stream_features
from streams.generator import synthetic_records
from tests.chaos.accounting import Outputs, Producer, read_events, settle, warm_up

pytestmark = [pytest.mark.chaos, pytest.mark.integration]

PUSHED = {"msg_count_1h": 7, "msg_count_24h": 11, "mean_text_length": 3.5, "seconds_since_last_event": 42.0}
WARMUP, EVENTS = 10, 300


def _entities(settings, count: int, seed: int) -> set[str]:
    entities = set()
    for records in synthetic_records(settings, count, seed=seed, malformed_share=0.05, labels=False):
        if not records[0].key.startswith(b"malformed-"):
            entities.add(json.loads(records[0].value)["entity_id"])
    return entities


def test_locked_online_store_is_waited_out_without_wrong_features(pipeline, chaos_ledger):
    settings = pipeline.settings
    entities = _entities(settings, WARMUP, 140) | _entities(settings, EVENTS, 141)
    rows = pd.DataFrame([{"entity_id": e, "event_timestamp": datetime.now(UTC), **PUSHED} for e in sorted(entities)])
    push_stream_features(open_store(settings), rows)
    worker = pipeline.start("run", "--role", "inference")
    outputs = Outputs(settings)
    produced = warm_up(settings, WARMUP, seed=140)
    pipeline.wait(lambda: len(outputs.poll().predictions) >= WARMUP, 90, "the warm-up predictions")

    lock = sqlite3.connect(settings.feast_dir / ONLINE_STORE_FILE, isolation_level=None, timeout=10)
    lock.execute("BEGIN EXCLUSIVE")  # readers and writers of the file now fail with "database is locked"
    details, failure = {}, None
    try:
        producer = Producer(settings, EVENTS, seed=141, rate=150.0)
        producer.start()
        locked_at = time.monotonic()
        pipeline.wait(lambda: "feast unavailable (attempt" in pipeline.log(worker), 60, "the worker to notice")
        details["predicted_while_locked"] = len(outputs.poll().predictions) - WARMUP
    except AssertionError as exc:
        failure = exc
    finally:
        lock.rollback()
        lock.close()
    details["locked_s"] = round(time.monotonic() - locked_at, 1)
    sent = read_events(settings, produced + producer.finish())
    try:
        if failure is None:
            pipeline.wait(lambda: outputs.poll().covers(sent), 120, "a prediction or dead letter for every record")
    except AssertionError as exc:
        failure = exc
    counts = settle(sent, outputs)
    wrong_features = sum(
        1 for features in outputs.features.values() if {name: features.get(name) for name in PUSHED} != PUSHED
    )
    log = pipeline.log(worker)
    chaos_ledger.record(
        "feast-online-store-locked",
        **{k: v for k, v in counts.items() if k != "wrong"},
        wrong=counts["wrong"],
        wrong_features=wrong_features,
        outage_retries=log.count("feast unavailable (attempt"),
        **details,
    )
    if failure:
        raise failure
    assert len(sent) == WARMUP + EVENTS and sent.refused
    assert counts["lost"] == 0 and counts["wrong"] == 0, counts
    assert wrong_features == 0, "a prediction was made with features other than the pushed ones"
    assert details["predicted_while_locked"] < EVENTS, "nothing waited for the store"
    assert worker.poll() is None and "Traceback" not in log, log[-3000:]
