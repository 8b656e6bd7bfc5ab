"""The policy table as data: exact commands (the guard and the export filter), deltas,
overlaps, counters (no kernel)."""

from __future__ import annotations

import json
from typing import Any

from fabric.exports import policy as ep
from fabric.exports.model import Allowed, ExportPolicy, PeerExports, PeerGuard, PolicyTable

T = "crosswire-exports"
GPU = PeerExports("gpu", ("100.65.0.0/16", "fd65::/48"),
                  (Allowed("10.96.0.10/32", "tcp", 80), Allowed("10.244.5.17/32")))
EDGE = PeerExports("edge", ("100.66.0.0/16",), (Allowed("10.244.6.0/24", "udp", 53),))
POLICY = ExportPolicy("wg0", T, (GPU, EDGE))
# Every view of each peer (gpu's service view too), and each peer gateway as we view it.
GUARDS = (PeerGuard("gpu", ("100.65.0.0/16", "100.80.0.0/12", "fd65::/48"), "100.65.0.1"),
          PeerGuard("edge", ("100.66.0.0/16",), "100.66.0.7"))
TABLE = PolicyTable("wg0", T, 51830, GUARDS, POLICY)


def table(exports: tuple[PeerExports, ...] | None = None, guards: tuple[PeerGuard, ...] = GUARDS) -> PolicyTable:
    return PolicyTable("wg0", T, 51830, guards, POLICY if exports is None else ExportPolicy("wg0", T, exports))


def head(**kw: Any) -> dict[str, Any]:
    return {"family": "inet", "table": T, **kw}


def iif() -> dict[str, Any]:
    return {"match": {"op": "==", "left": {"meta": {"key": "iifname"}}, "right": "wg0"}}


EVERY = [{"range": [0, 255]}, {"range": [0, 65535]}]
P65 = {"prefix": {"addr": "100.65.0.0", "len": 16}}
P66 = {"prefix": {"addr": "100.66.0.0", "len": 16}}
P80 = {"prefix": {"addr": "100.80.0.0", "len": 12}}


def key(proto: str) -> dict[str, Any]:
    return {"concat": [{"payload": {"protocol": proto, "field": "saddr"}},
                       {"payload": {"protocol": proto, "field": "daddr"}},
                       {"meta": {"key": "l4proto"}}, {"payload": {"protocol": "th", "field": "dport"}}]}


def count_rules(chain: str) -> list[dict[str, Any]]:
    return [{"add": {"rule": head(chain=chain, expr=[
        iif(), {"counter": {"map": {"key": {"payload": {"protocol": proto, "field": "saddr"}},
                                    "data": f"@denied_v{v}"}}}, {"counter": "denied_total"}],
        comment=f"from wg0 {proto}: count the refusal per peer")}} for v, proto in ((4, "ip"), (6, "ip6"))]


def replies(chain: str, who: str) -> list[dict[str, Any]]:
    return [
        {"add": {"rule": head(chain=chain, expr=[
            iif(), {"match": {"op": "==", "left": {"ct": {"key": "direction"}}, "right": "reply"}},
            {"accept": None}], comment=f"replies to connections opened {who}")}},
        {"add": {"rule": head(chain=chain, expr=[
            iif(), {"match": {"op": "in", "left": {"ct": {"key": "state"}}, "right": "related"}},
            {"accept": None}], comment=f"related to connections opened {who} (ICMP errors)")}}]


# The guard: the gateway's own input from the tunnel, whatever the exports.
INPUT = [
    {"add": {"chain": head(name="input", type="filter", hook="input", prio=-5, policy="accept")}},
    *replies("input", "by this gateway"),
    *[{"add": {"rule": head(chain="input", expr=[
        iif(), {"match": {"op": "==", "left": {"payload": {"protocol": proto, "field": "saddr"}},
                          "right": f"@probes_v{v}"}},
        {"match": {"op": "==", "left": {"payload": {"protocol": "udp", "field": "dport"}}, "right": 51830}},
        {"accept": None}], comment=f"from wg0 {proto}: a peer gateway's health probe, from its own address")}}
      for v, proto in ((4, "ip"), (6, "ip6"))],
    *count_rules("input"),
    {"add": {"rule": head(chain="input", expr=[iif(), {"counter": None}, {"drop": None}],
                          comment="from wg0 to this gateway: not for a peer: drop")}},
]


def test_render_exactly() -> None:
    table = {"family": "inet", "name": T}
    assert ep.render(TABLE) == [
        {"add": {"table": table}}, {"delete": {"table": table}}, {"add": {"table": table}},
        {"add": {"set": head(name="created_by_crosswire", type="ipv4_addr")}},
        {"add": {"counter": head(name="denied_total")}},  # what the per-peer counters count, summed
        {"add": {"counter": head(name="denied-gpu")}},
        {"add": {"counter": head(name="denied-edge")}},
        # Every view of the peer, its service view too: each packet it sends that is dropped counts.
        {"add": {"map": head(name="denied_v4", type="ipv4_addr", map="counter", flags=["interval"],
                             elem=[[P65, "denied-gpu"], [P80, "denied-gpu"], [P66, "denied-edge"]])}},
        {"add": {"set": head(name="probes_v4", type="ipv4_addr", elem=["100.65.0.1", "100.66.0.7"])}},
        {"add": {"set": head(name="allowed_v4", type=["ipv4_addr", "ipv4_addr", "inet_proto", "inet_service"],
                             flags=["interval"], elem=[
                                 {"concat": [P65, "10.244.5.17", *EVERY]},
                                 {"concat": [P65, "10.96.0.10", "tcp", 80]},
                                 {"concat": [P66, {"prefix": {"addr": "10.244.6.0", "len": 24}}, "udp", 53]}])}},
        {"add": {"map": head(name="denied_v6", type="ipv6_addr", map="counter", flags=["interval"],
                             elem=[[{"prefix": {"addr": "fd65::", "len": 48}}, "denied-gpu"]])}},
        {"add": {"set": head(name="probes_v6", type="ipv6_addr")}},
        {"add": {"set": head(name="allowed_v6", type=["ipv6_addr", "ipv6_addr", "inet_proto", "inet_service"],
                             flags=["interval"])}},
        *INPUT,
        {"add": {"chain": head(name="forward", type="filter", hook="forward", prio=-5, policy="accept")}},
        *replies("forward", "on this side"),
        {"add": {"rule": head(chain="forward", expr=[
            iif(), {"match": {"op": "==", "left": key("ip"), "right": "@allowed_v4"}}, {"accept": None}],
            comment="from wg0 ip: what each peer was given")}},
        {"add": {"rule": head(chain="forward", expr=[
            iif(), {"match": {"op": "==", "left": key("ip6"), "right": "@allowed_v6"}}, {"accept": None}],
            comment="from wg0 ip6: what each peer was given")}},
        *count_rules("forward"),
        {"add": {"rule": head(chain="forward", expr=[iif(), {"counter": None}, {"drop": None}],
                              comment="from wg0: not exported to the sender: drop")}},
    ]
    assert json.loads(ep.render_text(TABLE)) == {"nftables": ep.render(TABLE)}


def test_without_exports_the_guard_stands_alone() -> None:
    # exposure all: no forward filter, but the gateway itself is still out of a peer's reach.
    cmds = ep.render(PolicyTable("wg0", T, 51830, GUARDS, None))
    assert not any("allowed" in json.dumps(c) or '"forward"' in json.dumps(c) for c in cmds)
    assert cmds[-len(INPUT):] == INPUT
    assert {"add": {"counter": head(name="denied-edge")}} in cmds
    # No health port: no probe passes either; everything from a peer to the gateway is dropped.
    bare = ep.render(PolicyTable("wg0", T, None, GUARDS, None))
    assert not any("probe" in json.dumps(c.get("add", {}).get("rule", "")) for c in bare)
    assert bare[-1] == INPUT[-1]


def test_no_peers_renders_empty_sets_and_the_same_rules() -> None:
    cmds = ep.render(PolicyTable("wg0", T, 51830, (), ExportPolicy("wg0", T)))
    sets = [c["add"]["set"] for c in cmds if "set" in c.get("add", {})]
    assert all("elem" not in s for s in sets)
    # The per-packet rules do not depend on peers: seven in input, seven in forward.
    assert sum("rule" in c.get("add", {}) for c in cmds) == 14


def test_overlapping_exports_are_merged_not_refused() -> None:
    # An every-port /32 inside a port-specific /24: the /24 is cut around it; duplicates collapse.
    p = PeerExports("x", ("100.70.0.0/16",), (
        Allowed("10.244.5.0/30", "tcp", 80), Allowed("10.244.5.1/32"), Allowed("10.244.5.1/32", "tcp", 80),
        Allowed("10.244.5.2/31", "tcp", 80)))
    addrs = [(e["concat"][1], e["concat"][2]) for e in ep.allowed_elements(p, 4)]
    assert addrs == [("10.244.5.1", {"range": [0, 255]}), ("10.244.5.0", "tcp"),
                     ({"prefix": {"addr": "10.244.5.2", "len": 31}}, "tcp")]


def test_delta_touches_only_the_changed_peer() -> None:
    gpu2 = PeerExports("gpu", GPU.sources, (Allowed("10.96.0.10/32", "tcp", 443),))
    new = PeerExports("new", ("100.67.0.0/16",), ())
    new_guard = PeerGuard("new", ("100.67.0.0/16",), "100.67.0.1")
    text = ep.render_delta(TABLE, table((gpu2, EDGE, new), (*GUARDS, new_guard)))
    assert text is not None
    cmds = json.loads(text)["nftables"]
    forward = [c for c in ep.render(TABLE) if c.get("add", {}).get("rule", {}).get("chain") == "forward"]
    assert cmds == [
        {"flush": {"chain": head(name="forward")}},
        {"delete": {"set": head(name="allowed_v4")}},  # made again, with every peer's elements
        {"add": {"counter": head(name="denied-new")}},
        {"add": {"element": head(name="denied_v4", elem=[[{"prefix": {"addr": "100.67.0.0", "len": 16}},
                                                          "denied-new"]])}},
        {"add": {"element": head(name="probes_v4", elem=["100.67.0.1"])}},
        {"add": {"set": head(name="allowed_v4", type=["ipv4_addr", "ipv4_addr", "inet_proto", "inet_service"],
                             flags=["interval"], elem=[
                                 {"concat": [P65, "10.96.0.10", "tcp", 443]},
                                 {"concat": [P66, {"prefix": {"addr": "10.244.6.0", "len": 24}}, "udp", 53]}])}},
        *forward,
    ]
    # Counters are objects: no peer's count is touched (edge's and gpu's are not even named).
    assert "denied-edge" not in text and "denied-gpu" not in text
    # A peer whose views change: its elements go and come back; the input chain is never touched.
    gpu_moved = PeerGuard("gpu", ("100.65.0.0/16", "fd65::/48"), "100.65.0.2")
    moved = json.loads(ep.render_delta(TABLE, table(guards=(gpu_moved, GUARDS[1]))) or "{}")["nftables"]
    assert moved == [
        {"delete": {"element": head(name="denied_v4", elem=[P65, P80])}},
        {"delete": {"element": head(name="probes_v4", elem=["100.65.0.1"])}},
        {"delete": {"element": head(name="denied_v6", elem=[{"prefix": {"addr": "fd65::", "len": 48}}])}},
        {"add": {"element": head(name="denied_v4", elem=[[P65, "denied-gpu"]])}},
        {"add": {"element": head(name="probes_v4", elem=["100.65.0.2"])}},
        {"add": {"element": head(name="denied_v6", elem=[[{"prefix": {"addr": "fd65::", "len": 48}}, "denied-gpu"]])}},
    ]
    # A change that leaves every element as it was (a new peer without exports) refills nothing.
    quiet = json.loads(ep.render_delta(TABLE, table((GPU, EDGE, new), (*GUARDS, new_guard))) or "{}")["nftables"]
    assert not any("set" in c.get("delete", {}) or "chain" in c.get("flush", {}) for c in quiet)
    gone = json.loads(ep.render_delta(TABLE, table((GPU,), GUARDS[:1])) or "{}")["nftables"]
    assert {"delete": {"counter": head(name="denied-edge")}} in gone
    assert {"delete": {"element": head(name="probes_v4", elem=["100.66.0.7"])}} in gone
    assert ep.render_delta(TABLE, TABLE) is None
    assert ep.render_delta(TABLE, PolicyTable("wg1", T, 51830, GUARDS, POLICY)) is None  # interface: rewrite
    assert ep.render_delta(TABLE, PolicyTable("wg0", T, 51831, GUARDS, POLICY)) is None  # health port
    assert ep.render_delta(TABLE, PolicyTable("wg0", T, 51830, GUARDS, None)) is None  # exports off: rewrite
    # Without exports the delta is the guard's elements and counters only.
    bare = ep.render_delta(PolicyTable("wg0", T, 51830, GUARDS), PolicyTable("wg0", T, 51830, GUARDS[:1]))
    assert bare is not None and "forward" not in bare and "allowed" not in bare


def test_denied_and_problems_read_the_counters() -> None:
    listed = {"nftables": [{"metainfo": {}}, {"counter": {"family": "inet", "table": T, "name": "denied-gpu",
                                                          "packets": 7, "bytes": 420}}]}
    assert ep.denied(TABLE, ep.listed_counters(listed)) == {"gpu": {"packets": 7, "bytes": 420},
                                                         "edge": {"packets": 0, "bytes": 0}}
    # What verify reads: the denied maps' elements name the counters they count on.
    maps = [{"nftables": [{"metainfo": {}}, {"map": {"family": "inet", "table": T, "name": "denied_v4",
                                                     "elem": [[P65, "denied-gpu"], [P80, "denied-gpu"]]}}]},
            {"nftables": [{"map": {"family": "inet", "table": T, "name": "denied_v6"}}]}]
    names = ep.counted(maps)
    assert names == {"denied-gpu"}
    assert ep.problems(TABLE, names, {"input", "forward"}) == [
        "nft table inet crosswire-exports: peer counters missing for edge"]
    assert ep.problems(TABLE, names, {"input"}) == ["nft table inet crosswire-exports: chain forward missing"]
    assert ep.problems(TABLE, names, {"forward"}) == ["nft table inet crosswire-exports: chain input missing"]
    guard_only = PolicyTable("wg0", T, 51830, GUARDS[:1])
    assert ep.problems(guard_only, names, {"input"}) == []


def test_odd_cluster_ids_get_safe_distinct_counter_names() -> None:
    assert ep.counter_name("gpu") == "denied-gpu"
    assert ep.counter_name("a b") != ep.counter_name("a_b")
