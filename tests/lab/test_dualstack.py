"""Dual stack end to end: the lab of netns-lab/topologies/dualstack.yaml, two clusters
with the same IPv4 AND IPv6 pod and service ranges (10.244/16 + fd00::/48, 10.96/12 +
fd00:96::/112), real gateways, agents and pods. Over IPv6 as over IPv4, beside each
other in the same lab: pod -> pod and pod -> service through the gateways both ways,
and host-network sources (a node's own underlay address, and the gateway's node),
each receiver seeing the sender as its own view of the sender's address."""

from __future__ import annotations

import ipaddress
from collections.abc import Callable
from pathlib import Path

import pytest
from labkit import checks, ops
from labkit.lab import Lab
from labkit.topology import load

pytestmark = [pytest.mark.root, pytest.mark.slow]
DUALSTACK_YAML = Path(__file__).resolve().parents[2] / "netns-lab" / "topologies" / "dualstack.yaml"
MakeLab = Callable[..., Lab]
REAL = {"10.244.0.0/16", "10.96.0.0/12", "fd00::/48", "fd00:96::/112"}


def views(lab: Lab, cid: str, peer: str) -> dict[str, str]:
    return {v["real"]: v["view"] for v in ops.peer(lab, cid, peer)["our_views"]}


def across(lab: Lab, family: int) -> None:
    """Every path of one family between gpu and lab, both ways."""
    # Pod -> pod, each pod on another node than its peer.
    checks.pod_to_pod(lab, "lab", "p1", "gpu", "p3", family=family)
    checks.pod_to_pod(lab, "gpu", "p3", "lab", "p1", family=family)
    checks.pod_to_pod(lab, "gpu", "p2", "lab", "p3", family=family)
    # Pod -> service (the other side's kube-proxy picks the pod).
    assert checks.pod_to_service(lab, "lab", "p3", "gpu", tries=4, family=family)
    assert checks.pod_to_service(lab, "gpu", "p1", "lab", tries=4, family=family)
    # Host network: n2's own underlay address (not a pod; the gateway SNATs it to its own
    # pod address as the peer sees it), and the gateway's node n1 (its pod-veth address).
    checks.pod_to_pod(lab, "lab", "n2", "gpu", "p1", family=family)
    checks.pod_to_pod(lab, "gpu", "n2", "lab", "p3", family=family)
    checks.pod_to_pod(lab, "gpu", "n1", "lab", "p2", family=family)


def test_dual_stack_pods_services_and_host_network(make_lab: MakeLab) -> None:
    lab = make_lab(load(DUALSTACK_YAML))
    ops.peer_all(lab)  # also waits until every node's agent routes every view, IPv6 included
    lab_of_gpu, gpu_of_lab = views(lab, "lab", "gpu"), views(lab, "gpu", "lab")
    for v in (lab_of_gpu, gpu_of_lab):
        assert set(v) == REAL
        assert all(real != view for real, view in v.items()), f"identical ranges must be remapped: {v}"
    # lab's IPAM draws from its own pools, so the two sides' numbers differ: a rewrite
    # in the wrong direction would be seen.
    assert ipaddress.ip_network(lab_of_gpu["fd00::/48"]).subnet_of(ipaddress.ip_network("fd64::/16"))
    assert lab_of_gpu["fd00::/48"] != gpu_of_lab["fd00::/48"]
    routes = ops.api(lab, "gpu", "/api/v1/routes")
    assert routes["gateway_ip6"] == "fd00::2" and gpu_of_lab["fd00::/48"] in routes["cidrs"]

    across(lab, 6)
    across(lab, 4)

    # The IPv6 host-network traffic went through host_v6, to lab's gateway fd00::2 as gpu sees it.
    want = ops.view_of(lab, "gpu", "lab", "fd00::2")
    hosts = [h for h in ops.api(lab, "lab", "/api/v1/nat")["peers"][0]["host_network"] if h["map"] == "host_v6"]
    assert hosts and all(h["target"] == want and h["present"] for h in hosts), hosts
    assert sum(h["packets"] for h in hosts) > 0
    # 5 MB each way over IPv6 with checksums: the IPv6 MSS clamp (MTU - 60) at work.
    checks.transfer_both_ways(lab, "lab", "p3", "gpu", "p1", 5_000_000, family=6)
