"""``fabric.nat.trace``: every step of a packet, checked exactly, and checked against the
rendered tables of both gateways (the rules it names exist; a simulated packet walk
through them ends where the trace says)."""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import pytest
from nftfmt import objects, walk

from fabric.model import FabricState, LocalFabric, PeerFabric, RangeMap
from fabric.nat import render_text
from fabric.nat.trace import ExportPoint, Step, Trace, TraceError, parse_query, trace

KEY = "A" * 43 + "="


def local(cid: str, gw: str | None = None, masquerade: bool = False, v6: bool = False) -> LocalFabric:
    pods = ("10.244.0.0/16", "fd00:10:244::/48") if v6 else ("10.244.0.0/16",)
    return LocalFabric(cluster_id=cid, interface="wg0", listen_port=51820, private_key=KEY, pod_cidrs=pods,
                       service_cidrs=("10.96.0.0/12",), gateway_ip=gw, masquerade=masquerade)


def rm(*triples: tuple[str, str, str]) -> tuple[RangeMap, ...]:
    return tuple(RangeMap(k, r, v) for k, r, v in triples)  # type: ignore[arg-type]


# The README's packet walk, the two IPAMs choosing different numbers: lab views gpu's
# pods as 100.64/16 and services as 100.80/12; gpu views lab's as 100.65/16 and 100.112/12.
LAB_OF_GPU = rm(("pod", "10.244.0.0/16", "100.64.0.0/16"), ("service", "10.96.0.0/12", "100.80.0.0/12"))
GPU_OF_LAB = rm(("pod", "10.244.0.0/16", "100.65.0.0/16"), ("service", "10.96.0.0/12", "100.112.0.0/12"))
LAB = FabricState(local("lab", "10.244.0.2"), (PeerFabric("gpu", KEY, "203.0.113.11:51820", remote=LAB_OF_GPU,
                                                          local=GPU_OF_LAB),))
GPU = FabricState(local("gpu", "10.244.0.2"), (PeerFabric("lab", KEY, "203.0.113.12:51820", remote=GPU_OF_LAB,
                                                          local=LAB_OF_GPU),))


def run(state: FabricState, src: str, dst: str, proto: str = "tcp", dport: int | None = None, **kw: Any) -> Trace:
    return trace(state, parse_query(src, dst, proto, dport), **kw)


def shape(t: Trace) -> list[tuple[Any, ...]]:
    """Every step's structured fields, in order."""
    return [(s.kind, s.at, s.src, s.dst, s.chain, s.rule, s.element, s.counted, s.drop) for s in t.steps]


def test_egress_pod_to_remote_pod_every_step() -> None:
    t = run(LAB, "10.244.1.5", "100.64.2.7", "tcp", 8080)
    assert (t.direction, t.peer, t.verdict) == ("egress", "gpu", "delivered")
    assert shape(t) == [
        ("route", "lab", "10.244.1.5", "100.64.2.7", None, None, None, None, False),
        ("mss-clamp", "lab", "10.244.1.5", "100.64.2.7", "mss-clamp",
         "oifname wg0 ipv4: clamp MSS to MTU 1420", None, None, False),
        ("peer", "lab", "10.244.1.5", "100.64.2.7", "postrouting",
         "into wg0 ip: the destination (our view of a peer) picks the peer",
         '@to_peer_v4 100.64.0.0/16 comment "gpu pod" : jump to-gpu', None, False),
        ("snat", "lab", "100.65.1.5", "100.64.2.7", "to-gpu",
         "gpu: egress pod src 10.244.0.0/16 -> 100.65.0.0/16", None, "cnt-gpu", False),
        ("tunnel", "lab", "100.65.1.5", "100.64.2.7", None, None, None, None, False),
        ("peer", "gpu", "100.65.1.5", "100.64.2.7", "prerouting", None,
         '@from_peer_v4 100.65.0.0/16 comment "lab pod" : jump from-lab', None, False),
        ("dnat", "gpu", "100.65.1.5", "10.244.2.7", "from-lab",
         "lab: ingress pod dst 100.64.0.0/16 -> 10.244.0.0/16", None, "cnt-lab", False),
        ("deliver", "gpu", "100.65.1.5", "10.244.2.7", None, None, None, None, False),
    ]
    assert t.steps[0].text == ("100.64.2.7 is in lab's view of gpu's pods 100.64.0.0/16: the nodes route it to "
                               "the gateway pod (proto 246), the gateway into wg0 (100.64.0.0/16 dev wg0 proto 245)")
    assert t.steps[3].text == ("source 10.244.1.5 is in lab's pod range 10.244.0.0/16, which gpu sees as "
                               "100.65.0.0/16: rewritten to 100.65.1.5")
    assert "203.0.113.11:51820" in t.steps[4].text
    assert t.steps[-1].text == "delivered to gpu's pod 10.244.2.7:8080; it sees the client as 100.65.1.5"
    j = t.as_json()
    assert j["delivered"] == {"src": "100.65.1.5", "dst": "10.244.2.7"}
    assert [s["step"] for s in j["steps"]] == list(range(1, 9))
    assert j["src"] == "10.244.1.5" and j["dport"] == 8080 and j["proto"] == "tcp" and j["cluster_id"] == "lab"
    json.dumps(j)  # plain JSON


def test_udp_and_icmp_have_no_mss_step_and_services_are_handed_to_the_peer_proxy() -> None:
    t = run(LAB, "10.244.1.5", "100.80.0.10", "udp", 53)
    assert [s.kind for s in t.steps] == ["route", "peer", "snat", "tunnel", "peer", "dnat", "deliver"]
    assert t.steps[2].rule == "gpu: egress pod src 10.244.0.0/16 -> 100.65.0.0/16"
    assert t.steps[5].rule == "lab: ingress service dst 100.80.0.0/12 -> 10.96.0.0/12"
    assert t.as_json()["delivered"] == {"src": "100.65.1.5", "dst": "10.96.0.10"}
    assert "gpu's service 10.96.0.10:53: gpu's service proxy picks a pod" in t.steps[-1].text
    assert "mss-clamp" not in [s.kind for s in run(LAB, "10.244.1.5", "100.64.2.7", "icmp").steps]


def test_host_network_source_goes_through_host_map_or_is_dropped() -> None:
    t = run(LAB, "192.168.10.12", "100.64.2.7", "udp")
    snat = t.steps[2]
    assert (snat.kind, snat.chain, snat.rule, snat.element, snat.src) == (
        "snat", "postrouting", "into wg0 ip: other sources (host network) -> the gateway as that peer sees it",
        '@host_v4 100.64.0.0/16 comment "gpu: host network -> 100.65.0.2" : 100.65.0.2', "100.65.0.2")
    assert t.verdict == "delivered" and t.as_json()["delivered"] == {"src": "100.65.0.2", "dst": "10.244.2.7"}
    # Without a gateway address there is nothing to stand in for the host: the counted drop.
    blind = dataclasses.replace(LAB, local=local("lab", None))
    t = run(blind, "192.168.10.12", "100.64.2.7", "udp")
    assert (t.verdict, t.steps[-1].kind, t.steps[-1].chain, t.steps[-1].rule, t.steps[-1].drop) == (
        "dropped", "drop", "postrouting", "into wg0: no mapping for this source and peer: drop", True)
    assert t.reason == "lab has no mapping for source 192.168.10.12 towards gpu"
    assert t.as_json()["delivered"] is None


def test_ingress_from_a_peer_every_step() -> None:
    # On gpu: the packet lab's egress made (src in gpu's view of lab, dst in lab's view of gpu).
    t = run(GPU, "100.65.1.5", "100.64.2.7", "tcp", 8080)
    assert (t.direction, t.peer, t.verdict) == ("ingress", "lab", "delivered")
    assert shape(t) == [
        ("snat", "lab", "100.65.1.5", "100.64.2.7", "to-gpu",
         "gpu: egress pod src 10.244.0.0/16 -> 100.65.0.0/16", None, "cnt-gpu", False),
        ("tunnel", "gpu", "100.65.1.5", "100.64.2.7", None, None, None, None, False),
        ("peer", "gpu", "100.65.1.5", "100.64.2.7", "prerouting",
         "from wg0 ip: the source (our view of a peer) picks the peer",
         '@from_peer_v4 100.65.0.0/16 comment "lab pod" : jump from-lab', None, False),
        ("dnat", "gpu", "100.65.1.5", "10.244.2.7", "from-lab",
         "lab: ingress pod dst 100.64.0.0/16 -> 10.244.0.0/16", None, "cnt-lab", False),
        ("mss-clamp", "gpu", "100.65.1.5", "10.244.2.7", "mss-clamp",
         "iifname wg0 ipv4: clamp MSS to MTU 1420", None, None, False),
        ("deliver", "gpu", "100.65.1.5", "10.244.2.7", None, None, None, None, False),
    ]
    assert t.steps[0].text == ("source 10.244.1.5 (its pod range 10.244.0.0/16) rewritten to 100.65.1.5, "
                               "in gpu's view of it 100.65.0.0/16")
    assert t.reason == "lab's 10.244.1.5 reaches gpu pod 10.244.2.7, which sees it from 100.65.1.5"


def test_ingress_to_an_address_not_offered_is_dropped_with_a_hint() -> None:
    # The operator typed gpu's real pod address as the destination: the peer never sends that.
    t = run(GPU, "100.65.1.5", "10.244.2.7", "icmp")
    assert (t.verdict, t.direction) == ("dropped", "ingress")
    last = t.steps[-1]
    assert (last.kind, last.chain, last.drop, last.rule) == (
        "drop", "from-lab", True, "lab: ingress: destination not offered to lab: drop")
    assert t.reason == "10.244.2.7 is not offered to lab (lab addresses gpu's 10.244.2.7 as 100.64.2.7)"


def test_ingress_masquerade() -> None:
    masq = dataclasses.replace(GPU, local=local("gpu", "10.244.0.2", masquerade=True))
    t = run(masq, "100.65.1.5", "100.64.2.7", "udp")
    m = t.steps[-2]
    assert (m.kind, m.chain, m.rule, m.src, m.dst) == (
        "masquerade", "postrouting", "masquerade: from peers into the cluster -> 10.244.0.2", "10.244.0.2",
        "10.244.2.7")
    assert t.as_json()["delivered"] == {"src": "10.244.0.2", "dst": "10.244.2.7"}


def test_no_peer_and_local_destinations_are_verdicts_not_errors() -> None:
    t = run(LAB, "10.244.1.5", "8.8.8.8")
    assert (t.verdict, t.peer, t.direction, t.steps) == ("no-peer", None, None, ())
    assert t.reason.startswith("no peer owns 8.8.8.8: it is in none of lab's views of its peers")
    assert t.as_json()["steps"] == [] and t.as_json()["delivered"] is None
    t = run(LAB, "10.244.1.5", "10.96.0.10")
    assert (t.verdict, t.reason) == ("local", "10.96.0.10 is in lab's own service range 10.96.0.0/12: "
                                              "crosswire does not touch it")
    # No peers at all: still a verdict.
    assert run(dataclasses.replace(LAB, peers=()), "10.244.1.5", "100.64.2.7").verdict == "no-peer"


def test_view_equal_to_real_range_is_kept() -> None:
    same = rm(("pod", "10.32.0.0/16", "10.32.0.0/16"))
    ours = rm(("pod", "10.244.0.0/16", "10.244.0.0/16"))
    st = FabricState(local("a", "10.244.0.2"), (PeerFabric("b", KEY, None, remote=same, local=ours),))
    t = run(st, "10.244.1.5", "10.32.1.10", "udp")
    assert [(s.kind, s.src, s.dst) for s in t.steps if s.kind in ("snat", "dnat")] == [
        ("snat", "10.244.1.5", "10.32.1.10"), ("dnat", "10.244.1.5", "10.32.1.10")]
    assert t.steps[2].rule == "b: egress pod src 10.244.0.0/16 -> 10.244.0.0/16 (no rewrite)"
    assert "sees unchanged" in t.steps[2].text and "no endpoint yet" in t.steps[3].text


def test_ipv6() -> None:
    lab6 = rm(("pod", "fd00:10:244::/48", "fd64::/48"))
    gpu6 = rm(("pod", "fd00:10:244::/48", "fd65::/48"))
    st = FabricState(local("lab", "10.244.0.2", v6=True),
                     (PeerFabric("gpu", KEY, None, remote=LAB_OF_GPU + lab6, local=GPU_OF_LAB + gpu6),))
    t = run(st, "fd00:10:244:1::5", "fd64:0:0:2::7", "tcp", 80)
    assert t.verdict == "delivered"
    assert t.steps[1].rule == "oifname wg0 ipv6: clamp MSS to MTU 1420"
    assert t.steps[2].element == '@to_peer_v6 fd64::/48 comment "gpu pod" : jump to-gpu'
    assert (t.steps[3].src, t.steps[3].rule) == ("fd65:0:0:1::5", "gpu: egress pod src fd00:10:244::/48 -> fd65::/48")
    assert t.as_json()["delivered"] == {"src": "fd65:0:0:1::5", "dst": "fd00:10:244:2::7"}
    # No IPv6 gateway address: an IPv6 host-network source has nothing to become.
    assert run(st, "2001:db8::1", "fd64::7", "udp").verdict == "dropped"


def rule_comments(state: FabricState) -> set[tuple[str, str]]:
    return {(r["chain"], r.get("comment", "")) for r in objects(json.loads(render_text(state)), "rule")}


@pytest.mark.parametrize(("src", "dst"), [("10.244.1.5", "100.64.2.7"), ("10.244.3.9", "100.80.0.10"),
                                          ("192.168.10.12", "100.64.0.9")])
def test_trace_agrees_with_both_rendered_tables(src: str, dst: str) -> None:
    """Every rule a step names is in the table of the gateway it says does it, and a
    simulated walk of the packet through both rendered tables ends where the trace says."""
    t = run(LAB, src, dst, "udp")
    tables = {"lab": rule_comments(LAB), "gpu": rule_comments(GPU)}
    for s in t.steps:
        if s.rule is not None:
            assert (s.chain, s.rule) in tables[s.at], (s.at, s.chain, s.rule)
        if s.counted is not None:
            assert (s.counted, s.rule) in tables[s.at]
    lab_nft, gpu_nft = json.loads(render_text(LAB)), json.loads(render_text(GPU))
    verdict, s1, d1 = walk(lab_nft, "postrouting", "eth0", "wg0", src, dst)
    tunnel = next(s for s in t.steps if s.kind == "tunnel")
    assert (verdict, s1, d1) == ("accept", tunnel.src, tunnel.dst)
    verdict, s2, d2 = walk(gpu_nft, "prerouting", "wg0", None, s1, d1)
    assert (verdict, s2, d2) == ("accept", t.steps[-1].src, t.steps[-1].dst)
    # gpu's own trace of the packet it receives agrees with lab's prediction.
    there = run(GPU, s1, d1, "udp")
    assert there.as_json()["delivered"] == t.as_json()["delivered"]
    assert [(s.chain, s.rule) for s in there.steps if s.at == "gpu" and s.kind == "dnat"] == \
        [(s.chain, s.rule) for s in t.steps if s.at == "gpu" and s.kind == "dnat"]


# --- the export verdict: a step only where exports exist ---------------------------------------


def test_export_verdict_step_where_exports_exist() -> None:
    asked: list[ExportPoint] = []

    def exports(point: ExportPoint) -> Step | None:
        asked.append(point)
        if point.kind == "service":
            return None  # nothing exported to this peer for services: no step
        allowed = point.dport == 80
        return Step("export", point.at, "allowed" if allowed else "not exported", "", "", chain="exports",
                    rule="x", drop=not allowed)

    assert "export" not in [s.kind for s in run(LAB, "10.244.1.5", "100.64.2.7", "tcp", 80).steps]
    t = run(LAB, "10.244.1.5", "100.64.2.7", "tcp", 80, exports=exports)
    kinds = [s.kind for s in t.steps]
    # At the exporter (the peer, for egress), after its translation, before delivery.
    assert kinds[-3:] == ["dnat", "export", "deliver"] and t.verdict == "delivered"
    assert (t.steps[-2].at, t.steps[-2].src, t.steps[-2].dst) == ("gpu", "100.65.1.5", "10.244.2.7")
    q = parse_query("100.65.1.5", "10.244.2.7")
    assert asked[-1] == ExportPoint("gpu", "lab", q.src, q.dst, "pod", "tcp", 80)
    t = run(LAB, "10.244.1.5", "100.64.2.7", "tcp", 443, exports=exports)
    assert t.verdict == "dropped" and t.steps[-1].kind == "export" and t.steps[-1].drop
    assert t.reason == "gpu does not export 10.244.2.7:443/tcp to lab"
    assert "export" not in [s.kind for s in run(LAB, "10.244.1.5", "100.80.0.10", "tcp", 80, exports=exports).steps]
    # Ingress: this gateway is the exporter.
    t = run(GPU, "100.65.1.5", "100.64.2.7", "tcp", 443, exports=exports)
    assert (t.verdict, t.steps[-1].kind, t.steps[-1].at) == ("dropped", "export", "gpu")
    assert asked[-1].at == "gpu" and asked[-1].peer == "lab" and str(asked[-1].dst) == "10.244.2.7"


# --- bad queries --------------------------------------------------------------------------------


@pytest.mark.parametrize(("args", "reason"), [
    ((None, "10.0.0.1", None, None), "src: required"),
    (("10.0.0.1", "", None, None), "dst: required"),
    (("10.0.0.300", "10.0.0.1", None, None), "src: '10.0.0.300' is not an IP address"),
    (("10.0.0.1", "10.0.0.0/24", None, None), "dst: '10.0.0.0/24' is not an IP address"),
    (("10.0.0.1", "fd00::1", None, None), "src and dst must be of the same family"),
    (("10.0.0.1", "10.0.0.2", "sctp", None), "proto: 'sctp' is not one of tcp, udp, icmp"),
    (("10.0.0.1", "10.0.0.2", "tcp", "0"), "dport: '0' is not a port"),
    (("10.0.0.1", "10.0.0.2", "tcp", "65536"), "dport: '65536' is not a port"),
    (("10.0.0.1", "10.0.0.2", "udp", "-1"), "dport: '-1' is not a port"),
    (("10.0.0.1", "10.0.0.2", "icmp", "8"), "dport: icmp has no ports"),
])
def test_bad_queries_name_the_parameter(args: tuple[Any, ...], reason: str) -> None:
    with pytest.raises(TraceError) as e:
        parse_query(*args)
    assert str(e.value).startswith(reason)


def test_query_defaults() -> None:
    q = parse_query(" 10.0.0.1 ", "10.0.0.2", None, "")
    assert (str(q.src), q.proto, q.dport) == ("10.0.0.1", "tcp", None)
    assert parse_query("10.0.0.1", "10.0.0.2", "UDP", 53).dport == 53


def guarded(state: FabricState, probe: str) -> FabricState:
    """``state`` with the health port set and the peer's gateway (probe source) known."""
    return dataclasses.replace(state, local=dataclasses.replace(state.local, health_port=51830),
                               peers=(dataclasses.replace(state.peers[0], probe_ip=probe),))


def test_ingress_to_the_gateway_itself_meets_the_guard() -> None:
    from fabric.exports import policy as ep
    from fabric.exports.guard import table_of

    gpu = guarded(GPU, "100.65.0.2")  # lab's gateway 10.244.0.2 as gpu views it
    rendered = json.dumps(ep.render(table_of(gpu)))
    # lab's pod opens gpu's gateway pod (10.244.0.2, lab's 100.64.0.2): the API, any port.
    t = run(gpu, "100.65.1.5", "100.64.0.2", "tcp", 8081)
    assert (t.direction, t.peer, t.verdict) == ("ingress", "lab", "dropped")
    assert [s.kind for s in t.steps] == ["snat", "tunnel", "peer", "dnat", "guard"]
    last = t.steps[-1]
    assert (last.at, last.chain, last.rule, last.drop, last.dst) == (
        "gpu", "input", "from wg0 to this gateway: not for a peer: drop", True, "10.244.0.2")
    assert f'"comment": "{last.rule}"' in rendered  # the rule the step names is the rendered one
    assert "no RST" in last.text and "crosswire-exports" in last.text and "denied-lab" in last.text
    # Not the export filter's verdict: the packet is for the gateway (input), not forwarded.
    asked: list[ExportPoint] = []
    run(gpu, "100.65.1.5", "100.64.0.2", "tcp", 8081, exports=lambda p: asked.append(p) or None)
    assert asked == []
    # lab's gateway's health probe passes; the same datagram from a lab pod does not.
    probe = run(gpu, "100.65.0.2", "100.64.0.2", "udp", 51830)
    assert probe.verdict == "delivered" and probe.steps[-2].kind == "guard" and not probe.steps[-2].drop
    assert probe.steps[-2].rule == "from wg0 ip: a peer gateway's health probe, from its own address"
    assert f'"comment": "{probe.steps[-2].rule}"' in rendered
    assert run(gpu, "100.65.1.5", "100.64.0.2", "udp", 51830).verdict == "dropped"
    assert run(gpu, "100.65.0.2", "100.64.0.2", "udp", 53).verdict == "dropped"  # its DNS: no
    # Without a health port nothing passes.
    assert run(dataclasses.replace(gpu, local=dataclasses.replace(gpu.local, health_port=None)),
               "100.65.0.2", "100.64.0.2", "udp", 51830).verdict == "dropped"
    # Other pods of gpu are not the gateway: delivered as before.
    assert run(gpu, "100.65.1.5", "100.64.2.7", "tcp", 8081).verdict == "delivered"


def test_egress_to_the_peers_gateway_shows_its_guard() -> None:
    lab = guarded(LAB, "100.64.0.2")  # gpu's gateway as lab views it
    ok = run(lab, "10.244.0.2", "100.64.0.2", "udp", 51830)  # lab's own probe
    assert ok.verdict == "delivered" and ok.steps[-2].kind == "guard" and ok.steps[-2].at == "gpu"
    # lab's host network leaves as lab's gateway (host_v4): gpu cannot tell it from a probe.
    assert run(lab, "192.168.50.1", "100.64.0.2", "udp", 51830).verdict == "delivered"
    assert run(lab, "10.244.1.5", "100.64.0.2", "udp", 51830).verdict == "dropped"
    bad = run(lab, "10.244.1.5", "100.64.0.2", "tcp", 8081)
    assert bad.verdict == "dropped" and bad.steps[-1].kind == "guard" and bad.steps[-1].at == "gpu"
    assert bad.steps[-1].drop and "denied-lab" in bad.steps[-1].text
