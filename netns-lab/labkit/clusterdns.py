"""Cluster DNS in the lab: one dnsmasq pod per cluster, where a real cluster runs CoreDNS.

- Pod ``dns`` (namespace ``NAME-<cluster>-dns``) on node 1, at the first free
  address of node 1's /24 from ``.3`` on.
- It serves ``<service>.default.svc.cluster.local`` for the cluster's lab
  services (their ClusterIPs), NXDOMAIN for any other name in
  ``cluster.local``, and forwards ``clusterset.local`` to the gateway pod's DNS
  listener (``dns.listen``, port 53), as the CoreDNS stanza in deploy/ does.
  No other upstream: a name outside both zones is REFUSED, so no lab query
  leaves the lab's namespaces. No cache (``cache-size=0``): an imported
  address that changes is seen at once.
- Every pod of the cluster (the gateway pod too) uses it through
  ``/etc/netns/<namespace>/resolv.conf``, which ``ip netns exec`` bind-mounts
  over ``/etc/resolv.conf`` for the processes it starts; the file is written
  before they start, carries ``MARKER`` and is removed by ``lab down`` (only
  files with the marker: the host's ``/etc/resolv.conf`` is never touched).
"""

from __future__ import annotations

import contextlib
import ipaddress
from pathlib import Path

from .topology import ClusterPlan, LabPlan, Pod, node_subnet

CLUSTER_DOMAIN = "cluster.local"  # the gateways' dns.cluster_domain default
ZONE = "clusterset.local"  # the gateways' dns.zone default
NAMESPACE = "default"  # the Kubernetes namespace of the lab's services
NETNS_ETC = Path("/etc/netns")
MARKER = "# written by crosswire netns-lab; removed by `lab down`"


def dns_pod(plan: LabPlan, c: ClusterPlan) -> Pod:
    """The cluster's DNS pod: on node 1, first address from .3 not used by the gateway or a pod."""
    taken = {p.ip for p in c.pods} | ({c.gateway.ip} if c.gateway else set())
    sub = node_subnet(ipaddress.IPv4Network(c.spec.pod_cidr), 0)
    ip = next(str(a) for a in list(sub.hosts())[2:] if str(a) not in taken)
    return Pod("dns", f"{plan.name}-{c.id}-dns", ip, "n1", "vdns")


def namespaces(plan: LabPlan) -> list[str]:
    return [dns_pod(plan, c).ns for c in plan.clusters]


def dnsmasq_command(plan: LabPlan, c: ClusterPlan) -> list[str]:
    assert c.gateway is not None
    pod = dns_pod(plan, c)
    cmd = ["dnsmasq", "--keep-in-foreground", "--log-facility=-", "--log-queries",
           "--conf-file=/dev/null", "--pid-file",  # no config or pid file shared with the host
           "--no-resolv", "--no-hosts", "--no-poll", "--cache-size=0", "--no-negcache",
           "--bind-interfaces", f"--listen-address={pod.ip}", "--port=53", "--local-ttl=5",
           f"--local=/{CLUSTER_DOMAIN}/", f"--server=/{ZONE}/{c.gateway.ip}#53"]
    cmd += [f"--host-record={s.name}.{NAMESPACE}.svc.{CLUSTER_DOMAIN},{s.ip}" for s in c.spec.services]
    return cmd


def resolv_conf(plan: LabPlan, c: ClusterPlan) -> str:
    # What the kubelet writes into a pod in namespace "default" (ClusterFirst).
    return (f"{MARKER}\n"
            f"search {NAMESPACE}.svc.{CLUSTER_DOMAIN} svc.{CLUSTER_DOMAIN} {CLUSTER_DOMAIN}\n"
            f"nameserver {dns_pod(plan, c).ip}\n"
            "options ndots:5 timeout:2 attempts:2\n")


def write_resolv_confs(plan: LabPlan, c: ClusterPlan) -> None:
    text = resolv_conf(plan, c)
    for pod in [*c.pods, *([c.gateway] if c.gateway else [])]:
        d = NETNS_ETC / pod.ns
        d.mkdir(parents=True, exist_ok=True)
        (d / "resolv.conf").write_text(text)


def remove_resolv_confs(lab_name: str) -> list[str]:
    """Remove the resolv.conf files this lab wrote (they carry MARKER), and their emptied dirs."""
    removed: list[str] = []
    if not NETNS_ETC.is_dir():
        return removed
    for d in NETNS_ETC.glob(f"{lab_name}-*"):
        f = d / "resolv.conf"
        with contextlib.suppress(OSError):
            if f.read_text().startswith(MARKER):
                f.unlink()
                removed.append(str(f))
        with contextlib.suppress(OSError):
            d.rmdir()  # only when empty: anything else there is not ours
    return removed
