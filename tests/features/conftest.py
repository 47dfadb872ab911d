"""Fixtures of the features tests: one real local Feast store per session, applied in a temporary folder.

Tests share the store, so each test uses entity ids of its own.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

import pandas as pd
import pytest
from feast import FeatureStore

from driftloop.settings import Settings, load_settings
from features import apply_repo


@dataclass(frozen=True)
class FeastTestStore:
    settings: Settings
    store: FeatureStore


@pytest.fixture(scope="session")
def feast_store(tmp_path_factory: pytest.TempPathFactory) -> FeastTestStore:
    """The definitions applied to a sqlite + DuckDB store under a temporary folder."""
    settings = load_settings(feast={"data_dir": tmp_path_factory.mktemp("feast")})
    return FeastTestStore(settings=settings, store=apply_repo(settings))


@pytest.fixture
def stream_rows_factory() -> Callable[..., pd.DataFrame]:
    """Build rows for ``push_stream_features``: ``factory([(entity_id, event_time, msg_count_1h), ...])``.

    The other features derive from ``msg_count_1h`` so a test can tell which row a value came from.
    """

    def factory(rows: list[tuple[str, datetime, int]]) -> pd.DataFrame:
        return pd.DataFrame(
            {
                "entity_id": [entity_id for entity_id, _, _ in rows],
                "event_timestamp": [event_time for _, event_time, _ in rows],
                "msg_count_1h": [count for _, _, count in rows],
                "msg_count_24h": [count * 10 for _, _, count in rows],
                "mean_text_length": [float(count) / 2 for _, _, count in rows],
                "seconds_since_last_event": [float(count) + 0.5 for _, _, count in rows],
            }
        )

    return factory
