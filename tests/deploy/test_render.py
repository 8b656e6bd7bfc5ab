"""The kustomize trees render, and every object they render is valid Kubernetes.

Rendering: tests/deploy/kustomize_lite.py (no kustomize binary comes from the
registries CI uses); where a kubectl is on PATH, its built-in kustomize must
produce exactly the same objects. Validation: kubernetes-validate's offline
JSON schemas, strict (unknown fields are errors), for the oldest and newest
Kubernetes minor versions we claim.
"""

from __future__ import annotations

import copy
import shutil
import subprocess
from pathlib import Path
from typing import Any

import kubernetes_validate
import kustomize_lite as kl
import pytest
import yaml
from deploykit import KUSTOMIZE, TREES, find, render_with_component

# Oldest Kubernetes still in upstream support when this was written, and the
# newest kubernetes-validate ships.
K8S_VERSIONS = ("1.34.0", "1.37.0")


@pytest.mark.parametrize("name", ["base", "gpu", "lab", "gpu+host-network"])
def test_render_has_every_piece(rendered: dict[str, list[dict[str, Any]]], name: str) -> None:
    kinds = sorted((r["kind"], r["metadata"]["name"]) for r in rendered[name])
    names = [k for k, _ in kinds]
    assert names == sorted(["ConfigMap", "DaemonSet", "Deployment", "Namespace",
                            "PersistentVolumeClaim", "Service", "ServiceAccount",
                            "ServiceAccount"]), kinds
    for r in rendered[name]:
        if r["kind"] != "Namespace":
            assert r["metadata"]["namespace"] == "crosswire", r["metadata"]


@pytest.mark.parametrize("name", ["base", "gpu", "lab", "gpu+host-network"])
@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_every_manifest_validates(rendered: dict[str, list[dict[str, Any]]], name: str,
                                  version: str) -> None:
    for r in rendered[name]:
        kubernetes_validate.validate(r, version, strict=True)


def test_validation_bites(rendered: dict[str, list[dict[str, Any]]]) -> None:
    """A typo or a wrong type in a manifest is caught, not waved through."""
    dep = find(rendered["gpu"], "Deployment", "crosswire-gateway")
    typo = copy.deepcopy(dep)
    typo["spec"]["template"]["spec"]["hostNetwrk"] = True
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(typo, K8S_VERSIONS[-1], strict=True)
    wrong = copy.deepcopy(dep)
    wrong["spec"]["replicas"] = "one"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(wrong, K8S_VERSIONS[-1], strict=True)


@pytest.mark.skipif(shutil.which("kubectl") is None,
                    reason="cross-check only: no kubectl on PATH (the renderer tests still run)")
@pytest.mark.parametrize("name", ["base", "gpu", "lab"])
def test_renderer_matches_kubectl_kustomize(rendered: dict[str, list[dict[str, Any]]],
                                            name: str) -> None:
    out = subprocess.run(["kubectl", "kustomize", str(TREES[name])], capture_output=True,
                         text=True, timeout=60, check=True).stdout
    assert rendered[name] == list(yaml.safe_load_all(out))


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="cross-check only: no kubectl")
def test_renderer_matches_kubectl_with_component(tmp_path: Path) -> None:
    mine = render_with_component(tmp_path, "lab", "host-network")
    out = subprocess.run(["kubectl", "kustomize", str(tmp_path)], capture_output=True,
                         text=True, timeout=60, check=True).stdout
    assert mine == list(yaml.safe_load_all(out))


# ---------------------------------------------------------------- the renderer itself


def test_configmap_hash_matches_kustomize() -> None:
    # Reference values from kubectl kustomize v5.5 (configMapGenerator literals).
    assert kl.configmap_hash({"k": "v"}) == "bdg947hgcc"


def test_strategic_merge_lists_by_key() -> None:
    target = {"spec": {"containers": [{"name": "a", "image": "x", "env": [
        {"name": "K", "value": "1"}, {"name": "L", "value": "2"}]}],
        "tolerations": [{"key": "t"}]}}
    patch = {"spec": {"containers": [{"name": "a", "env": [{"name": "K", "$patch": "delete"},
                                                           {"name": "M", "value": "3"}]}],
                      "tolerations": [{"operator": "Exists"}], "hostNetwork": True}}
    out = kl.strategic_merge(target, patch)
    assert out["spec"]["containers"] == [{"name": "a", "image": "x", "env": [
        {"name": "L", "value": "2"}, {"name": "M", "value": "3"}]}]
    assert out["spec"]["tolerations"] == [{"operator": "Exists"}]  # no merge key: replaced
    assert out["spec"]["hostNetwork"] is True
    assert target["spec"]["containers"][0]["env"][0] == {"name": "K", "value": "1"}  # untouched


def test_strategic_merge_refuses_entries_without_merge_keys() -> None:
    svc = {"spec": {"ports": [{"port": 1, "protocol": "UDP"}]}}
    with pytest.raises(kl.KustomizeError, match="merge keys"):
        kl.strategic_merge(svc, {"spec": {"ports": [{"port": 1, "nodePort": 30001}]}})


def test_json6902_ops() -> None:
    doc = {"a": {"b": [1, 2]}, "c": 1}
    out = kl.json6902(doc, [{"op": "add", "path": "/a/b/-", "value": 3},
                            {"op": "replace", "path": "/c", "value": 2},
                            {"op": "remove", "path": "/a/b/0"},
                            {"op": "add", "path": "/d~1e", "value": True},
                            {"op": "test", "path": "/c", "value": 2}])
    assert out == {"a": {"b": [2, 3]}, "c": 2, "d/e": True}
    with pytest.raises(kl.KustomizeError):
        kl.json6902(doc, [{"op": "replace", "path": "/nope", "value": 1}])
    with pytest.raises(kl.KustomizeError):
        kl.json6902(doc, [{"op": "test", "path": "/c", "value": 5}])


def _tree(tmp: Path, files: dict[str, str]) -> Path:
    for rel, text in files.items():
        p = tmp / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text)
    return tmp


CM = "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: c\ndata:\n  k: v\n"


@pytest.mark.parametrize(("files", "message"), [
    ({"kustomization.yaml": "resources: [c.yaml]\nnamePrefix: x-\n", "c.yaml": CM},
     "unsupported fields"),
    ({"kustomization.yaml": "resources: [c.yaml]\npatches:\n  - target: {kind: Secret}\n"
                            "    patch: '[{op: remove, path: /data}]'\n", "c.yaml": CM},
     "matches nothing"),
    ({"kustomization.yaml": "resources: [../outside.yaml]\n"}, "not in or below"),
    ({"kustomization.yaml": "resources: [c.yaml, c.yaml]\n", "c.yaml": CM}, "already defined"),
    ({"kustomization.yaml": "resources: [sub]\n", "sub/kustomization.yaml": "resources: [..]\n"},
     "cycle"),
    ({"kustomization.yaml": "components: [comp]\n",
      "comp/kustomization.yaml": "kind: Kustomization\n"}, "expected kind Component"),
])
def test_renderer_refuses(tmp_path: Path, files: dict[str, str], message: str) -> None:
    (tmp_path / "outside.yaml").write_text(CM)
    root = _tree(tmp_path / "k", files)
    with pytest.raises(kl.KustomizeError, match=message):
        kl.build(root)


def test_generator_replace_renames_references(tmp_path: Path) -> None:
    dep = ("apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: d\nspec:\n  template:\n"
           "    spec:\n      containers:\n        - name: c\n          image: img:1\n"
           "          envFrom: [{configMapRef: {name: cfg}}]\n"
           "      volumes: [{name: v, configMap: {name: cfg}}]\n")
    _tree(tmp_path, {
        "base/kustomization.yaml": "resources: [d.yaml]\nconfigMapGenerator:\n"
                                   "  - {name: cfg, literals: [a=1]}\n",
        "base/d.yaml": dep,
        "over/kustomization.yaml": "resources: [../base]\nconfigMapGenerator:\n"
                                   "  - {name: cfg, behavior: replace, literals: [b=2]}\n"
                                   "images: [{name: img, newName: reg/img, newTag: '2'}]\n",
    })
    out = kl.build(tmp_path / "over")
    cm = find(out, "ConfigMap")
    assert cm["data"] == {"b": "2"}
    assert cm["metadata"]["name"] == f"cfg-{kl.configmap_hash({'b': '2'})}"
    pod = find(out, "Deployment")["spec"]["template"]["spec"]
    assert pod["volumes"][0]["configMap"]["name"] == cm["metadata"]["name"]
    assert pod["containers"][0]["envFrom"][0]["configMapRef"]["name"] == cm["metadata"]["name"]
    assert pod["containers"][0]["image"] == "reg/img:2"


def test_every_kustomization_in_deploy_is_covered() -> None:
    """A new overlay or component must be added to the render checks above."""
    dirs = {p.parent.relative_to(KUSTOMIZE).as_posix() for p in KUSTOMIZE.rglob("kustomization.yaml")}
    assert dirs == {"base", "overlays/gpu", "overlays/lab", "components/nodeport",
                    "components/host-network"}
