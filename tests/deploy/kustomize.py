"""A small kustomize renderer for the tests: the ``kustomize`` binary is not on these machines.

It implements exactly the subset deploy/k8s uses, with kustomize's semantics, and refuses anything else (so a new
field in a kustomization cannot be silently ignored by the tests):

- ``resources``: YAML files (multi-document) and directories holding a ``Kustomization``;
- ``components``: directories holding a ``Component``, applied after the resources, in order (their own
  resources are added, then their patches run over everything accumulated so far);
- ``patches``: JSON 6902 patches (``add``, ``replace``, ``remove``), inline (``patch``) or in a file (``path``), with
  a ``target`` selecting by group, version, kind, name (an anchored regular expression), namespace and an
  equality-based ``labelSelector``. A target that selects nothing is an error here (kustomize would skip it);
- ``namespace``: set on every namespaced resource;
- ``images``: ``newName`` / ``newTag`` / ``digest`` for every container and init container whose image name matches.

Transformers run in kustomize's order: patches, then namespace, then images. Strategic-merge patches are refused:
their list semantics depend on OpenAPI merge keys that this renderer does not carry.
"""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any

import yaml

KUSTOMIZATION_FILE = "kustomization.yaml"
SUPPORTED_FIELDS = {"apiVersion", "kind", "resources", "components", "patches", "namespace", "images"}
PATCH_FIELDS = {"patch", "path", "target"}
TARGET_FIELDS = {"group", "version", "kind", "name", "namespace", "labelSelector"}
CLUSTER_SCOPED = {"Namespace", "ClusterRole", "ClusterRoleBinding", "PersistentVolume", "StorageClass",
                  "CustomResourceDefinition", "PriorityClass", "ClusterTriggerAuthentication"}  # fmt: skip
POD_TEMPLATE_PATHS = {
    "Deployment": ("spec", "template", "spec"),
    "StatefulSet": ("spec", "template", "spec"),
    "DaemonSet": ("spec", "template", "spec"),
    "Job": ("spec", "template", "spec"),
    "CronJob": ("spec", "jobTemplate", "spec", "template", "spec"),
    "Pod": ("spec",),
}

Resource = dict[str, Any]


class KustomizeError(Exception):
    """The kustomization is invalid, or uses something this renderer does not implement."""


def load_yaml_documents(path: Path) -> list[Resource]:
    """Every non-empty document of a YAML file."""
    with path.open() as fh:
        return [doc for doc in yaml.safe_load_all(fh) if doc is not None]


def load_kustomization(directory: Path, kind: str) -> dict[str, Any]:
    """The kustomization of ``directory``, checked to be of ``kind`` (Kustomization or Component)."""
    path = directory / KUSTOMIZATION_FILE
    if not path.is_file():
        raise KustomizeError(f"{directory} has no {KUSTOMIZATION_FILE}")
    data = yaml.safe_load(path.read_text()) or {}
    unsupported = set(data) - SUPPORTED_FIELDS
    if unsupported:
        raise KustomizeError(f"{path}: fields {sorted(unsupported)} are not implemented by tests/deploy/kustomize.py")
    if data.get("kind", "Kustomization") != kind:
        raise KustomizeError(f"{path}: expected kind {kind}, found {data.get('kind')}")
    return data


def render(directory: Path) -> list[Resource]:
    """Render a kustomization directory as ``kustomize build`` would, within the supported subset."""
    return _build(Path(directory), "Kustomization")


def resource_id(resource: Resource) -> tuple[str, str, str, str]:
    """(apiVersion, kind, namespace, name): what kustomize keeps unique."""
    meta = resource.get("metadata", {})
    return resource["apiVersion"], resource["kind"], meta.get("namespace", ""), meta["name"]


def _build(directory: Path, kind: str, accumulated: list[Resource] | None = None) -> list[Resource]:
    data = load_kustomization(directory, kind)
    resources = list(accumulated or [])
    for entry in data.get("resources", []):
        path = (directory / entry).resolve()
        if path.is_dir():
            resources.extend(_build(path, "Kustomization"))
        elif path.is_file():
            resources.extend(load_yaml_documents(path))
        else:
            raise KustomizeError(f"{directory / KUSTOMIZATION_FILE}: resource {entry} does not exist")
    for entry in data.get("components", []):
        path = (directory / entry).resolve()
        if not path.is_dir():
            raise KustomizeError(f"{directory / KUSTOMIZATION_FILE}: component {entry} is not a directory")
        resources = _build(path, "Component", resources)
    resources = [copy.deepcopy(resource) for resource in resources]
    for patch in data.get("patches", []):
        _apply_patch(directory, patch, resources)
    if "namespace" in data:
        _set_namespace(data["namespace"], resources)
    for image in data.get("images", []):
        _set_image(image, resources)
    _check_unique(directory, resources)
    return resources


def _check_unique(directory: Path, resources: list[Resource]) -> None:
    seen: set[tuple[str, str, str, str]] = set()
    for resource in resources:
        rid = resource_id(resource)
        if rid in seen:
            raise KustomizeError(f"{directory}: resource {rid} is defined twice")
        seen.add(rid)


def _apply_patch(directory: Path, patch: dict[str, Any], resources: list[Resource]) -> None:
    unsupported = set(patch) - PATCH_FIELDS
    if unsupported:
        raise KustomizeError(f"{directory}: patch fields {sorted(unsupported)} are not implemented")
    if ("patch" in patch) == ("path" in patch):
        raise KustomizeError(f"{directory}: a patch needs exactly one of 'patch' and 'path'")
    text = patch["patch"] if "patch" in patch else (directory / patch["path"]).read_text()
    operations = yaml.safe_load(text)
    if not isinstance(operations, list):
        raise KustomizeError(f"{directory}: only JSON 6902 patches (a list of operations) are implemented")
    target = patch.get("target")
    if not target:
        raise KustomizeError(f"{directory}: a JSON 6902 patch needs a target")
    selected = [resource for resource in resources if matches(resource, target)]
    if not selected:
        raise KustomizeError(f"{directory}: patch target {target} selects no resource")
    for resource in selected:
        for operation in operations:
            json_patch(resource, operation)


def matches(resource: Resource, target: dict[str, Any]) -> bool:
    """Whether a patch target selects the resource (kustomize's selector rules for the supported fields)."""
    unsupported = set(target) - TARGET_FIELDS
    if unsupported:
        raise KustomizeError(f"patch target fields {sorted(unsupported)} are not implemented")
    group, _, version = resource["apiVersion"].rpartition("/")
    meta = resource.get("metadata", {})
    if "kind" in target and target["kind"] != resource["kind"]:
        return False
    if "group" in target and target["group"] != group:
        return False
    if "version" in target and target["version"] != version:
        return False
    if "name" in target and not re.fullmatch(target["name"], meta.get("name", "")):
        return False
    if "namespace" in target and not re.fullmatch(target["namespace"], meta.get("namespace", "")):
        return False
    if "labelSelector" in target:
        labels = meta.get("labels", {})
        for term in target["labelSelector"].split(","):
            key, sep, value = term.partition("=")
            if not sep or "!" in key:
                raise KustomizeError(
                    f"label selector {target['labelSelector']!r}: only key=value terms are implemented"
                )
            if labels.get(key.strip()) != value.strip():
                return False
    return True


def _pointer(path: str) -> list[str]:
    if not path.startswith("/"):
        raise KustomizeError(f"JSON pointer {path!r} must start with '/'")
    return [part.replace("~1", "/").replace("~0", "~") for part in path[1:].split("/")]


def json_patch(document: Any, operation: dict[str, Any]) -> None:
    """Apply one RFC 6902 operation (add, replace, remove) in place."""
    op = operation.get("op")
    if op not in {"add", "replace", "remove"}:
        raise KustomizeError(f"JSON patch operation {op!r} is not implemented")
    *parents, last = _pointer(operation["path"])
    node = document
    for part in parents:
        node = node[int(part)] if isinstance(node, list) else node[part]
    if isinstance(node, list):
        if op == "add":
            index = len(node) if last == "-" else int(last)
            if not 0 <= index <= len(node):
                raise KustomizeError(f"{operation['path']}: index out of range")
            node.insert(index, copy.deepcopy(operation["value"]))
            return
        index = int(last)
        if not 0 <= index < len(node):
            raise KustomizeError(f"{operation['path']}: index out of range")
        if op == "replace":
            node[index] = copy.deepcopy(operation["value"])
        else:
            del node[index]
        return
    if not isinstance(node, dict):
        raise KustomizeError(f"{operation['path']}: parent is not an object or a list")
    if op in {"replace", "remove"} and last not in node:
        raise KustomizeError(f"{operation['path']}: nothing to {op}")
    if op == "remove":
        del node[last]
    else:
        node[last] = copy.deepcopy(operation["value"])


def _set_namespace(namespace: str, resources: list[Resource]) -> None:
    for resource in resources:
        if resource["kind"] == "Namespace":
            if resource["metadata"]["name"] != namespace:
                raise KustomizeError(f"Namespace {resource['metadata']['name']} differs from namespace: {namespace}")
            continue
        if resource["kind"] in CLUSTER_SCOPED:
            continue
        resource.setdefault("metadata", {})["namespace"] = namespace


def pod_spec(resource: Resource) -> dict[str, Any] | None:
    """The pod spec of a workload resource, or None for other kinds."""
    path = POD_TEMPLATE_PATHS.get(resource["kind"])
    if path is None:
        return None
    node = resource
    for key in path:
        node = node[key]
    return node


def split_image(image: str) -> tuple[str, str | None, str | None]:
    """``name[:tag][@digest]`` -> (name, tag, digest); a registry port is part of the name."""
    name, _, digest = image.partition("@")
    slash = name.rfind("/")
    colon = name.rfind(":")
    tag = None
    if colon > slash:
        name, tag = name[:colon], name[colon + 1 :]
    return name, tag, digest or None


def _set_image(image: dict[str, Any], resources: list[Resource]) -> None:
    unsupported = set(image) - {"name", "newName", "newTag", "digest"}
    if unsupported:
        raise KustomizeError(f"images fields {sorted(unsupported)} are not implemented")
    for resource in resources:
        spec = pod_spec(resource)
        if spec is None:
            continue
        for container in [*spec.get("initContainers", []), *spec.get("containers", [])]:
            name, tag, digest = split_image(container["image"])
            if name != image["name"]:
                continue
            name = image.get("newName", name)
            if "digest" in image:
                container["image"] = f"{name}@{image['digest']}"
                continue
            tag = image.get("newTag", tag)
            container["image"] = name + (f":{tag}" if tag else "") + (f"@{digest}" if digest else "")
