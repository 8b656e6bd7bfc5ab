"""The NAT renderer's nftables JSON, checked exactly for each case of the packet walk (README),
plus simulated packet walks through both gateways' rendered tables."""

from __future__ import annotations

import dataclasses
import json
import re
from typing import Any

import pytest
from nftfmt import chain_rules, elements, objects, walk

from fabric.model import FabricState, LocalFabric, PeerFabric, RangeMap
from fabric.nat import NatError, mappings, render_text, with_counters

KEY = "A" * 43 + "="


def local(cid: str, pods: tuple[str, ...], svcs: tuple[str, ...] = (), gw: str | None = None,
          masquerade: bool = False, wg: str = "wg0") -> LocalFabric:
    return LocalFabric(cluster_id=cid, interface=wg, listen_port=51820, private_key=KEY, pod_cidrs=pods,
                       service_cidrs=svcs, gateway_ip=gw, masquerade=masquerade)


def rm(*triples: tuple[str, str, str]) -> tuple[RangeMap, ...]:
    return tuple(RangeMap(k, r, v) for k, r, v in triples)  # type: ignore[arg-type]


def peer(cid: str, remote: tuple[RangeMap, ...], mine: tuple[RangeMap, ...]) -> PeerFabric:
    return PeerFabric(cluster_id=cid, public_key=KEY, endpoint=None, remote=remote, local=mine)


def table(state: FabricState) -> dict[str, Any]:
    """The batch apply sends, parsed."""
    parsed: dict[str, Any] = json.loads(render_text(state))
    return parsed


def cross(a: FabricState, b: FabricState, src: str, dst: str) -> tuple[tuple[str, str], tuple[str, str]]:
    """A NEW packet from a's cluster to b's: ((src, dst) in the tunnel, (src, dst) delivered in b)."""
    ra, rb = table(a), table(b)
    v, s1, d1 = walk(ra, "postrouting", "eth0", a.local.interface, src, dst)
    assert v == "accept", f"{a.local.cluster_id} egress dropped {src}->{dst}"
    v, s2, d2 = walk(rb, "prerouting", b.local.interface, None, s1, d1)
    assert v == "accept", f"{b.local.cluster_id} ingress dropped {s1}->{d1}"
    v, s3, d3 = walk(rb, "postrouting", None, "eth0", s2, d2)
    assert v == "accept"
    return (s1, d1), (s3, d3)


# The README's packet walk: lab views gpu pods 100.64/16, services 100.80/12;
# gpu views lab pods 100.65/16, services 100.112/12.
LAB_OF_GPU = rm(("pod", "10.244.0.0/16", "100.64.0.0/16"), ("service", "10.96.0.0/12", "100.80.0.0/12"))
GPU_OF_LAB = rm(("pod", "10.244.0.0/16", "100.65.0.0/16"), ("service", "10.96.0.0/12", "100.112.0.0/12"))
LAB = FabricState(local("lab", ("10.244.0.0/16",), ("10.96.0.0/12",), "10.244.0.1"),
                  (peer("gpu", LAB_OF_GPU, GPU_OF_LAB),))
GPU = FabricState(local("gpu", ("10.244.0.0/16",), ("10.96.0.0/12",), "10.244.0.2"),
                  (peer("lab", GPU_OF_LAB, LAB_OF_GPU),))


def test_identical_ranges_exact_json_skeleton() -> None:
    r = table(LAB)
    cmds = r["nftables"]
    tbl = {"family": "inet", "name": "crosswire"}
    # Whole-table replacement in one batch: add (so delete cannot fail), delete, add.
    assert cmds[:3] == [{"add": {"table": tbl}}, {"delete": {"table": tbl}}, {"add": {"table": tbl}}]
    # The mark that the table is ours, before anything else: an empty set.
    assert cmds[3] == {"add": {"set": {"family": "inet", "table": "crosswire", "name": "created_by_crosswire",
                                       "type": "ipv4_addr"}}}
    assert [(c["name"], c.get("type"), c.get("hook"), c.get("prio")) for c in objects(r, "chain")] == [
        ("prerouting", "nat", "prerouting", -100), ("postrouting", "nat", "postrouting", 100),
        ("mss-clamp", "filter", "forward", -150), ("count", "filter", "forward", 0),
        ("to-gpu", None, None, None), ("from-gpu", None, None, None),
        ("cnt-gpu", None, None, None)]
    assert objects(r, "map")[0] == {
        "family": "inet", "table": "crosswire", "name": "to_peer_v4", "type": "ipv4_addr", "map": "verdict",
        "flags": ["interval"], "elem": [
            [{"elem": {"val": {"prefix": {"addr": "100.64.0.0", "len": 16}}, "comment": "gpu pod"}},
             {"jump": {"target": "to-gpu"}}],
            [{"elem": {"val": {"prefix": {"addr": "100.80.0.0", "len": 12}}, "comment": "gpu service"}},
             {"jump": {"target": "to-gpu"}}]]}
    rule = next(x for x in objects(r, "rule") if x["chain"] == "to-gpu")
    assert rule == {"family": "inet", "table": "crosswire", "chain": "to-gpu",
                    "comment": "gpu: egress pod src 10.244.0.0/16 -> 100.65.0.0/16", "expr": [
                        {"match": {"op": "==", "left": {"payload": {"protocol": "ip", "field": "saddr"}},
                                   "right": {"prefix": {"addr": "10.244.0.0", "len": 16}}}},
                        {"counter": None},  # anonymous, starts at zero
                        {"snat": {"family": "ip", "addr": {"prefix": {"addr": "100.65.0.0", "len": 16}},
                                  "flags": "netmap", "type_flags": "prefix"}}]}
    # Its per-packet twin: same comment, match on the real source, a counter, no verdict.
    count = next(x for x in objects(r, "rule") if x["chain"] == "cnt-gpu")
    assert count == {"family": "inet", "table": "crosswire", "chain": "cnt-gpu",
                     "comment": "gpu: egress pod src 10.244.0.0/16 -> 100.65.0.0/16", "expr": [
                         {"match": {"op": "==", "left": {"payload": {"protocol": "ip", "field": "saddr"}},
                                    "right": {"prefix": {"addr": "10.244.0.0", "len": 16}}}},
                         {"counter": None}]}
    assert [m["name"] for m in objects(r, "map")] == [
        "to_peer_v4", "from_peer_v4", "count_v4", "host_v4", "to_peer_v6", "from_peer_v6", "count_v6", "host_v6"]


def test_identical_ranges_rules() -> None:
    r = table(LAB)
    assert chain_rules(r, "prerouting") == [
        "iifname wg0 ip saddr vmap @from_peer_v4", "iifname wg0 ip6 saddr vmap @from_peer_v6",
        "iifname wg0 counter drop"]
    assert chain_rules(r, "postrouting") == [
        "oifname wg0 ip daddr vmap @to_peer_v4", "oifname wg0 ip6 daddr vmap @to_peer_v6",
        "oifname wg0 snat ip to ip daddr map @host_v4", "oifname wg0 snat ip6 to ip6 daddr map @host_v6",
        "oifname wg0 counter drop"]
    assert chain_rules(r, "to-gpu") == [
        "ip saddr 10.244.0.0/16 counter snat ip prefix to 100.65.0.0/16",
        "ip saddr 10.96.0.0/12 counter snat ip prefix to 100.112.0.0/12"]
    assert chain_rules(r, "from-gpu") == [
        "ip daddr 100.65.0.0/16 counter dnat ip prefix to 10.244.0.0/16",
        "ip daddr 100.112.0.0/12 counter dnat ip prefix to 10.96.0.0/12",
        "counter drop"]  # last: what gpu sends to an address not offered to it, counted against gpu
    # Host network: keyed by our views of gpu, straight to lab's gateway as gpu sees it.
    assert elements(r, "host_v4") == ["100.64.0.0/16 : 100.65.0.1", "100.80.0.0/12 : 100.65.0.1"]
    assert elements(r, "host_v6") == []
    assert elements(r, "from_peer_v4") == ["100.64.0.0/16 : jump from-gpu", "100.80.0.0/12 : jump from-gpu"]
    assert elements(r, "peer_views_v4") == ["100.64.0.0/16", "100.80.0.0/12"]
    assert elements(r, "to_peer_v6") == []
    # Every packet (forward: after DNAT, before SNAT) counted once per mapping, real ranges on our side.
    assert chain_rules(r, "count") == [
        "oifname wg0 ip daddr vmap @count_v4", "iifname wg0 ip saddr vmap @count_v4",
        "oifname wg0 ip6 daddr vmap @count_v6", "iifname wg0 ip6 saddr vmap @count_v6"]
    # One chain per peer for both directions: egress rules match our real source,
    # ingress rules our real destination (a view of the peer is on the other side).
    assert elements(r, "count_v4") == ["100.64.0.0/16 : jump cnt-gpu", "100.80.0.0/12 : jump cnt-gpu"]
    assert chain_rules(r, "cnt-gpu") == ["ip saddr 10.244.0.0/16 counter", "ip saddr 10.96.0.0/12 counter",
                                         "ip daddr 10.244.0.0/16 counter", "ip daddr 10.96.0.0/12 counter"]
    assert chain_rules(r, "mss-clamp") == [
        f"{d} wg0 nfproto {f} tcp flags & syn,rst syn tcp option maxseg size > {m} tcp option maxseg size set {m}"
        for f, m in (("ipv4", 1380), ("ipv6", 1360)) for d in ("iifname", "oifname")]


def test_identical_ranges_packet_walk() -> None:
    # Packet walk steps 1-5 (README): l1 10.244.1.5 opens 100.64.2.7 (g1 = 10.244.2.7).
    assert cross(LAB, GPU, "10.244.1.5", "100.64.2.7") == (
        ("100.65.1.5", "100.64.2.7"), ("100.65.1.5", "10.244.2.7"))
    assert cross(GPU, LAB, "10.244.2.7", "100.65.1.5") == (
        ("100.64.2.7", "100.65.1.5"), ("100.64.2.7", "10.244.1.5"))
    # Remote service: delivered to the real service IP for the remote kube-proxy.
    assert cross(LAB, GPU, "10.244.1.5", "100.80.0.10")[1] == ("100.65.1.5", "10.96.0.10")


def test_same_numbers_picked_by_both_ipams() -> None:
    same = rm(("pod", "10.244.0.0/16", "100.64.0.0/16"))
    a = FabricState(local("a", ("10.244.0.0/16",), gw="10.244.0.1"), (peer("b", same, same),))
    b = FabricState(local("b", ("10.244.0.0/16",), gw="10.244.0.1"), (peer("a", same, same),))
    assert cross(a, b, "10.244.1.5", "100.64.2.7") == (
        ("100.64.1.5", "100.64.2.7"), ("100.64.1.5", "10.244.2.7"))


def test_partial_overlap() -> None:
    # a: 10.244.0.0/16; b: 10.244.128.0/17. Each remaps the other.
    a = FabricState(local("a", ("10.244.0.0/16",), gw="10.244.0.1"), (peer(
        "b", rm(("pod", "10.244.128.0/17", "100.64.0.0/17")), rm(("pod", "10.244.0.0/16", "100.70.0.0/16"))),))
    b = FabricState(local("b", ("10.244.128.0/17",), gw="10.244.128.1"), (peer(
        "a", rm(("pod", "10.244.0.0/16", "100.70.0.0/16")), rm(("pod", "10.244.128.0/17", "100.64.0.0/17"))),))
    assert chain_rules(table(a), "to-b")[0] == "ip saddr 10.244.0.0/16 counter snat ip prefix to 100.70.0.0/16"
    assert chain_rules(table(b), "from-a")[0] == "ip daddr 100.64.0.0/17 counter dnat ip prefix to 10.244.128.0/17"
    # The host part below the prefix is preserved (10.244.200.9 is 100.64.72.9 in a's view).
    assert cross(a, b, "10.244.1.5", "100.64.72.9") == (
        ("100.70.1.5", "100.64.72.9"), ("100.70.1.5", "10.244.200.9"))
    assert cross(b, a, "10.244.200.9", "100.70.1.5") == (
        ("100.64.72.9", "100.70.1.5"), ("100.64.72.9", "10.244.1.5"))


def test_containment() -> None:
    # a: 10.0.0.0/8 contains b's 10.244.0.0/16.
    a = FabricState(local("a", ("10.0.0.0/8",), gw="10.0.0.1"), (peer(
        "b", rm(("pod", "10.244.0.0/16", "100.64.0.0/16")), rm(("pod", "10.0.0.0/8", "30.0.0.0/8"))),))
    b = FabricState(local("b", ("10.244.0.0/16",), gw="10.244.0.1"), (peer(
        "a", rm(("pod", "10.0.0.0/8", "30.0.0.0/8")), rm(("pod", "10.244.0.0/16", "100.64.0.0/16"))),))
    assert chain_rules(table(a), "to-b")[:1] == ["ip saddr 10.0.0.0/8 counter snat ip prefix to 30.0.0.0/8"]
    assert cross(a, b, "10.244.3.4", "100.64.3.4") == (
        ("30.244.3.4", "100.64.3.4"), ("30.244.3.4", "10.244.3.4"))
    assert cross(b, a, "10.244.3.4", "30.1.2.3") == (("100.64.3.4", "30.1.2.3"), ("100.64.3.4", "10.1.2.3"))


def test_no_overlap_view_is_real_no_rewriting() -> None:
    a = FabricState(local("a", ("10.244.0.0/16",), gw="10.244.0.1"), (peer(
        "b", rm(("pod", "10.245.0.0/16", "10.245.0.0/16")), rm(("pod", "10.244.0.0/16", "10.244.0.0/16"))),))
    b = FabricState(local("b", ("10.245.0.0/16",), gw="10.245.0.1"), (peer(
        "a", rm(("pod", "10.244.0.0/16", "10.244.0.0/16")), rm(("pod", "10.245.0.0/16", "10.245.0.0/16"))),))
    r = table(a)
    assert chain_rules(r, "to-b") == ["ip saddr 10.244.0.0/16 counter accept"]
    assert chain_rules(r, "from-b") == ["ip daddr 10.244.0.0/16 counter accept", "counter drop"]
    assert elements(r, "host_v4") == ["10.245.0.0/16 : 10.244.0.1"]
    assert not any("prefix" in line for c in ("to-b", "from-b") for line in chain_rules(r, c))
    assert cross(a, b, "10.244.1.5", "10.245.2.7") == (("10.244.1.5", "10.245.2.7"), ("10.244.1.5", "10.245.2.7"))


def test_three_peers_identical_ranges_flat_dispatch() -> None:
    views = {"b": "100.64.0.0/16", "c": "100.66.0.0/16", "d": "100.68.0.0/16"}
    # Every peer happens to view us as 100.65.0.0/16 (their own address spaces).
    state = FabricState(local("a", ("10.244.0.0/16",), gw="10.244.0.1"), tuple(
        peer(p, rm(("pod", "10.244.0.0/16", v)), rm(("pod", "10.244.0.0/16", "100.65.0.0/16")))
        for p, v in views.items()))
    r = table(state)
    assert elements(r, "to_peer_v4") == [f"{v} : jump to-{p}" for p, v in views.items()]
    assert elements(r, "from_peer_v4") == [f"{v} : jump from-{p}" for p, v in views.items()]
    # The hot chains do not grow with peers: one map lookup per family.
    assert len(chain_rules(r, "postrouting")) == 5 and len(chain_rules(r, "prerouting")) == 3
    for p, v in views.items():
        assert chain_rules(r, f"to-{p}")[0] == "ip saddr 10.244.0.0/16 counter snat ip prefix to 100.65.0.0/16"
        assert chain_rules(r, f"from-{p}")[0] == "ip daddr 100.65.0.0/16 counter dnat ip prefix to 10.244.0.0/16"
        # The source picks the peer: from peer p, only its view is accepted.
        base = v.split(".0.0/")[0]
        assert walk(r, "prerouting", "wg0", None, f"{base}.9.9", "100.65.1.5") == (
            "accept", f"{base}.9.9", "10.244.1.5")
    big = FabricState(state.local, tuple(
        peer(f"p{i}", rm(("pod", "10.244.0.0/24", f"100.{64 + i // 256}.{i % 256}.0/24")), ())
        for i in range(300)))
    rb = table(big)
    assert len(chain_rules(rb, "postrouting")) == 5 and len(elements(rb, "to_peer_v4")) == 300


def test_ipv6() -> None:
    a = FabricState(local("a", ("fd00::/48",), gw="10.244.0.1"), (peer(
        "b", rm(("pod", "fd00::/48", "fd64::/48")), rm(("pod", "fd00::/48", "fd65::/48"))),))
    b = FabricState(local("b", ("fd00::/48",), gw="10.244.0.2"), (peer(
        "a", rm(("pod", "fd00::/48", "fd65::/48")), rm(("pod", "fd00::/48", "fd64::/48"))),))
    r = table(a)
    assert chain_rules(r, "to-b")[0] == "ip6 saddr fd00::/48 counter snat ip6 prefix to fd65::/48"
    assert elements(r, "to_peer_v6") == ["fd64::/48 : jump to-b"]
    assert elements(r, "to_peer_v4") == []
    assert cross(a, b, "fd00::1:5", "fd64::2:7") == (("fd65::1:5", "fd64::2:7"), ("fd65::1:5", "fd00::2:7"))


def test_host_network_source() -> None:
    r = table(LAB)
    # A node (192.168.7.7) is not a pod: one SNAT straight to the gateway's pod IP in gpu's view of lab.
    assert walk(r, "postrouting", "eth0", "wg0", "192.168.7.7", "100.64.2.7") == (
        "accept", "100.65.0.1", "100.64.2.7")
    # IPv6 from the host network: no IPv6 gateway address, so dropped (counted).
    assert walk(r, "postrouting", "eth0", "wg0", "fd99::1", "fd64::1")[0] == "drop"
    no_gw = FabricState(local("lab", ("10.244.0.0/16",)), LAB.peers)
    assert elements(table(no_gw), "host_v4") == []
    assert walk(table(no_gw), "postrouting", "eth0", "wg0", "192.168.7.7", "100.64.2.7")[0] == "drop"
    # Gateway address outside every range this peer maps: cannot be answered, so drop.
    elsewhere = FabricState(local("lab", ("10.244.0.0/16", "10.250.0.0/16"), gw="10.250.0.1"), LAB.peers)
    assert elements(table(elsewhere), "host_v4") == []
    # Pods still go out by their mapping.
    assert walk(table(no_gw), "postrouting", "eth0", "wg0", "10.244.1.5", "100.64.2.7")[1] == "100.65.1.5"


def test_masquerade() -> None:
    assert "masquerade" not in str(table(GPU))
    m = FabricState(local("gpu", ("10.244.0.0/16",), ("10.96.0.0/12",), "10.244.0.2", masquerade=True), GPU.peers)
    r = table(m)
    assert chain_rules(r, "postrouting")[-1] == "oifname != wg0 ip saddr @peer_views_v4 counter snat ip to 10.244.0.2"
    assert len(chain_rules(r, "postrouting")) == 6
    # Delivered inward from the gateway's own pod address; the tunnel leg is unchanged.
    assert cross(LAB, m, "10.244.1.5", "100.64.2.7") == (
        ("100.65.1.5", "100.64.2.7"), ("10.244.0.2", "10.244.2.7"))
    # Not applied to our own pods leaving towards the tunnel.
    assert walk(r, "postrouting", "eth0", "wg0", "10.244.2.7", "100.65.1.5")[1] == "100.64.2.7"
    with pytest.raises(NatError, match="masquerade"):
        table(FabricState(local("gpu", ("10.244.0.0/16",), masquerade=True), GPU.peers))


def test_remote_pod_with_local_gateway_ip() -> None:
    # gpu pod 10.244.0.1 equals lab's gateway pod IP: addressed by view, never confused.
    assert cross(LAB, GPU, "10.244.1.5", "100.64.0.1") == (
        ("100.65.1.5", "100.64.0.1"), ("100.65.1.5", "10.244.0.1"))
    # lab's gateway itself (host network, 10.244.0.1 as a source) goes out as its own pod view.
    assert cross(LAB, GPU, "10.244.0.1", "100.64.0.1") == (
        ("100.65.0.1", "100.64.0.1"), ("100.65.0.1", "10.244.0.1"))
    assert "10.244.0.1" not in str(table(LAB)).replace("10.244.0.0", "")


def test_ingress_drops_destinations_not_offered() -> None:
    r = table(GPU)
    # From lab (source in gpu's view of lab) to a gpu real address lab was never given.
    assert walk(r, "prerouting", "wg0", None, "100.65.1.5", "10.244.2.7")[0] == "drop"
    # Unknown source (in no view): dropped too.
    assert walk(r, "prerouting", "wg0", None, "192.0.2.1", "100.64.2.7")[0] == "drop"


@pytest.mark.parametrize("state, message", [
    (FabricState(local("a", ("10.244.0.0/16",)), (peer("b", rm(("pod", "10.244.0.0/16", "10.244.0.0/16")), ()),)),
     "overlaps 10.244.0.0/16"),
    (FabricState(local("a", ()), (peer("b", rm(("pod", "10.244.0.0/16", "100.64.0.0/16")), ()),
                                  peer("c", rm(("pod", "10.244.0.0/17", "100.64.128.0/17")), ()))),
     "overlaps 100.64.0.0/16"),
    (FabricState(local("a", ()), (peer("b", rm(("pod", "10.244.0.0/16", "100.64.0.0/17")), ()),)),
     "same family and length"),
    (FabricState(local("a", ()), (peer("b", rm(("pod", "10.244.0.0/16", "fd00::/16")), ()),)),
     "same family and length"),
    (FabricState(local("a", ()), (peer("b", rm(("pod", "10.244.0.1/16", "100.64.0.0/16")), ()),)),
     "not a valid CIDR"),
    (FabricState(local("a", ("bogus",)), ()), "pod_cidrs"),
    (FabricState(local("a", ()), (peer("b", (), ()), peer("b", (), ()))), "listed twice"),
    (FabricState(local("a", (), wg="x" * 16), ()), "interface"),
    (FabricState(local("a", ()), (peer("b", (), rm(("pod", "10.244.0.0/16", "100.64.0.0/16"),
                                                  ("pod", "10.245.0.0/16", "100.64.0.0/16"))),)), "overlap"),
])
def test_bad_state_is_refused(state: FabricState, message: str) -> None:
    with pytest.raises(NatError, match=re.escape(message)):
        table(state)


def test_odd_cluster_ids_get_safe_chain_names() -> None:
    s = FabricState(LAB.local, (peer('we"ird id', LAB_OF_GPU, GPU_OF_LAB),))
    names = [c["name"] for c in objects(table(s), "chain")]
    assert all('"' not in n and " " not in n for n in names)
    assert any(n.startswith("to-we_ird_id-") for n in names)


def test_mappings_and_counters() -> None:
    maps = mappings(LAB)
    assert [(m["cluster_id"], m["egress_chain"], m["ingress_chain"]) for m in maps] == [("gpu", "to-gpu", "from-gpu")]
    assert maps[0]["remote"] == [{"kind": "pod", "real": "10.244.0.0/16", "view": "100.64.0.0/16"},
                                 {"kind": "service", "real": "10.96.0.0/12", "view": "100.80.0.0/12"}]
    assert maps[0]["local"][0] == {"kind": "pod", "real": "10.244.0.0/16", "view": "100.65.0.0/16"}
    # Every mapping rule in the rendered table, and only those, is reported.
    rendered = [(r["chain"], r["comment"]) for r in objects(table(LAB), "rule") if r["chain"] in ("to-gpu", "from-gpu")]
    not_offered = (maps[0]["not_offered"]["chain"], maps[0]["not_offered"]["comment"])
    assert not_offered == ("from-gpu", "gpu: ingress: destination not offered to gpu: drop") == rendered[-1]
    assert [(r["chain"], r["comment"]) for r in maps[0]["rules"]] == rendered[:-1]
    counted = [(r["chain"], r["comment"]) for r in objects(table(LAB), "rule")
               if r["chain"] == "cnt-gpu"]
    assert [(r["count_chain"], r["comment"]) for r in maps[0]["rules"]] == counted
    first = maps[0]["rules"][0]
    # packets/bytes come from the counting rule (every packet), connections from the NAT rule (first packets).
    listed = {"nftables": [{"metainfo": {}}, {"rule": {**first["rule"], "handle": 42, "expr": [
        {"counter": {"packets": 7, "bytes": 700}}]}}, {"rule": {**first["count_rule"], "handle": 43, "expr": [
            {"counter": {"packets": 5000, "bytes": 6_000_000}}]}}]}
    listed["nftables"].append({"map": {"name": "host_v4", "elem": [[{"elem": {
        "val": {"prefix": {"addr": "100.80.0.0", "len": 12}}, "counter": {"packets": 3, "bytes": 300}}},
        "100.65.0.1"]]}})
    joined = with_counters(maps, listed)[0]
    rows = joined["rules"]
    assert (rows[0]["handle"], rows[0]["count_handle"], rows[0]["packets"], rows[0]["bytes"],
            rows[0]["connections"]) == (42, 43, 5000, 6_000_000, 7)
    assert all(r["handle"] is None and r["count_handle"] is None and r["packets"] == r["connections"] == 0
               for r in rows[1:])
    assert [(h["key"], h["target"], h["present"], h["packets"]) for h in joined["host_network"]] == [
        ("100.64.0.0/16", "100.65.0.1", False, 0), ("100.80.0.0/12", "100.65.0.1", True, 3)]


def test_secrets_never_rendered() -> None:
    secret = "c2VjcmV0c2VjcmV0c2VjcmV0c2VjcmV0c2VjcmV0MDA="
    s = FabricState(LocalFabric(cluster_id="lab", interface="wg0", listen_port=1, private_key=secret,
                                pod_cidrs=("10.244.0.0/16",)),
                    (PeerFabric("gpu", KEY, None, preshared_key=secret, remote=LAB_OF_GPU),))
    assert secret not in str(table(s)) + str(mappings(s)) + repr(s)


def test_ipv6_gateway_address_for_host_network() -> None:
    a = FabricState(local("a", ("fd00::/48",), gw="fd00::1"), (peer(
        "b", rm(("pod", "fd00::/48", "fd64::/48")), rm(("pod", "fd00::/48", "fd65::/48"))),))
    r = table(a)
    assert elements(r, "host_v6") == ["fd64::/48 : fd65::1"]
    assert elements(r, "host_v4") == []
    assert walk(r, "postrouting", "eth0", "wg0", "2001:db8::7", "fd64::2:7") == ("accept", "fd65::1", "fd64::2:7")
    # IPv4 host traffic has no IPv4 gateway address: dropped.
    assert walk(r, "postrouting", "eth0", "wg0", "192.168.7.7", "100.64.2.7")[0] == "drop"


def _many(n: int) -> FabricState:
    """n peers on the same ranges (bench/nat_scale.py's shape), views from 32.0.0.0/5."""
    peers = tuple(peer(f"p{i}", rm(("pod", "10.244.0.0/16", f"{32 + (2 * i) // 256}.{(2 * i) % 256}.0.0/16"),
                                   ("service", "10.96.0.0/16", f"{32 + (2 * i + 1) // 256}.{(2 * i + 1) % 256}.0.0/16")),
                       rm(("pod", "10.244.0.0/16", "100.65.0.0/16"), ("service", "10.96.0.0/16", "100.66.0.0/16")))
                  for i in range(n))
    return FabricState(local("lab", ("10.244.0.0/16",), ("10.96.0.0/16",), "10.244.0.1"), peers)


@pytest.mark.parametrize("state", [
    LAB, GPU, FabricState(local("a", ()), ()),
    FabricState(dataclasses.replace(LAB.local, masquerade=True, mtu=1400), LAB.peers),
    # Quotes, backslashes and non-ASCII in comments; a comment cut at 128 characters.
    FabricState(LAB.local, (peer('we"ird\\ id ü', LAB_OF_GPU, GPU_OF_LAB), peer("x" * 120, GPU_OF_LAB, LAB_OF_GPU))),
    # No rewrite (view = real), IPv6 with a gateway, a mix of families.
    FabricState(local("a", ("10.244.0.0/16", "fd00::/48"), gw="fd00::1"), (peer(
        "b", rm(("pod", "10.244.0.0/16", "10.245.0.0/16"), ("pod", "fd00::/48", "fd64::/48")),
        rm(("pod", "10.244.0.0/16", "10.244.0.0/16"), ("pod", "fd00::/48", "fd65::/48"))),)),
    _many(300),
], ids=["lab", "gpu", "empty", "masquerade", "odd-ids", "v6-and-no-rewrite", "300-peers"])
def test_render_text_is_compact_json(state: FabricState) -> None:
    # What apply sends is pasted from fragments: it must be exactly compact JSON
    # (escaped names and comments included), what json.dumps makes of the objects it holds.
    text = render_text(state)
    assert text == json.dumps(json.loads(text), separators=(",", ":"))
