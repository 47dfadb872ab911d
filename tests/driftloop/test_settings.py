"""Settings: precedence of sources, conventional variables, the TOML file, clear errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from foundation.settings import DEFAULT_TOPICS, load_settings

pytestmark = pytest.mark.unit


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch):
    for var in ("KAFKA_BOOTSTRAP_SERVERS", "TRITON_URL", "KAFKA_HOME", "DRIFTLOOP_CONFIG", "DRIFTLOOP_SECRETS_DIR"):
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


def test_a_topic_setting_changes_only_what_it_names(tmp_path, monkeypatch):
    """One topic's partitions from TOML or env keep every other topic, and the fields it does not name."""
    config = tmp_path / "driftloop.toml"
    config.write_text("[kafka.topics.events-v1]\npartitions = 24\n[kafka.topics.models-v1]\npartitions = 2\n")

    from_file = load_settings(config_file=config)

    assert from_file.kafka.topics["events-v1"].partitions == 24
    assert from_file.kafka.topics["models-v1"].partitions == 2 and from_file.kafka.topics["models-v1"].compacted
    assert set(from_file.kafka.topics) == set(load_settings().kafka.topics)
    assert from_file.kafka.topic("labels-v1") == "driftloop-labels-v1"

    monkeypatch.setenv("DRIFTLOOP_KAFKA__TOPICS", '{"events-v1": {"partitions": 3}, "audit-v1": {"partitions": 2}}')
    from_env = load_settings()
    assert from_env.kafka.topics["events-v1"].partitions == 3
    assert from_env.kafka.topics["audit-v1"].partitions == 2
    assert set(from_env.kafka.topics) == set(DEFAULT_TOPICS) | {"audit-v1"}


def test_events_partitions_split_evenly_over_common_worker_counts():
    partitions = load_settings().kafka.topics["events-v1"].partitions

    assert partitions > 6  # more inference (and feature) workers than the 6 of earlier versions
    assert all(partitions % workers == 0 for workers in (1, 2, 3, 4, 6))


def test_settings_are_frozen():
    settings = load_settings()
    with pytest.raises(Exception, match="frozen"):
        settings.stack.kafka_port = 1


def _secret(directory: Path, name: str, value: str) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / name).write_text(value + "\n")  # a trailing newline, as `kubectl create secret --from-file` keeps


def _mounted_secret(directory: Path, name: str, value: str) -> None:
    """A key as a Kubernetes Secret volume lays it out: a link through the hidden ``..data`` folder."""
    _secret(directory / "..2026_11_30_12_00_00.000000001", name, value)
    (directory / "..data").symlink_to("..2026_11_30_12_00_00.000000001")
    (directory / name).symlink_to(f"..data/{name}")


def test_secret_files_fill_nested_fields_from_the_directory_and_its_folders(tmp_path, monkeypatch):
    _mounted_secret(tmp_path / "kafka", "DRIFTLOOP_KAFKA__SASL_USERNAME", "driftloop-inference")
    _secret(tmp_path / "kafka", "DRIFTLOOP_KAFKA__SASL_PASSWORD", "kafka-secret")
    _secret(tmp_path / "redis", "DRIFTLOOP_FEAST__REDIS_CONNECTION_STRING", "redis:6379,password=p")
    _secret(tmp_path, "DRIFTLOOP_TRITON__ADMIN_KEY", "admin-key")
    monkeypatch.setenv("DRIFTLOOP_SECRETS_DIR", str(tmp_path))

    settings = load_settings()

    assert settings.kafka.sasl_username == "driftloop-inference"
    assert settings.kafka.sasl_password.get_secret_value() == "kafka-secret"
    assert settings.feast.redis_connection_string.get_secret_value() == "redis:6379,password=p"
    assert settings.triton.admin_key.get_secret_value() == "admin-key"
    assert "kafka-secret" not in repr(settings)


def test_environment_and_kwargs_win_over_secret_files_which_win_over_the_toml_file(tmp_path, monkeypatch):
    secrets = tmp_path / "secrets"
    _secret(secrets, "DRIFTLOOP_KAFKA__SASL_USERNAME", "from-file")
    _secret(secrets, "DRIFTLOOP_KAFKA__TOPIC_PREFIX", "file-")
    _secret(secrets, "DRIFTLOOP_STACK__KAFKA_PORT", "1")
    config = tmp_path / "driftloop.toml"
    config.write_text('[kafka]\ntopic_prefix = "toml-"\nsasl_mechanism = "SCRAM-SHA-512"\n')
    monkeypatch.setenv("DRIFTLOOP_KAFKA__SASL_USERNAME", "from-env")

    settings = load_settings(config, secrets_dir=secrets, stack={"kafka_port": 3})

    assert settings.kafka.sasl_username == "from-env"
    assert settings.kafka.topic_prefix == "file-"
    assert settings.kafka.sasl_mechanism == "SCRAM-SHA-512"
    assert settings.stack.kafka_port == 3


def test_without_a_secrets_directory_no_file_is_read(tmp_path, monkeypatch):
    _secret(tmp_path, "DRIFTLOOP_KAFKA__SASL_USERNAME", "from-file")
    monkeypatch.chdir(tmp_path)

    assert load_settings().kafka.sasl_username is None


def test_a_missing_secrets_directory_is_named(tmp_path, monkeypatch):
    monkeypatch.setenv("DRIFTLOOP_SECRETS_DIR", str(tmp_path / "nope"))

    with pytest.raises(ValueError, match="secrets directory .*nope does not exist"):
        load_settings()


def test_a_secret_file_for_no_field_is_an_error_naming_the_directory(tmp_path):
    _secret(tmp_path / "kafka", "DRIFTLOOP_KAFKA__SASL_PASWORD", "typo")

    with pytest.raises(ValueError, match=rf"(?s)secrets in {tmp_path}.*sasl_pasword"):
        load_settings(secrets_dir=tmp_path)
