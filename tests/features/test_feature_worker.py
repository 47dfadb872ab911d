"""The feature worker's fold and pusher (``streams.feature_app``) against a real Feast store.

- ``fold`` survives any record: an event the contract refuses is left to the inference worker (no row, not counted
  here), anything else that fails while folding one record is skipped and counted, never raised.
- ``FeaturePusher.push`` writes every row or holds them: through a Redis outage it retries with backoff until Redis
  is back, and returns False at once when the worker stops (the batch must then stay unacknowledged); a row the
  store refuses while it answers other calls is skipped alone, the rest of its batch written.
"""

from __future__ import annotations

import asyncio
import shutil
import threading
import time
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace

import pytest
from faust.types import TP
from prometheus_client import CollectorRegistry

from driftloop.stack.process import ServerProcess
from features import apply_repo, online_features, open_store
from streams.feature_app import (
    EVENTS_TOPIC,
    RECOVERY_STUCK_S,
    FeaturePusher,
    fold,
    fold_batch,
    restart_stuck_recovery,
)
from streams.fetch_ledger import FetchLedger
from streams.metrics import OUTAGE_RETRIES
from streams.skips import SkippedRecords
from streams.synthetic import SyntheticStream
from tests.features.conftest import OnlineStore, _redis_answers
from tests.helpers import free_port, redis_command

NOW = datetime.now(UTC).replace(microsecond=0)
FAST_BACKOFF = {"outage_backoff_max_s": 0.4}


def _row(entity: str, at: datetime, count: int) -> dict:
    features = {
        "msg_count_1h": count,
        "msg_count_24h": count * 10,
        "mean_text_length": count / 2,
        "seconds_since_last_event": None,
    }
    return {"entity_id": entity, "event_timestamp": at, **features, "event_id": f"{entity}-{count}"}


def _outage_retries() -> float:
    return OUTAGE_RETRIES.labels("features", "feast")._value.get()


def _pusher(settings, **workers) -> FeaturePusher:
    return FeaturePusher(settings.model_copy(update={"workers": settings.workers.model_copy(update=workers)}))


def _wait_for(condition, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def _redis(tmp_path, port: int) -> ServerProcess:
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.fail("redis-server is not on PATH (Debian's package redis-server)", pytrace=False)
    server = ServerProcess(f"redis-{port}", tmp_path / "redis")
    server.start(redis_command(binary, port, tmp_path))
    server.wait_ready(lambda: _redis_answers(port), 15, f"PING on port {port}")
    return server


@pytest.mark.unit
def test_fold_skips_what_it_cannot_fold_and_counts_it() -> None:
    skipped = SkippedRecords(registry=CollectorRegistry())
    event = SyntheticStream(seed=3).one(NOW).event
    key = event.entity_id.encode()
    windows: dict[bytes, dict] = {}

    row = fold(windows, key, event.to_bytes(), skipped)
    assert row is not None and row["msg_count_1h"] == 1 and row["event_id"] == event.event_id

    assert fold(windows, key, b"\xff not json", skipped) is None  # refused by the contract: dead-lettered elsewhere
    assert fold(windows, b"other-key", event.to_bytes(), skipped) is None
    assert skipped.count(EVENTS_TOPIC, "fold failed") == 0

    windows[key] = {"ids": None, "times": 7, "lengths": "?"}  # a corrupt window state: folding raises
    later = SyntheticStream(seed=4).one(NOW + timedelta(seconds=1)).event
    later = later.model_copy(update={"entity_id": event.entity_id})
    assert fold(windows, key, later.to_bytes(), skipped, partition=0, offset=9) is None
    assert skipped.count(EVENTS_TOPIC, "fold failed") == 1


class _CountingTable(dict):
    """A windows table that counts writes (each one is a changelog record in faust)."""

    def __init__(self) -> None:
        super().__init__()
        self.writes = 0

    def __setitem__(self, key, value) -> None:
        self.writes += 1
        super().__setitem__(key, value)


@pytest.mark.unit
def test_a_batch_writes_each_entity_window_once_and_folds_as_event_by_event() -> None:
    stream = SyntheticStream(seed=5)
    events = [stream.one(NOW + timedelta(seconds=i)).event for i in range(200)]
    batch = [
        SimpleNamespace(
            key=e.entity_id.encode(), value=e.to_bytes(), message=SimpleNamespace(partition=0, offset=i, timestamp=None)
        )
        for i, e in enumerate(events)
    ]
    one_by_one: dict[bytes, dict] = {}
    expected = [fold(one_by_one, e.entity_id.encode(), e.to_bytes()) for e in events]
    table = _CountingTable()

    rows, _ = fold_batch(table, batch[:120], SkippedRecords(registry=CollectorRegistry()))
    rows += fold_batch(table, batch[120:] + batch[:10], SkippedRecords(registry=CollectorRegistry()))[0]

    assert rows[:200] == expected
    assert rows[200:] == expected[:10]  # a replayed event gets the features it had
    assert dict(table) == one_by_one  # a replayed event is not counted twice
    entities = {e.entity_id for e in events}
    assert table.writes <= 2 * len(entities) < len(events)


@pytest.mark.unit
def test_an_event_dated_far_ahead_of_its_record_is_not_folded() -> None:
    stream = SyntheticStream(seed=7, entities=1)
    events = [stream.one(NOW + timedelta(seconds=i)).event for i in range(3)]
    ahead = events[1].model_copy(update={"event_time": NOW + timedelta(days=3)})
    written_at = NOW.timestamp() + 5
    batch = [
        SimpleNamespace(
            key=e.entity_id.encode(),
            value=e.to_bytes(),
            message=SimpleNamespace(partition=0, offset=i, timestamp=written_at),
        )
        for i, e in enumerate([events[0], ahead, events[2]])
    ]
    table: dict[bytes, dict] = {}

    rows, _ = fold_batch(table, batch, SkippedRecords(registry=CollectorRegistry()), max_ahead_s=3600)

    # the far-ahead event would have emptied the window: the next one would have seen no event before it
    assert [row["event_id"] for row in rows] == [events[0].event_id, events[2].event_id]
    assert rows[1]["msg_count_24h"] == 2 and rows[1]["seconds_since_last_event"] == 2


@pytest.mark.unit
def test_events_faust_fetched_and_dropped_are_folded_first_in_offset_order() -> None:
    stream = SyntheticStream(seed=6, entities=3)
    events = [stream.one(NOW + timedelta(seconds=i)).event for i in range(40)]
    tp = TP("events", 0)
    messages = [
        SimpleNamespace(key=e.entity_id.encode(), value=e.to_bytes(), offset=i, partition=0, tp=tp, timestamp=None)
        for i, e in enumerate(events)
    ]
    ledger = FetchLedger("events", stall_s=30)
    ledger.assigned([tp])
    for message in messages:
        ledger.fetched(tp, message, now=0)
    dropped = {0, 1, 17, 18, 19, 39}  # the head, a run in the middle, and the tail (revealed by no later event)
    batch = [SimpleNamespace(key=m.key, value=m.value, message=m) for m in messages if m.offset not in dropped]
    one_by_one: dict[bytes, dict] = {}
    expected = [fold(one_by_one, e.entity_id.encode(), e.to_bytes()) for e in events[:39]]
    table = _CountingTable()

    rows, recovered = fold_batch(table, batch, SkippedRecords(registry=CollectorRegistry()), ledger)

    assert rows == expected  # every event up to the last delivered one, as if none had been dropped
    assert [(tp, m.offset) for tp, m in recovered] == [(tp, o) for o in (0, 1, 17, 18, 19)]
    assert ledger.stalled(now=time.monotonic() + 31) == {tp: 39}  # the tail: read again after stall_s idle


@pytest.mark.integration
def test_a_row_the_store_refuses_is_skipped_alone(feast_store) -> None:
    """A row Feast cannot write (a timestamp beyond pandas' range) fails the batch deterministically while the store
    answers: the batch is bisected, the row skipped and counted, every other row written."""
    prefix = f"refused-{feast_store.online.kind}"
    rows = [_row(f"{prefix}-{i}", NOW, i + 1) for i in range(9)]
    rows.insert(5, _row(f"{prefix}-bad", datetime(2300, 1, 1, tzinfo=UTC), 99))
    pusher = _pusher(feast_store.settings)
    before = pusher.skipped.count(EVENTS_TOPIC, "feature push refused the row")

    assert asyncio.run(pusher.push(rows)) is True

    entities = [row["entity_id"] for row in rows]
    online = online_features(feast_store.store, entities)
    assert online["msg_count_1h"] == [
        None if e.endswith("-bad") else row["msg_count_1h"] for e, row in zip(entities, rows, strict=True)
    ]
    assert pusher.skipped.count(EVENTS_TOPIC, "feature push refused the row") == before + 1


@pytest.mark.integration
def test_a_push_is_held_through_a_redis_outage_and_written_after(tmp_path) -> None:
    port = free_port()
    redis = _redis(tmp_path, port)
    settings = OnlineStore("redis", f"127.0.0.1:{port}").settings(tmp_path / "feast")
    try:
        apply_repo(settings)
        redis.stop()
        retries_before = _outage_retries()
        result: dict[str, object] = {}
        pushing = threading.Thread(
            target=lambda: result.update(
                ok=asyncio.run(_pusher(settings, **FAST_BACKOFF).push([_row("held-a", NOW, 4), _row("held-b", NOW, 5)]))
            ),
            daemon=True,
        )
        pushing.start()
        # One attempt against a stopped Redis takes seconds (the client retries its connection): one is enough.
        _wait_for(lambda: _outage_retries() >= retries_before + 1, 90, "an outage retry")
        assert pushing.is_alive(), "the push returned while Redis was down"
        redis = _redis(tmp_path, port)  # same port, empty: the held rows are written now
        pushing.join(30)
        assert not pushing.is_alive() and result == {"ok": True}
        assert online_features(open_store(settings), ["held-a", "held-b"])["msg_count_1h"] == [4, 5]
    finally:
        redis.stop()


@pytest.mark.integration
def test_a_held_push_gives_up_at_once_when_the_worker_stops(tmp_path) -> None:
    port = free_port()
    redis = _redis(tmp_path, port)
    settings = OnlineStore("redis", f"127.0.0.1:{port}").settings(tmp_path / "feast")
    try:
        apply_repo(settings)
    finally:
        redis.stop()

    async def push_then_stop() -> tuple[bool, float]:
        pusher = _pusher(settings, outage_backoff_max_s=30.0)
        retries_before = _outage_retries()
        task = asyncio.create_task(pusher.push([_row("stop-a", NOW, 1)]))
        while _outage_retries() < retries_before + 4:  # backoff 0.2, 0.4, 0.8, 1.6 s ...
            assert not task.done(), "the push returned while Redis was down"
            await asyncio.sleep(0.05)
        stopped = time.monotonic()
        pusher.stop()
        return await asyncio.wait_for(task, 10), time.monotonic() - stopped

    written, seconds = asyncio.run(push_then_stop())
    assert written is False
    assert seconds < 0.5, f"the push took {seconds:.2f}s to give up after stop()"


@pytest.mark.unit
def test_a_recovery_that_receives_nothing_for_a_while_is_restarted() -> None:
    def app(in_recovery=True, started=0.0, received=None, remaining=5):
        recovery = SimpleNamespace(
            in_recovery=in_recovery,
            _recovery_started_at=started,
            _active_events_received_at=received or {},
            active_remaining_total=lambda: remaining,
            signal_recovery_start=asyncio.Event(),
        )
        return SimpleNamespace(tables=SimpleNamespace(recovery=recovery))

    stuck = app()
    assert not restart_stuck_recovery(stuck, now=RECOVERY_STUCK_S - 1)  # not long enough yet
    assert restart_stuck_recovery(stuck, now=RECOVERY_STUCK_S)
    assert stuck.tables.recovery.signal_recovery_start.is_set()
    for healthy in (
        app(received={"changelog-0": 1.0}),  # records are coming: merely slow
        app(remaining=0),  # nothing left to read: faust is finishing
        app(in_recovery=False),
        app(started=None),
    ):
        assert not restart_stuck_recovery(healthy, now=10 * RECOVERY_STUCK_S)
        assert not healthy.tables.recovery.signal_recovery_start.is_set()
