"""The lab's cluster DNS (labkit/clusterdns.py): a pod resolves through dnsmasq its own cluster's
service names and, forwarded to the gateway pod's DNS listener, names in clusterset.local.

The gateway pod runs the real DNS listener (tests/gateway/dnsserve.py: gateway.dns.server
with the snapshot seam fed from a file), so no peering is needed.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from labkit import clusterdns
from labkit.lab import Lab, run
from labkit.probe import get_json
from nsutil import require_root

SERVE = Path(__file__).resolve().parents[1] / "gateway" / "dnsserve.py"


def write(path: Path, entries: list[dict[str, object]]) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(entries))
    tmp.replace(path)


def resolve(lab: Lab, member: str, name: str) -> list[str]:
    """getaddrinfo in the pod, as any program there does (glibc, the pod's resolv.conf)."""
    p = run("getent", "ahostsv4", name, ns=lab.plan.ns_of("gpu", member), check=False)
    return sorted({line.split()[0] for line in p.stdout.splitlines()})


@pytest.mark.root
def test_pods_resolve_cluster_and_clusterset_names(make_lab: Callable[..., Lab], tmp_path: Path) -> None:
    require_root("dnsmasq", "dig", "getent")
    lab = make_lab({"clusters": [{"id": "gpu"}]}, gateways=False)
    c = lab.plan.cluster("gpu")
    assert c.gateway is not None
    dns_ip = clusterdns.dns_pod(lab.plan, c).ip
    svc = c.spec.services[0]
    snap = tmp_path / "imports.json"
    write(snap, [{"peer": "far", "name": "web.default", "addresses": ["100.64.0.10"]},
                 {"peer": "far", "name": "trainer.ml", "addresses": ["100.64.5.17"]}])
    gw = subprocess.Popen(["ip", "netns", "exec", c.gateway.ns, sys.executable, str(SERVE), "--listen",
                           f"{c.gateway.ip}:53", "--snapshot", str(snap)], stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True)
    try:
        assert gw.stdout is not None and gw.stdout.readline().strip() == "up"
        # The pod's resolv.conf is the lab's, as the kubelet would write it.
        conf = run("cat", "/etc/resolv.conf", ns=c.pods[0].ns).stdout
        assert f"nameserver {dns_ip}" in conf and "search default.svc.cluster.local" in conf, conf

        # The cluster's own service, by full and by short name, and used by name.
        assert resolve(lab, "p1", "web.default.svc.cluster.local") == [svc.ip]
        assert resolve(lab, "p3", "web") == [svc.ip]
        assert get_json(lab, "gpu", "p3", f"http://web.default.svc.cluster.local:{svc.port}/")["pod"] \
            .startswith("gpu/p")
        assert resolve(lab, "p1", "db.default.svc.cluster.local") == []

        # clusterset.local: forwarded by dnsmasq to the gateway pod, answered from the snapshot.
        assert resolve(lab, "p1", "web.default.svc.clusterset.local") == ["100.64.0.10"]
        assert resolve(lab, "p3", "far.trainer.ml.svc.clusterset.local") == ["100.64.5.17"]
        assert resolve(lab, "gw", "web.default.svc.clusterset.local") == ["100.64.0.10"]
        out = run("dig", f"@{dns_ip}", "db.default.svc.clusterset.local", "+tries=1", "+time=3",
                  ns=c.pods[0].ns, check=False).stdout
        assert "status: NXDOMAIN" in out, out
        # Nothing outside the two zones: the lab's DNS has no upstream, no query leaves the lab.
        out = run("dig", f"@{dns_ip}", "example.com", "+tries=1", "+time=3", ns=c.pods[0].ns,
                  check=False).stdout
        assert "status: REFUSED" in out, out

        # A change of the imports is what the very next lookup sees (dnsmasq caches nothing).
        write(snap, [{"peer": "far", "name": "web.default", "addresses": ["100.64.9.9"]}])
        assert resolve(lab, "p1", "web.default.svc.clusterset.local") == ["100.64.9.9"]
        assert resolve(lab, "p1", "far.trainer.ml.svc.clusterset.local") == []
    finally:
        gw.terminate()
        gw.wait(timeout=10)


@pytest.mark.root
def test_down_removes_the_resolv_confs_it_wrote(make_lab: Callable[..., Lab]) -> None:
    require_root("dnsmasq")
    lab = make_lab({"clusters": [{"id": "gpu"}]}, gateways=False)
    c = lab.plan.cluster("gpu")
    confs = [clusterdns.NETNS_ETC / p.ns / "resolv.conf" for p in [*c.pods, c.gateway] if p]
    assert all(f.read_text().startswith(clusterdns.MARKER) for f in confs)
    host_before = Path("/etc/resolv.conf").read_bytes() if Path("/etc/resolv.conf").exists() else None
    # A file there that the lab did not write is left alone.
    foreign = clusterdns.NETNS_ETC / f"{lab.name}-gpu-p1" / "hosts"
    foreign.write_text("127.0.0.1 keep\n")
    try:
        lab.down()
        assert not any(f.exists() for f in confs)
        assert not (clusterdns.NETNS_ETC / f"{lab.name}-gpu-p2").exists()
        assert foreign.read_text() == "127.0.0.1 keep\n"
        now = Path("/etc/resolv.conf").read_bytes() if Path("/etc/resolv.conf").exists() else None
        assert now == host_before
    finally:
        foreign.unlink(missing_ok=True)
        foreign.parent.rmdir()
