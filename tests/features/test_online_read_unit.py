"""The SDK-free online read: its entity keys, value decoding and contract match Feast's own, byte for byte."""

from __future__ import annotations

import math
import subprocess
import sys

import pytest
from feast.infra.key_encoding_utils import serialize_entity_key
from feast.protos.feast.types.EntityKey_pb2 import EntityKey
from feast.protos.feast.types.Value_pb2 import Null, Value
from hypothesis import given
from hypothesis import strategies as st

from features import definitions
from features.exceptions import FeatureStoreConfigError
from features.online_read import (
    ENTITY_KEY,
    FEATURE_NAMES,
    SERVING_VIEWS,
    decode_value,
    entity_key_bytes,
    parse_redis_connection_string,
)
from features.store import ENTITY_KEY as STORE_ENTITY_KEY

pytestmark = pytest.mark.unit


def test_the_contract_is_the_feature_service() -> None:
    projections = [
        (projection.name, tuple(feature.name for feature in projection.features))
        for projection in definitions.inference_v1.feature_view_projections
    ]
    assert tuple(projections) == SERVING_VIEWS
    assert FEATURE_NAMES == tuple(name for _, names in projections for name in names)
    assert ENTITY_KEY == STORE_ENTITY_KEY == definitions.entity.join_key


@given(st.text())
def test_entity_keys_are_feasts(entity_id: str) -> None:
    proto = EntityKey(join_keys=[ENTITY_KEY], entity_values=[Value(string_val=entity_id)])
    assert entity_key_bytes(entity_id) == serialize_entity_key(proto, entity_key_serialization_version=3)


SCALARS = st.one_of(
    st.integers(-(2**63), 2**63 - 1).map(lambda v: Value(int64_val=v)),
    st.integers(-(2**31), 2**31 - 1).map(lambda v: Value(int32_val=v)),
    st.floats(width=32, allow_nan=False).map(lambda v: Value(float_val=v)),
    st.floats(allow_nan=False).map(lambda v: Value(double_val=v)),
    st.booleans().map(lambda v: Value(bool_val=v)),
    st.text().map(lambda v: Value(string_val=v)),
    st.binary().map(lambda v: Value(bytes_val=v)),
    st.just(Value(null_val=Null.NULL)),
    st.just(Value()),
)


@given(SCALARS)
def test_values_decode_as_feast_parses_them(value: Value) -> None:
    kind = value.WhichOneof("val")
    expected = None if kind in (None, "null_val") else getattr(value, kind)
    got = decode_value(value.SerializeToString())
    assert got == expected and type(got) is type(expected)


def test_nan_and_infinity_come_back() -> None:
    assert math.isnan(decode_value(Value(float_val=math.nan).SerializeToString()))
    assert decode_value(Value(double_val=-math.inf).SerializeToString()) == -math.inf
    assert decode_value(None) is None and decode_value(b"") is None


@pytest.mark.parametrize(
    "blob",
    [
        Value(int64_list_val={"val": [1, 2]}).SerializeToString(),
        Value(unix_timestamp_val=5).SerializeToString(),
        b"\x20",  # int64 tag, no payload
        b"\x12\x05ab",  # string of 5 bytes, 2 present
        b"\x35\x00\x00",  # float of 4 bytes, 2 present
        b"\x12\x02\xff\xfe",  # string_val that is not UTF-8
    ],
)
def test_anything_but_a_scalar_of_the_contract_is_refused_with_a_reason(blob: bytes) -> None:
    with pytest.raises(FeatureStoreConfigError, match="online store value"):
        decode_value(blob)


def test_redis_connection_strings_read_as_feast_reads_them() -> None:
    assert parse_redis_connection_string("redis.local:6380,db=2,ssl=true,password=s3cr") == {
        "host": "redis.local",
        "port": "6380",
        "db": 2,
        "ssl": True,
        "password": "s3cr",
    }
    for bad in ("", "db=0", "a:1,b:2", "nohost"):
        with pytest.raises(FeatureStoreConfigError, match="exactly one host:port"):
            parse_redis_connection_string(bad)


def test_the_inference_worker_starts_without_the_feast_sdk() -> None:
    """Its cold start: importing the worker must not import feast, pandas or torch (13 s and ~850 MB here)."""
    code = (
        "import sys, streams.inference; "
        "print(sorted(m for m in ('feast', 'pandas', 'torch', 'pyarrow', 'duckdb') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120)
    assert out.stdout.strip() == "[]"


def test_the_feature_worker_imports_feast_without_torch() -> None:
    """Feast imports torch for its results' to_tensor only (feast.torch_wrapper); the feature worker never asks
    for a tensor, so torch is imported when one is asked for, not at the worker's start (~500 MB, seconds)."""
    code = (
        "import sys, streams.feature_app, feast.infra.offline_stores.offline_store; "
        "print('torch' in sys.modules); "
        "from feast.torch_wrapper import get_torch; "
        "print(get_torch().tensor([1.5]).item(), 'torch' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=180)
    assert out.stdout.split() == ["False", "1.5", "True"]
