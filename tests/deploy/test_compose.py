"""deploy/compose.yaml (and its GPU override), checked structurally: no Docker engine on these machines.

Both files pass the Compose Specification (the ``compose-spec`` package: a strict, spec-compliant parser; YAML
merge keys and ``${VAR:-default}`` are resolved first, as ``docker compose config`` does). Then services, images,
volumes, healthchecks and dependencies; every file mounted exists; the workers run real ``driftloop`` commands with
valid settings and are health-checked on the ports they serve.
"""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path
from typing import Any

import pytest
import yaml
from compose_spec import PyCompose

from foundation.health import READINESS_PATH
from foundation.settings import load_settings
from tests.deploy.support import (
    DEPLOY,
    ROLE_COMMANDS,
    check_settings_env,
    health_port,
    load_yaml,
    resolve_command,
)

pytestmark = pytest.mark.unit

COMPOSE = DEPLOY / "compose.yaml"
COMPOSE_GPU = DEPLOY / "compose.gpu.yaml"
TRITON_BASE_IMAGE = "nvcr.io/nvidia/tritonserver:24.10-py3"
INFRASTRUCTURE = {"kafka", "kafka-exporter", "triton", "redis", "prometheus", "alertmanager", "grafana"}
ONE_SHOT = {"setup"}
WORKERS = set(ROLE_COMMANDS)
DEPENDENCY_CONDITIONS = {"service_started", "service_healthy", "service_completed_successfully"}


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return load_yaml(COMPOSE)


@pytest.fixture(scope="module")
def services(compose) -> dict[str, Any]:
    return compose["services"]


def environment(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment", {})
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {key: str(value) for key, value in env.items()}


def bind_mounts(service: dict[str, Any]) -> list[tuple[str, str, bool]]:
    """(host path, container path, read-only) of each bind mount (short syntax, relative to deploy/)."""
    mounts = []
    for volume in service.get("volumes", []):
        source, target, *mode = volume.split(":")
        if source.startswith((".", "/")):
            mounts.append((source, target, mode == ["ro"]))
    return mounts


def interpolate(text: str) -> str:
    """Compose's variable interpolation with every variable unset: ``${VAR:-default}`` -> default."""

    def substitute(match: re.Match) -> str:
        if match.group(2) is None:
            raise AssertionError(f"{match.group(0)} has no default: the file needs a variable to be valid")
        return match.group(2)

    return re.sub(r"\$\{([A-Z_][A-Z0-9_]*)(?::-([^}]*))?\}", substitute, text)


@pytest.mark.parametrize("path", [COMPOSE, COMPOSE_GPU], ids=lambda p: p.name)
def test_compose_files_follow_the_compose_specification(path: Path) -> None:
    document = yaml.safe_load(interpolate(path.read_text()))  # PyYAML resolves the `<<` merge keys

    spec = PyCompose.from_json(json.dumps(document)).to_spec()

    assert set(spec.services) == set(document["services"])


@pytest.mark.parametrize(
    ("old", "new"),
    [
        ("retries: 20", "retries: many"),
        ("condition: service_completed_successfully", "condition: done"),
        ('    healthcheck:\n      test: ["CMD", "redis-cli", "ping"]', "    healthchek:\n      test: [CMD]"),
    ],
    ids=["wrong-type", "unknown-condition", "misspelt-key"],
)
def test_the_specification_check_catches_mistakes(old: str, new: str) -> None:
    text = COMPOSE.read_text()
    assert old in text
    document = yaml.safe_load(interpolate(text.replace(old, new, 1)))

    with pytest.raises(ValueError):
        PyCompose.from_json(json.dumps(document)).to_spec()


def test_services_are_the_stack(services) -> None:
    assert set(services) == INFRASTRUCTURE | ONE_SHOT | WORKERS


def test_kafka_is_apache_kafka_in_kraft_mode_with_auto_creation_off(services) -> None:
    kafka = services["kafka"]
    env = environment(kafka)

    assert kafka["image"].startswith("apache/kafka:")
    assert env["KAFKA_PROCESS_ROLES"] == "broker,controller"
    assert "CONTROLLER" in env["KAFKA_CONTROLLER_LISTENER_NAMES"]
    assert not any("ZOOKEEPER" in key for key in env)
    assert env["KAFKA_AUTO_CREATE_TOPICS_ENABLE"] == "false"
    listeners = dict(item.split("://") for item in env["KAFKA_LISTENERS"].split(","))
    advertised = dict(item.split("://") for item in env["KAFKA_ADVERTISED_LISTENERS"].split(","))
    protocols = dict(item.split(":") for item in env["KAFKA_LISTENER_SECURITY_PROTOCOL_MAP"].split(","))
    assert set(listeners) == set(protocols) and set(advertised) <= set(listeners)
    # The workers' bootstrap address is an advertised listener of this broker.
    worker_bootstrap = environment(services["inference"])["DRIFTLOOP_KAFKA__BOOTSTRAP_SERVERS"]
    assert worker_bootstrap in advertised.values()
    assert (
        env["KAFKA_CONTROLLER_QUORUM_VOTERS"]
        == f"{env['KAFKA_NODE_ID']}@kafka:{listeners['CONTROLLER'].split(':')[-1]}"
    )


def test_triton_is_nvidias_image_in_explicit_mode_serving_the_model_repository(services) -> None:
    triton = services["triton"]
    settings = load_settings()
    dockerfile = (DEPLOY / triton["build"]["context"]).resolve() / triton["build"]["dockerfile"]

    assert triton["build"]["args"]["TRITON_IMAGE"] == TRITON_BASE_IMAGE
    assert f"ARG TRITON_IMAGE={TRITON_BASE_IMAGE}" in dockerfile.read_text()
    assert triton["command"][0] == "tritonserver"
    assert "--model-control-mode=explicit" in triton["command"]
    assert "--model-repository=/models" in triton["command"]
    mounts = {target: source for source, target, _ in bind_mounts(triton)}
    assert (DEPLOY / mounts["/models"]).resolve() == (DEPLOY.parent / settings.triton.model_repository).resolve()
    assert "deploy" not in triton, "the GPU reservation lives in compose.gpu.yaml"


def test_gpu_override_reserves_nvidia_gpus_for_existing_services(services) -> None:
    override = load_yaml(COMPOSE_GPU)["services"]

    assert set(override) <= set(services)
    for name in ("triton", "retrain"):
        (device,) = override[name]["deploy"]["resources"]["reservations"]["devices"]
        assert device["driver"] == "nvidia"
        assert device["capabilities"] == ["gpu"]
        assert "count" in device or "device_ids" in device
    assert override["retrain"]["image"].endswith("-cuda")
    assert override["retrain"]["build"]["args"]["TORCH_INDEX_URL"] == ""


def test_every_long_running_service_has_a_healthcheck_and_a_restart_policy(services) -> None:
    for name, service in services.items():
        if name in ONE_SHOT:
            assert service["restart"] == "no"
            assert "healthcheck" not in service
            continue
        check = service["healthcheck"]["test"]
        assert check[0] in {"CMD", "CMD-SHELL"} and len(check) > 1, name
        assert service["restart"] == "unless-stopped", name


def test_dependencies_name_existing_services_with_valid_conditions(services) -> None:
    for name, service in services.items():
        for dependency, spec in service.get("depends_on", {}).items():
            assert dependency in services and dependency != name, name
            assert spec["condition"] in DEPENDENCY_CONDITIONS, name
            if spec["condition"] == "service_healthy":
                assert "healthcheck" in services[dependency], f"{name} waits for {dependency}'s health"
    for worker in WORKERS:
        assert services[worker]["depends_on"]["setup"]["condition"] == "service_completed_successfully"


def test_named_volumes_are_declared_and_bind_mounts_exist(compose, services) -> None:
    declared = set(compose["volumes"])
    used = set()
    for name, service in services.items():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if not source.startswith((".", "/")):
                used.add(source)
        for source, _, _ in bind_mounts(service):
            path = (DEPLOY / source).resolve()
            if path == (DEPLOY.parent / load_settings().triton.model_repository).resolve():
                continue  # the model repository: created by training (compose creates a missing bind source)
            assert path.exists(), f"{name} mounts {source}, which does not exist"

    assert used == declared


def test_images_are_pinned(services) -> None:
    for name, service in services.items():
        image = service["image"]
        assert ":" in image.rsplit("/", 1)[-1] and not image.endswith(":latest"), name


def test_workers_share_one_image_built_from_the_workers_dockerfile(services) -> None:
    for name in WORKERS | ONE_SHOT:
        service = services[name]
        assert service["image"] == "driftloop-workers:0.1.0", name
        assert service["build"] == {"context": "..", "dockerfile": "deploy/Dockerfile"}, name
        assert (DEPLOY.parent / service["build"]["dockerfile"]).is_file()
        assert service["init"] is True, name


@pytest.mark.parametrize("role", sorted(ROLE_COMMANDS))
def test_workers_run_real_driftloop_commands(services, role: str) -> None:
    command = services[role]["command"]

    assert command == ROLE_COMMANDS[role]
    resolve_command(command)


def test_setup_creates_the_topics_and_applies_the_feast_repository(services) -> None:
    setup = services["setup"]
    assert setup["entrypoint"] == ["sh", "-c"]
    script = setup["command"][0]
    python_part, driftloop_part = script.split("&&")

    assert "from streams.topics import ensure_topics" in python_part
    from streams.topics import ensure_topics  # noqa: F401 - the script's import must exist

    words = shlex.split(driftloop_part)
    assert words[0] == "driftloop"
    resolve_command(words[1:])
    assert setup["depends_on"]["kafka"]["condition"] == "service_healthy"
    assert setup["depends_on"]["redis"]["condition"] == "service_healthy"


@pytest.mark.parametrize("role", sorted(ROLE_COMMANDS))
def test_worker_settings_are_valid_and_point_at_the_compose_services(services, role: str, tmp_path: Path) -> None:
    service = services[role]

    settings = check_settings_env(environment(service), tmp_path)

    assert settings.kafka_bootstrap == "kafka:9092"
    assert settings.triton_http == "triton:8000" and settings.triton_grpc == "triton:8001"
    assert settings.feast.online_store == "redis"
    assert settings.feast.redis_connection_string.get_secret_value() == "redis:6379"
    assert settings.monitoring.alertmanager_url == "http://alertmanager:9093"
    assert "127.0.0.1:6379:6379" in services["redis"]["ports"]
    mounts = {v.split(":")[1] for v in service["volumes"]}
    assert "/var/lib/driftloop/feast" in mounts, "the Feast registry is shared by every worker"


@pytest.mark.parametrize("role", sorted(ROLE_COMMANDS))
def test_worker_healthchecks_ask_the_health_server_on_the_roles_port(services, role: str) -> None:
    test = services[role]["healthcheck"]["test"]

    assert test[:4] == ["CMD", "python", "-m", "foundation.health"]
    assert test[4] == f"http://127.0.0.1:{health_port(role)}{READINESS_PATH}"


def test_retrainer_writes_and_monitor_reads_the_model_repository(services) -> None:
    retrain = {target: ro for _, target, ro in bind_mounts(services["retrain"])}
    monitor = {target: ro for _, target, ro in bind_mounts(services["monitor"])}
    triton = {target: source for source, target, _ in bind_mounts(services["triton"])}
    repository = str(load_settings().triton.model_repository)

    assert retrain["/models"] is False and monitor["/models"] is True
    assert {s for s, t, _ in bind_mounts(services["retrain"]) if t == "/models"} == {triton["/models"]}
    # The image points triton.model_repository at /models (deploy/Dockerfile); the default is the repo folder.
    assert repository == "triton_repo"


def test_observability_services_mount_their_configuration(services) -> None:
    prometheus = {target: source for source, target, _ in bind_mounts(services["prometheus"])}
    alertmanager = {target: source for source, target, _ in bind_mounts(services["alertmanager"])}
    grafana = {target: source for source, target, _ in bind_mounts(services["grafana"])}

    assert prometheus["/etc/prometheus/prometheus.yml"] == "./prometheus/prometheus.yml"
    assert prometheus["/etc/prometheus/rules"] == "./prometheus/rules"
    assert "--config.file=/etc/prometheus/prometheus.yml" in services["prometheus"]["command"]
    assert alertmanager["/etc/alertmanager/alertmanager.yml"] == "./alertmanager/alertmanager.yml"
    assert "--config.file=/etc/alertmanager/alertmanager.yml" in services["alertmanager"]["command"]
    assert grafana["/etc/grafana/provisioning/datasources"] == "./grafana/provisioning/datasources"
    assert grafana["/etc/grafana/provisioning/dashboards"] == "./grafana/provisioning/dashboards"
    provider = load_yaml(DEPLOY / "grafana/provisioning/dashboards/driftloop.yaml")["providers"][0]
    assert grafana[provider["options"]["path"]] == "./grafana/dashboards"
    home = environment(services["grafana"])["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert (DEPLOY / "grafana/dashboards" / Path(home).relative_to(provider["options"]["path"])).is_file()
