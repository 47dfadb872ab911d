"""Settings: precedence of sources, conventional variables, the TOML file, clear errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from foundation.settings import load_settings

pytestmark = pytest.mark.unit


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch):
    for var in ("KAFKA_BOOTSTRAP_SERVERS", "TRITON_URL", "KAFKA_HOME", "DRIFTLOOP_CONFIG"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.chdir(Path(__file__).parent)  # no driftloop.toml here


def test_defaults_point_at_the_local_stack():
    settings = load_settings()
    assert settings.kafka_bootstrap == "127.0.0.1:9092"
    assert settings.triton_http == "127.0.0.1:8000"
    assert settings.triton_grpc == "127.0.0.1:8001"
    assert settings.kafka.topic("events-v1") == "driftloop-events-v1"
    assert settings.feast_dir == Path(".stack/feast")


def test_conventional_variables_point_at_existing_servers(monkeypatch):
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", "broker-1:9092,broker-2:9092")
    monkeypatch.setenv("TRITON_URL", "http://triton:8000/")
    settings = load_settings()
    assert settings.kafka_bootstrap == "broker-1:9092,broker-2:9092"
    assert settings.triton_http == "triton:8000"
    assert settings.triton_grpc == "triton:8001"  # Triton's default gRPC port on that host


def test_prefixed_variables_win_over_conventional_ones(monkeypatch):
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", "conventional:9092")
    monkeypatch.setenv("DRIFTLOOP_KAFKA__BOOTSTRAP_SERVERS", "prefixed:9092")
    monkeypatch.setenv("DRIFTLOOP_STACK__KAFKA_PORT", "19092")
    settings = load_settings()
    assert settings.kafka_bootstrap == "prefixed:9092"
    assert settings.stack.kafka_port == 19092


def test_toml_file_is_read_below_env_and_kwargs(tmp_path, monkeypatch):
    config = tmp_path / "driftloop.toml"
    config.write_text('[kafka]\ntopic_prefix = "from-file-"\n[stack]\ntriton_http_port = 18000\nkafka_port = 1\n')
    monkeypatch.setenv("DRIFTLOOP_STACK__KAFKA_PORT", "2")
    settings = load_settings(config, stack={"kafka_port": 3})
    assert settings.kafka.topic_prefix == "from-file-"
    assert settings.stack.triton_http_port == 18000
    assert settings.stack.kafka_port == 3


def test_missing_config_file_is_named(tmp_path):
    with pytest.raises(ValueError, match="nope.toml does not exist"):
        load_settings(tmp_path / "nope.toml")


def test_invalid_value_names_the_source(tmp_path):
    config = tmp_path / "bad.toml"
    config.write_text('[stack]\nkafka_port = "not a port"\n')
    with pytest.raises(ValueError, match=r"(?s)bad\.toml.*kafka_port"):
        load_settings(config)


def test_unknown_topic_is_an_error():
    with pytest.raises(KeyError, match="unknown topic"):
        load_settings().kafka.topic("evnets-v1")


def test_settings_are_frozen():
    settings = load_settings()
    with pytest.raises(Exception, match="frozen"):
        settings.stack.kafka_port = 1
