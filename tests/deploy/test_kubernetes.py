"""The Kubernetes manifests (deploy/k8s), validated offline.

Every manifest file and every rendered overlay is checked against the Kubernetes schemas of the pinned versions
(kubernetes-validate, strict: unknown fields fail); KEDA's resources against tests/deploy/keda.py, the Prometheus
Operator's against tests/deploy/prometheus_operator.py. Overlays are rendered by the real kustomize
(tests/deploy/kustomize.py), and every patch must change what an overlay renders (kustomize itself skips a patch
whose target selects nothing). Then the contracts: the workers run real ``driftloop`` commands, probe real health
endpoints, request resources; Triton asks for a GPU, runs two replicas in production behind a disruption budget and
spread over nodes, with a headless Service for reaching each; KEDA alone sets the inference and feature workers'
replica counts, each on its own group's lag up to the events topic's partition count, with a fallback above its
minimum, and both roll a new member in before an old one leaves while the monitor and the retraining consumer stay
single members; the first model version is bootstrapped when the repository is empty; production pulls its images by
digest and refuses to render without them.
Secrets and network policies: tests/deploy/test_k8s_security.py.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import kubernetes_validate
import pytest
import yaml
from pydantic import SecretStr

from driftloop.stack.triton import TritonInstall, argv_and_env
from foundation.health import LIVENESS_PATH, METRICS_PATH, READINESS_PATH
from tests.deploy import keda, prometheus_operator
from tests.deploy.kustomize import (
    IMAGE_DIGESTS_FILE,
    KUSTOMIZATION_FILE,
    KustomizeError,
    dead_patches,
    image_digest_names,
    load_yaml_documents,
    pod_spec,
    render,
    stand_in_digest,
    with_image_digests,
)
from tests.deploy.manifests import (
    OVERLAYS,
    Resource,
    all_containers,
    container,
    container_env,
    find,
    image_name,
    of_kind,
    pod_labels,
    rendered,
    selects,
    settings_of,
    workloads,
)
from tests.deploy.support import (
    K8S,
    K8S_VERSIONS,
    ROLE_COMMANDS,
    check_settings_env,
    health_port,
    k8s_tree,
    resolve_command,
)

pytestmark = pytest.mark.unit

COMPONENTS = sorted(path.parent.name for path in (K8S / "components").glob(f"*/{KUSTOMIZATION_FILE}"))
MANIFEST_FILES = sorted(path for path in K8S.rglob("*.yaml") if path.name != KUSTOMIZATION_FILE)
WORKER_IMAGE = "driftloop-workers"
WORKER_CUDA_IMAGE = "driftloop-workers-cuda"
TRITON_IMAGE = "driftloop-triton"
GPU = "nvidia.com/gpu"
REGISTRY = "registry.example.com/driftloop"
#: The production overlay's image-digests names and the images they pin.
DIGESTS = {
    "WORKERS": "driftloop-workers:0.1.0",
    "WORKERS_CUDA": "driftloop-workers-cuda:0.1.0",
    "TRITON": "driftloop-triton:24.10",
}
TRITON_REPLICAS_SERVICE = "driftloop-triton-replicas"
ADMIN_KEY_VARIABLE = "TRITON_ADMIN_KEY"


def validate(resource: Resource) -> None:
    """Kubernetes schema (strict) for built-in kinds; KEDA's and the Prometheus Operator's structural schemas."""
    if resource["apiVersion"] == keda.API_VERSION:
        keda.validate(resource)
        return
    if resource["apiVersion"] == prometheus_operator.API_VERSION:
        prometheus_operator.validate(resource)
        return
    for version in K8S_VERSIONS:
        try:
            kubernetes_validate.validate(resource, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            where = "/".join(str(part) for part in exc.path)
            name = f"{resource['kind']}/{resource['metadata']['name']}"
            raise AssertionError(f"{name} is invalid for Kubernetes {version} at {where}: {exc.message}") from None


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
    assert dead_patches(k8s_tree(), list(OVERLAYS)) == []


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
        for c in all_containers(workload):
            assert {m["name"] for m in c.get("volumeMounts", [])} <= set(volumes), workload["metadata"]["name"]
            for source in c.get("envFrom", []):
                assert "configMapRef" in source, "secrets are files, never envFrom"
                assert source["configMapRef"]["name"] in config_maps


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


@pytest.mark.parametrize(("overlay", "factor"), [("base", 1), ("overlays/dev", 1), ("overlays/production", 3)])
def test_faust_changelogs_are_replicated_three_times_in_production(overlay: str, factor: int, tmp_path: Path) -> None:
    settings = settings_of(rendered(overlay), tmp_path)

    assert settings.workers.faust_replication_factor == factor
    assert len(settings.kafka_bootstrap.split(",")) >= factor, "no more replicas than brokers"


# Workers.


@pytest.mark.parametrize("overlay", OVERLAYS)
@pytest.mark.parametrize("role", sorted(ROLE_COMMANDS))
def test_each_worker_is_a_deployment_running_its_driftloop_command(overlay: str, role: str) -> None:
    deployment = find(rendered(overlay), "Deployment", f"driftloop-{role}")
    c = container(deployment, role)

    assert image_name(c["image"]) in {WORKER_IMAGE, WORKER_CUDA_IMAGE}
    assert "command" not in c, "the image's entrypoint is `driftloop`"
    assert c["args"] == ROLE_COMMANDS[role]
    resolve_command(c["args"])


def test_setup_job_runs_real_commands() -> None:
    job = find(rendered("base"), "Job", "driftloop-setup")
    script = container(job)["args"][0]

    assert "from streams.topics import ensure_topics" in script
    from streams.topics import ensure_topics  # noqa: F401 - the script's import must exist

    commands = [found.split() for found in re.findall(r"(?:^|[\s;&)])driftloop((?:\s+[-\w]+)+)", script)]
    assert commands == [["stack", "acls", "--apply"], ["stack", "up", "--only", "feast"]]
    for command in commands:
        resolve_command(command)
    # ACLs only where the brokers authenticate clients (a PLAINTEXT broker has no authorizer to take them).
    assert re.search(r'case "\$DRIFTLOOP_KAFKA__SECURITY_PROTOCOL" in SASL_\*\) driftloop stack acls --apply', script)


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
        for c in all_containers(workload):
            resources = c["resources"]
            assert {"cpu", "memory"} <= set(resources["requests"]), name
            assert "memory" in resources["limits"], name
            assert c["securityContext"]["allowPrivilegeEscalation"] is False, name
            assert c["securityContext"]["capabilities"]["drop"] == ["ALL"], name
            if image_name(c["image"]) in {WORKER_IMAGE, WORKER_CUDA_IMAGE}:
                assert c["securityContext"]["readOnlyRootFilesystem"] is True, name
                mounts = {m["mountPath"] for m in c["volumeMounts"]}
                assert {"/tmp", "/var/lib/driftloop/run"} <= mounts, name


@pytest.mark.parametrize("overlay", OVERLAYS)
@pytest.mark.parametrize("role", sorted(set(ROLE_COMMANDS) - set(keda.SCALED_ROLES)))
def test_single_member_workers_are_recreated_not_rolled(overlay: str, role: str) -> None:
    resources = rendered(overlay)
    deployment = find(resources, "Deployment", f"driftloop-{role}")

    assert deployment["spec"]["replicas"] == 1
    assert deployment["spec"]["strategy"] == {"type": "Recreate"}
    targets = {scaled["spec"]["scaleTargetRef"]["name"] for scaled in of_kind(resources, "ScaledObject")}
    assert deployment["metadata"]["name"] not in targets, "one member: nothing may add a second"


@pytest.mark.parametrize("overlay", OVERLAYS)
@pytest.mark.parametrize("role", sorted(keda.SCALED_ROLES))
def test_scaled_workers_roll_a_new_member_in_before_an_old_one_leaves(overlay: str, role: str) -> None:
    resources = rendered(overlay)
    deployment = find(resources, "Deployment", f"driftloop-{role}")
    budgets = [
        b for b in of_kind(resources, "PodDisruptionBudget") if selects(b["spec"]["selector"], pod_labels(deployment))
    ]

    assert container(deployment)["args"] == ROLE_COMMANDS[role]
    assert deployment["spec"]["strategy"] == {
        "type": "RollingUpdate",
        "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0},
    }
    # In-flight batches finish and their offsets are committed before SIGKILL.
    assert pod_spec(deployment)["terminationGracePeriodSeconds"] >= 30
    (budget,) = budgets
    assert budget["spec"]["maxUnavailable"] == 1, "drains take one member at a time"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_inference_workers_do_not_reload_models_they_may_not_load(overlay: str, tmp_path: Path) -> None:
    resources = rendered(overlay)
    inference = find(resources, "Deployment", "driftloop-inference")

    settings = check_settings_env(container_env(resources, container(inference)), tmp_path)

    assert settings.workers.triton_reload_unhealthy is False, "reloading takes the admin key, which they lack"


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


@pytest.mark.parametrize(("overlay", "replicas"), [("base", 1), ("overlays/dev", 1), ("overlays/production", 2)])
def test_triton_runs_two_replicas_in_production_one_always_serving(overlay: str, replicas: int) -> None:
    resources = rendered(overlay)
    triton = find(resources, "Deployment", "driftloop-triton")
    labels = pod_labels(triton)
    budgets = [b for b in of_kind(resources, "PodDisruptionBudget") if selects(b["spec"]["selector"], labels)]

    assert triton["spec"]["replicas"] == replicas
    (budget,) = budgets
    assert budget["spec"] == {"maxUnavailable": 1, "selector": budget["spec"]["selector"]}
    rolling = triton["spec"]["strategy"]["rollingUpdate"]
    # A rollout never takes the last serving replica, and with two it needs no spare GPU.
    assert replicas - rolling["maxUnavailable"] >= (1 if replicas > 1 else 0)
    assert rolling["maxUnavailable"] + rolling["maxSurge"] >= 1
    if replicas > 1:
        assert rolling["maxSurge"] == 0 and rolling["maxUnavailable"] == 1


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_triton_replicas_are_spread_over_nodes(overlay: str) -> None:
    triton = find(rendered(overlay), "Deployment", "driftloop-triton")
    constraints = {c["topologyKey"]: c for c in pod_spec(triton)["topologySpreadConstraints"]}

    node = constraints["kubernetes.io/hostname"]
    assert node["whenUnsatisfiable"] == "DoNotSchedule" and node["maxSkew"] == 1
    assert constraints["topology.kubernetes.io/zone"]["whenUnsatisfiable"] == "ScheduleAnyway"
    for constraint in constraints.values():
        assert selects(constraint["labelSelector"], pod_labels(triton))
        assert constraint["matchLabelKeys"] == ["pod-template-hash"], "a rollout's new pods are spread among themselves"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_a_headless_service_resolves_to_every_triton_replica(overlay: str, tmp_path: Path) -> None:
    resources = rendered(overlay)
    triton = find(resources, "Deployment", "driftloop-triton")
    service = find(resources, "Service", TRITON_REPLICAS_SERVICE)
    ports = {p["name"]: p["containerPort"] for p in container(triton, "triton")["ports"]}

    assert service["spec"]["clusterIP"] == "None"
    assert service["spec"]["publishNotReadyAddresses"] is True, "a replica without the served model is not ready"
    assert selects({"matchLabels": service["spec"]["selector"]}, pod_labels(triton))
    by_name = {p["name"]: p for p in service["spec"]["ports"]}
    assert (
        ports[by_name["grpc"]["targetPort"]]
        == by_name["grpc"]["port"]
        == int(settings_of(resources, tmp_path).triton_grpc.split(":")[1])
    )
    assert {s["metadata"]["name"] for s in of_kind(resources, "Service") if s["spec"].get("clusterIP") == "None"} == {
        TRITON_REPLICAS_SERVICE
    }


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_tritons_repository_api_takes_the_admin_key_like_the_local_stack(overlay: str, tmp_path: Path) -> None:
    resources = rendered(overlay)
    c = container(find(resources, "Deployment", "driftloop-triton"), "triton")
    placeholder = f"$({ADMIN_KEY_VARIABLE})"
    settings = settings_of(resources, tmp_path)
    triton = settings.triton.model_copy(update={"admin_key": SecretStr(placeholder), "model_repository": tmp_path})
    settings = settings.model_copy(update={"triton": triton})

    stack_argv, _ = argv_and_env(settings, TritonInstall(Path("tritonserver"), None, ()))
    restricted = [a for a in stack_argv if a.startswith(("--http-restricted-api", "--grpc-restricted-protocol"))]

    assert len(restricted) == 2
    assert [a for a in c["args"] if a.startswith(("--http-restricted-api", "--grpc-restricted-protocol"))] == restricted
    (variable,) = [e for e in c["env"] if e["name"] == ADMIN_KEY_VARIABLE]
    # Not optional: without the key, Triton must not start at all (an unexpanded $(...) would be a known key).
    assert variable["valueFrom"]["secretKeyRef"] == {
        "name": "driftloop-triton-admin",
        "key": "DRIFTLOOP_TRITON__ADMIN_KEY",
    }


def _claim_mount(workload: Resource, container_name: str, path: Path) -> tuple[str, bool]:
    """(claim name, read-only) of the volume mounted at ``path``."""
    spec = pod_spec(workload)
    (c,) = [c for c in all_containers(workload) if c["name"] == container_name]
    mount = next(m for m in c["volumeMounts"] if m["mountPath"] == str(path))
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
    assert image_name(c["image"]) == (WORKER_CUDA_IMAGE if gpu else WORKER_IMAGE)
    assert any(t["key"] == GPU for t in pod_spec(retrain).get("tolerations", [])) is gpu


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_first_model_version_is_bootstrapped_when_the_repository_is_empty(overlay: str, tmp_path: Path) -> None:
    resources = rendered(overlay)
    retrain = find(resources, "Deployment", "driftloop-retrain")
    (init,) = pod_spec(retrain)["initContainers"]
    settings = check_settings_env(container_env(resources, init), tmp_path)
    script = init["args"][0]

    assert init["command"] == ["sh", "-c"]
    guard = re.search(r"if ls -d (\S+) >/dev/null 2>&1;", script)
    assert guard and guard.group(1) == f"{settings.triton.model_repository}/{settings.triton.model_name}/[0-9]*"
    (command,) = re.findall(r"\bexec driftloop ([^;]+);", script)
    assert command.split()[:2] == ["train", "--bootstrap"] and "--promote auto" in command
    resolve_command(command.split())
    # Triton is not ready without a served model: the bootstrap loads it on every replica, ready or not, through the
    # headless Service the publisher resolves (triton.replicas_dns).
    host, port = settings.triton.replicas_dns.split(":")
    service = find(resources, "Service", host)
    assert host == TRITON_REPLICAS_SERVICE and service["spec"]["publishNotReadyAddresses"] is True
    assert int(port) in {p["port"] for p in service["spec"]["ports"]}
    assert _claim_mount(retrain, "bootstrap-model", settings.triton.model_repository) == ("driftloop-models", False)
    assert init["image"] == container(retrain, "retrain")["image"]


def test_the_bootstrap_guard_sees_versions_and_nothing_else(tmp_path: Path) -> None:
    init = pod_spec(find(rendered("base"), "Deployment", "driftloop-retrain"))["initContainers"][0]
    script = init["args"][0].replace("/models/", f"{tmp_path}/").replace("exec driftloop", "echo TRAIN")
    model = tmp_path / "classifier"
    (model / ".staging-host-1-abc").mkdir(parents=True)
    (model / "config.pbtxt").write_text("")

    def run() -> str:
        return subprocess.run(["sh", "-c", script], capture_output=True, text=True, check=True).stdout

    assert run().startswith("TRAIN train --bootstrap"), "a staging folder or a config is not a version"
    (model / "1").mkdir()
    assert "nothing to bootstrap" in run()


# Images.


def test_production_pulls_every_image_from_the_registry_by_digest() -> None:
    images = {c["image"] for w in workloads(rendered("overlays/production")) for c in all_containers(w)}

    assert images == {f"{REGISTRY}/{image}@{stand_in_digest(name)}" for name, image in DIGESTS.items()}
    assert set(image_digest_names(K8S)) == set(DIGESTS)


def test_production_does_not_render_without_its_image_digests(tmp_path: Path) -> None:
    copy = with_image_digests(K8S, tmp_path / "none", digests={})
    (copy / IMAGE_DIGESTS_FILE).write_text("# nothing filled in\n")
    partial = with_image_digests(K8S, tmp_path / "partial", digests={"WORKERS": "", "TRITON": ""})
    (partial / IMAGE_DIGESTS_FILE).write_text(
        "".join(f"{name}={stand_in_digest(name)}\n" for name in ("WORKERS", "TRITON"))
    )

    with pytest.raises(KustomizeError, match=r"data\.WORKERS` is missing"):
        render(copy / "overlays/production")
    with pytest.raises(KustomizeError, match=r"data\.WORKERS_CUDA` is missing"):
        render(partial / "overlays/production")
    render(copy / "overlays/dev")  # the dev overlay builds local images by tag


def test_the_committed_image_digests_are_absent_or_real_digests() -> None:
    lines = [line for line in (K8S / IMAGE_DIGESTS_FILE).read_text().splitlines() if line and not line.startswith("#")]

    for line in lines:
        name, _, digest = line.partition("=")
        assert name in DIGESTS, line
        assert re.fullmatch(r"sha256:[0-9a-f]{64}", digest), line
        assert digest != stand_in_digest(name), "a test's stand-in digest is not an image's"
    # The instructions read each digest from the registry.
    assert "crane digest" in (K8S / IMAGE_DIGESTS_FILE).read_text()


def test_the_digests_file_is_generated_into_a_config_map_that_is_not_deployed() -> None:
    kustomization = yaml.safe_load((K8S / "overlays/production" / KUSTOMIZATION_FILE).read_text())
    (generator,) = kustomization["configMapGenerator"]

    assert generator["envs"] == [IMAGE_DIGESTS_FILE.name]
    assert generator["options"]["annotations"] == {"config.kubernetes.io/local-config": "true"}
    assert not [r for r in rendered("overlays/production") if r["metadata"]["name"] == generator["name"]]


# Storage.


@pytest.mark.parametrize(
    ("overlay", "storage_class"), [("base", None), ("overlays/dev", None), ("overlays/production", "standard-rwx")]
)
def test_the_storage_class_is_the_overlays_choice(overlay: str, storage_class: str | None) -> None:
    claims = of_kind(rendered(overlay), "PersistentVolumeClaim")

    assert {c["metadata"]["name"] for c in claims} == {"driftloop-models", "driftloop-feast"}
    for claim in claims:
        assert claim["spec"].get("storageClassName") == storage_class
        if storage_class:
            assert claim["spec"]["accessModes"] == ["ReadWriteMany"]


# KEDA.


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_keda_alone_sets_the_replica_counts_of_the_workers_it_scales(overlay: str) -> None:
    resources = rendered(overlay)
    targets = [s["spec"]["scaleTargetRef"]["name"] for s in of_kind(resources, "ScaledObject")]
    uncounted = {d["metadata"]["name"] for d in of_kind(resources, "Deployment") if "replicas" not in d["spec"]}

    assert sorted(targets) == sorted(f"driftloop-{role}" for role in keda.SCALED_ROLES), "one ScaledObject per role"
    # kubectl apply would reset KEDA's count to a Deployment's own; a Deployment without one and without KEDA runs 1.
    assert uncounted == set(targets)


@pytest.mark.parametrize("role", sorted(keda.SCALED_ROLES))
@pytest.mark.parametrize(("overlay", "minimum"), [("base", 1), ("overlays/dev", 1), ("overlays/production", 2)])
def test_keda_falls_back_to_more_than_its_minimum_when_it_cannot_read_the_lag(
    overlay: str, minimum: int, role: str
) -> None:
    spec = keda.scaled_object_for(rendered(overlay), f"driftloop-{role}")["spec"]

    assert spec["minReplicaCount"] == minimum
    assert spec["minReplicaCount"] < spec["fallback"]["replicas"] <= spec["maxReplicaCount"]
    assert spec["fallback"]["failureThreshold"] >= 3


@pytest.mark.parametrize("overlay", OVERLAYS)
@pytest.mark.parametrize("role", sorted(keda.SCALED_ROLES))
def test_scaled_object_scales_its_role_on_lag_up_to_the_partition_count(
    overlay: str, role: str, tmp_path: Path
) -> None:
    resources = rendered(overlay)
    settings = settings_of(resources, tmp_path)
    scaled = keda.scaled_object_for(resources, f"driftloop-{role}")

    spec = scaled["spec"]
    assert scaled["apiVersion"] == "keda.sh/v1alpha1"
    target = spec["scaleTargetRef"]
    assert target.get("kind", "Deployment") == "Deployment" and target.get("apiVersion", "apps/v1") == "apps/v1"
    deployment = find(resources, "Deployment", target["name"])
    assert container(deployment)["args"] == ROLE_COMMANDS[role]
    assert "replicas" not in deployment["spec"], "kubectl apply would reset KEDA's count to it"
    partitions = settings.kafka.topics["events-v1"].partitions
    assert spec["maxReplicaCount"] == partitions
    assert 1 <= spec["minReplicaCount"] <= spec["maxReplicaCount"]
    assert spec["fallback"]["replicas"] <= partitions
    (trigger,) = spec["triggers"]
    assert trigger["type"] == "kafka"
    metadata = trigger["metadata"]
    assert set(metadata) <= keda.KAFKA_METADATA
    assert int(metadata["lagThreshold"]) > 0
    assert metadata["consumerGroup"] == getattr(settings.workers, keda.SCALED_ROLES[role])
    assert metadata["topic"] == settings.kafka.topic("events-v1")
    assert metadata["allowIdleConsumers"] == "false"  # never more consumers than partitions
    # As the role's consumer: the inference one (streams/client.py), faust's (consumer_auto_offset_reset).
    assert metadata["offsetResetPolicy"] == "earliest"
    # The broker list is read from the target container's environment: the ConfigMap must provide it.
    assert metadata["bootstrapServersFromEnv"] == "DRIFTLOOP_KAFKA__BOOTSTRAP_SERVERS"
    config_maps = [s["configMapRef"]["name"] for s in container(deployment)["envFrom"] if "configMapRef" in s]
    assert any(
        metadata["bootstrapServersFromEnv"] in find(resources, "ConfigMap", name)["data"] for name in config_maps
    )
