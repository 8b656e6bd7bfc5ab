"""The export table as data: exact commands, deltas, overlaps, counters (no kernel)."""

from __future__ import annotations

import json
from typing import Any

from fabric.exports import policy as ep
from fabric.exports.model import Allowed, ExportPolicy, PeerExports

T = "crosswire-exports"
GPU = PeerExports("gpu", ("100.65.0.0/16", "fd65::/48"),
                  (Allowed("10.96.0.10/32", "tcp", 80), Allowed("10.244.5.17/32")))
EDGE = PeerExports("edge", ("100.66.0.0/16",), (Allowed("10.244.6.0/24", "udp", 53),))
POLICY = ExportPolicy("wg0", T, (GPU, EDGE))


def head(**kw: Any) -> dict[str, Any]:
    return {"family": "inet", "table": T, **kw}


def iif() -> dict[str, Any]:
    return {"match": {"op": "==", "left": {"meta": {"key": "iifname"}}, "right": "wg0"}}


EVERY = [{"range": [0, 255]}, {"range": [0, 65535]}]
P65 = {"prefix": {"addr": "100.65.0.0", "len": 16}}
P66 = {"prefix": {"addr": "100.66.0.0", "len": 16}}


def key(proto: str) -> dict[str, Any]:
    return {"concat": [{"payload": {"protocol": proto, "field": "saddr"}},
                       {"payload": {"protocol": proto, "field": "daddr"}},
                       {"meta": {"key": "l4proto"}}, {"payload": {"protocol": "th", "field": "dport"}}]}


def test_render_exactly() -> None:
    table = {"family": "inet", "name": T}
    assert ep.render(POLICY) == [
        {"add": {"table": table}}, {"delete": {"table": table}}, {"add": {"table": table}},
        {"add": {"set": head(name="created_by_crosswire", type="ipv4_addr")}},
        {"add": {"counter": head(name="denied-gpu")}},
        {"add": {"counter": head(name="denied-edge")}},
        {"add": {"map": head(name="denied_v4", type="ipv4_addr", map="counter", flags=["interval"],
                             elem=[[P65, "denied-gpu"], [P66, "denied-edge"]])}},
        {"add": {"set": head(name="allowed_v4", type=["ipv4_addr", "ipv4_addr", "inet_proto", "inet_service"],
                             flags=["interval"], elem=[
                                 {"concat": [P65, "10.244.5.17", *EVERY]},
                                 {"concat": [P65, "10.96.0.10", "tcp", 80]},
                                 {"concat": [P66, {"prefix": {"addr": "10.244.6.0", "len": 24}}, "udp", 53]}])}},
        {"add": {"map": head(name="denied_v6", type="ipv6_addr", map="counter", flags=["interval"],
                             elem=[[{"prefix": {"addr": "fd65::", "len": 48}}, "denied-gpu"]])}},
        {"add": {"set": head(name="allowed_v6", type=["ipv6_addr", "ipv6_addr", "inet_proto", "inet_service"],
                             flags=["interval"])}},
        {"add": {"chain": head(name="forward", type="filter", hook="forward", prio=-5, policy="accept")}},
        {"add": {"rule": head(chain="forward", expr=[
            iif(), {"match": {"op": "==", "left": {"ct": {"key": "direction"}}, "right": "reply"}},
            {"accept": None}], comment="replies to connections opened on this side")}},
        {"add": {"rule": head(chain="forward", expr=[
            iif(), {"match": {"op": "in", "left": {"ct": {"key": "state"}}, "right": "related"}},
            {"accept": None}], comment="related to connections opened on this side (ICMP errors)")}},
        {"add": {"rule": head(chain="forward", expr=[
            iif(), {"match": {"op": "==", "left": key("ip"), "right": "@allowed_v4"}}, {"accept": None}],
            comment="from wg0 ip: what each peer was given")}},
        {"add": {"rule": head(chain="forward", expr=[
            iif(), {"match": {"op": "==", "left": key("ip6"), "right": "@allowed_v6"}}, {"accept": None}],
            comment="from wg0 ip6: what each peer was given")}},
        {"add": {"rule": head(chain="forward", expr=[
            iif(), {"counter": {"map": {"key": {"payload": {"protocol": "ip", "field": "saddr"}},
                                        "data": "@denied_v4"}}}],
            comment="from wg0 ip: count the refusal per peer")}},
        {"add": {"rule": head(chain="forward", expr=[
            iif(), {"counter": {"map": {"key": {"payload": {"protocol": "ip6", "field": "saddr"}},
                                        "data": "@denied_v6"}}}],
            comment="from wg0 ip6: count the refusal per peer")}},
        {"add": {"rule": head(chain="forward", expr=[iif(), {"counter": None}, {"drop": None}],
                              comment="from wg0: not exported to the sender: drop")}},
    ]
    assert json.loads(ep.render_text(POLICY)) == {"nftables": ep.render(POLICY)}


def test_no_peers_renders_empty_sets_and_the_same_rules() -> None:
    cmds = ep.render(ExportPolicy("wg0", T))
    sets = [c["add"]["set"] for c in cmds if "set" in c.get("add", {})]
    assert all("elem" not in s for s in sets)
    assert sum("rule" in c.get("add", {}) for c in cmds) == 7  # the per-packet rules do not depend on peers


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
    text = ep.render_delta(POLICY, ExportPolicy("wg0", T, (gpu2, EDGE, new)))
    assert text is not None
    cmds = json.loads(text)["nftables"]
    forward = [c for c in ep.render(POLICY) if c.get("add", {}).get("rule")]
    assert cmds == [
        {"flush": {"chain": head(name="forward")}},
        {"delete": {"set": head(name="allowed_v4")}},  # made again, with every peer's elements
        {"delete": {"element": head(name="denied_v4", elem=[P65])}},
        {"delete": {"element": head(name="denied_v6", elem=[{"prefix": {"addr": "fd65::", "len": 48}}])}},
        {"add": {"counter": head(name="denied-new")}},
        {"add": {"element": head(name="denied_v4", elem=[
            [P65, "denied-gpu"], [{"prefix": {"addr": "100.67.0.0", "len": 16}}, "denied-new"]])}},
        {"add": {"set": head(name="allowed_v4", type=["ipv4_addr", "ipv4_addr", "inet_proto", "inet_service"],
                             flags=["interval"], elem=[
                                 {"concat": [P65, "10.96.0.10", "tcp", 443]},
                                 {"concat": [P66, {"prefix": {"addr": "10.244.6.0", "len": 24}}, "udp", 53]}])}},
        {"add": {"element": head(name="denied_v6", elem=[[{"prefix": {"addr": "fd65::", "len": 48}}, "denied-gpu"]])}},
        *forward,
    ]
    # Counters are objects: no peer's count is touched (edge's is not even named).
    assert "denied-edge" not in text
    # A change that leaves every element as it was (a new peer without exports) refills nothing.
    quiet = json.loads(ep.render_delta(POLICY, ExportPolicy("wg0", T, (GPU, EDGE, new))) or "{}")["nftables"]
    assert not any("set" in c.get("delete", {}) or "chain" in c.get("flush", {}) for c in quiet)
    gone = json.loads(ep.render_delta(POLICY, ExportPolicy("wg0", T, (GPU,))) or "{}")["nftables"]
    assert {"delete": {"counter": head(name="denied-edge")}} in gone
    assert ep.render_delta(POLICY, POLICY) is None
    assert ep.render_delta(POLICY, ExportPolicy("wg1", T, POLICY.peers)) is None  # interface: rewrite


def test_denied_and_problems_read_the_counters() -> None:
    listed = {"nftables": [{"metainfo": {}}, {"counter": {"family": "inet", "table": T, "name": "denied-gpu",
                                                          "packets": 7, "bytes": 420}}]}
    assert ep.denied(POLICY, listed) == {"gpu": {"packets": 7, "bytes": 420}, "edge": {"packets": 0, "bytes": 0}}
    assert ep.problems(POLICY, listed, {"forward"}) == [
        "nft table inet crosswire-exports: export counters missing for edge"]
    assert ep.problems(POLICY, listed, set()) == ["nft table inet crosswire-exports: chain forward missing"]


def test_odd_cluster_ids_get_safe_distinct_counter_names() -> None:
    assert ep.counter_name("gpu") == "denied-gpu"
    assert ep.counter_name("a b") != ep.counter_name("a_b")
