"""deploy/k8s rendered by the real kustomize: a ``kustomize`` binary on PATH, else ``kubectl kustomize``.

Real kustomize skips a patch whose target selects nothing; :func:`dead_patches` finds those (and patches that change
nothing) by rendering each overlay again without the patch.

The production overlay renders only with its images' digests (overlays/production/image-digests.env, filled by a
release step); :func:`with_image_digests` makes a copy of the tree with stand-in digests for the tests.
"""

from __future__ import annotations

import functools
import hashlib
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
import yaml

KUSTOMIZATION_FILE = "kustomization.yaml"
#: The production overlay's image digests, NAME=sha256:<hex> per line, read by its configMapGenerator.
IMAGE_DIGESTS_FILE = Path("overlays/production/image-digests.env")
KUSTOMIZE_VERSION = "v5.5.0"
#: How a machine without kustomize or kubectl gets kustomize (`make setup` runs it): built from the Go module proxy.
INSTALL_KUSTOMIZE = "deploy/local/tools/install-kustomize.sh .venv/bin"
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
    """kustomize refused the kustomization."""


def kustomize_command() -> list[str]:
    """The command that renders a directory given as its last argument; fails the test when there is none."""
    # The virtual environment's bin first: `make setup` installs kustomize there when the machine has neither tool.
    return _kustomize_command(os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")]))


@functools.cache
def _kustomize_command(search_path: str) -> list[str]:
    if binary := shutil.which("kustomize", path=search_path):
        command, version = [binary, "build"], [binary, "version"]
    elif binary := shutil.which("kubectl", path=search_path):
        command, version = [binary, "kustomize"], [binary, "version", "--client"]
    else:
        pytest.fail(f"neither kustomize nor kubectl is on PATH; install kustomize: {INSTALL_KUSTOMIZE}", pytrace=False)
    # The manifests rely on kustomize v5's semantics (components, patches with label selectors).
    output = subprocess.run(version, capture_output=True, text=True, timeout=60, check=False).stdout
    if not re.search(r"(^|\s|/)v5\.", output):
        pytest.fail(f"{binary} is not kustomize v5 ({output.strip()!r}): {INSTALL_KUSTOMIZE}", pytrace=False)
    return command


def render(directory: Path) -> list[Resource]:
    """The resources ``kustomize build directory`` outputs, in its order.

    Raises:
        KustomizeError: kustomize failed (its message).
    """
    result = subprocess.run(
        [*kustomize_command(), str(directory)], capture_output=True, text=True, timeout=120, check=False
    )
    if result.returncode != 0:
        raise KustomizeError(f"kustomize build {directory}: {result.stderr.strip()}")
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc is not None]


def load_yaml_documents(path: Path) -> list[Resource]:
    """Every non-empty document of a YAML file."""
    with path.open() as fh:
        return [doc for doc in yaml.safe_load_all(fh) if doc is not None]


def pod_spec(resource: Resource) -> dict[str, Any] | None:
    """The pod spec of a workload resource, or None for other kinds."""
    path = POD_TEMPLATE_PATHS.get(resource["kind"])
    if path is None:
        return None
    node = resource
    for key in path:
        node = node[key]
    return node


def _kustomization(directory: Path) -> dict[str, Any]:
    return load_yaml_documents(directory / KUSTOMIZATION_FILE)[0]


def _included(directory: Path) -> set[Path]:
    """The kustomization directories ``directory`` builds on (itself included), through resources and components."""
    found = {directory.resolve()}
    data = _kustomization(directory)
    for entry in [*data.get("resources", []), *data.get("components", [])]:
        path = (directory / entry).resolve()
        if (path / KUSTOMIZATION_FILE).is_file():
            found |= _included(path)
    return found


def dead_patches(root: Path, overlays: list[str]) -> list[str]:
    """The patches under ``root`` that change no rendered overlay (a target selecting nothing, a no-op).

    For each patch of each kustomization or component under ``root``, a copy of ``root`` without that patch renders
    every overlay that includes it; a patch is dead when each of those renders equals the full one.

    Returns:
        ``"<kustomization directory>: patch <index> (target ...)"`` per dead patch, or a patch no overlay includes.
    """
    root = root.resolve()
    full = {overlay: render(root / overlay) for overlay in overlays}
    includes = {overlay: _included(root / overlay) for overlay in overlays}
    dead: list[str] = []
    with tempfile.TemporaryDirectory() as scratch:
        for path in sorted(root.rglob(KUSTOMIZATION_FILE)):
            data = _kustomization(path.parent)
            users = [overlay for overlay in overlays if path.parent in includes[overlay]]
            for index, patch in enumerate(data.get("patches", [])):
                where = f"{path.parent.relative_to(root)}: patch {index} (target {patch.get('target')})"
                copy = Path(scratch) / root.name
                shutil.copytree(root, copy)
                without = {**data, "patches": [p for i, p in enumerate(data["patches"]) if i != index]}
                (copy / path.relative_to(root)).write_text(yaml.safe_dump(without, sort_keys=False))
                if all(render(copy / overlay) == full[overlay] for overlay in users):
                    dead.append(where)
                shutil.rmtree(copy)
    return dead


def image_digest_names(root: Path) -> list[str]:
    """The names the production overlay reads from its image-digests file (its replacements' ``data.<NAME>``)."""
    data = _kustomization(root / IMAGE_DIGESTS_FILE.parent)
    return [r["source"]["fieldPath"].removeprefix("data.") for r in data.get("replacements", [])]


def stand_in_digest(name: str) -> str:
    """A well-formed digest that no real image has (the hash of a phrase naming it a test's), for ``name``."""
    return "sha256:" + hashlib.sha256(f"driftloop test stand-in for the {name} image".encode()).hexdigest()


def with_image_digests(root: Path, destination: Path, digests: Mapping[str, str] | None = None) -> Path:
    """A copy of the tree ``root`` under ``destination`` whose production image-digests file also holds ``digests``
    (default: a stand-in for every name the overlay reads); returns the copy's root."""
    copy = destination / root.name
    shutil.copytree(root, copy)
    wanted = dict.fromkeys(image_digest_names(root), "") if digests is None else dict(digests)
    lines = [f"{name}={value or stand_in_digest(name)}" for name, value in wanted.items()]
    with (copy / IMAGE_DIGESTS_FILE).open("a") as fh:
        fh.write("".join(f"{line}\n" for line in lines))
    return copy
