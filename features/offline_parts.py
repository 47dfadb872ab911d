"""An offline source that many processes append to at once: a folder of parquet part files, read as one dataset.

Why: Feast's DuckDB store appends to a file source by rewriting the whole file, so each push costs as much as the
file holds and only one process may write it. Here every append is a new part file (written under a hidden
temporary name, then renamed into place, so a reader sees it whole or not at all), and any number of feature
workers append side by side.

Small parts are merged from time to time (:func:`compact`) under an advisory lock in the folder, so that the count
of files stays bounded however long the workers run. A reader that lists the folder while a merge swaps files in can
see a merged row twice (a point-in-time join keeps one row per entity row anyway) or miss a file deleted under it
(an I/O error: the read is tried again, see ``features.store.historical_features``). No row is ever missing from a
listing: the merged file is in place before its inputs go.

Names: ``part-<ns since epoch>-<random>.parquet``, oldest first when sorted; temporary files start with a dot and end
in ``.tmp``, so neither DuckDB's ``*.parquet`` nor pyarrow's dataset discovery reads them.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

log = logging.getLogger(__name__)

PATTERN = "*.parquet"
LOCK_FILE = ".compact.lock"
COMPACT_MIN_FILES = 64  # merge once this many small parts have piled up
COMPACT_MAX_BYTES = 16 * 1024 * 1024  # a part this big is left alone: merging it again would cost more than it saves
SCHEMA_LISTINGS = 10  # listings of the folder that :func:`schema_of` tries while merges remove the parts listed


def dataset_glob(folder: Path | str) -> str:
    """The glob that reads every part of ``folder`` (what DuckDB is given)."""
    return str(Path(folder) / PATTERN)


def write_part(rows: pa.Table, folder: Path) -> Path:
    """Write ``rows`` as a new part of ``folder``, whole or not at all, then merge small parts if they piled up.

    Args:
        rows: the rows to append; cast to the schema of the folder's parts (``features.store.apply_repo`` writes an
            empty one), so that every part reads back as one dataset.
        folder: the source's folder.

    Returns:
        The new part's path.

    Raises:
        FileNotFoundError: the folder is gone or holds no part to take the schema from.
        OSError: the part could not be written (full disk, read-only volume); nothing was added.
    """
    schema = schema_of(folder)
    if rows.schema != schema:
        rows = rows.select(schema.names).cast(schema)
    path = _publish(rows, folder)
    try:
        compact(folder, COMPACT_MIN_FILES, COMPACT_MAX_BYTES)
    except Exception as exc:  # noqa: BLE001 - the rows are in; a merge that fails leaves the parts as they are
        log.warning("merging the offline parts of %s failed: %s: %s", folder, type(exc).__name__, exc)
    return path


def create(folder: Path, schema: pa.Schema) -> None:
    """Create ``folder`` with one empty part of ``schema`` (what gives the dataset its schema) unless it has parts."""
    folder.mkdir(parents=True, exist_ok=True)
    if not parts(folder):
        _publish(schema.empty_table(), folder)
        log.info("created offline source %s", folder)


def schema_of(folder: Path) -> pa.Schema:
    """The schema of the folder's parts (read from the first one that is still there).

    A merge by another process can delete every part of a listing before one is read; its merged part was in place
    before, so the folder is listed again (a few times at most: each time another merge must have won the race).
    """
    for _ in range(SCHEMA_LISTINGS):
        listed = parts(folder)
        if not listed:
            break
        for path in listed:
            with contextlib.suppress(FileNotFoundError):  # merged away since the listing
                return pq.read_schema(path)
    raise FileNotFoundError(f"no offline part in {folder} to take the schema from: apply the feature repo first")


def compact(folder: Path, min_files: int = COMPACT_MIN_FILES, max_bytes: int = COMPACT_MAX_BYTES) -> int:
    """Merge the small parts of ``folder`` into one when at least ``min_files`` of them are there.

    One process merges at a time (an advisory lock in the folder); the others skip. Parts written meanwhile are not
    touched: only the files listed under the lock are merged, then deleted once the merged file is in place.

    Returns:
        How many parts were merged (0 when there was nothing to do or another process holds the lock).
    """
    min_files = max(min_files, 2)  # merging one part into one would only copy it
    small = _small_parts(folder, max_bytes)
    if len(small) < min_files:
        return 0
    with _lock(folder) as held:
        if not held:
            return 0
        small = _small_parts(folder, max_bytes)  # again under the lock: another process may just have merged them
        if len(small) < min_files:
            return 0
        started = time.perf_counter()
        schema = pq.read_schema(small[0])
        merged = pa.concat_tables([pq.read_table(path).cast(schema) for path in small])
        _publish(merged, folder)
        for path in small:
            path.unlink(missing_ok=True)
    log.info(
        "merged %d offline parts (%d rows) in %.0f ms",
        len(small),
        merged.num_rows,
        (time.perf_counter() - started) * 1000,
        extra={"folder": str(folder), "parts": len(small), "rows": merged.num_rows},
    )
    return len(small)


def parts(folder: Path) -> list[Path]:
    """The parts of ``folder``, oldest first."""
    return sorted(folder.glob(PATTERN))


def _small_parts(folder: Path, max_bytes: int) -> list[Path]:
    small = []
    for path in parts(folder):
        with contextlib.suppress(FileNotFoundError):  # merged away by another process since the listing
            if path.stat().st_size < max_bytes:
                small.append(path)
    return small


def _publish(rows: pa.Table, folder: Path) -> Path:
    name = f"part-{time.time_ns():020d}-{uuid.uuid4().hex[:12]}.parquet"
    staging = folder / f".{name}.tmp"
    try:
        pq.write_table(rows, staging)
        os.replace(staging, folder / name)
    finally:
        staging.unlink(missing_ok=True)
    return folder / name


@contextlib.contextmanager
def _lock(folder: Path) -> Iterator[bool]:
    """Hold the folder's merge lock if nobody else does: yields whether it is held. ``flock`` locks an open file, so
    two threads of one process exclude each other too; on NFS (the shared volume of a cluster's feature workers)
    Linux carries it as a POSIX lock, which the server enforces between hosts."""
    with (folder / LOCK_FILE).open("a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            yield False
            return
        try:
            yield True
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
