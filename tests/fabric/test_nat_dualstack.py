"""The NAT table of a dual-stack gateway: IPv4 and IPv6 ranges side by side, the same
real ranges on both sides (so both families are remapped), and an IPv6 gateway
address (``gateway_ip6``) for IPv6 host-network sources and masquerade."""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import pytest
from nftfmt import chain_rules, elements, walk

from fabric.model import FabricState, LocalFabric, PeerFabric, RangeMap
from fabric.nat import NatError, mappings, render_delta, render_text

KEY = "A" * 43 + "="
PODS, SVCS = ("10.244.0.0/16", "fd00::/48"), ("10.96.0.0/12", "fd00:96::/112")


def local(cid: str, gw: str | None, gw6: str | None, masquerade: bool = False) -> LocalFabric:
    return LocalFabric(cluster_id=cid, interface="wg0", listen_port=51820, private_key=KEY, pod_cidrs=PODS,
                       service_cidrs=SVCS, gateway_ip=gw, gateway_ip6=gw6, masquerade=masquerade)


def rm(*triples: tuple[str, str, str]) -> tuple[RangeMap, ...]:
    return tuple(RangeMap(k, r, v) for k, r, v in triples)  # type: ignore[arg-type]


# lab's views of gpu and gpu's views of lab: same real ranges, different numbers.
LAB_OF_GPU = rm(("pod", "10.244.0.0/16", "100.64.0.0/16"), ("service", "10.96.0.0/12", "100.80.0.0/12"),
                ("pod", "fd00::/48", "fd00:0:1::/48"), ("service", "fd00:96::/112", "fd00:0:2::/112"))
GPU_OF_LAB = rm(("pod", "10.244.0.0/16", "100.65.0.0/16"), ("service", "10.96.0.0/12", "100.112.0.0/12"),
                ("pod", "fd00::/48", "fd00:0:3::/48"), ("service", "fd00:96::/112", "fd00:0:4::/112"))


def peer(cid: str, remote: tuple[RangeMap, ...], mine: tuple[RangeMap, ...]) -> PeerFabric:
    return PeerFabric(cluster_id=cid, public_key=KEY, endpoint=None, remote=remote, local=mine)


LAB = FabricState(local("lab", "10.244.0.2", "fd00::2"), (peer("gpu", LAB_OF_GPU, GPU_OF_LAB),))
GPU = FabricState(local("gpu", "10.244.0.2", "fd00::2"), (peer("lab", GPU_OF_LAB, LAB_OF_GPU),))


def table(state: FabricState) -> dict[str, Any]:
    parsed: dict[str, Any] = json.loads(render_text(state))
    return parsed


def cross(a: FabricState, b: FabricState, src: str, dst: str) -> tuple[tuple[str, str], tuple[str, str]]:
    """A new connection from a's cluster to b's: ((src, dst) in the tunnel, (src, dst) delivered in b)."""
    ra, rb = table(a), table(b)
    v, s1, d1 = walk(ra, "postrouting", "eth0", "wg0", src, dst)
    assert v == "accept", f"egress dropped {src}->{dst}"
    v, s2, d2 = walk(rb, "prerouting", "wg0", None, s1, d1)
    assert v == "accept", f"ingress dropped {s1}->{d1}"
    v, s3, d3 = walk(rb, "postrouting", None, "eth0", s2, d2)
    assert v == "accept"
    return (s1, d1), (s3, d3)


def test_both_families_are_translated_by_netmap_rules() -> None:
    r = table(LAB)
    assert chain_rules(r, "to-gpu") == [
        "ip saddr 10.244.0.0/16 counter snat ip prefix to 100.65.0.0/16",
        "ip saddr 10.96.0.0/12 counter snat ip prefix to 100.112.0.0/12",
        "ip6 saddr fd00::/48 counter snat ip6 prefix to fd00:0:3::/48",
        "ip6 saddr fd00:96::/112 counter snat ip6 prefix to fd00:0:4::/112",
    ]
    assert chain_rules(r, "from-gpu")[2:] == [
        "ip6 daddr fd00:0:3::/48 counter dnat ip6 prefix to fd00::/48",
        "ip6 daddr fd00:0:4::/112 counter dnat ip6 prefix to fd00:96::/112",
        "counter drop",  # not offered to gpu: dropped, counted against gpu (both families)
    ]
    assert elements(r, "to_peer_v6") == ["fd00:0:1::/48 : jump to-gpu", "fd00:0:2::/112 : jump to-gpu"]
    assert elements(r, "from_peer_v6") == ["fd00:0:1::/48 : jump from-gpu", "fd00:0:2::/112 : jump from-gpu"]


def test_pod_to_pod_and_service_over_ipv6_both_ways() -> None:
    # lab pod fd00:0:0:1::a (node 2's /64, as the lab plans it) -> gpu pod fd00:0:0:1::b,
    # addressed by lab's view of it; gpu sees the client in its view of lab.
    assert cross(LAB, GPU, "fd00:0:0:1::a", "fd00:0:1:1::b") == (
        ("fd00:0:3:1::a", "fd00:0:1:1::b"), ("fd00:0:3:1::a", "fd00:0:0:1::b"))
    assert cross(LAB, GPU, "fd00::1:a", "fd00:0:1::2:b") == (
        ("fd00:0:3::1:a", "fd00:0:1::2:b"), ("fd00:0:3::1:a", "fd00::2:b"))
    # gpu -> a lab service, through gpu's view of lab's service range.
    assert cross(GPU, LAB, "fd00::1:b", "fd00:0:4::a") == (
        ("fd00:0:1::1:b", "fd00:0:4::a"), ("fd00:0:1::1:b", "fd00:96::a"))
    # IPv4 beside it is unchanged.
    assert cross(LAB, GPU, "10.244.1.10", "100.64.2.10") == (
        ("100.65.1.10", "100.64.2.10"), ("100.65.1.10", "10.244.2.10"))


def test_ipv6_host_network_goes_out_as_the_ipv6_gateway_address() -> None:
    r = table(LAB)
    # One element per IPv6 view of gpu, valued with lab's gateway fd00::2 as gpu sees it.
    assert elements(r, "host_v6") == ["fd00:0:1::/48 : fd00:0:3::2", "fd00:0:2::/112 : fd00:0:3::2"]
    assert elements(r, "host_v4") == ["100.64.0.0/16 : 100.65.0.2", "100.80.0.0/12 : 100.65.0.2"]
    # A node's own underlay address (not a pod) to a gpu pod: one SNAT, delivered as that view.
    assert cross(LAB, GPU, "fd00:192:168:10::12", "fd00:0:1::2:b") == (
        ("fd00:0:3::2", "fd00:0:1::2:b"), ("fd00:0:3::2", "fd00::2:b"))
    assert cross(LAB, GPU, "192.168.10.12", "100.64.2.10") == (
        ("100.65.0.2", "100.64.2.10"), ("100.65.0.2", "10.244.2.10"))
    report = mappings(LAB)[0]["host_network"]
    assert {(h["map"], h["key"], h["target"]) for h in report} >= {("host_v6", "fd00:0:1::/48", "fd00:0:3::2")}


def test_without_gateway_ip6_ipv6_host_network_is_dropped() -> None:
    v4_only = FabricState(local("lab", "10.244.0.2", None), LAB.peers)
    r = table(v4_only)
    assert elements(r, "host_v6") == []
    assert walk(r, "postrouting", "eth0", "wg0", "fd00:192:168:10::12", "fd00:0:1::2:b")[0] == "drop"
    # Pods still go out by their mapping.
    assert walk(r, "postrouting", "eth0", "wg0", "fd00::1:a", "fd00:0:1::2:b")[1] == "fd00:0:3::1:a"


def test_masquerade_covers_both_families() -> None:
    m = FabricState(local("gpu", "10.244.0.2", "fd00::2", masquerade=True), GPU.peers)
    r = table(m)
    assert chain_rules(r, "postrouting")[-2:] == [
        "oifname != wg0 ip saddr @peer_views_v4 counter snat ip to 10.244.0.2",
        "oifname != wg0 ip6 saddr @peer_views_v6 counter snat ip6 to fd00::2",
    ]
    assert cross(LAB, m, "fd00::1:a", "fd00:0:1::2:b") == (
        ("fd00:0:3::1:a", "fd00:0:1::2:b"), ("fd00::2", "fd00::2:b"))


def test_gateway_ip6_change_rerenders_the_whole_table() -> None:
    moved = FabricState(dataclasses.replace(LAB.local, gateway_ip6="fd00::3"), LAB.peers)
    assert render_delta(LAB, moved) is None  # host_v6 of every peer changes
    assert elements(table(moved), "host_v6")[0] == "fd00:0:1::/48 : fd00:0:3::3"


@pytest.mark.parametrize("gw, gw6, message", [
    ("10.244.0.2", "10.244.0.3", "gateway_ip6: '10.244.0.3' is not an IPv6 address"),
    ("10.244.0.2", "nonsense", "gateway_ip6: 'nonsense' is not an IPv6 address"),
    ("fd00::2", "fd00::3", "gateway_ip is already IPv6"),
])
def test_bad_gateway_ip6_is_refused(gw: str, gw6: str, message: str) -> None:
    with pytest.raises(NatError, match=message):
        render_text(FabricState(local("lab", gw, gw6), LAB.peers))
