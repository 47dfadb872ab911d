"""Feast's DuckDB offline store, with relative file paths resolved against ``RepoConfig.repo_path``, and sources
that are folders of parquet parts taking appends from many processes (``features.offline_parts``).

Why: feast 0.67's duckdb store reads and appends parquet at ``FileSource.path`` as written, so a relative
path resolves against the process's working directory, while the rest of Feast (schema reads, the file
offline store) resolves it against ``repo_path``. driftloop keeps relative paths in its definitions and
registry so the store directory can move, and needs DuckDB's point-in-time join (see
:func:`features.store.repo_config`). Only the paths change; reading, joining and writing stay Feast's own,
through two private helpers of ``feast.infra.offline_stores.duckdb`` (feast is pinned below 0.68; the tests
in tests/features catch a change).

Why the folders: Feast appends to a file source by rewriting the whole file, so a push costs as much as the file
holds and one process at most may write it. A source whose path is a folder is read as the dataset of its parts
(``<folder>/*.parquet``) and appended to with a new part per push, so the feature worker scales out.

Used by type name in a RepoConfig: ``offline_store: {type: features.offline_store.RepoPathDuckDBOfflineStore}``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
from feast.data_source import DataSource
from feast.infra.offline_stores import duckdb as feast_duckdb
from feast.infra.offline_stores.file_source import FileSource
from feast.infra.offline_stores.ibis import get_historical_features_ibis, offline_write_batch_ibis
from pydantic import StrictStr

from features.offline_parts import dataset_glob, write_part

STORE_TYPE = "features.offline_store.RepoPathDuckDBOfflineStore"


class RepoPathDuckDBOfflineStoreConfig(feast_duckdb.DuckDBOfflineStoreConfig):
    """Same options as Feast's ``duckdb`` offline store."""

    type: StrictStr = STORE_TYPE


class RepoPathDuckDBOfflineStore(feast_duckdb.DuckDBOfflineStore):
    """Feast's ``duckdb`` offline store reading and writing relative file sources under ``repo_path``."""

    @staticmethod
    def pull_latest_from_table_or_query(config, data_source, *args: Any, **kwargs: Any):
        return feast_duckdb.DuckDBOfflineStore.pull_latest_from_table_or_query(
            config, readable_source(data_source, config.repo_path), *args, **kwargs
        )

    @staticmethod
    def pull_all_from_table_or_query(config, data_source, *args: Any, **kwargs: Any):
        return feast_duckdb.DuckDBOfflineStore.pull_all_from_table_or_query(
            config, readable_source(data_source, config.repo_path), *args, **kwargs
        )

    @staticmethod
    def get_historical_features(
        config,
        feature_views,
        feature_refs,
        entity_df,
        registry,
        project,
        full_feature_names: bool = False,
        filter_by_created_timestamp: bool = False,
    ):
        return get_historical_features_ibis(
            config=config,
            feature_views=feature_views,
            feature_refs=feature_refs,
            entity_df=entity_df,
            registry=registry,
            project=project,
            full_feature_names=full_feature_names,
            data_source_reader=_read_data_source,
            data_source_writer=_write_data_source,
            staging_location=config.offline_store.staging_location,
            staging_location_endpoint_override=config.offline_store.staging_location_endpoint_override,
            filter_by_created_timestamp=filter_by_created_timestamp,
        )

    @staticmethod
    def offline_write_batch(config, feature_view, table, progress):
        offline_write_batch_ibis(
            config=config,
            feature_view=feature_view,
            table=table,
            progress=progress,
            data_source_writer=_write_data_source,
        )


def resolve_source(data_source: DataSource, repo_path: Path | str | None) -> DataSource:
    """Return ``data_source``, or a copy of a local file source whose relative path is made absolute.

    Args:
        data_source: any Feast data source; only a :class:`FileSource` with a relative local path changes.
        repo_path: the directory relative paths are resolved against; ``None`` leaves paths as they are.

    Returns:
        The same object when nothing changes, else a new ``FileSource`` (the registry's object is not touched).
    """
    if not isinstance(data_source, FileSource) or repo_path is None:
        return data_source
    return _with_uri(data_source, FileSource.get_uri_for_file_path(repo_path=repo_path, uri=data_source.path))


def readable_source(data_source: DataSource, repo_path: Path | str | None) -> DataSource:
    """:func:`resolve_source`, and a local folder of parts as the glob DuckDB reads them all with."""
    resolved = resolve_source(data_source, repo_path)
    if isinstance(resolved, FileSource) and Path(resolved.path).is_dir():
        return _with_uri(resolved, dataset_glob(resolved.path))
    return resolved


def _with_uri(source: FileSource, uri: str) -> FileSource:
    if uri == source.path:
        return source
    changed = FileSource.from_proto(source.to_proto())
    changed.file_options.uri = uri
    return changed


def _read_data_source(data_source: DataSource, repo_path: str):
    return feast_duckdb._read_data_source(readable_source(data_source, repo_path), repo_path)


def _write_data_source(table, data_source: DataSource, repo_path: str, *args: Any, **kwargs: Any) -> None:
    resolved = resolve_source(data_source, repo_path)
    mode = kwargs.get("mode", args[0] if args else "append")
    path = Path(resolved.file_options.uri) if isinstance(resolved, FileSource) else None
    if mode == "append" and path is not None and path.is_dir():
        write_part(table.to_pyarrow(), path)
        return
    if mode != "append" or path is None or path.suffix != ".parquet" or not path.exists():
        feast_duckdb._write_data_source(table, resolved, repo_path, *args, **kwargs)
        return
    _append_atomically(table.to_pyarrow(), path)


def _append_atomically(rows: pa.Table, path: Path) -> None:
    """Append to a parquet file the way Feast's DuckDB store does (the whole file is rewritten), but into a temporary
    file moved over the old one, so that a reader (training's point-in-time join) never sees a half-written file."""
    previous = pq.read_table(path)
    if rows.schema != previous.schema:
        rows = rows.cast(previous.schema)
    staging = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    pq.write_table(pa.concat_tables([rows, previous]), staging)
    os.replace(staging, path)
