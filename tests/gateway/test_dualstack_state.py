"""A dual-stack gateway hands its IPv6 pod address (gateway_ip6) to the data plane, so
IPv6 host-network sources leave as that address in the peer's view (host_v6)."""

from __future__ import annotations

import asyncio
import ipaddress
from typing import Any

from fabric.model import map_into
from fabric.nat import mappings
from tests.gateway.test_two_gateways import peer

DUAL = {"pod_cidrs": ["10.244.0.0/16", "fd00::/48"], "service_cidrs": ["10.96.0.0/12", "fd00:96::/112"],
        "gateway_ip6": "fd00::10", "ipam": {"pools": ["100.64.0.0/10", "fd10::/32"]}}


def test_desired_state_carries_gateway_ip6_into_host_v6(clusters: Any) -> None:
    gpu, lab = clusters("gpu", **DUAL), clusters("lab", **DUAL)
    asyncio.run(peer(lab, gpu))
    state = lab.fabric.last
    assert state.local.gateway_ip == "10.244.0.10" and state.local.gateway_ip6 == "fd00::10"
    # gpu's view of lab's IPv6 pods, as lab was told it: the host-network target lies in it.
    [theirs] = [m for m in state.peers[0].local if m.real == "fd00::/48"]
    want = map_into(ipaddress.ip_address("fd00::10"), ipaddress.ip_network(theirs.real),
                    ipaddress.ip_network(theirs.view))
    hosts = {h["map"]: h["target"] for h in mappings(state)[0]["host_network"]}
    assert hosts["host_v6"] == str(want) and theirs.view != theirs.real
    assert hosts["host_v4"] == str(map_into(ipaddress.ip_address("10.244.0.10"), ipaddress.ip_network(
        "10.244.0.0/16"), ipaddress.ip_network(next(m.view for m in state.peers[0].local
                                                     if m.real == "10.244.0.0/16"))))


def test_single_stack_gateway_has_no_gateway_ip6(clusters: Any) -> None:
    gpu, lab = clusters("gpu"), clusters("lab")
    asyncio.run(peer(lab, gpu))
    assert lab.fabric.last.local.gateway_ip6 is None
