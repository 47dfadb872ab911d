"""Push, online and point-in-time reads against a real Feast store (DuckDB offline), once per online store.

The ``feast_store`` and ``online_store`` fixtures are parametrized over the online stores (sqlite, redis), so every
test here runs against both with the same assertions; where the stores really differ (a late, older push) the
test asserts each store's own behaviour.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from features import (
    FeatureRowsInvalid,
    FeatureStoreNotReady,
    apply_repo,
    check_health,
    definitions,
    historical_features,
    online_features,
    push_stream_features,
)
from features.offline_parts import parts
from features.store import source_schema
from tests.helpers import free_port

pytestmark = [
    pytest.mark.integration,
    pytest.mark.filterwarnings("ignore:Stream feature views are experimental:RuntimeWarning"),
    pytest.mark.filterwarnings("ignore:fetch_arrow_table\\(\\) is deprecated:DeprecationWarning"),
]

T1 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
T2 = T1 + timedelta(hours=6)
NOW = datetime.now(UTC).replace(microsecond=0)

RowsFactory = Callable[[list[tuple[str, datetime, int]]], pd.DataFrame]


def test_apply_registers_the_views_and_the_service(feast_store) -> None:
    store = feast_store.store

    assert {view.name for view in store.list_all_feature_views()} == {"entity_stream_stats", "entity_profile"}
    assert [view.name for view in store.list_stream_feature_views()] == ["entity_stream_stats"]
    assert store.get_feature_service("inference_v1").name == "inference_v1"
    assert [source.name for source in store.list_data_sources() if source.name == "entity_stream_push"]


def test_apply_again_changes_nothing_and_keeps_offline_rows(feast_store, stream_rows_factory: RowsFactory) -> None:
    push_stream_features(feast_store.store, stream_rows_factory([("reapply-1", NOW, 5)]))
    offline_folder = Path(feast_store.settings.feast_dir) / "data" / "entity_stream_stats"

    apply_repo(feast_store.settings)

    assert "reapply-1" in pq.read_table(offline_folder).column("entity_id").to_pylist()
    assert online_features(feast_store.store, ["reapply-1"])["msg_count_1h"] == [5]


def test_health_describes_an_applied_store(feast_store) -> None:
    line = check_health(feast_store.settings)

    assert "entity_stream_stats" in line and "entity_profile" in line and "inference_v1" in line
    assert "\n" not in line


def test_health_fails_without_a_registry(tmp_path: Path, online_store) -> None:
    with pytest.raises(FeatureStoreNotReady, match="registry"):
        check_health(online_store.settings(tmp_path))

    assert list(tmp_path.iterdir()) == []


def test_health_fails_on_an_unreadable_online_store(tmp_path: Path, online_store) -> None:
    settings = online_store.settings(tmp_path)
    apply_repo(settings)
    if online_store.kind == "sqlite":
        (tmp_path / "online_store.db").write_bytes(b"not a sqlite database" * 100)
    else:  # redis: the server is gone (nothing listens on the port); redis-py retries for a few seconds first
        settings = online_store.settings(tmp_path, redis_connection_string=f"127.0.0.1:{free_port()}")

    with pytest.raises(FeatureStoreNotReady, match="not readable"):
        check_health(settings)


def test_push_then_read_many_entities_online(feast_store, stream_rows_factory: RowsFactory) -> None:
    push_stream_features(
        feast_store.store,
        stream_rows_factory([("online-a", NOW, 1), ("online-b", NOW, 2), ("online-c", NOW, 3)]),
    )

    values = online_features(feast_store.store, ["online-c", "online-a", "online-unknown", "online-b"])

    assert values["entity_id"] == ["online-c", "online-a", "online-unknown", "online-b"]
    assert values["msg_count_1h"] == [3, 1, None, 2]
    assert values["msg_count_24h"] == [30, 10, None, 20]
    assert values["mean_text_length"] == [1.5, 0.5, None, 1.0]
    assert values["seconds_since_last_event"] == [3.5, 1.5, None, 2.5]
    assert values["account_age_days"] == [None, None, None, None]


def test_online_read_of_no_entities(feast_store) -> None:
    values = online_features(feast_store.store, [])

    assert values["entity_id"] == [] and values["msg_count_1h"] == [] and values["lifetime_events"] == []


def test_newest_row_of_one_push_is_served(feast_store, stream_rows_factory: RowsFactory) -> None:
    rows = stream_rows_factory([("batch-a", NOW, 9), ("batch-a", NOW - timedelta(minutes=5), 4)])

    push_stream_features(feast_store.store, rows.set_index(pd.Index([7, 3])))

    assert online_features(feast_store.store, ["batch-a"])["msg_count_1h"] == [9]


def test_online_read_serves_values_older_than_the_ttl(feast_store, stream_rows_factory: RowsFactory) -> None:
    """Feast applies TTLs in point-in-time joins only; the online store returns the last push however old."""
    push_stream_features(feast_store.store, stream_rows_factory([("old-a", NOW - timedelta(days=10), 4)]))

    assert online_features(feast_store.store, ["old-a"])["msg_count_1h"] == [4]


# What a late push of older values leaves online, per store (the offline history is right in both).
LATE_OLDER_PUSH_ONLINE = {"sqlite": [3], "redis": [8]}


def test_a_late_older_push_online_depends_on_the_store_but_offline_history_stays_right(
    feast_store, stream_rows_factory: RowsFactory
) -> None:
    """DESIGN.md: the sqlite online store does not compare timestamps; the last push wins online.

    Feast's redis store keeps an event timestamp per entity and view and skips a write older than it, so the
    newer values stay online there.
    """
    push_stream_features(feast_store.store, stream_rows_factory([("late-a", NOW, 8)]))
    push_stream_features(feast_store.store, stream_rows_factory([("late-a", NOW - timedelta(hours=1), 3)]))

    assert (
        online_features(feast_store.store, ["late-a"])["msg_count_1h"]
        == LATE_OLDER_PUSH_ONLINE[feast_store.online.kind]
    )
    history = historical_features(
        feast_store.store,
        pd.DataFrame({"entity_id": ["late-a", "late-a"], "event_timestamp": [NOW - timedelta(minutes=30), NOW]}),
    )
    assert history["msg_count_1h"].tolist() == [3, 8]


def test_point_in_time_read_never_leaks_future_values(feast_store, stream_rows_factory: RowsFactory) -> None:
    push_stream_features(feast_store.store, stream_rows_factory([("pit-a", T1, 1), ("pit-b", T1, 100)]))
    push_stream_features(feast_store.store, stream_rows_factory([("pit-a", T2, 2)]))
    entity_df = pd.DataFrame(
        {
            "entity_id": ["pit-a", "pit-a", "pit-a", "pit-a", "pit-b", "pit-none", "pit-a", "pit-a"],
            "event_timestamp": [
                T2 + timedelta(minutes=1),  # after t2: B
                T1 - timedelta(seconds=1),  # before t1: nothing known yet
                T1 + timedelta(hours=1),  # between: A
                T1,  # exactly t1: A
                T2,  # another entity keeps its own value
                T2,  # never pushed
                T2 + timedelta(days=3),  # beyond the 2-day TTL
                T1 + timedelta(hours=1),  # duplicate row: answered twice
            ],
            "label": list(range(8)),
        },
        index=range(100, 108),
    )

    result = historical_features(feast_store.store, entity_df)

    assert result["label"].tolist() == list(range(8))
    assert result["entity_id"].tolist() == entity_df["entity_id"].tolist()
    counts = [None if pd.isna(value) else int(value) for value in result["msg_count_1h"]]
    assert counts == [2, None, 1, 1, 100, None, None, 1]
    assert result["msg_count_24h"].iloc[0] == 20 and result["msg_count_24h"].iloc[2] == 10


def test_point_in_time_read_keeps_fresh_stream_values_when_the_profile_is_stale(
    feast_store, stream_rows_factory: RowsFactory
) -> None:
    """One view outside its TTL nulls that view only (Feast's file store would drop the whole row)."""
    profile = pd.DataFrame(
        {
            "entity_id": ["stale-a"],
            "event_timestamp": [T1 - timedelta(days=40)],
            "account_age_days": [12.5],
            "lifetime_events": [40],
        }
    )
    feast_store.store.write_to_offline_store("entity_profile", profile)
    push_stream_features(feast_store.store, stream_rows_factory([("stale-a", T1, 6)]))
    entity_df = pd.DataFrame({"entity_id": ["stale-a", "stale-a"], "event_timestamp": [T1, T1 - timedelta(days=35)]})

    result = historical_features(feast_store.store, entity_df)

    assert result["msg_count_1h"].iloc[0] == 6 and pd.isna(result["account_age_days"].iloc[0])
    assert pd.isna(result["msg_count_1h"].iloc[1]) and result["account_age_days"].iloc[1] == 12.5


def test_push_with_wrong_columns_writes_nothing(feast_store, stream_rows_factory: RowsFactory) -> None:
    missing = stream_rows_factory([("bad-a", NOW, 1)]).drop(columns="msg_count_24h")
    extra = stream_rows_factory([("bad-a", NOW, 1)]).assign(text="hello")

    with pytest.raises(FeatureRowsInvalid, match="msg_count_24h"):
        push_stream_features(feast_store.store, missing)
    with pytest.raises(FeatureRowsInvalid, match="text"):
        push_stream_features(feast_store.store, extra)

    assert online_features(feast_store.store, ["bad-a"])["msg_count_1h"] == [None]


def test_historical_read_needs_entity_and_timestamp(feast_store) -> None:
    with pytest.raises(FeatureRowsInvalid, match="event_timestamp"):
        historical_features(feast_store.store, pd.DataFrame({"entity_id": ["x"]}))


def test_offline_push_adds_one_part_and_touches_no_other(feast_store, stream_rows_factory: RowsFactory) -> None:
    """A push appends a new part file (written aside, then renamed into place): no reader ever sees a half-written
    file, the earlier parts stay as they were, and several processes can push at once (see test_offline_parts)."""
    folder = feast_store.settings.feast_dir / "data" / "entity_stream_stats"
    push_stream_features(feast_store.store, stream_rows_factory([("atomic-0", T1, 1)]))
    before = {path: path.stat().st_mtime_ns for path in parts(folder)}

    push_stream_features(feast_store.store, stream_rows_factory([("atomic-1", T1, 1)]))

    after = parts(folder)
    assert after[:-1] == list(before) and {path: path.stat().st_mtime_ns for path in after[:-1]} == before
    assert pq.read_table(after[-1]).column("entity_id").to_pylist() == ["atomic-1"]
    assert not list(folder.glob(".*.tmp"))


def test_apply_moves_a_single_file_stream_source_into_its_folder(tmp_path: Path, online_store) -> None:
    """A store made before the stream source became a folder keeps its offline rows."""
    settings = online_store.settings(tmp_path)
    legacy = tmp_path / "data" / "entity_stream_stats.parquet"
    legacy.parent.mkdir(parents=True)
    old = pa.table(
        {
            "entity_id": ["old-1"],
            "event_timestamp": [T1],
            "msg_count_1h": [3],
            "msg_count_24h": [3],
            "mean_text_length": [2.0],
            "seconds_since_last_event": [1.0],
        }
    )
    pq.write_table(old.cast(source_schema(definitions.entity_stream_stats)), legacy)

    store = apply_repo(settings)

    assert not legacy.exists()
    joined = historical_features(store, pd.DataFrame({"entity_id": ["old-1"], "event_timestamp": [T2]}))
    assert joined["msg_count_1h"].tolist() == [3]


def test_historical_reads_during_offline_appends_always_answer(feast_store, stream_rows_factory: RowsFactory) -> None:
    """DuckDB opens a parquet path again between its footer and its row groups, so a read racing an append's rename
    fails now and then ("Invalid data", "Could not read enough bytes"): the read is retried and answers from one whole
    file. The appends come from another process every 0.05 s, ten times the feature worker's pace, so that the race
    shows (without the retry this test fails)."""
    if feast_store.settings.feast.online_store != "sqlite":
        pytest.skip("the offline store (DuckDB on parquet) is the same whatever the online store: tested once")
    push_stream_features(feast_store.store, stream_rows_factory([(f"race-{i}", T1, i) for i in range(200)]))
    writer = subprocess.Popen(
        [sys.executable, "-c", APPEND_FOREVER],
        env={**os.environ, "SETTINGS_JSON": feast_store.settings.model_dump_json()},
    )
    try:
        entities = pd.DataFrame({"entity_id": [f"race-{i}" for i in range(200)], "event_timestamp": [T2] * 200})
        deadline = time.monotonic() + 60
        while writer.poll() is None and not (feast_store.settings.feast_dir / "appending").exists():
            assert time.monotonic() < deadline, "the writer did not start"
            time.sleep(0.2)
        for _ in range(100):
            joined = historical_features(feast_store.store, entities)
            assert joined["msg_count_1h"].tolist() == list(range(200))
        assert writer.poll() is None, "the writer died"
    finally:
        writer.kill()
        writer.wait(timeout=30)


APPEND_FOREVER = """
import itertools, os, time
from datetime import UTC, datetime
import pandas as pd
from foundation.settings import Settings
from features import open_store, push_stream_features
settings = Settings.model_validate_json(os.environ["SETTINGS_JSON"])
store = open_store(settings)
(settings.feast_dir / "appending").touch()
for i in itertools.count():
    time.sleep(0.05)
    push_stream_features(store, pd.DataFrame({"entity_id": [f"race-new-{i}"], "event_timestamp": [datetime.now(UTC)],
        "msg_count_1h": [i], "msg_count_24h": [i], "mean_text_length": [1.0], "seconds_since_last_event": [1.0]}))
"""
