"""The Kubernetes manifests (deploy/k8s), validated offline.

Every manifest file and every rendered overlay is checked against the Kubernetes schemas of the pinned versions
(kubernetes-validate, strict: unknown fields fail); KEDA's resources against tests/deploy/keda.py. Overlays are
rendered by the real kustomize (tests/deploy/kustomize.py), and every patch must change what an overlay renders
(kustomize itself skips a patch whose target selects nothing). Then the contracts: the workers run real ``driftloop``
commands, probe real health endpoints, request resources; Triton asks for a GPU; KEDA scales the inference workers
on their lag up to the events topic's partition count; SASL/TLS secrets are wired the same way for the workers and
KEDA.
"""

from __future__ import annotations

import copy
import functools
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest

from foundation.health import LIVENESS_PATH, METRICS_PATH, READINESS_PATH
from foundation.settings import Settings
from tests.deploy import keda
from tests.deploy.kustomize import KUSTOMIZATION_FILE, dead_patches, load_yaml_documents, pod_spec, render
from tests.deploy.support import K8S, K8S_VERSIONS, ROLE_COMMANDS, check_settings_env, health_port, resolve_command

pytestmark = pytest.mark.unit

OVERLAYS = ("base", "overlays/dev", "overlays/production")
COMPONENTS = sorted(path.parent.name for path in (K8S / "components").glob(f"*/{KUSTOMIZATION_FILE}"))
MANIFEST_FILES = sorted(path for path in K8S.rglob("*.yaml") if path.name != KUSTOMIZATION_FILE)
WORKER_IMAGE = "driftloop-workers"
TRITON_IMAGE = "driftloop-triton"
GPU = "nvidia.com/gpu"

Resource = dict[str, Any]


def validate(resource: Resource) -> None:
    """Kubernetes schema (strict) for built-in kinds, KEDA's structural schema for KEDA's kinds."""
    if resource["apiVersion"] == keda.API_VERSION:
        keda.validate(resource)
        return
    for version in K8S_VERSIONS:
        try:
            kubernetes_validate.validate(resource, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            where = "/".join(str(part) for part in exc.path)
            name = f"{resource['kind']}/{resource['metadata']['name']}"
            raise AssertionError(f"{name} is invalid for Kubernetes {version} at {where}: {exc.message}") from None


@functools.cache
def _rendered(overlay: str) -> list[Resource]:
    return render(K8S / overlay)


def rendered(overlay: str) -> list[Resource]:
    """The overlay's resources (rendered once per session; each caller gets its own copy)."""
    return copy.deepcopy(_rendered(overlay))


def find(resources: list[Resource], kind: str, name: str) -> Resource:
    found = [r for r in resources if r["kind"] == kind and r["metadata"]["name"] == name]
    assert len(found) == 1, f"{kind}/{name}: found {len(found)}"
    return found[0]


def container(resource: Resource, name: str | None = None) -> dict[str, Any]:
    containers = pod_spec(resource)["containers"]
    return containers[0] if name is None else next(c for c in containers if c["name"] == name)


def image_name(image: str) -> str:
    return image.rsplit("/", 1)[-1].split(":", 1)[0].split("@", 1)[0]


def settings_of(resources: list[Resource], tmp_path: Path) -> Settings:
    """The settings every driftloop container gets from the ConfigMap driftloop-config."""
    return check_settings_env(find(resources, "ConfigMap", "driftloop-config")["data"], tmp_path)


def workloads(resources: list[Resource]) -> list[Resource]:
    return [r for r in resources if pod_spec(r) is not None]


# Schemas.


@pytest.mark.parametrize("path", MANIFEST_FILES, ids=lambda p: str(p.relative_to(K8S)))
def test_every_manifest_file_is_valid(path: Path) -> None:
    documents = load_yaml_documents(path)

    assert documents, f"{path} holds no manifest"
    for resource in documents:
        validate(resource)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_rendered_overlay_is_valid(overlay: str) -> None:
    resources = rendered(overlay)

    assert resources
    for resource in resources:
        validate(resource)


@pytest.mark.parametrize("overlay", ["overlays/dev", "overlays/production"])
def test_overlays_put_everything_in_their_namespace(overlay: str) -> None:
    resources = rendered(overlay)
    namespaces = [r for r in resources if r["kind"] == "Namespace"]

    assert len(namespaces) == 1
    namespace = namespaces[0]["metadata"]["name"]
    assert all(r["metadata"].get("namespace") == namespace for r in resources if r["kind"] != "Namespace")


def test_every_patch_changes_what_an_overlay_renders() -> None:
    assert dead_patches(K8S, list(OVERLAYS)) == []


def test_every_manifest_file_is_used_by_a_kustomization() -> None:
    listed: set[Path] = set()
    for kustomization in K8S.rglob(KUSTOMIZATION_FILE):
        data = load_yaml_documents(kustomization)[0]
        listed.update((kustomization.parent / entry).resolve() for entry in data.get("resources", []))
    documented = {K8S / "secrets.example.yaml"}

    assert {p.resolve() for p in MANIFEST_FILES} - listed - {p.resolve() for p in documented} == set()


def test_every_component_is_used_by_an_overlay() -> None:
    used = set()
    for overlay in OVERLAYS:
        data = load_yaml_documents(K8S / overlay / KUSTOMIZATION_FILE)[0]
        used.update(Path(entry).name for entry in data.get("components", []))

    assert used == set(COMPONENTS)


# References between resources.


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_volumes_and_config_references_resolve(overlay: str) -> None:
    resources = rendered(overlay)
    claims = {r["metadata"]["name"] for r in resources if r["kind"] == "PersistentVolumeClaim"}
    config_maps = {r["metadata"]["name"] for r in resources if r["kind"] == "ConfigMap"}
    accounts = {r["metadata"]["name"] for r in resources if r["kind"] == "ServiceAccount"}

    for workload in workloads(resources):
        spec = pod_spec(workload)
        volumes = {volume["name"]: volume for volume in spec.get("volumes", [])}
        for volume in volumes.values():
            if "persistentVolumeClaim" in volume:
                assert volume["persistentVolumeClaim"]["claimName"] in claims
        if "serviceAccountName" in spec:
            assert spec["serviceAccountName"] in accounts
        for c in spec["containers"]:
            assert {m["name"] for m in c.get("volumeMounts", [])} <= set(volumes), workload["metadata"]["name"]
            for source in c.get("envFrom", []):
                if "configMapRef" in source:
                    assert source["configMapRef"]["name"] in config_maps


def secrets_expected(resources: list[Resource]) -> dict[str, set[str]]:
    """Secret name -> keys the rendered resources read from it (key sets empty for whole-secret references)."""
    wanted: dict[str, set[str]] = {}
    for workload in workloads(resources):
        spec = pod_spec(workload)
        for volume in spec.get("volumes", []):
            if "secret" in volume:
                keys = {item["key"] for item in volume["secret"].get("items", [])}
                wanted.setdefault(volume["secret"]["secretName"], set()).update(keys)
        for c in spec["containers"]:
            for source in c.get("envFrom", []):
                if "secretRef" in source:
                    wanted.setdefault(source["secretRef"]["name"], set())
    for auth in (r for r in resources if r["kind"] == "TriggerAuthentication"):
        for ref in auth["spec"].get("secretTargetRef", []):
            wanted.setdefault(ref["name"], set()).add(ref["key"])
    return wanted


def test_production_secrets_are_documented_in_the_example(tmp_path: Path) -> None:
    resources = rendered("overlays/production")
    examples = {s["metadata"]["name"]: s for s in load_yaml_documents(K8S / "secrets.example.yaml")}

    wanted = secrets_expected(resources)

    assert set(wanted) == {"driftloop-secrets", "driftloop-kafka-tls"}
    assert not [r for r in resources if r["kind"] == "Secret"], "production must not ship secret values"
    for name, keys in wanted.items():
        assert keys <= set(examples[name]["stringData"]), name
    # Every key of driftloop-secrets becomes an environment variable: each must be a real settings field.
    check_settings_env(examples["driftloop-secrets"]["stringData"], tmp_path)


def test_dev_ships_the_secret_it_reads(tmp_path: Path) -> None:
    resources = rendered("overlays/dev")
    secrets = {r["metadata"]["name"]: r for r in resources if r["kind"] == "Secret"}

    assert set(secrets_expected(resources)) == set(secrets) == {"driftloop-secrets"}
    env = {**find(resources, "ConfigMap", "driftloop-config")["data"], **secrets["driftloop-secrets"]["stringData"]}
    settings = check_settings_env(env, tmp_path)
    assert settings.feast.online_store == "redis"
    host, port = settings.feast.redis_connection_string.get_secret_value().split(",")[0].split(":")
    service = find(resources, "Service", host)
    assert int(port) in {p["port"] for p in service["spec"]["ports"]}


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_config_map_holds_valid_settings_pointing_at_triton(overlay: str, tmp_path: Path) -> None:
    resources = rendered(overlay)

    settings = settings_of(resources, tmp_path)

    assert settings.feast.online_store == "redis"
    assert settings.kafka.bootstrap_servers
    host, port = settings.triton_http.split(":")
    service = find(resources, "Service", host)
    assert int(port) in {p["port"] for p in service["spec"]["ports"]}
    grpc_host, grpc_port = settings.triton_grpc.split(":")
    assert grpc_host == host and int(grpc_port) in {p["port"] for p in service["spec"]["ports"]}


# Workers.


@pytest.mark.parametrize("overlay", OVERLAYS)
@pytest.mark.parametrize("role", sorted(ROLE_COMMANDS))
def test_each_worker_is_a_deployment_running_its_driftloop_command(overlay: str, role: str) -> None:
    deployment = find(rendered(overlay), "Deployment", f"driftloop-{role}")
    c = container(deployment, role)

    assert image_name(c["image"]) == WORKER_IMAGE
    assert "command" not in c, "the image's entrypoint is `driftloop`"
    assert c["args"] == ROLE_COMMANDS[role]
    resolve_command(c["args"])


def test_setup_job_runs_real_commands() -> None:
    job = find(rendered("base"), "Job", "driftloop-setup")
    script = container(job)["args"][0]

    assert "from streams.topics import ensure_topics" in script
    from streams.topics import ensure_topics  # noqa: F401 - the script's import must exist

    driftloop_part = script.split("&&", 1)[1].split()
    assert driftloop_part[0] == "driftloop"
    resolve_command(driftloop_part[1:])


@pytest.mark.parametrize("overlay", OVERLAYS)
@pytest.mark.parametrize("role", sorted(ROLE_COMMANDS))
def test_worker_probes_and_scrape_annotations_use_the_health_server(overlay: str, role: str, tmp_path: Path) -> None:
    resources = rendered(overlay)
    deployment = find(resources, "Deployment", f"driftloop-{role}")
    c = container(deployment, role)
    port = health_port(role, settings_of(resources, tmp_path))
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}

    for probe, path in (
        ("startupProbe", LIVENESS_PATH),
        ("livenessProbe", LIVENESS_PATH),
        ("readinessProbe", READINESS_PATH),
    ):
        get = c[probe]["httpGet"]
        assert get["path"] == path, probe
        assert ports[get["port"]] == port, probe
    # A readiness answer takes up to one check timeout (2 s) per check: the probe must wait longer than a few.
    assert c["readinessProbe"]["timeoutSeconds"] >= 6
    annotations = deployment["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert int(annotations["prometheus.io/port"]) == port
    assert annotations["prometheus.io/path"] == METRICS_PATH


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_container_requests_resources_and_runs_unprivileged(overlay: str) -> None:
    for workload in workloads(rendered(overlay)):
        spec = pod_spec(workload)
        name = workload["metadata"]["name"]
        assert spec["securityContext"]["runAsNonRoot"] is True, name
        assert spec["securityContext"].get("runAsUser", 0) != 0, name
        assert spec.get("automountServiceAccountToken") is False, name
        for c in spec["containers"]:
            resources = c["resources"]
            assert {"cpu", "memory"} <= set(resources["requests"]), name
            assert "memory" in resources["limits"], name
            assert c["securityContext"]["allowPrivilegeEscalation"] is False, name
            assert c["securityContext"]["capabilities"]["drop"] == ["ALL"], name
            if image_name(c["image"]) == WORKER_IMAGE:
                assert c["securityContext"]["readOnlyRootFilesystem"] is True, name
                mounts = {m["mountPath"] for m in c["volumeMounts"]}
                assert {"/tmp", "/var/lib/driftloop/feast", "/var/lib/driftloop/run"} <= mounts, name


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_single_member_workers_are_recreated_not_rolled(overlay: str) -> None:
    resources = rendered(overlay)

    for role in ("features", "monitor", "retrain"):
        deployment = find(resources, "Deployment", f"driftloop-{role}")
        assert deployment["spec"]["replicas"] == 1
        assert deployment["spec"]["strategy"]["type"] == "Recreate"
    inference = find(resources, "Deployment", "driftloop-inference")
    assert inference["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
    assert pod_spec(inference)["terminationGracePeriodSeconds"] >= 30


# Triton and the model repository.


@pytest.mark.parametrize(("overlay", "gpus"), [("base", 1), ("overlays/dev", 0), ("overlays/production", 1)])
def test_triton_serves_the_shared_repository_in_explicit_mode(overlay: str, gpus: int, tmp_path: Path) -> None:
    resources = rendered(overlay)
    settings = settings_of(resources, tmp_path)
    triton = find(resources, "Deployment", "driftloop-triton")
    c = container(triton, "triton")

    assert image_name(c["image"]) == TRITON_IMAGE
    assert c["args"][0] == "tritonserver"
    assert "--model-control-mode=explicit" in c["args"]
    assert "--exit-on-error=false" in c["args"]
    assert f"--model-repository={settings.triton.model_repository}" in c["args"]
    assert c["readinessProbe"]["httpGet"]["path"] == f"/v2/models/{settings.triton.model_name}/ready"
    assert c["livenessProbe"]["httpGet"]["path"] == "/v2/health/live"
    requests, limits = c["resources"]["requests"], c["resources"].get("limits", {})
    assert int(limits.get(GPU, 0)) == gpus and int(requests.get(GPU, 0)) == gpus
    assert ("--pinned-memory-pool-byte-size=0" in c["args"]) == (gpus == 0)
    models = _claim_mount(triton, "triton", settings.triton.model_repository)
    assert models == ("driftloop-models", True)


def _claim_mount(workload: Resource, container_name: str, path: Path) -> tuple[str, bool]:
    """(claim name, read-only) of the volume mounted at ``path``."""
    spec = pod_spec(workload)
    mount = next(m for m in container(workload, container_name)["volumeMounts"] if m["mountPath"] == str(path))
    volume = next(v for v in spec["volumes"] if v["name"] == mount["name"])
    return volume["persistentVolumeClaim"]["claimName"], bool(mount.get("readOnly"))


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_model_repository_is_shared_by_triton_the_retrainer_and_the_monitor(overlay: str, tmp_path: Path) -> None:
    resources = rendered(overlay)
    repository = settings_of(resources, tmp_path).triton.model_repository
    claim = find(resources, "PersistentVolumeClaim", "driftloop-models")

    assert _claim_mount(find(resources, "Deployment", "driftloop-retrain"), "retrain", repository) == (
        "driftloop-models",
        False,
    )
    assert _claim_mount(find(resources, "Deployment", "driftloop-monitor"), "monitor", repository) == (
        "driftloop-models",
        True,
    )
    expected_mode = "ReadWriteOnce" if overlay == "overlays/dev" else "ReadWriteMany"
    assert claim["spec"]["accessModes"] == [expected_mode]


@pytest.mark.parametrize(("overlay", "gpu"), [("base", False), ("overlays/dev", False), ("overlays/production", True)])
def test_retraining_runs_on_a_gpu_only_with_the_gpu_option(overlay: str, gpu: bool) -> None:
    retrain = find(rendered(overlay), "Deployment", "driftloop-retrain")
    c = container(retrain, "retrain")

    assert (GPU in c["resources"].get("limits", {})) is gpu
    assert c["image"].endswith("-cuda") is gpu
    assert any(t["key"] == GPU for t in pod_spec(retrain).get("tolerations", [])) is gpu


def test_production_images_come_from_the_registry_with_their_tags() -> None:
    images = {container(w)["image"] for w in workloads(rendered("overlays/production"))}

    assert images == {
        "registry.example.com/driftloop/driftloop-workers:0.1.0",
        "registry.example.com/driftloop/driftloop-workers:0.1.0-cuda",
        "registry.example.com/driftloop/driftloop-triton:24.10",
    }


# KEDA.


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_scaled_object_scales_inference_on_lag_up_to_the_partition_count(overlay: str, tmp_path: Path) -> None:
    resources = rendered(overlay)
    settings = settings_of(resources, tmp_path)
    scaled = [r for r in resources if r["kind"] == "ScaledObject"]

    assert len(scaled) == 1
    spec = scaled[0]["spec"]
    assert scaled[0]["apiVersion"] == "keda.sh/v1alpha1"
    target = spec["scaleTargetRef"]
    assert target.get("kind", "Deployment") == "Deployment" and target.get("apiVersion", "apps/v1") == "apps/v1"
    deployment = find(resources, "Deployment", target["name"])
    assert container(deployment)["args"] == ROLE_COMMANDS["inference"]
    partitions = settings.kafka.topics["events-v1"].partitions
    assert partitions == 6
    assert spec["maxReplicaCount"] == partitions
    assert 1 <= spec["minReplicaCount"] <= spec["maxReplicaCount"]
    assert spec["fallback"]["replicas"] <= partitions
    (trigger,) = spec["triggers"]
    assert trigger["type"] == "kafka"
    metadata = trigger["metadata"]
    assert set(metadata) <= keda.KAFKA_METADATA
    assert int(metadata["lagThreshold"]) > 0
    assert metadata["consumerGroup"] == settings.workers.inference_group
    assert metadata["topic"] == settings.kafka.topic("events-v1")
    assert metadata["allowIdleConsumers"] == "false"  # never more consumers than partitions
    assert metadata["offsetResetPolicy"] == "earliest"  # as the inference consumer (streams/client.py)
    # The broker list is read from the target container's environment: the ConfigMap must provide it.
    assert metadata["bootstrapServersFromEnv"] == "DRIFTLOOP_KAFKA__BOOTSTRAP_SERVERS"
    config_maps = [s["configMapRef"]["name"] for s in container(deployment)["envFrom"] if "configMapRef" in s]
    assert any(
        metadata["bootstrapServersFromEnv"] in find(resources, "ConfigMap", name)["data"] for name in config_maps
    )


def test_keda_authenticates_to_kafka_like_the_workers_in_production(tmp_path: Path) -> None:
    resources = rendered("overlays/production")
    settings = settings_of(resources, tmp_path)
    (scaled,) = [r for r in resources if r["kind"] == "ScaledObject"]
    (trigger,) = scaled["spec"]["triggers"]
    auth = find(resources, "TriggerAuthentication", trigger["authenticationRef"]["name"])
    refs = {ref["parameter"]: (ref["name"], ref["key"]) for ref in auth["spec"]["secretTargetRef"]}

    assert settings.kafka.security_protocol == "SASL_SSL"
    assert trigger["metadata"]["tls"] == "enable"
    assert trigger["metadata"]["sasl"] in keda.KAFKA_SASL_MODES
    assert trigger["metadata"]["sasl"] == keda.KAFKA_SASL_FOR_MECHANISM[settings.kafka.sasl_mechanism]
    assert set(refs) <= keda.KAFKA_AUTH_PARAMETERS
    # The same secrets and keys the workers read their credentials from.
    assert refs["username"] == ("driftloop-secrets", "DRIFTLOOP_KAFKA__SASL_USERNAME")
    assert refs["password"] == ("driftloop-secrets", "DRIFTLOOP_KAFKA__SASL_PASSWORD")
    ca_secret, ca_key = refs["ca"]
    for workload in workloads(resources):
        if workload["metadata"]["labels"].get("driftloop.io/kafka-client") != "true":
            continue
        spec = pod_spec(workload)
        volume = next(v for v in spec["volumes"] if v.get("secret", {}).get("secretName") == ca_secret)
        mount = next(m for m in spec["containers"][0]["volumeMounts"] if m["name"] == volume["name"])
        item = next(i for i in volume["secret"]["items"] if i["key"] == ca_key)
        assert Path(mount["mountPath"]) / item["path"] == settings.kafka.ssl_ca_location, workload["metadata"]["name"]


def test_every_kafka_client_is_labelled_for_the_tls_component() -> None:
    resources = rendered("base")

    for workload in workloads(resources):
        name = workload["metadata"]["name"]
        if name == "driftloop-triton":
            continue
        assert workload["metadata"]["labels"].get("driftloop.io/kafka-client") == "true", name
