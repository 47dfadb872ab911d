"""The SDK-free online read against real stores (sqlite file, real redis-server): Feast's own answers, every time.

Runs once per online store (the ``feast_store`` fixture is parametrized over sqlite and redis).
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pandas as pd
import pytest

from features import FeatureStoreNotReady, online_features, open_reader, push_stream_features
from features.online_read import FEATURE_NAMES
from tests.helpers import free_port

pytestmark = [
    pytest.mark.integration,
    pytest.mark.filterwarnings("ignore:Stream feature views are experimental:RuntimeWarning"),
]

NOW = datetime.now(UTC).replace(microsecond=0)


def test_reads_what_feast_reads(feast_store, stream_rows_factory) -> None:
    ids = [f"lean-{i}" for i in range(40)] + ["lean-ünï 🙂", "lean-\x00nul", ""]
    rows = stream_rows_factory([(entity_id, NOW - timedelta(minutes=i), i) for i, entity_id in enumerate(ids)])
    push_stream_features(feast_store.store, rows)
    # The profile view too (another view, Float32 and Int64), for some entities only.
    profile = pd.DataFrame(
        {
            "entity_id": ids[:10],
            "event_timestamp": [NOW] * 10,
            "account_age_days": [i * 1.25 for i in range(10)],
            "lifetime_events": [i * 1000 for i in range(10)],
        }
    )
    feast_store.store.write_to_online_store("entity_profile", profile)
    asked = ["lean-unknown", *reversed(ids), ids[3], ids[3], "lean-7"]

    reader = open_reader(feast_store.settings)
    try:
        got = reader.read(asked)
        expected = online_features(feast_store.store, asked)
        assert list(got) == ["entity_id", *FEATURE_NAMES]
        assert got == expected
        assert got["lifetime_events"][-1] == 7000 and got["msg_count_1h"][0] is None
        # Several threads at once (the worker reads from a thread pool), each its own answer.
        with ThreadPoolExecutor(max_workers=4) as pool:
            answers = list(pool.map(lambda n: reader.read(asked[n:]), range(8)))
        assert all(answer == {k: v[n:] for k, v in expected.items()} for n, answer in enumerate(answers))
        assert reader.read([]) == {"entity_id": [], **{name: [] for name in FEATURE_NAMES}}
    finally:
        reader.close()


def test_a_store_that_cannot_answer_is_an_outage_not_an_empty_answer(tmp_path: Path, online_store) -> None:
    if online_store.kind == "sqlite":  # no file yet: the reader never creates one
        settings = online_store.settings(tmp_path / "nothing-here")
    else:  # nothing listens on the port
        settings = online_store.settings(tmp_path, redis_connection_string=f"127.0.0.1:{free_port()}")
    reader = open_reader(settings)
    try:
        with pytest.raises(FeatureStoreNotReady, match=f"online store {online_store.kind} unavailable"):
            reader.read(["anyone"])
    finally:
        reader.close()
    assert not (tmp_path / "nothing-here").exists()


def test_an_entity_never_pushed_reads_none(feast_store) -> None:
    reader = open_reader(feast_store.settings)
    try:
        assert reader.read(["never-pushed"])["msg_count_24h"] == [None]
    finally:
        reader.close()
