"""Least privilege in the Kubernetes manifests: each role's secrets and each role's network.

Secrets are files: every workload mounts its own Secrets under DRIFTLOOP_SECRETS_DIR, one folder each, and nothing
becomes an environment variable of a driftloop container. With Kafka SASL every worker has its own SCRAM identity
(the users of driftloop/stack/kafka_roles.py), the setup Job the admin one; only the retraining consumer (and Triton)
holds Triton's admin key; KEDA reads each scaled role's lag as that role's own identity. The settings a pod ends up
with are built from its mounts, as the container would.
Network policies deny everything, then each role reaches only what it needs, checked by evaluating the rendered
policies for each pod. No Secret anywhere ships a password or key.
"""

from __future__ import annotations

import re
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from confluent_kafka.admin import AclOperation, ResourcePatternType, ResourceType

from driftloop.stack import kafka_roles
from foundation.settings import SECRETS_DIR_ENV, Settings
from tests.deploy import keda
from tests.deploy.kustomize import load_yaml_documents, pod_spec
from tests.deploy.manifests import (
    OVERLAYS,
    Resource,
    all_containers,
    config_env,
    container,
    container_env,
    find,
    of_kind,
    pod_labels,
    rendered,
    selects,
    settings_of,
    workloads,
)
from tests.deploy.support import DEPLOY, K8S, ROLE_COMMANDS, check_settings_env, settings_field

pytestmark = pytest.mark.unit

EXAMPLE = K8S / "secrets.example.yaml"
#: Each Kafka client workload and the Kafka identity (Secret driftloop-kafka-<identity>) it must use.
KAFKA_IDENTITIES = {f"driftloop-{role}": role for role in ROLE_COMMANDS} | {"driftloop-setup": "admin"}
#: Which secret settings each workload's pods hold (production: Kafka SASL on).
SECRET_FIELDS = {
    "driftloop-inference": {"kafka.sasl_username", "kafka.sasl_password", "feast.redis_connection_string"},
    "driftloop-features": {"kafka.sasl_username", "kafka.sasl_password", "feast.redis_connection_string"},
    "driftloop-monitor": {
        "kafka.sasl_username",
        "kafka.sasl_password",
        "monitoring.pagerduty_routing_key",
        "monitoring.slack_webhook_url",
    },
    "driftloop-retrain": {
        "kafka.sasl_username",
        "kafka.sasl_password",
        "feast.redis_connection_string",
        "triton.admin_key",
    },
    "driftloop-setup": {"kafka.sasl_username", "kafka.sasl_password", "feast.redis_connection_string"},
}
ALL_SECRET_FIELDS = set().union(*SECRET_FIELDS.values())
REDIS_PORT = 6379


def examples() -> dict[str, Resource]:
    return {s["metadata"]["name"]: s for s in load_yaml_documents(EXAMPLE)}


def secret_dir(resources: list[Resource]) -> Path:
    return Path(config_env(resources)[SECRETS_DIR_ENV])


def secret_volumes(workload: Resource) -> dict[str, Resource]:
    return {v["name"]: v for v in pod_spec(workload).get("volumes", []) if "secret" in v}


def secrets_read(resources: list[Resource]) -> dict[str, set[str]]:
    """Secret name -> the keys the rendered resources read from it (volume items, env references, KEDA)."""
    wanted: dict[str, set[str]] = {}
    for workload in workloads(resources):
        for volume in secret_volumes(workload).values():
            keys = {item["key"] for item in volume["secret"].get("items", [])}
            wanted.setdefault(volume["secret"]["secretName"], set()).update(keys)
        for c in all_containers(workload):
            for variable in c.get("env", []):
                if ref := variable.get("valueFrom", {}).get("secretKeyRef"):
                    wanted.setdefault(ref["name"], set()).add(ref["key"])
    for auth in of_kind(resources, "TriggerAuthentication"):
        for ref in auth["spec"].get("secretTargetRef", []):
            wanted.setdefault(ref["name"], set()).add(ref["key"])
    return wanted


def readers(resources: list[Resource], secret: str) -> set[str]:
    """The workloads whose pods read ``secret``."""
    names = set()
    for workload in workloads(resources):
        volumes = {v["secret"]["secretName"] for v in secret_volumes(workload).values()}
        refs = {
            e["valueFrom"]["secretKeyRef"]["name"]
            for c in all_containers(workload)
            for e in c.get("env", [])
            if "secretKeyRef" in e.get("valueFrom", {})
        }
        if secret in volumes | refs:
            names.add(workload["metadata"]["name"])
    return names


def pod_settings(resources: list[Resource], workload: Resource, c: dict, tmp_path: Path) -> Settings:
    """The settings container ``c`` builds: its environment, and its secret mounts laid out in a local directory
    (each key holding a stand-in value) standing for DRIFTLOOP_SECRETS_DIR."""
    root = secret_dir(resources)
    local = tmp_path / "secrets"
    local.mkdir(parents=True, exist_ok=True)
    volumes = secret_volumes(workload)
    for mount in c.get("volumeMounts", []):
        volume = volumes.get(mount["name"])
        path = Path(mount["mountPath"])
        if volume is None or not path.is_relative_to(root):
            continue
        folder = local / path.relative_to(root)
        folder.mkdir(parents=True, exist_ok=True)
        for item in volume["secret"]["items"]:
            (folder / item["path"]).write_text(f"stand-in for {volume['secret']['secretName']}/{item['key']}\n")
    return check_settings_env(container_env(resources, c), tmp_path, local)


def secret_fields_set(settings: Settings) -> set[str]:
    found = set()
    for dotted in ALL_SECRET_FIELDS:
        section, field = dotted.split(".")
        if getattr(getattr(settings, section), field) is not None:
            found.add(dotted)
    return found


# Secrets are files, each workload its own.


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_no_secret_is_an_environment_variable_of_a_driftloop_container(overlay: str) -> None:
    for workload in workloads(rendered(overlay)):
        for c in all_containers(workload):
            assert not [s for s in c.get("envFrom", []) if "secretRef" in s], workload["metadata"]["name"]
            refs = [e for e in c.get("env", []) if "secretKeyRef" in e.get("valueFrom", {})]
            # Triton takes its admin key on its command line, from a variable (tritonserver reads no file for it).
            assert not refs or workload["metadata"]["name"] == "driftloop-triton", workload["metadata"]["name"]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_secret_mounts_are_folders_of_the_secrets_directory_named_like_settings(overlay: str) -> None:
    resources = rendered(overlay)
    root = secret_dir(resources)

    for workload in workloads(resources):
        volumes = secret_volumes(workload)
        for c in all_containers(workload):
            for mount in c.get("volumeMounts", []):
                if mount["name"] not in volumes:
                    continue
                assert mount.get("readOnly") is True, (workload["metadata"]["name"], mount)
                secret = volumes[mount["name"]]["secret"]
                if secret["secretName"] == "driftloop-kafka-tls":  # a certificate file, named by ssl_ca_location
                    continue
                assert Path(mount["mountPath"]).parent == root, mount
                for item in secret["items"]:
                    assert item["path"] == item["key"]
                    settings_field(item["key"])
                assert secret.get("defaultMode") == 0o440


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_driftloop_container_has_its_secrets_directory(overlay: str) -> None:
    """The settings refuse a DRIFTLOOP_SECRETS_DIR that does not exist: each container mounts a folder of it."""
    resources = rendered(overlay)
    root = secret_dir(resources)

    for workload in workloads(resources):
        for c in all_containers(workload):
            if SECRETS_DIR_ENV not in container_env(resources, c):
                continue
            mounts = [Path(m["mountPath"]) for m in c.get("volumeMounts", [])]
            assert any(m.parent == root for m in mounts), (workload["metadata"]["name"], c["name"])


@pytest.mark.parametrize("overlay", ["base", "overlays/production"])
def test_each_pod_holds_the_secrets_of_its_role_and_no_others(overlay: str, tmp_path: Path) -> None:
    resources = rendered(overlay)
    sasl = settings_of(resources, tmp_path).kafka.sasl_mechanism is not None

    for name, expected in SECRET_FIELDS.items():
        workload = find(resources, "Job" if name == "driftloop-setup" else "Deployment", name)
        c = container(workload)
        settings = pod_settings(resources, workload, c, tmp_path / name)
        wanted = expected if sasl else {f for f in expected if not f.startswith("kafka.")}
        assert secret_fields_set(settings) == wanted, name


def test_the_bootstrap_init_container_holds_what_publishing_needs(tmp_path: Path) -> None:
    resources = rendered("overlays/production")
    retrain = find(resources, "Deployment", "driftloop-retrain")
    (init,) = pod_spec(retrain)["initContainers"]

    settings = pod_settings(resources, retrain, init, tmp_path)

    assert secret_fields_set(settings) == {"kafka.sasl_username", "kafka.sasl_password", "triton.admin_key"}
    assert settings.kafka.ssl_ca_location in {Path(m["mountPath"]) / "ca.crt" for m in init["volumeMounts"]}


def test_every_kafka_client_has_its_own_identity_in_production(tmp_path: Path) -> None:
    resources = rendered("overlays/production")
    settings = settings_of(resources, tmp_path)
    example = examples()
    used: dict[str, str] = {}

    for workload in workloads(resources):
        name = workload["metadata"]["name"]
        kafka = [v["secret"]["secretName"] for v in secret_volumes(workload).values()]
        kafka = [s for s in kafka if s.startswith("driftloop-kafka-") and s != "driftloop-kafka-tls"]
        if name not in KAFKA_IDENTITIES:
            assert not kafka, name
            continue
        assert kafka == [f"driftloop-kafka-{KAFKA_IDENTITIES[name]}"], name
        assert kafka[0] not in used, f"{name} shares {kafka[0]} with {used.get(kafka[0])}"
        used[kafka[0]] = name
        role = KAFKA_IDENTITIES[name]
        if role in kafka_roles.ROLES:  # the user whose ACLs driftloop/stack/kafka_roles.py defines
            username = example[kafka[0]]["stringData"]["DRIFTLOOP_KAFKA__SASL_USERNAME"]
            assert username == kafka_roles.username(settings, role)
    assert set(used) == {f"driftloop-kafka-{identity}" for identity in KAFKA_IDENTITIES.values()}


def test_only_the_retraining_consumer_and_triton_hold_the_admin_key() -> None:
    for overlay in OVERLAYS:
        assert readers(rendered(overlay), "driftloop-triton-admin") == {"driftloop-retrain", "driftloop-triton"}


def test_production_secrets_are_documented_in_the_example(tmp_path: Path) -> None:
    resources = rendered("overlays/production")
    example = examples()

    wanted = secrets_read(resources)

    assert not of_kind(resources, "Secret"), "production must not ship secret values"
    assert set(wanted) == set(example)
    for name, keys in wanted.items():
        assert keys == set(example[name]["stringData"]), name
        if name != "driftloop-kafka-tls":
            for key in keys:
                settings_field(key)


def test_dev_ships_the_secrets_it_reads_but_the_admin_key(tmp_path: Path) -> None:
    resources = rendered("overlays/dev")
    shipped = {r["metadata"]["name"]: r for r in of_kind(resources, "Secret")}
    optional = {
        v["secret"]["secretName"]
        for w in workloads(resources)
        for v in secret_volumes(w).values()
        if v["secret"].get("optional")
    }

    # The admin key is random: the dev kustomization says how to create it, and nothing ships one.
    assert set(secrets_read(resources)) - optional - {"driftloop-triton-admin"} == set(shipped) == {"driftloop-redis"}
    assert "create secret generic driftloop-triton-admin" in (K8S / "overlays/dev/kustomization.yaml").read_text()
    env = {**config_env(resources), **shipped["driftloop-redis"]["stringData"]}
    settings = check_settings_env(env, tmp_path)
    host, port = settings.feast.redis_connection_string.get_secret_value().split(",")[0].split(":")
    service = find(resources, "Service", host)
    assert int(port) in {p["port"] for p in service["spec"]["ports"]} and int(port) == REDIS_PORT


def test_no_default_password_anywhere() -> None:
    for name, secret in examples().items():
        for key, value in secret["stringData"].items():
            assert value == "" or key == "DRIFTLOOP_KAFKA__SASL_USERNAME", f"{name}/{key} must be filled in by you"
    for overlay in OVERLAYS:
        for secret in of_kind(rendered(overlay), "Secret"):
            for key, value in secret.get("stringData", {}).items():
                assert not re.search(r"PASSWORD|_KEY|TOKEN|WEBHOOK", key), f"{secret['metadata']['name']}/{key}"
                assert "password=" not in value, f"{secret['metadata']['name']}/{key}"
    placeholder = re.compile(r"change-?me|password=(?!\.\.\.)[^\s,'\"\]]|passw(or)?d: *['\"]?[a-z0-9]", re.IGNORECASE)
    for path in [*K8S.rglob("*"), *(DEPLOY / "prometheus").rglob("*")]:
        if path.is_file():
            assert not placeholder.search(path.read_text()), path


# KEDA.


@pytest.mark.parametrize("role", sorted(keda.SCALED_ROLES))
def test_keda_authenticates_to_kafka_as_the_scaled_workers_own_identity_in_production(
    role: str, tmp_path: Path
) -> None:
    resources = rendered("overlays/production")
    settings = settings_of(resources, tmp_path)
    scaled = keda.scaled_object_for(resources, f"driftloop-{role}")
    (trigger,) = scaled["spec"]["triggers"]
    auth = find(resources, "TriggerAuthentication", trigger["authenticationRef"]["name"])
    refs = {ref["parameter"]: (ref["name"], ref["key"]) for ref in auth["spec"]["secretTargetRef"]}
    workers = secret_volumes(find(resources, "Deployment", f"driftloop-{role}"))
    identity = f"driftloop-kafka-{role}"

    assert settings.kafka.security_protocol == "SASL_SSL"
    assert trigger["authenticationRef"].get("kind", "TriggerAuthentication") == "TriggerAuthentication"
    assert trigger["metadata"]["tls"] == "enable"
    assert trigger["metadata"]["sasl"] in keda.KAFKA_SASL_MODES
    assert trigger["metadata"]["sasl"] == keda.KAFKA_SASL_FOR_MECHANISM[settings.kafka.sasl_mechanism]
    assert set(refs) <= keda.KAFKA_AUTH_PARAMETERS
    # The workers' own identity, the one their pods mount, and no other role's.
    assert refs["username"] == (identity, "DRIFTLOOP_KAFKA__SASL_USERNAME")
    assert refs["password"] == (identity, "DRIFTLOOP_KAFKA__SASL_PASSWORD")
    assert workers["kafka-credentials"]["secret"]["secretName"] == identity
    assert examples()[identity]["stringData"]["DRIFTLOOP_KAFKA__SASL_USERNAME"] == kafka_roles.username(settings, role)
    # Its ACLs let it read what the lag scaler reads: the group's committed offsets (READ on a group implies
    # DESCRIBE) and the topic's partitions and end offsets.
    grants = kafka_roles.grants(settings, role)
    group, topic = trigger["metadata"]["consumerGroup"], trigger["metadata"]["topic"]
    assert any(
        g.resource_type == ResourceType.GROUP
        and g.operation == AclOperation.READ
        and (group == g.name if g.pattern == ResourcePatternType.LITERAL else group.startswith(g.name))
        for g in grants
    ), f"{role} may not describe its group {group}"
    topic_ops = {
        g.operation
        for g in grants
        if g.resource_type == ResourceType.TOPIC and g.pattern == ResourcePatternType.LITERAL and g.name == topic
    }
    assert {AclOperation.READ, AclOperation.DESCRIBE} <= topic_ops
    ca_secret, ca_key = refs["ca"]
    for workload in workloads(resources):
        if workload["metadata"]["labels"].get("driftloop.io/kafka-client") != "true":
            continue
        spec = pod_spec(workload)
        volume = next(v for v in spec["volumes"] if v.get("secret", {}).get("secretName") == ca_secret)
        item = next(i for i in volume["secret"]["items"] if i["key"] == ca_key)
        for c in all_containers(workload):
            mount = next(m for m in c["volumeMounts"] if m["name"] == volume["name"])
            assert Path(mount["mountPath"]) / item["path"] == settings.kafka.ssl_ca_location, c["name"]


def test_every_trigger_authentication_is_used_by_a_scaled_object() -> None:
    resources = rendered("overlays/production")
    used = [
        trigger["authenticationRef"]["name"]
        for scaled in of_kind(resources, "ScaledObject")
        for trigger in scaled["spec"]["triggers"]
    ]

    assert sorted(used) == sorted(a["metadata"]["name"] for a in of_kind(resources, "TriggerAuthentication"))
    assert len(set(used)) == len(keda.SCALED_ROLES), "each scaled role authenticates as itself"


def test_every_kafka_client_is_labelled_for_the_tls_component_and_the_network_policy() -> None:
    for workload in workloads(rendered("base")):
        name = workload["metadata"]["name"]
        client = name != "driftloop-triton"
        assert (workload["metadata"]["labels"].get("driftloop.io/kafka-client") == "true") is client, name
        assert (pod_labels(workload).get("driftloop.io/kafka-client") == "true") is client, name


# Network policies.


def _namespace_of(peer: dict) -> str | None:
    return peer.get("namespaceSelector", {}).get("matchLabels", {}).get("kubernetes.io/metadata.name")


def _pods_matching(resources: list[Resource], selector: dict) -> set[str]:
    return {
        w["metadata"]["labels"]["app.kubernetes.io/component"]
        for w in workloads(resources)
        if selects(selector, pod_labels(w))
    }


def _port_values(rule: dict) -> set:
    return {p["port"] for p in rule.get("ports", [])}


def policies_for(resources: list[Resource], workload: Resource, direction: str) -> list[Resource]:
    labels = pod_labels(workload)
    return [
        p
        for p in of_kind(resources, "NetworkPolicy")
        if direction in p["spec"]["policyTypes"] and selects(p["spec"]["podSelector"], labels)
    ]


def reach(resources: list[Resource], workload: Resource) -> set[str]:
    """What a workload's pods may connect to: 'dns', 'kafka:<port>', 'redis:<port>', '<component>:<port>' for pods
    of this namespace, 'alertmanager:<port>' (in its namespace); anything else as 'unknown:...'."""
    found = set()
    for policy in policies_for(resources, workload, "Egress"):
        for rule in policy["spec"].get("egress", []):
            ports = _port_values(rule)
            for peer in rule.get("to", []):
                name = policy["metadata"]["name"]
                if name == "driftloop-allow-kafka":
                    found |= {f"kafka:{port}" for port in ports}
                elif name == "driftloop-allow-redis":
                    found |= {f"redis:{port}" for port in ports}
                elif _namespace_of(peer) == "kube-system" and peer["podSelector"]["matchLabels"] == {
                    "k8s-app": "kube-dns"
                }:
                    assert {(p["protocol"], p["port"]) for p in rule["ports"]} == {("UDP", 53), ("TCP", 53)}
                    found.add("dns")
                elif "namespaceSelector" not in peer and "ipBlock" not in peer:
                    found |= {
                        f"{pod}:{port}" for pod in _pods_matching(resources, peer["podSelector"]) for port in ports
                    }
                elif peer.get("podSelector", {}).get("matchLabels") == {"app.kubernetes.io/name": "alertmanager"}:
                    found |= {f"alertmanager@{_namespace_of(peer)}:{port}" for port in ports}
                else:
                    found.add(f"unknown:{name}:{peer}")
    return found


def admitted(resources: list[Resource], workload: Resource) -> set[str]:
    """Who may connect to a workload's pods: '<component>:<port>' for pods of this namespace,
    'prometheus@<namespace>:<port>'; anything else as 'unknown:...'."""
    found = set()
    for policy in policies_for(resources, workload, "Ingress"):
        for rule in policy["spec"].get("ingress", []):
            ports = _port_values(rule)
            for peer in rule.get("from", []):
                if "namespaceSelector" not in peer and "ipBlock" not in peer:
                    found |= {
                        f"{pod}:{port}" for pod in _pods_matching(resources, peer["podSelector"]) for port in ports
                    }
                elif peer.get("podSelector", {}).get("matchLabels") == {"app.kubernetes.io/name": "prometheus"}:
                    found |= {f"prometheus@{_namespace_of(peer)}:{port}" for port in ports}
                else:
                    found.add(f"unknown:{policy['metadata']['name']}:{peer}")
    return found


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_everything_is_denied_unless_a_policy_allows_it(overlay: str) -> None:
    resources = rendered(overlay)
    deny = find(resources, "NetworkPolicy", "driftloop-default-deny")

    assert deny["spec"] == {"podSelector": {}, "policyTypes": ["Ingress", "Egress"]}
    for policy in of_kind(resources, "NetworkPolicy"):
        for rule in policy["spec"].get("egress", []) + policy["spec"].get("ingress", []):
            assert rule.get("ports"), f"{policy['metadata']['name']}: a rule without ports opens every port"
            assert rule.get("to", rule.get("from")), f"{policy['metadata']['name']}: a rule without peers opens to all"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_each_role_reaches_only_what_it_needs(overlay: str, tmp_path: Path) -> None:
    resources = rendered(overlay)
    settings = settings_of(resources, tmp_path)
    kafka = {f"kafka:{server.rsplit(':', 1)[1]}" for server in settings.kafka_bootstrap.split(",")}
    alertmanager = urlsplit(settings.monitoring.alertmanager_url)
    alertmanager_namespace = alertmanager.hostname.split(".")[1]
    triton = f"triton:{settings.triton_grpc.rsplit(':', 1)[1]}"
    redis = f"redis:{REDIS_PORT}"
    expected = {
        "inference": {"dns", *kafka, redis, triton},
        "features": {"dns", *kafka, redis},
        "monitor": {"dns", *kafka, f"alertmanager@{alertmanager_namespace}:{alertmanager.port}"},
        "retrain": {"dns", *kafka, triton},
        "setup": {"dns", *kafka, redis},
        "triton": {"dns"},
        "redis": {"dns"},
    }
    if overlay == "overlays/dev":  # Redis is a pod of the namespace there
        expected = {role: {"redis:6379" if r == redis else r for r in want} for role, want in expected.items()}

    for workload in workloads(resources):
        component = workload["metadata"]["labels"]["app.kubernetes.io/component"]
        assert reach(resources, workload) == expected[component], component


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_each_pod_admits_only_its_clients_and_prometheus(overlay: str, tmp_path: Path) -> None:
    resources = rendered(overlay)
    settings = settings_of(resources, tmp_path)
    grpc = int(settings.triton_grpc.rsplit(":", 1)[1])
    scrape = {"prometheus@monitoring:http-health", "prometheus@monitoring:metrics"}
    expected = {
        **{role: scrape for role in ROLE_COMMANDS},
        "triton": {f"inference:{grpc}", f"retrain:{grpc}", *scrape},
        "setup": set(),
        "redis": {f"{role}:{REDIS_PORT}" for role in ("inference", "features", "setup")},
    }

    for workload in workloads(resources):
        component = workload["metadata"]["labels"]["app.kubernetes.io/component"]
        assert admitted(resources, workload) == expected[component], component
        # A named port Prometheus may scrape is one the pod serves its metrics on.
        ports = {p["name"] for c in all_containers(workload) for p in c.get("ports", [])}
        named = {a.rsplit(":", 1)[1] for a in admitted(resources, workload) if a.startswith("prometheus@")}
        assert len(named & ports) == (1 if named else 0), component


def test_production_reaches_kafka_and_redis_by_address_only() -> None:
    resources = rendered("overlays/production")

    for name in ("driftloop-allow-kafka", "driftloop-allow-redis"):
        (rule,) = find(resources, "NetworkPolicy", name)["spec"]["egress"]
        assert [set(peer) for peer in rule["to"]] == [{"ipBlock"}], name
