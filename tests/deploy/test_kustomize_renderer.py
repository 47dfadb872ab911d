"""The tests' kustomize subset (tests/deploy/kustomize.py) behaves as kustomize does, and refuses the rest."""

from __future__ import annotations

from pathlib import Path
from textwrap import dedent

import pytest

from tests.deploy.kustomize import KustomizeError, json_patch, matches, render, split_image

pytestmark = pytest.mark.unit

DEPLOYMENT = """\
apiVersion: apps/v1
kind: Deployment
metadata:
  name: {name}
  labels: {{tier: {tier}}}
spec:
  selector: {{matchLabels: {{app: {name}}}}}
  template:
    metadata: {{labels: {{app: {name}}}}}
    spec:
      containers:
        - name: main
          image: {image}
          args: [one]
"""


def write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(dedent(text))


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    """base/ (two Deployments and a ConfigMap), a component, and an overlay using both."""
    write(tmp_path / "base/kustomization.yaml", "resources: [app.yaml, config.yaml]\n")
    write(
        tmp_path / "base/app.yaml",
        DEPLOYMENT.format(name="web", tier="front", image="example/web:1.0")
        + "---\n"
        + DEPLOYMENT.format(name="worker", tier="back", image="example/worker:1.0-cuda"),
    )
    write(tmp_path / "base/config.yaml", "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: cfg}\ndata: {A: '1'}\n")
    write(
        tmp_path / "component/kustomization.yaml",
        """\
        apiVersion: kustomize.config.k8s.io/v1alpha1
        kind: Component
        resources: [extra.yaml]
        patches:
          - target: {labelSelector: tier=back}
            patch: |-
              - op: add
                path: /spec/template/spec/containers/0/args/-
                value: two
          - target: {kind: ConfigMap, name: cfg}
            patch: |-
              - op: add
                path: /data/B
                value: "2"
        """,
    )
    write(tmp_path / "component/extra.yaml", "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: extra}\n")
    write(
        tmp_path / "overlay/kustomization.yaml",
        """\
        namespace: prod
        resources: [ns.yaml, ../base]
        components: [../component]
        images:
          - name: example/worker
            newName: registry.example.com/worker
          - name: example/web
            newTag: "2.0"
        patches:
          - target: {kind: ConfigMap, name: extra}
            path: extra-patch.yaml
        """,
    )
    write(tmp_path / "overlay/ns.yaml", "apiVersion: v1\nkind: Namespace\nmetadata: {name: prod}\n")
    write(tmp_path / "overlay/extra-patch.yaml", "- op: add\n  path: /data\n  value: {C: '3'}\n")
    return tmp_path


def by_name(resources: list[dict]) -> dict[str, dict]:
    return {resource["metadata"]["name"]: resource for resource in resources}


def test_overlay_applies_components_patches_namespace_and_images(tree: Path) -> None:
    resources = by_name(render(tree / "overlay"))

    assert set(resources) == {"prod", "web", "worker", "cfg", "extra"}
    assert resources["worker"]["spec"]["template"]["spec"]["containers"][0]["args"] == ["one", "two"]
    assert resources["web"]["spec"]["template"]["spec"]["containers"][0]["args"] == ["one"]
    assert resources["cfg"]["data"] == {"A": "1", "B": "2"}
    assert resources["extra"]["data"] == {"C": "3"}
    assert "namespace" not in resources["prod"]["metadata"]
    assert {r["metadata"].get("namespace") for name, r in resources.items() if name != "prod"} == {"prod"}
    assert (
        resources["worker"]["spec"]["template"]["spec"]["containers"][0]["image"]
        == "registry.example.com/worker:1.0-cuda"
    )
    assert resources["web"]["spec"]["template"]["spec"]["containers"][0]["image"] == "example/web:2.0"


def test_rendering_leaves_the_base_untouched(tree: Path) -> None:
    render(tree / "overlay")

    base = by_name(render(tree / "base"))

    assert base["cfg"]["data"] == {"A": "1"}
    assert "namespace" not in base["web"]["metadata"]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("resources: [nope.yaml]\n", "does not exist"),
        ("commonLabels: {a: b}\n", "not implemented"),
        (
            "resources: [a.yaml]\npatches:\n  - target: {kind: ConfigMap}\n    patch: '{metadata: {name: x}}'\n",
            "JSON 6902",
        ),
        ("resources: [a.yaml]\npatches:\n  - target: {kind: Secret}\n    patch: '[]'\n", "selects no resource"),
        ("resources: [a.yaml, a.yaml]\n", "defined twice"),
        ("resources: [a.yaml]\npatches:\n  - patch: '[]'\n", "needs a target"),
    ],
)
def test_unsupported_or_broken_kustomizations_are_refused(tmp_path: Path, text: str, message: str) -> None:
    write(tmp_path / "kustomization.yaml", text)
    write(tmp_path / "a.yaml", "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: a}\n")

    with pytest.raises(KustomizeError, match=message):
        render(tmp_path)


def test_a_component_cannot_be_rendered_as_a_kustomization(tree: Path) -> None:
    with pytest.raises(KustomizeError, match="expected kind Kustomization"):
        render(tree / "component")


def test_json_patch_operations() -> None:
    doc = {"a": {"list": [1, 2]}, "b": 1, "c/d": {"e~f": 0}}

    json_patch(doc, {"op": "add", "path": "/a/list/0", "value": 0})
    json_patch(doc, {"op": "add", "path": "/a/list/-", "value": 3})
    json_patch(doc, {"op": "replace", "path": "/b", "value": {"x": 1}})
    json_patch(doc, {"op": "remove", "path": "/a/list/1"})
    json_patch(doc, {"op": "replace", "path": "/c~1d/e~0f", "value": 9})

    assert doc == {"a": {"list": [0, 2, 3]}, "b": {"x": 1}, "c/d": {"e~f": 9}}
    with pytest.raises(KustomizeError, match="nothing to replace"):
        json_patch(doc, {"op": "replace", "path": "/missing", "value": 1})
    with pytest.raises(KustomizeError, match="not implemented"):
        json_patch(doc, {"op": "move", "from": "/b", "path": "/z"})
    with pytest.raises(KustomizeError, match="out of range"):
        json_patch(doc, {"op": "remove", "path": "/a/list/7"})


def test_target_selection() -> None:
    resource = {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "driftloop-inference",
                "labels": {"a": "1", "b": "2"}}}  # fmt: skip

    assert matches(resource, {"kind": "Deployment", "name": "driftloop-.*", "group": "apps", "version": "v1"})
    assert not matches(resource, {"name": "inference"})  # names are anchored
    assert matches(resource, {"labelSelector": "a=1,b=2"})
    assert not matches(resource, {"labelSelector": "a=1,b=3"})
    assert not matches(resource, {"kind": "StatefulSet"})


def test_split_image() -> None:
    assert split_image("example/web") == ("example/web", None, None)
    assert split_image("registry:5000/web:1.0") == ("registry:5000/web", "1.0", None)
    assert split_image("web:1.0@sha256:abc") == ("web", "1.0", "sha256:abc")
