"""tests/deploy/kustomize.py: the real kustomize renders, its leniency about dead patches is caught."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from textwrap import dedent

import pytest

from foundation.paths import REPO_ROOT
from tests.deploy.kustomize import INSTALL_KUSTOMIZE, KustomizeError, dead_patches, render

pytestmark = pytest.mark.unit


def write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(dedent(text))


def replace_data(name: str, value: str) -> str:
    """A patch entry (for a ``patches:`` list) setting ConfigMap ``name``'s x to ``value``."""
    operations = json.dumps([{"op": "replace", "path": "/data/x", "value": value}])
    return f"  - target: {{kind: ConfigMap, name: {name}}}\n    patch: '{operations}'\n"


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    """base/ (a ConfigMap x=1) and an overlay in its namespace."""
    write(tmp_path / "base/kustomization.yaml", "resources: [config.yaml]\n")
    write(
        tmp_path / "base/config.yaml",
        """\
        apiVersion: v1
        kind: ConfigMap
        metadata: {name: config}
        data: {x: "1"}
        """,
    )
    write(tmp_path / "overlay/kustomization.yaml", "namespace: ns\nresources: [../base]\n")
    return tmp_path


def test_renders_with_kustomize(tree: Path) -> None:
    patches = replace_data("config", "2")
    write(tree / "overlay/kustomization.yaml", "namespace: ns\nresources: [../base]\npatches:\n" + patches)

    (config,) = render(tree / "overlay")

    assert config["metadata"] == {"name": "config", "namespace": "ns"}
    assert config["data"] == {"x": "2"}


def test_kustomize_errors_are_raised(tree: Path) -> None:
    write(tree / "overlay/kustomization.yaml", "resources: [../missing]\n")

    with pytest.raises(KustomizeError, match="missing"):
        render(tree / "overlay")


def test_patches_that_change_nothing_are_reported(tree: Path) -> None:
    patches = replace_data("config", "1") + replace_data("absent", "3") + replace_data("config", "2")
    write(tree / "overlay/kustomization.yaml", "resources: [../base]\npatches:\n" + patches)

    dead = dead_patches(tree, ["overlay"])

    # kustomize renders this without complaint: the first patch sets what the base has, the second selects nothing.
    assert render(tree / "overlay")[0]["data"] == {"x": "2"}
    assert dead == [
        "overlay: patch 0 (target {'kind': 'ConfigMap', 'name': 'config'})",
        "overlay: patch 1 (target {'kind': 'ConfigMap', 'name': 'absent'})",
    ]


def test_a_component_patch_is_checked_through_the_overlays_using_it(tree: Path) -> None:
    write(tree / "component/kustomization.yaml", "kind: Component\npatches:\n" + replace_data("config", "2"))
    write(tree / "unused/kustomization.yaml", "kind: Component\npatches:\n" + replace_data("config", "5"))
    write(tree / "overlay/kustomization.yaml", "resources: [../base]\ncomponents: [../component]\n")

    assert dead_patches(tree, ["base", "overlay"]) == [
        "unused: patch 0 (target {'kind': 'ConfigMap', 'name': 'config'})"
    ]


def test_without_kustomize_or_kubectl_the_test_fails_with_the_install_command(
    tree: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    empty = tmp_path / "empty-path"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))
    monkeypatch.setattr(sys, "executable", str(empty / "python"))  # nor in the virtual environment

    with pytest.raises(pytest.fail.Exception, match="install-kustomize.sh"):
        render(tree / "overlay")
    script = REPO_ROOT / INSTALL_KUSTOMIZE.split()[0]
    assert "sigs.k8s.io/kustomize/kustomize/v5@" in script.read_text()


def test_a_kustomize_older_than_v5_is_refused(tree: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    old = tmp_path / "old-kustomize"
    old.mkdir()
    (old / "kustomize").write_text("#!/bin/sh\necho v4.5.7\n")
    (old / "kustomize").chmod(0o755)
    monkeypatch.setenv("PATH", str(old))

    with pytest.raises(pytest.fail.Exception, match="is not kustomize v5 .*v4.5.7"):
        render(tree / "overlay")
