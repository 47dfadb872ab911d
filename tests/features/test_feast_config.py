"""RepoConfig choices made from the settings: pure, nothing is created on disk."""

from __future__ import annotations

from pathlib import Path

import pytest

from features import FeatureStoreConfigError, definitions, repo_config
from features.offline_store import STORE_TYPE, readable_source, resolve_source
from features.store import online_store_config
from foundation.settings import load_settings

pytestmark = pytest.mark.unit


def test_repo_config_keeps_everything_under_the_feast_dir(tmp_path: Path) -> None:
    settings = load_settings(feast={"data_dir": tmp_path / "feast"})

    config = repo_config(settings)

    assert config.project == "driftloop"
    assert config.provider == "local"
    assert config.repo_path == (tmp_path / "feast").resolve()
    assert config.registry.path == str((tmp_path / "feast" / "registry.db").resolve())
    assert config.online_store.type == "sqlite"
    assert config.online_store.path == str((tmp_path / "feast" / "online_store.db").resolve())
    assert not (tmp_path / "feast").exists()


def test_repo_config_uses_duckdb_with_repo_relative_paths(tmp_path: Path) -> None:
    config = repo_config(load_settings(feast={"data_dir": tmp_path}))

    assert config.offline_store.type == STORE_TYPE


def test_repo_config_makes_a_relative_feast_dir_absolute(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)

    config = repo_config(load_settings(feast={"data_dir": "run/feast"}))

    assert config.repo_path == tmp_path.resolve() / "run" / "feast"


def test_redis_online_store_uses_the_connection_string(tmp_path: Path) -> None:
    settings = load_settings(
        feast={"data_dir": tmp_path, "online_store": "redis", "redis_connection_string": "redis.local:6379,db=1"}
    )

    assert online_store_config(settings) == {"type": "redis", "connection_string": "redis.local:6379,db=1"}


def test_redis_online_store_without_connection_string_is_refused(tmp_path: Path) -> None:
    settings = load_settings(feast={"data_dir": tmp_path, "online_store": "redis"})

    with pytest.raises(FeatureStoreConfigError, match="REDIS_CONNECTION_STRING"):
        repo_config(settings)


def test_unknown_online_store_is_refused(tmp_path: Path) -> None:
    settings = load_settings(feast={"data_dir": tmp_path, "online_store": "cassandra"})

    with pytest.raises(FeatureStoreConfigError, match="cassandra"):
        repo_config(settings)


def test_resolve_source_anchors_a_relative_file_source(tmp_path: Path) -> None:
    source = definitions.entity_stream_stats_source

    resolved = resolve_source(source, tmp_path)

    assert resolved.path == str(tmp_path / "data" / "entity_stream_stats")
    assert resolved.timestamp_field == source.timestamp_field
    assert source.path == "data/entity_stream_stats"


def test_resolve_source_leaves_absolute_paths_and_other_sources(tmp_path: Path) -> None:
    anchored = resolve_source(definitions.entity_stream_stats_source, tmp_path)

    assert resolve_source(anchored, tmp_path / "elsewhere") is anchored
    assert resolve_source(definitions.entity_stream_push, tmp_path) is definitions.entity_stream_push
    assert resolve_source(definitions.entity_profile_source, None) is definitions.entity_profile_source


def test_a_folder_source_is_read_as_the_dataset_of_its_parts(tmp_path: Path) -> None:
    (tmp_path / "data" / "entity_stream_stats").mkdir(parents=True)

    readable = readable_source(definitions.entity_stream_stats_source, tmp_path)

    assert readable.path == str(tmp_path / "data" / "entity_stream_stats" / "*.parquet")
    assert readable_source(definitions.entity_profile_source, tmp_path).path.endswith("entity_profile.parquet")
