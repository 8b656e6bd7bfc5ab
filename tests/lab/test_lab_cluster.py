"""One lab cluster without gateways: underlay, pod wiring, kube-proxy stand-in, down.

These check the lab itself, so a failing cross-cluster test points at the
fabric, not at the simulated clusters.
"""

from __future__ import annotations

import hashlib
import os
import re
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from labkit.lab import STATE_ROOT, Lab, run, teardown
from labkit.podserver import stream
from labkit.probe import download_sha, get_json, upload_sha
from nsutil import require_root, uniq

LAB = Path(__file__).resolve().parents[2] / "netns-lab" / "lab"


def lab_namespaces(name: str) -> list[str]:
    out = run("ip", "netns", "list").stdout
    return [line.split()[0] for line in out.splitlines() if line.startswith(f"{name}-")]


@pytest.mark.root
def test_cluster_pods_services_and_down(make_lab: Callable[..., Lab], tmp_path: Path) -> None:
    lab = make_lab({"clusters": [{"id": "gpu"}]}, gateways=False)
    c = lab.plan.cluster("gpu")
    p1, _, p3 = c.pods
    assert c.node(p1.node) != c.node(p3.node)

    # Pod to pod across nodes: routed over the underlay, source address kept.
    seen = get_json(lab, "gpu", "p1", f"http://{p3.ip}:8080/")
    assert seen["pod"] == "gpu/p3" and seen["client"].startswith(f"{p1.ip}:")

    # Pod to service: the kube-proxy stand-in spreads connections over every endpoint.
    svc = c.spec.services[0]
    answered = {get_json(lab, "gpu", "p3", f"http://{svc.ip}:{svc.port}/")["pod"] for _ in range(30)}
    assert answered == {f"gpu/{p.name}" for p in c.pods}

    # Host network to a service and to a pod on another node.
    assert get_json(lab, "gpu", "n2", f"http://{svc.ip}:{svc.port}/")["pod"].startswith("gpu/p")
    seen = get_json(lab, "gpu", "n2", f"http://{p1.ip}:8080/")
    assert seen["client"].startswith(f"{c.node('n2').underlay_ip}:")

    # Transfers with checksums both ways (the pod server's stream is deterministic).
    n = 4_000_000
    assert download_sha(lab, "gpu", "p1", f"http://{p3.ip}:8080/bytes?n={n}") == \
        hashlib.sha256(stream(n)).hexdigest()
    blob = tmp_path / "blob"
    blob.write_bytes(os.urandom(n))
    got = upload_sha(lab, "gpu", "p3", f"http://{p1.ip}:8080/sha256", str(blob))
    assert got == {"pod": "gpu/p1", "bytes": n, "sha256": hashlib.sha256(blob.read_bytes()).hexdigest(),
                   "client": got["client"]}

    # No lab range leaks into the host namespace.
    assert "10.244." not in run("ip", "route", "show").stdout

    # The CLI finds the instance: exec and status.
    ex = subprocess.run([str(LAB), "--name", lab.name, "exec", "gpu", "p2", "--", "ip", "-4", "-o",
                         "addr", "show", "eth0"], capture_output=True, text=True, timeout=60)
    assert ex.returncode == 0 and c.pods[1].ip in ex.stdout, ex.stderr
    st = lab.status()["clusters"][0]
    assert st["processes"] and set(st["processes"].values()) == {"running"}

    # down: every namespace, process and the state dir are gone.
    pids = [int(x) for ns in lab_namespaces(lab.name)
            for x in run("ip", "netns", "pids", ns).stdout.split()]
    assert pids
    teardown(lab.name)
    assert lab_namespaces(lab.name) == []
    assert not (STATE_ROOT / lab.name).exists()
    time.sleep(0.2)
    assert not [p for p in pids if Path(f"/proc/{p}").exists()
                and "Z" not in Path(f"/proc/{p}/stat").read_text().split(") ")[1][:1]]


@pytest.mark.root
def test_down_after_interrupted_up() -> None:
    require_root("nft", "curl")
    name = uniq("t")
    try:
        proc = subprocess.Popen([sys.executable, str(LAB), "--name", name, "up", "--no-gateways"],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        end = time.monotonic() + 30
        while len(lab_namespaces(name)) < 5 and time.monotonic() < end:
            time.sleep(0.05)
        proc.kill()
        proc.wait()
        assert lab_namespaces(name), "up never started building"
    finally:
        teardown(name)
    assert lab_namespaces(name) == []
    assert not (STATE_ROOT / name).exists()


@pytest.mark.root
def test_up_refuses_a_running_instance_and_bad_topology(make_lab: Callable[..., Lab],
                                                       tmp_path: Path) -> None:
    lab = make_lab({"clusters": [{"id": "a", "nodes": 1, "pods_per_node": 1, "services": []}]},
                   gateways=False)
    again = subprocess.run([str(LAB), "--name", lab.name, "up", "--no-gateways"],
                           capture_output=True, text=True, timeout=60)
    assert again.returncode == 1 and "already up" in again.stderr
    bad = tmp_path / "t.yaml"
    bad.write_text("clusters: [{id: a, pod_cidr: 10.244.0.1/16}]\n")
    name = uniq("t")
    r = subprocess.run([str(LAB), "--name", name, "up", "--topology", str(bad)],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 1 and "pod_cidr" in r.stderr
    assert lab_namespaces(name) == [] and not (STATE_ROOT / name).exists()


@pytest.mark.root
@pytest.mark.slow
def test_lab_demo_command() -> None:
    """The README's `netns-lab/lab demo`, under a name of its own: exit 0, PASSED, nothing left."""
    require_root("nft", "curl")
    name = uniq("t")
    try:
        r = subprocess.run([str(LAB), "--name", name, "demo"], capture_output=True, text=True,
                           timeout=240)
    finally:
        teardown(name)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    # pod (traced), the trace, the refusal, the service, the service by name.
    assert "demo PASSED" in r.stdout and r.stdout.count("[ok]") == 5 and "[FAIL]" not in r.stdout
    # gpu exports web and pod p3 only: p2 is refused and counted, web is found by name.
    assert re.search(r"\[ok\] lab/p3 -> gpu pod p2 \(not exported\): refused and counted \(0 -> [1-9]", r.stdout)
    assert "curl http://web.default.svc.clusterset.local/" in r.stdout
    # The trace includes gpu's export verdict for the exported pod.
    assert "is gpu's export trainer.ml to lab" in r.stdout
    # The translation: lab/p3 (10.244.1.10) calls gpu/p3 (10.244.1.10) at lab's view of it, and gpu/p3
    # sees the client at gpu's view of lab: the two pools give different numbers.
    assert re.search(r"calls gpu/p3 at\s+100\.64\.1\.10\s+lab's view of gpu's pods: 10\.244\.0\.0/16 -> "
                     r"100\.64\.0\.0/16", r.stdout), r.stdout
    assert re.search(r"server sees the client as\s+100\.96\.1\.10\s+gpu's view of lab's pods", r.stdout)
    # The demo's own request traced by the gateway's CLI, the rule that rewrote the source named.
    assert "crosswire trace 10.244.1.10 100.64.1.10 --port 8080" in r.stdout
    assert "verdict delivered" in r.stdout and '"gpu: egress pod src 10.244.0.0/16 -> 100.96.0.0/16"' in r.stdout
    assert "GET /api/v1/nat" in r.stdout and "egress pod src 10.244.0.0/16" in r.stdout
    assert not list(Path("/var/run/wireguard").glob(f"{name}w*"))  # UAPI sockets and stats gone
    assert not re.search(r"cw1\.[A-Za-z0-9_-]{30,}", r.stdout)  # the token's secret is never shown
    assert lab_namespaces(name) == [] and not (STATE_ROOT / name).exists()
