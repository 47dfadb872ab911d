"""Read the serving features from Feast's online store without the Feast SDK: the inference worker's lookup.

Importing the Feast SDK costs a process 13 to 16 s and ~850 MB here (it imports torch, pandas, pyarrow, duckdb…),
so an inference replica that KEDA adds would answer nothing for its first seconds. The worker only reads, and a read
needs neither the registry nor pandas: this module reads the two online stores driftloop supports in the layout
Feast 0.67 writes them (entity key serialization version 3, one string join key):

- sqlite: a table ``<project>_<view>`` with a row per entity and feature: ``entity_key`` (the serialized key),
  ``feature_name`` and ``value`` (a serialized ``feast.types.Value``);
- redis: a hash per entity at ``<serialized key><project>``, a field per feature named by the 32-bit murmur3 hash
  of ``<view>:<feature>`` holding the same serialized value (and ``_ts:<view>``, not read).

Answers are Feast's: the last pushed value however old (Feast applies no TTL online), ``None`` where nothing was
pushed. The serving contract (views, features, join key) is written out below; ``tests/features`` hold it equal to
``features.definitions`` and compare every answer with Feast's own ``get_online_features`` on both stores.
Pushing, applying and point-in-time reads stay with the SDK (``features.store``).
"""

from __future__ import annotations

import json
import sqlite3
import struct
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from features.exceptions import FeatureStoreConfigError, FeatureStoreNotReady
from foundation.settings import Settings

ENTITY_KEY = "entity_id"
# The feature service inference_v1: its views, each with its features in the service's order.
SERVING_VIEWS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("entity_stream_stats", ("msg_count_1h", "msg_count_24h", "mean_text_length", "seconds_since_last_event")),
    ("entity_profile", ("account_age_days", "lifetime_events")),
)
FEATURE_NAMES: tuple[str, ...] = tuple(name for _, names in SERVING_VIEWS for name in names)
ONLINE_STORE_FILE = "online_store.db"

_STRING = 2  # feast.ValueType.STRING
_SQLITE_CHUNK = 500  # keys per SELECT (sqlite's bound on host parameters is 32,766 by default; 999 in old builds)


def entity_key_bytes(entity_id: str) -> bytes:
    """Feast's serialized entity key (version 3) of one ``entity_id``."""
    name = ENTITY_KEY.encode()
    value = entity_id.encode("utf-8")
    return struct.pack("<III", 1, _STRING, len(name)) + name + struct.pack("<II", _STRING, len(value)) + value


def _varint(blob: bytes, at: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if at >= len(blob) or shift > 63:
            raise ValueError("truncated or overlong varint")
        byte = blob[at]
        at += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, at
        shift += 7


def _signed(value: int, bits: int) -> int:
    value &= (1 << 64) - 1
    value = value - (1 << 64) if value >= 1 << 63 else value
    if bits == 32 and not -(1 << 31) <= value < 1 << 31:
        raise ValueError("int32 value out of range")
    return value


# field number -> decoder of its payload; the scalar members of the Value oneof (feast/types/Value.proto)
_VARINTS = {3: lambda v: _signed(v, 32), 4: lambda v: _signed(v, 64), 7: bool, 19: lambda _: None}


def decode_value(blob: bytes | None) -> Any:
    """A serialized ``feast.types.Value`` as Python (``None``: empty, null or absent), as Feast's ``to_dict`` gives it.

    Raises:
        FeatureStoreConfigError: the value is not one of the scalar kinds a driftloop view holds (a list, a map, a
            timestamp…) or is not a valid message: the store holds something other than this contract.
    """
    if not blob:
        return None
    value: Any = None
    at = 0
    try:
        while at < len(blob):
            tag, at = _varint(blob, at)
            field, wire = tag >> 3, tag & 7
            if wire == 0 and field in _VARINTS:
                raw, at = _varint(blob, at)
                value = _VARINTS[field](raw)
            elif wire == 1 and field == 5:  # double_val
                (value,) = struct.unpack_from("<d", blob, at)
                at += 8
            elif wire == 5 and field == 6:  # float_val
                (value,) = struct.unpack_from("<f", blob, at)
                at += 4
            elif wire == 2 and field in (1, 2):  # bytes_val, string_val
                size, at = _varint(blob, at)
                if at + size > len(blob):
                    raise ValueError("truncated field")
                payload = blob[at : at + size]
                value = payload.decode("utf-8") if field == 2 else payload
                at += size
            else:
                raise FeatureStoreConfigError(
                    f"online store value has field {field} (wire type {wire}); driftloop's views hold only scalars"
                )
    except (ValueError, struct.error) as exc:
        raise FeatureStoreConfigError(f"online store value is not a valid feast Value: {exc}") from exc
    return value


class OnlineReader:
    """Reads ``inference_v1``'s features of many entities at once; safe to call from several threads."""

    def read(self, entity_ids: Sequence[str]) -> dict[str, list]:
        """``entity_id`` and one list per feature (:data:`FEATURE_NAMES`), aligned with ``entity_ids``; repeats
        allowed, ``None`` where nothing was pushed.

        Raises:
            FeatureStoreNotReady: the store cannot answer now (sqlite file missing, locked or without its tables,
                Redis down or timing out); no partial answer is made up.
            FeatureStoreConfigError: a stored value is not a scalar of this contract.
        """
        ids = list(entity_ids)
        keys = {entity_id: entity_key_bytes(entity_id) for entity_id in dict.fromkeys(ids)}
        found = self._fetch(list(keys.values())) if keys else {}
        result: dict[str, list] = {ENTITY_KEY: ids}
        for view, names in SERVING_VIEWS:
            for name in names:
                result[name] = [found.get((view, keys[entity_id], name)) for entity_id in ids]
        return result

    def _fetch(self, keys: list[bytes]) -> dict[tuple[str, bytes, str], Any]:
        """``(view, key, feature) -> value`` of every stored feature of ``keys`` (absent: nothing stored)."""
        raise NotImplementedError

    def close(self) -> None:
        """Release connections."""


class SqliteReader(OnlineReader):
    """Feast's sqlite online store file, opened read-only (one connection per calling thread)."""

    def __init__(self, path: Path, project: str) -> None:
        self.path = path
        self.project = project
        self._local = threading.local()
        self._connections: list[sqlite3.Connection] = []
        self._lock = threading.Lock()

    def _connection(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            # Read-only: a reader never creates the file (a missing store is an outage, waited out, not an empty one).
            conn = sqlite3.connect(f"{self.path.resolve().as_uri()}?mode=ro", uri=True, check_same_thread=False)
            self._local.conn = conn
            with self._lock:
                self._connections.append(conn)
        return conn

    def _fetch(self, keys: list[bytes]) -> dict[tuple[str, bytes, str], Any]:
        found: dict[tuple[str, bytes, str], Any] = {}
        try:
            conn = self._connection()
            for view, names in SERVING_VIEWS:
                table = '"' + f"{self.project}_{view}".replace('"', '""') + '"'
                wanted = set(names)
                for start in range(0, len(keys), _SQLITE_CHUNK):
                    chunk = keys[start : start + _SQLITE_CHUNK]
                    rows = conn.execute(
                        f"SELECT entity_key, feature_name, value FROM {table} "
                        f"WHERE entity_key IN ({','.join('?' * len(chunk))})",
                        chunk,
                    ).fetchall()
                    for key, feature, blob in rows:
                        if feature in wanted:
                            found[(view, bytes(key), feature)] = decode_value(blob)
        except sqlite3.OperationalError as exc:  # missing file or table, locked: the store, not the request
            self._forget_connection()
            raise FeatureStoreNotReady(f"online store sqlite unavailable: {exc}") from exc
        return found

    def _forget_connection(self) -> None:
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            self._local.conn = None
            with self._lock:
                self._connections.remove(conn)
            conn.close()

    def close(self) -> None:
        with self._lock:
            connections, self._connections = self._connections, []
        for conn in connections:
            conn.close()


def parse_redis_connection_string(text: str) -> dict[str, Any]:
    """``host:port[,name=value…]`` (Feast's format) as keyword arguments of ``redis.Redis``.

    Values are JSON where they parse as JSON (``db=0``, ``ssl=true``), else strings (a password).

    Raises:
        FeatureStoreConfigError: no ``host:port``, or more than one (a cluster, which driftloop does not configure).
    """
    nodes = [part for part in text.split(",") if "=" not in part]
    if len(nodes) != 1 or ":" not in nodes[0]:
        raise FeatureStoreConfigError("redis connection string needs exactly one host:port (then name=value options)")
    host, port = nodes[0].rsplit(":", 1)
    kwargs: dict[str, Any] = {"host": host, "port": port}
    for part in text.split(","):
        if "=" in part:
            name, raw = part.split("=", 1)
            kwargs[name] = _json_or_text(raw)
    return kwargs


def _json_or_text(raw: str) -> Any:
    try:
        return json.loads(raw)
    except ValueError:
        return raw


class RedisReader(OnlineReader):
    """Feast's redis online store: one pipelined ``HMGET`` per entity and view."""

    def __init__(self, connection_string: str, project: str) -> None:
        import mmh3  # Feast's redis extra brings both
        import redis

        self.project = project.encode()
        self._client = redis.Redis(**parse_redis_connection_string(connection_string))
        errors = redis.exceptions
        self._unavailable = (errors.ConnectionError, errors.TimeoutError, errors.BusyLoadingError)
        # Feast's field name: murmur3_32 of "<view>:<feature>", its 4 little-endian bytes.
        self._fields = {
            view: [struct.pack("<I", mmh3.hash(f"{view}:{name}", signed=False)) for name in names]
            for view, names in SERVING_VIEWS
        }

    def _fetch(self, keys: list[bytes]) -> dict[tuple[str, bytes, str], Any]:
        try:
            with self._client.pipeline(transaction=False) as pipe:
                for key in keys:
                    for view, _ in SERVING_VIEWS:
                        pipe.hmget(key + self.project, self._fields[view])
                replies: Iterator[list[bytes | None]] = iter(pipe.execute())
        except self._unavailable as exc:
            raise FeatureStoreNotReady(f"online store redis unavailable: {exc}") from exc
        found: dict[tuple[str, bytes, str], Any] = {}
        for key in keys:
            for view, names in SERVING_VIEWS:
                for name, blob in zip(names, next(replies), strict=True):
                    if blob is not None:
                        found[(view, key, name)] = decode_value(blob)
        return found

    def close(self) -> None:
        self._client.close()


def open_reader(settings: Settings) -> OnlineReader:
    """The reader of the online store the settings name (``settings.feast.online_store``).

    Raises:
        FeatureStoreConfigError: the online store is unknown, or redis has no (valid) connection string.
    """
    kind, project = settings.feast.online_store, settings.feast.project
    if kind == "sqlite":
        return SqliteReader(settings.feast_dir / ONLINE_STORE_FILE, project)
    if kind == "redis":
        return RedisReader(redis_connection_string(settings), project)
    raise FeatureStoreConfigError(f"unsupported feast.online_store {kind!r}; expected 'sqlite' or 'redis'")


def redis_connection_string(settings: Settings) -> str:
    """The redis online store's connection string (a secret: never logged).

    Raises:
        FeatureStoreConfigError: none is set.
    """
    secret = settings.feast.redis_connection_string
    if secret is None:
        raise FeatureStoreConfigError(
            "feast.online_store is redis but no connection string is set (DRIFTLOOP_FEAST__REDIS_CONNECTION_STRING)"
        )
    return secret.get_secret_value()
