"""Sparse views in the NAT table (issue 23): the kinds export, gateway and egress, rendered,
reported and traced, with each side's mode independent (we sparse / the peer full, the
reverse, both sparse), IPv4 and IPv6. Simulated walks run through both rendered tables."""

from __future__ import annotations

import dataclasses
import json
import re
from typing import Any

import pytest
from nftfmt import chain_rules, elements, objects, walk

from fabric.model import FabricState, LocalFabric, PeerFabric, RangeMap
from fabric.nat import NatError, mappings, render_delta, render_text, with_counters
from fabric.nat.trace import parse_query, trace

KEY = "A" * 43 + "="
PODS, SVCS, PODS6 = "10.244.0.0/16", "10.96.0.0/12", "fd00::/48"


def rm(*triples: tuple[str, str, str]) -> tuple[RangeMap, ...]:
    return tuple(RangeMap(k, r, v) for k, r, v in triples)  # type: ignore[arg-type]


def local(cid: str, gw: str) -> LocalFabric:
    return LocalFabric(cluster_id=cid, interface="wg0", listen_port=51820, private_key=KEY,
                       pod_cidrs=(PODS, PODS6), service_cidrs=(SVCS,), gateway_ip=gw)


def state(cid: str, gw: str, peer: str, remote: tuple[RangeMap, ...], mine: tuple[RangeMap, ...]) -> FabricState:
    return FabricState(local(cid, gw), (PeerFabric(peer, KEY, None, remote=remote, local=mine),))


# The hub views the spoke sparse: three exports of the spoke (services, a pod), its
# gateway pod, and a /29 (v4) and /125 (v6) egress block naming the spoke's clients.
# Four single addresses (IPv4) share one map rule per direction at the spoke (MAP_MIN).
HUB_OF_SPOKE_SPARSE = rm(("export", "10.96.0.20/32", "100.64.9.1/32"),
                         ("export", "10.244.5.5/32", "100.64.9.2/32"),
                         ("gateway", "10.244.0.2/32", "100.64.9.3/32"),
                         ("export", "10.96.0.21/32", "100.64.9.4/32"),
                         ("egress", "0.0.0.0/29", "100.64.9.8/29"),
                         ("export", "fd00::5:5/128", "fd64::9:1/128"),
                         ("egress", "::/125", "fd64::9:8/125"))
# The spoke views the hub full (today's whole ranges) ...
SPOKE_OF_HUB_FULL = rm(("pod", PODS, "100.65.0.0/16"), ("service", SVCS, "100.112.0.0/12"),
                       ("pod", PODS6, "fd65::/48"))
# ... or sparse: the hub's one exported service, its gateway, a /30 block for the hub's clients.
SPOKE_OF_HUB_SPARSE = rm(("export", "10.96.0.10/32", "100.70.0.5/32"),
                         ("gateway", "10.244.0.1/32", "100.70.0.6/32"),
                         ("egress", "0.0.0.0/30", "100.70.1.0/30"))
HUB_OF_SPOKE_FULL = rm(("pod", PODS, "100.64.0.0/16"), ("service", SVCS, "100.80.0.0/12"))


def pair(hub_of_spoke: tuple[RangeMap, ...], spoke_of_hub: tuple[RangeMap, ...]) -> tuple[FabricState, FabricState]:
    """Both gateways' states: each one's ``local`` is the other's ``remote``."""
    return (state("hub", "10.244.0.1", "spoke", hub_of_spoke, spoke_of_hub),
            state("spoke", "10.244.0.2", "hub", spoke_of_hub, hub_of_spoke))


HUB, SPOKE = pair(HUB_OF_SPOKE_SPARSE, SPOKE_OF_HUB_FULL)  # we sparse, the peer full (and the reverse)
HUB2, SPOKE2 = pair(HUB_OF_SPOKE_SPARSE, SPOKE_OF_HUB_SPARSE)  # both sparse
HUB3, SPOKE3 = pair(HUB_OF_SPOKE_FULL, SPOKE_OF_HUB_SPARSE)  # the hub full, the spoke sparse


def table(s: FabricState) -> dict[str, Any]:
    parsed: dict[str, Any] = json.loads(render_text(s))
    return parsed


def cross(a: FabricState, b: FabricState, src: str, dst: str) -> tuple[str, tuple[str, str], tuple[str, str]]:
    """A new packet from a's cluster to b's: (verdict, (src, dst) in the tunnel, (src, dst) delivered)."""
    ra, rb = table(a), table(b)
    v, s1, d1 = walk(ra, "postrouting", "eth0", "wg0", src, dst)
    if v != "accept":
        return f"dropped by {a.local.cluster_id}", (s1, d1), ("", "")
    v, s2, d2 = walk(rb, "prerouting", "wg0", None, s1, d1)
    return ("delivered" if v == "accept" else f"dropped by {b.local.cluster_id}"), (s1, d1), (s2, d2)


# ------------------------------------------------------------------ rendering


def test_sparse_remote_views_are_collapsed_map_keys() -> None:
    r = table(HUB)
    # 100.64.9.1-4 (three exports and the gateway) are adjacent: three keys; the block its own.
    assert elements(r, "to_peer_v4") == [
        "100.64.9.1/32 : jump to-spoke", "100.64.9.2/31 : jump to-spoke", "100.64.9.4/32 : jump to-spoke",
        "100.64.9.8/29 : jump to-spoke"]
    keys = [e[0]["elem"]["comment"] for m in objects(r, "map") if m["name"] == "from_peer_v4" for e in m["elem"]]
    assert keys == ["spoke export", "spoke export+gateway", "spoke export", "spoke egress"]
    assert elements(r, "from_peer_v6") == ["fd64::9:1/128 : jump from-spoke", "fd64::9:8/125 : jump from-spoke"]
    assert elements(r, "peer_views_v4") == ["100.64.9.1/32", "100.64.9.2/31", "100.64.9.4/32", "100.64.9.8/29"]
    # The hub's own side is full (the spoke views it whole): rules and host network as today.
    assert chain_rules(r, "to-spoke")[:2] == ["ip saddr 10.244.0.0/16 counter snat ip prefix to 100.65.0.0/16",
                                              "ip saddr 10.96.0.0/12 counter snat ip prefix to 100.112.0.0/12"]
    assert elements(r, "host_v4") == ["100.64.9.1/32 : 100.65.0.1", "100.64.9.2/31 : 100.65.0.1",
                                      "100.64.9.4/32 : 100.65.0.1", "100.64.9.8/29 : 100.65.0.1"]


def test_peer_sparse_view_of_us_renders_map_rules_and_the_egress_block() -> None:
    r = table(SPOKE)  # the hub views the spoke sparse: the spoke's local holds the sparse kinds
    assert chain_rules(r, "to-hub") == [
        # One IPv6 export: a rule of its own (below MAP_MIN a rule each costs less to create).
        "ip6 saddr fd00::5:5/128 counter snat ip6 prefix to fd64::9:1/128",
        # Matched in the peer's counting set (below), so the counter counts only these connections.
        "ip saddr @exp-hub-v4 counter snat ip to ip saddr map "
        "{ 10.96.0.20 : 100.64.9.1, 10.244.5.5 : 100.64.9.2, 10.244.0.2 : 100.64.9.3, 10.96.0.21 : 100.64.9.4 }",
        # After every other rule of its family, no source match: many-to-few with ports.
        "nfproto ipv4 counter snat ip to 100.64.9.8-100.64.9.15 persistent",
        "nfproto ipv6 counter snat ip6 to fd64::9:8-fd64::9:f persistent"]
    assert chain_rules(r, "from-hub") == [
        "ip6 daddr fd64::9:1/128 counter dnat ip6 prefix to fd00::5:5/128",
        # No match, no counter: a miss ends the rule (the peer's drop below counts it).
        "dnat ip to ip daddr map "
        "{ 100.64.9.1 : 10.96.0.20, 100.64.9.2 : 10.244.5.5, 100.64.9.3 : 10.244.0.2, 100.64.9.4 : 10.96.0.21 }",
        "counter drop"]
    # Counting: a twin per unmapped mapping; the blocks count every packet into the
    # interface; the mapped addresses are two lookups in the peer's set, whose
    # elements (our real addresses) carry the counters.
    assert chain_rules(r, "cnt-hub") == [
        "oifname wg0 nfproto ipv4 counter", "ip6 saddr fd00::5:5/128 counter", "oifname wg0 nfproto ipv6 counter",
        "ip saddr @exp-hub-v4", "ip6 daddr fd00::5:5/128 counter", "ip daddr @exp-hub-v4"]
    assert [x for x in objects(r, "set") if x["name"].startswith("exp-")] == [
        {"family": "inet", "table": "crosswire", "name": "exp-hub-v4", "type": "ipv4_addr",
         "stmt": [{"counter": None}], "elem": ["10.96.0.20", "10.244.5.5", "10.244.0.2", "10.96.0.21"]}]
    # The blocks catch host-network sources too: no host_v* elements for those families.
    assert elements(r, "host_v4") == [] and elements(r, "host_v6") == []
    comments = [x["comment"] for x in objects(r, "rule") if x["chain"] == "to-hub"]
    assert comments[1] == "hub: egress export+gateway src map (4 addresses)"
    assert comments[2] == "hub: egress block: any source -> 100.64.9.8-100.64.9.15"


def test_both_sparse_and_mixed_other_way() -> None:
    r = table(HUB2)
    # Two single addresses: a rule each, then the block.
    assert chain_rules(r, "to-spoke") == [
        "ip saddr 10.96.0.10/32 counter snat ip prefix to 100.70.0.5/32",
        "ip saddr 10.244.0.1/32 counter snat ip prefix to 100.70.0.6/32",
        "nfproto ipv4 counter snat ip to 100.70.1.0-100.70.1.3 persistent"]
    assert chain_rules(r, "from-spoke") == ["ip daddr 100.70.0.5/32 counter dnat ip prefix to 10.96.0.10/32",
                                            "ip daddr 100.70.0.6/32 counter dnat ip prefix to 10.244.0.1/32",
                                            "counter drop"]
    assert elements(r, "to_peer_v4") == [
        "100.64.9.1/32 : jump to-spoke", "100.64.9.2/31 : jump to-spoke", "100.64.9.4/32 : jump to-spoke",
        "100.64.9.8/29 : jump to-spoke"]
    assert elements(r, "host_v4") == []  # the block takes the host network
    # The hub full, the spoke sparse: the spoke's keys are collapsed, the hub renders full.
    assert elements(table(SPOKE3), "to_peer_v4") == ["100.70.0.5/32 : jump to-hub", "100.70.0.6/32 : jump to-hub",
                                                     "100.70.1.0/30 : jump to-hub"]
    assert chain_rules(table(HUB3), "to-spoke")[-1] == "nfproto ipv4 counter snat ip to 100.70.1.0-100.70.1.3 persistent"


def test_full_mode_has_no_sparse_rules() -> None:
    # The full/full pair renders as before (exact skeletons: test_nat_render.py); no map or block rules.
    hub, _ = pair(HUB_OF_SPOKE_FULL, SPOKE_OF_HUB_FULL)
    text = render_text(hub)
    assert "persistent" not in text and '"set":[' not in text and '"range"' not in text
    assert chain_rules(table(hub), "to-spoke") == [
        "ip saddr 10.244.0.0/16 counter snat ip prefix to 100.65.0.0/16",
        "ip saddr 10.96.0.0/12 counter snat ip prefix to 100.112.0.0/12",
        "ip6 saddr fd00::/48 counter snat ip6 prefix to fd65::/48"]


# ------------------------------------------------------------------ packets through both tables


def test_walk_we_sparse_peer_full() -> None:
    # Spoke pod -> the hub's service (full view): its source lands in the egress block.
    verdict, tunnel, delivered = cross(SPOKE, HUB, "10.244.3.3", "100.112.0.10")
    assert (verdict, tunnel, delivered) == ("delivered", ("100.64.9.8", "100.112.0.10"), ("100.64.9.8", "10.96.0.10"))
    # A host-network source of the spoke too (no host_v4: the block catches it).
    assert cross(SPOKE, HUB, "192.168.7.7", "100.65.1.5")[1] == ("100.64.9.8", "100.65.1.5")
    # Hub pod -> the spoke's exported service and exported pod through their /32 views.
    assert cross(HUB, SPOKE, "10.244.1.5", "100.64.9.1") == (
        "delivered", ("100.65.1.5", "100.64.9.1"), ("100.65.1.5", "10.96.0.20"))
    assert cross(HUB, SPOKE, "10.244.1.5", "100.64.9.2")[2] == ("100.65.1.5", "10.244.5.5")
    # The spoke's exported pod starting a connection keeps its /32 view (not the block).
    assert cross(SPOKE, HUB, "10.244.5.5", "100.65.1.5")[1] == ("100.64.9.2", "100.65.1.5")
    # To the spoke's egress block (a destination it does not offer): the spoke drops it.
    assert cross(HUB, SPOKE, "10.244.1.5", "100.64.9.9")[0] == "dropped by spoke"
    # IPv6: block and /128 export.
    assert cross(SPOKE, HUB, "fd00::3:3", "fd65::1:5") == (
        "delivered", ("fd64::9:8", "fd65::1:5"), ("fd64::9:8", "fd00::1:5"))
    assert cross(HUB, SPOKE, "fd00::1:5", "fd64::9:1")[2] == ("fd65::1:5", "fd00::5:5")


def test_walk_both_sparse() -> None:
    # Each side reaches only the other's exports, each side's clients come from a block.
    assert cross(SPOKE2, HUB2, "10.244.3.3", "100.70.0.5") == (
        "delivered", ("100.64.9.8", "100.70.0.5"), ("100.64.9.8", "10.96.0.10"))
    assert cross(HUB2, SPOKE2, "10.244.1.5", "100.64.9.1") == (
        "delivered", ("100.70.1.0", "100.64.9.1"), ("100.70.1.0", "10.96.0.20"))
    # The hub's gateway as the spoke sees it (health probes), from the spoke's gateway itself.
    assert cross(SPOKE2, HUB2, "10.244.0.2", "100.70.0.6")[2] == ("100.64.9.3", "10.244.0.1")
    # Into the other side's egress block: dropped there.
    assert cross(SPOKE2, HUB2, "10.244.3.3", "100.70.1.2")[0] == "dropped by hub"


# ------------------------------------------------------------------ checks


@pytest.mark.parametrize(("m", "message"), [
    (RangeMap("egress", "10.0.0.0/29", "100.64.9.8/29"), "real must be 0.0.0.0/29 (an egress block has no real range)"),
    (RangeMap("egress", "0.0.0.0/28", "100.64.9.16/29"), "must have the same family and length"),
    (RangeMap("egress", "::/29", "100.64.9.8/29"), "must have the same family and length"),
    (RangeMap("gateway", "10.244.0.0/31", "100.64.9.4/31"), "real 10.244.0.0/31 must be one address"),
    (RangeMap("bogus", "10.244.0.0/16", "100.64.0.0/16"), "kind must be one of pod, service, export, gateway, egress"),  # type: ignore[arg-type]
])
def test_bad_sparse_mappings_are_refused_naming_the_field(m: RangeMap, message: str) -> None:
    for side in ("remote", "local"):
        s = dataclasses.replace(HUB, peers=(dataclasses.replace(HUB.peers[0], **{side: (m,)}),))
        with pytest.raises(NatError, match="peer 'spoke' " + side) as e:
            render_text(s)
        assert message in str(e.value)


def test_one_block_per_family_and_views_unique() -> None:
    two = HUB_OF_SPOKE_SPARSE + rm(("egress", "0.0.0.0/29", "100.64.9.16/29"))
    with pytest.raises(NatError, match=re.escape("one block per IP family, got 100.64.9.8/29, 100.64.9.16/29")):
        render_text(dataclasses.replace(HUB, peers=(dataclasses.replace(HUB.peers[0], remote=two),)))
    clash = HUB_OF_SPOKE_SPARSE + rm(("export", "10.96.0.21/32", "100.64.9.9/32"))  # inside the block
    with pytest.raises(NatError, match="overlaps"):
        render_text(dataclasses.replace(HUB, peers=(dataclasses.replace(HUB.peers[0], remote=clash),)))


def test_one_view_per_offered_address() -> None:
    twice = SPOKE_OF_HUB_SPARSE + rm(("export", "10.96.0.10/32", "100.70.0.9/32"))
    with pytest.raises(NatError, match=re.escape("peer 'spoke' local export: real 10.96.0.10/32 has two views, "
                                                 "100.70.0.5/32 and 100.70.0.9/32 (one view per address)")):
        render_text(dataclasses.replace(HUB2, peers=(dataclasses.replace(HUB2.peers[0], local=twice),)))


# ------------------------------------------------------------------ report


def test_report_rows_for_sparse_kinds() -> None:
    rows = mappings(SPOKE)[0]
    assert rows["remote"][0] == {"kind": "pod", "real": PODS, "view": "100.65.0.0/16"}
    assert rows["local"][4] == {"kind": "egress", "real": "0.0.0.0/29", "view": "100.64.9.8/29",
                                "shows": "any source -> 100.64.9.8-100.64.9.15"}
    by = {(r["direction"], r.get("element") or r["count_comment"]): r for r in rows["rules"]}
    exp = by[("ingress", "100.64.9.1 : 10.96.0.20")]
    assert (exp["chain"], exp["comment"], exp["kind"], exp["count_comment"], exp["count_set"],
            exp["count_element"]) == (
        "from-hub", "hub: ingress export+gateway dst map (4 addresses)", "export",
        "hub: ingress export+gateway dst counted per address in @exp-hub-v4", "exp-hub-v4", "10.96.0.20")
    block = by[("egress", "hub: egress block: any source -> 100.64.9.8-100.64.9.15")]
    assert (block["chain"], block["count_chain"], block["shows"], block["real"], block["view"]) == (
        "to-hub", "cnt-hub", "any source -> 100.64.9.8-100.64.9.15", "0.0.0.0/29", "100.64.9.8/29")
    assert not any(r["kind"] == "egress" and r["direction"] == "ingress" for r in rows["rules"])
    # Every NAT rule and counting rule of the rendered chains is reported.
    r = table(SPOKE)
    assert {(x["chain"], x["comment"]) for x in objects(r, "rule") if x["chain"] in ("to-hub", "from-hub")} == {
        (x["chain"], x["comment"]) for x in rows["rules"]} | {(rows["not_offered"]["chain"],
                                                               rows["not_offered"]["comment"])}
    assert {(x["chain"], x["comment"]) for x in objects(r, "rule") if x["chain"] == "cnt-hub"} == {
        (x["count_chain"], x["count_comment"]) for x in rows["rules"]}
    # Counters: a mapped row gets its set element's packets, and the shared rule's connections apart.
    listed = {"nftables": [{"rule": {**exp["rule"], "handle": 7, "expr": [{"counter": {"packets": 3, "bytes": 1}}]}},
                           {"rule": {**exp["count_rule"], "handle": 8}},
                           {"set": {"name": "exp-hub-v4", "elem": [
                               {"elem": {"val": "10.96.0.20", "counter": {"packets": 90, "bytes": 9000}}},
                               {"elem": {"val": "10.244.5.5", "counter": {"packets": 5, "bytes": 500}}}]}}]}
    joined = {x.get("element"): x for x in with_counters([rows], listed)[0]["rules"] if x["direction"] == "ingress"}
    row = joined["100.64.9.1 : 10.96.0.20"]
    assert (row["handle"], row["count_handle"], row["packets"], row["bytes"], row["connections"],
            row["map_connections"]) == (7, 8, 90, 9000, None, None)  # the ingress map rule has no counter
    out = by[("egress", "10.96.0.20 : 100.64.9.1")]
    listed["nftables"].append({"rule": {**out["rule"], "handle": 9, "expr": [{"counter": {"packets": 4, "bytes": 1}}]}})
    joined_out = next(x for x in with_counters([rows], listed)[0]["rules"] if x.get("element") == out["element"])
    assert (joined_out["map_connections"], joined_out["packets"]) == (4, 90)  # the element counts both ways
    assert joined["100.64.9.2 : 10.244.5.5"]["packets"] == 5


def test_report_host_network_uses_collapsed_keys_and_bare_addresses() -> None:
    rows = mappings(HUB)[0]
    assert [(h["key"], h["target"]) for h in rows["host_network"]] == [
        ("100.64.9.1/32", "100.65.0.1"), ("100.64.9.2/31", "100.65.0.1"), ("100.64.9.4/32", "100.65.0.1"),
        ("100.64.9.8/29", "100.65.0.1")]
    listed = {"nftables": [{"map": {"name": "host_v4", "elem": [
        [{"elem": {"val": "100.64.9.1", "counter": {"packets": 4, "bytes": 40}}}, "100.65.0.1"]]}}]}
    hosts = with_counters([rows], listed)[0]["host_network"]
    assert (hosts[0]["present"], hosts[0]["packets"], hosts[1]["present"]) == (True, 4, False)


def test_delta_deletes_the_collapsed_keys() -> None:
    others = tuple(PeerFabric(f"p{i}", KEY, None, remote=rm(("pod", PODS, f"100.{90 + i}.0.0/16")),
                              local=rm(("pod", PODS, "100.65.0.0/16"))) for i in range(3))
    before = dataclasses.replace(SPOKE2, peers=SPOKE2.peers + others)
    grown = SPOKE_OF_HUB_SPARSE + rm(("export", "10.96.0.11/32", "100.70.0.7/32"))
    after = dataclasses.replace(before, peers=(dataclasses.replace(before.peers[0], remote=grown), *others))
    delta = json.loads(render_delta(before, after) or "null")
    dels = [c["delete"]["element"] for c in delta["nftables"] if "delete" in c and "element" in c["delete"]]
    to_peer = next(d for d in dels if d["name"] == "to_peer_v4")
    assert [e["prefix"] for e in to_peer["elem"]] == [{"addr": "100.70.0.5", "len": 32},
                                                      {"addr": "100.70.0.6", "len": 32},
                                                      {"addr": "100.70.1.0", "len": 30}]
    adds = [c["add"]["element"] for c in delta["nftables"] if "add" in c and "element" in c["add"]]
    added = next(d for d in adds if d["name"] == "to_peer_v4")
    assert [e[0]["elem"]["val"]["prefix"] for e in added["elem"]] == [
        {"addr": "100.70.0.5", "len": 32}, {"addr": "100.70.0.6", "len": 31}, {"addr": "100.70.1.0", "len": 30}]


# ------------------------------------------------------------------ trace


def run(s: FabricState, src: str, dst: str, proto: str = "tcp", dport: int | None = None) -> Any:
    return trace(s, parse_query(src, dst, proto, dport))


def test_trace_egress_into_the_block_and_the_hub_attributes_it() -> None:
    t = run(SPOKE, "10.244.3.3", "100.112.0.10", "tcp", 443)
    assert (t.verdict, t.peer, t.direction) == ("delivered", "hub", "egress")
    snat = next(s for s in t.steps if s.kind == "snat")
    assert (snat.chain, snat.rule, snat.counted, snat.src) == (
        "to-hub", "hub: egress block: any source -> 100.64.9.8-100.64.9.15", "cnt-hub", "100.64.9.8")
    assert "SNAT into the egress block 100.64.9.8/29" in snat.text and "chosen by the kernel" in snat.text
    peer = [s for s in t.steps if s.kind == "peer"][1]  # at the hub
    assert peer.element == '@from_peer_v4 100.64.9.8/29 comment "spoke egress" : jump from-spoke'
    # At the hub: a source in its egress view of the spoke is the spoke's.
    t = run(HUB, "100.64.9.11", "100.112.0.10", "udp")
    assert (t.verdict, t.peer, t.direction) == ("delivered", "spoke", "ingress")
    assert "one of spoke's clients, was SNATed by spoke into hub's egress block for it 100.64.9.8/29" in t.steps[0].text
    assert t.steps[0].rule == "hub: egress block: any source -> 100.64.9.8-100.64.9.15"
    assert t.reason == "a client of spoke (as 100.64.9.11) reaches hub service 10.96.0.10, which sees it from 100.64.9.11"


def test_trace_per_export_dnat_names_its_element() -> None:
    t = run(HUB, "10.244.1.5", "100.64.9.1", "tcp", 80)
    assert t.verdict == "delivered"
    assert t.steps[0].text.startswith("100.64.9.1 is in hub's view of spoke's exported addresses 100.64.9.1/32")
    dnat = next(s for s in t.steps if s.kind == "dnat")
    assert (dnat.at, dnat.chain, dnat.rule, dnat.element, dnat.counted, dnat.dst) == (
        "spoke", "from-hub", "hub: ingress export+gateway dst map (4 addresses)", "100.64.9.1 : 10.96.0.20",
        "cnt-hub", "10.96.0.20")
    assert t.steps[2].element == '@to_peer_v4 100.64.9.1/32 comment "spoke export" : jump to-spoke'
    # The same at the spoke, as an arriving packet.
    t = run(SPOKE, "100.65.1.5", "100.64.9.2", "udp")
    dnat = next(s for s in t.steps if s.kind == "dnat")
    assert (dnat.at, dnat.element, dnat.dst) == ("spoke", "100.64.9.2 : 10.244.5.5", "10.244.5.5")
    # Egress from an exported address: the map element that picked its /32 view.
    t = run(SPOKE, "10.244.5.5", "100.65.1.5", "udp")
    snat = next(s for s in t.steps if s.kind == "snat")
    assert (snat.element, snat.src) == ("10.244.5.5 : 100.64.9.2", "100.64.9.2")


def test_trace_into_an_egress_block_is_dropped() -> None:
    t = run(HUB, "10.244.1.5", "100.64.9.9", "udp")  # the hub sends into the spoke's block
    assert (t.verdict, t.steps[-1].at, t.steps[-1].drop) == ("dropped", "spoke", True)
    assert "egress block" in t.reason
    # A spoke client sends to the spoke's view of the hub's clients: it reaches the hub, which drops it.
    t = run(HUB2, "100.64.9.8", "100.70.1.1", "udp")
    assert t.verdict == "dropped" and "egress block naming hub's clients" in t.reason


def test_trace_v6_block() -> None:
    t = run(SPOKE, "fd00::3:3", "fd65::1:5", "tcp", 22)
    assert t.as_json()["delivered"] == {"src": "fd64::9:8", "dst": "fd00::1:5"}


def test_trace_steps_name_rules_of_both_tables() -> None:
    for s_, other, src, dst in ((SPOKE, HUB, "10.244.3.3", "100.112.0.10"), (HUB, SPOKE, "10.244.1.5", "100.64.9.1"),
                                (HUB2, SPOKE2, "10.244.1.5", "100.64.9.2")):
        t = run(s_, src, dst, "udp")
        comments = {c: {(r["chain"], r.get("comment", "")) for r in objects(table(x), "rule")}
                    for c, x in ((s_.local.cluster_id, s_), (other.local.cluster_id, other))}
        for step in t.steps:
            if step.chain and step.rule and step.kind in ("snat", "dnat"):
                assert (step.chain, step.rule) in comments[step.at], step
