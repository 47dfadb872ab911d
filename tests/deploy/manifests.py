"""The rendered Kubernetes overlays and the lookups the deployment tests make in them.

Overlays are rendered once per session by the real kustomize from :func:`tests.deploy.support.k8s_tree` (deploy/k8s
with stand-in image digests for production); each caller gets its own copy.
"""

from __future__ import annotations

import copy
import functools
from pathlib import Path
from typing import Any

from foundation.settings import Settings
from tests.deploy.kustomize import pod_spec, render
from tests.deploy.support import check_settings_env, k8s_tree

OVERLAYS = ("base", "overlays/dev", "overlays/production")
CONFIG_MAP = "driftloop-config"

Resource = dict[str, Any]


@functools.cache
def _rendered(overlay: str) -> list[Resource]:
    return render(k8s_tree() / overlay)


def rendered(overlay: str) -> list[Resource]:
    """The overlay's resources (rendered once per session; each caller gets its own copy)."""
    return copy.deepcopy(_rendered(overlay))


def find(resources: list[Resource], kind: str, name: str) -> Resource:
    found = [r for r in resources if r["kind"] == kind and r["metadata"]["name"] == name]
    assert len(found) == 1, f"{kind}/{name}: found {len(found)}"
    return found[0]


def of_kind(resources: list[Resource], kind: str) -> list[Resource]:
    return [r for r in resources if r["kind"] == kind]


def workloads(resources: list[Resource]) -> list[Resource]:
    return [r for r in resources if pod_spec(r) is not None]


def container(resource: Resource, name: str | None = None) -> dict[str, Any]:
    containers = pod_spec(resource)["containers"]
    return containers[0] if name is None else next(c for c in containers if c["name"] == name)


def all_containers(resource: Resource) -> list[dict[str, Any]]:
    """Init containers, then containers."""
    spec = pod_spec(resource)
    return [*spec.get("initContainers", []), *spec["containers"]]


def pod_labels(resource: Resource) -> dict[str, str]:
    """The labels of the pods a workload makes (its pod template's)."""
    template = resource["spec"]["jobTemplate"]["spec"]["template"] if resource["kind"] == "CronJob" else None
    template = template or resource["spec"]["template"]
    return template["metadata"].get("labels", {})


def selects(selector: dict[str, Any] | None, labels: dict[str, str]) -> bool:
    """Whether a Kubernetes label selector (matchLabels, matchExpressions) selects ``labels``; {} selects all."""
    selector = selector or {}
    if any(labels.get(key) != value for key, value in selector.get("matchLabels", {}).items()):
        return False
    for expression in selector.get("matchExpressions", []):
        key, operator, values = expression["key"], expression["operator"], expression.get("values", [])
        present = key in labels
        if {
            "In": present and labels.get(key) in values,
            "NotIn": not present or labels[key] not in values,
            "Exists": present,
            "DoesNotExist": not present,
        }[operator] is False:
            return False
    return True


def image_name(image: str) -> str:
    return image.rsplit("/", 1)[-1].split(":", 1)[0].split("@", 1)[0]


def config_env(resources: list[Resource]) -> dict[str, str]:
    return dict(find(resources, "ConfigMap", CONFIG_MAP)["data"])


def settings_of(resources: list[Resource], tmp_path: Path, secrets_dir: Path | None = None) -> Settings:
    """The settings every driftloop container gets from the ConfigMap driftloop-config."""
    return check_settings_env(config_env(resources), tmp_path, secrets_dir)


def container_env(resources: list[Resource], c: dict[str, Any]) -> dict[str, str]:
    """A driftloop container's environment: its ConfigMaps, then its own plain ``env`` values."""
    env: dict[str, str] = {}
    for source in c.get("envFrom", []):
        if "configMapRef" in source:
            env.update(find(resources, "ConfigMap", source["configMapRef"]["name"])["data"])
    env.update({e["name"]: e["value"] for e in c.get("env", []) if "value" in e})
    return env
