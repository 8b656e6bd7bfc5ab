"""``GET /api/v1/trace`` and ``crosswire trace``: thin adapters over fabric.nat.trace, on
two peered in-process gateways (their views from the real IPAMs, different pools on
each side) and through the CLI against one served by the daemon's own HTTP server."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from gwharness import serving

from fabric.model import FabricState, LocalFabric, PeerFabric, RangeMap
from fabric.nat.trace import Trace, parse_query
from fabric.nat.trace import trace as nat_trace
from gateway.cli import main
from gateway.tracetable import trace as trace_table
from tests.gateway.test_two_gateways import peer


def peered(clusters: Any) -> tuple[Any, Any]:
    """lab and gpu peered, each IPAM with pools of its own (they pick different numbers)."""
    gpu = clusters("gpu", ipam={"pools": ["100.96.0.0/11"]})
    lab = clusters("lab", ipam={"pools": ["100.64.0.0/11"]})

    async def go() -> None:
        await peer(lab, gpu)
        for c in (gpu, lab):
            assert await c.gw.reconciler.reconcile()

    asyncio.run(go())
    return gpu, lab


def get(c: Any, params: dict[str, str] | None = None, raw: str | None = None) -> Any:
    async def go() -> Any:
        return await c.call("GET", "/api/v1/trace" + (raw or ""), auth=False, params=params)

    return asyncio.run(go())


def test_trace_api_walks_both_gateways_and_checks_its_parameters(clusters: Any) -> None:
    gpu, lab = peered(clusters)
    r = get(lab, {"src": "10.244.1.10", "dst": "100.64.1.10", "proto": "tcp", "dport": "8080"})
    assert r.status_code == 200, r.text
    t = r.json()
    assert (t["cluster_id"], t["direction"], t["peer"], t["verdict"]) == ("lab", "egress", "gpu", "delivered")
    # gpu's IPAM picked 100.96.0.0/16 for lab's pods: the server sees the client there.
    assert t["delivered"] == {"src": "100.96.1.10", "dst": "10.244.1.10"}
    assert [(s["at"], s["kind"]) for s in t["steps"]] == [
        ("lab", "route"), ("lab", "mss-clamp"), ("lab", "peer"), ("lab", "snat"), ("lab", "tunnel"),
        ("gpu", "peer"), ("gpu", "dnat"), ("gpu", "deliver")]
    snat = t["steps"][3]
    assert (snat["chain"], snat["rule"]) == ("to-gpu", "gpu: egress pod src 10.244.0.0/16 -> 100.96.0.0/16")
    # The same rule is in lab's /api/v1/nat (the trace reads the same pieces).
    async def nat(c: Any) -> Any:
        return (await c.call("GET", "/api/v1/nat", auth=False)).json()

    rules = {(x["chain"], x["comment"]) for p in asyncio.run(nat(lab))["peers"] for x in p["rules"]}
    assert (snat["chain"], snat["rule"]) in rules
    # gpu traces the packet that arrives: the same end.
    r = get(gpu, {"src": "100.96.1.10", "dst": "100.64.1.10", "proto": "tcp", "dport": "8080"})
    assert r.json()["direction"] == "ingress" and r.json()["delivered"] == t["delivered"]
    # An address no peer owns: a verdict, not an error.
    r = get(lab, {"src": "10.244.1.10", "dst": "192.0.2.7"})
    assert r.status_code == 200 and r.json()["verdict"] == "no-peer" and r.json()["steps"] == []
    assert "no peer owns 192.0.2.7" in r.json()["reason"]
    # Bad parameters: 422 naming the parameter, never a 500.
    for params, reason in [({"dst": "100.64.1.10"}, "src: required"),
                           ({"src": "10.244.1.10", "dst": "nope"}, "dst: 'nope' is not an IP address"),
                           ({"src": "10.244.1.10", "dst": "100.64.1.10", "proto": "gre"}, "proto: 'gre'"),
                           ({"src": "10.244.1.10", "dst": "100.64.1.10", "dport": "99999"}, "dport: '99999'"),
                           ({"src": "10.244.1.10", "dst": "100.64.1.10", "proto": "icmp", "dport": "1"},
                            "dport: icmp has no ports"),
                           ({"src": "10.244.1.10", "dst": "fd00::1"}, "src and dst must be of the same family")]:
        r = get(lab, params)
        assert r.status_code == 422 and r.json()["detail"].startswith(reason), (params, r.text)


def test_trace_answers_match_the_published_schema(clusters: Any) -> None:
    from jsonschema import Draft202012Validator
    from referencing import Registry, Resource
    from referencing.jsonschema import DRAFT202012

    _, lab = peered(clusters)

    async def spec_of() -> Any:
        return (await lab.call("GET", "/openapi.json", auth=False)).json()

    spec = asyncio.run(spec_of())
    registry: Registry[Any] = Registry().with_resource("urn:spec", Resource.from_contents(
        spec, default_specification=DRAFT202012))
    doc = spec["paths"]["/api/v1/trace"]["get"]
    assert sorted(doc["responses"]) == ["200", "408", "409", "413", "422"]
    assert {p["name"] for p in doc["parameters"]} == {"src", "dst", "proto", "dport"}
    for params in ({"src": "10.244.1.10", "dst": "100.64.1.10"}, {"src": "100.64.1.10", "dst": "100.96.0.9"},
                   {"src": "100.64.1.10", "dst": "10.244.0.9"}, {"src": "10.244.1.10", "dst": "10.96.0.1"},
                   {"src": "10.244.1.10", "dst": "8.8.8.8"}, {"src": "x"}):
        r = get(lab, params)
        ptr = f"urn:spec#/paths/~1api~1v1~1trace/get/responses/{r.status_code}/content/application~1json/schema"
        errs = list(Draft202012Validator({"$ref": ptr}, registry=registry).iter_errors(r.json()))
        assert not errs, (params, [e.message for e in errs])


def test_crosswire_trace_cli(clusters: Any, capsys: pytest.CaptureFixture[str]) -> None:
    _, lab = peered(clusters)
    with serving(lab.app) as (_, url):
        assert main(["trace", "10.244.1.10", "100.64.1.10", "--port", "8080", "--api", url]) == 0
        out = capsys.readouterr().out.splitlines()
        assert out[0] == "trace tcp 10.244.1.10 -> 100.64.1.10:8080 at lab (egress, peer gpu)"
        assert out[1] == ("verdict delivered: 10.244.1.10 -> 100.64.1.10 reaches gpu pod 10.244.1.10, "
                          "which sees it from 100.96.1.10")
        assert out[3].split() == ["#", "AT", "STEP", "SRC", "DST", "CHAIN"]
        assert '      rule    "gpu: egress pod src 10.244.0.0/16 -> 100.96.0.0/16"' in out
        assert "\x1b[" not in "\n".join(out)  # not a terminal: no colour
        assert main(["trace", "10.244.1.10", "100.64.1.10", "--proto", "udp", "--api", url, "--json"]) == 0
        data = json.loads(capsys.readouterr().out)
        assert data["proto"] == "udp" and data["dport"] is None and data["verdict"] == "delivered"
        assert main(["trace", "10.244.1.10", "203.0.113.1", "--api", url]) == 0
        assert "verdict no-peer: no peer owns 203.0.113.1" in capsys.readouterr().out
        assert main(["trace", "10.244.1.10", "not-an-ip", "--api", url]) == 1
        assert "dst: 'not-an-ip' is not an IP address (HTTP 422)" in capsys.readouterr().err
        assert main(["trace", "10.244.1.10", "100.64.1.10", "--proto", "icmp", "--port", "7", "--api", url]) == 1
        assert "icmp has no ports (HTTP 422)" in capsys.readouterr().err
        with pytest.raises(SystemExit) as e:  # argparse: a usage error
            main(["trace", "10.244.1.10", "100.64.1.10", "--proto", "gre", "--api", url])
        assert e.value.code == 2


def readme_gpu() -> FabricState:
    """gpu of the README's packet walk: it views lab's pods as 100.65/16; lab views gpu's as 100.64/16."""
    gpu_of_lab = (RangeMap("pod", "10.244.0.0/16", "100.65.0.0/16"),)
    lab_of_gpu = (RangeMap("pod", "10.244.0.0/16", "100.64.0.0/16"),)
    return FabricState(LocalFabric("gpu", "wg0", 51820, "k", pod_cidrs=("10.244.0.0/16",), gateway_ip="10.244.0.2"),
                       (PeerFabric("lab", "k", None, remote=gpu_of_lab, local=lab_of_gpu),))


def run(state: FabricState, src: str, dst: str, proto: str) -> Trace:
    return nat_trace(state, parse_query(src, dst, proto))


def test_trace_table_text_is_exact_and_printable() -> None:
    gpu = readme_gpu()
    lines = trace_table(run(gpu, "100.65.1.5", "10.244.2.7", "icmp").as_json())
    assert lines == [
        "trace icmp 100.65.1.5 -> 10.244.2.7 at gpu (ingress, peer lab)",
        "verdict dropped: 10.244.2.7 is not offered to lab (lab addresses gpu's 10.244.2.7 as 100.64.2.7)",
        "",
        "#  AT   STEP    SRC         DST         CHAIN",
        "1  lab  snat    100.65.1.5  10.244.2.7  to-gpu",
        "      source 10.244.1.5 (its pod range 10.244.0.0/16) rewritten to 100.65.1.5, in gpu's view of it "
        "100.65.0.0/16",
        '      rule    "gpu: egress pod src 10.244.0.0/16 -> 100.65.0.0/16"',
        "      counted in chain cnt-gpu (same comment)",
        "2  gpu  tunnel  100.65.1.5  10.244.2.7  -",
        "      arrives over WireGuard wg0 from peer lab: 100.65.1.5 is in its allowed IPs (100.65.0.0/16), so "
        "WireGuard accepts it only from lab",
        "3  gpu  peer    100.65.1.5  10.244.2.7  prerouting",
        "      the source picks peer lab: jump to from-lab",
        '      rule    "from wg0 ip: the source (our view of a peer) picks the peer"',
        '      element @from_peer_v4 100.65.0.0/16 comment "lab pod" : jump from-lab',
        "4  gpu  drop    100.65.1.5  10.244.2.7  from-lab",
        "      destination 10.244.2.7 is in none of lab's views of gpu: not offered to lab, dropped (counted "
        "against lab) (lab addresses gpu's 10.244.2.7 as 100.64.2.7)",
        '      rule    "lab: ingress: destination not offered to lab: drop"',
    ]
    coloured = trace_table(run(gpu, "100.65.1.5", "10.244.2.7", "icmp").as_json(), color=True)
    assert "\x1b[31mdropped\x1b[0m" in coloured[1] and "\x1b[31mdrop\x1b[0m" in coloured[-3]
    # A peer's cluster ID with control characters cannot reach the terminal raw.
    evil = run(gpu, "100.65.1.5", "10.244.2.7", "icmp").as_json()
    evil["steps"][0]["rule"] = "x\x1b[2Jy"
    assert not any("\x1b" in line for line in trace_table(evil))
