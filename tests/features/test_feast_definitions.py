"""The Feast definitions and the package surface: pure checks, no store."""

from __future__ import annotations

import os
import runpy
from pathlib import Path

import pyarrow as pa
import pytest
from feast import Entity, FeatureService, FeatureView, FileSource, PushSource
from feast.repo_operations import get_repo_files

import features
from features import definitions
from features.store import source_schema

pytestmark = [
    pytest.mark.unit,
    pytest.mark.filterwarnings("ignore:Stream feature views are experimental:RuntimeWarning"),
]

FEATURES_DIR = Path(definitions.__file__).parent
FEAST_TYPES = (Entity, FeatureService, FeatureView, FileSource, PushSource)


def test_exports_are_sorted_and_exist() -> None:
    assert features.__all__ == sorted(features.__all__)
    assert all(hasattr(features, name) for name in features.__all__)


def test_definitions_run_without_side_effects(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    environ = dict(os.environ)

    namespace = runpy.run_path(definitions.__file__)

    assert list(tmp_path.iterdir()) == []
    assert dict(os.environ) == environ
    names = {key: value.name for key, value in namespace.items() if isinstance(value, FEAST_TYPES)}
    assert names == {key: key for key in names}
    assert set(names) >= {"entity", "entity_stream_push", "entity_stream_stats", "entity_profile", "inference_v1"}


def test_feast_cli_imports_only_the_definitions() -> None:
    assert get_repo_files(FEATURES_DIR) == [FEATURES_DIR.resolve() / "definitions.py"]


def test_file_sources_are_relative() -> None:
    for view in (definitions.entity_stream_stats, definitions.entity_profile):
        assert not Path(view.batch_source.path).is_absolute()
        assert view.batch_source.path.startswith("data/")


def test_stream_view_is_online_and_offline_from_the_push_source() -> None:
    view = definitions.entity_stream_stats
    assert view.online and view.offline
    assert view.stream_source.name == definitions.entity_stream_push.name
    assert view.ttl.days == 2
    assert definitions.entity_profile.ttl.days == 30


def test_inference_service_serves_both_views() -> None:
    projections = {p.name: [f.name for f in p.features] for p in definitions.inference_v1.feature_view_projections}
    assert set(projections) == {"entity_stream_stats", "entity_profile"}
    assert set(projections["entity_stream_stats"]) == {
        "msg_count_1h",
        "msg_count_24h",
        "mean_text_length",
        "seconds_since_last_event",
    }
    assert set(projections["entity_profile"]) == {"account_age_days", "lifetime_events"}


def test_source_schema_of_the_stream_view() -> None:
    schema = source_schema(definitions.entity_stream_stats)

    assert schema.names[:2] == ["entity_id", "event_timestamp"]
    assert schema.field("entity_id").type == pa.string()
    assert schema.field("event_timestamp").type == pa.timestamp("us", tz="UTC")
    assert schema.field("msg_count_1h").type == pa.int64()
    assert schema.field("msg_count_24h").type == pa.int64()
    assert schema.field("mean_text_length").type == pa.float32()
    assert schema.field("seconds_since_last_event").type == pa.float32()


def test_source_schema_of_the_profile_view() -> None:
    schema = source_schema(definitions.entity_profile)

    assert set(schema.names) == {"entity_id", "event_timestamp", "account_age_days", "lifetime_events"}
    assert schema.field("account_age_days").type == pa.float32()
    assert schema.field("lifetime_events").type == pa.int64()
