"""What ``/api/v1/nat`` shows: per peer its mappings and the rules and elements
that implement them (``mappings``), joined with the kernel's counters
(``with_counters``). Read from the same pieces the batches are made of."""

from __future__ import annotations

import functools
import json
from collections.abc import Iterable
from typing import Any

from fabric.model import FabricState
from fabric.nat.check import Mapping
from fabric.nat.names import FAMILY, PeerChain, comment
from fabric.nat.pieces import PeerPieces, Rule, build


def mappings(state: FabricState) -> list[dict[str, Any]]:
    """Per peer: real ranges, our views, the peer's views of us, and what implements them.

    ``rules``: the per-peer NAT chain rules, identified by (chain, comment), each
    with its per-packet counting rule (``count_chain``, same comment);
    ``host_network``: the ``host_v4``/``host_v6`` map elements (key: our view of
    the peer). ``with_counters`` fills in packets/bytes (and rule handles) from
    ``Nft.list_table``.
    """
    table = build(state)
    return [_peer(p, table.local.table) for p in table.peers]


def _ranges(maps: tuple[Mapping, ...]) -> list[dict[str, str]]:
    return [{"kind": m.kind, "real": m.real.text, "view": m.view.text} for m in maps]


@functools.lru_cache(maxsize=4096)
def _expr(text: str) -> list[Any]:
    # Most peers share their rules' expressions (the same text object): parse
    # each once; the report's rules share the result (read-only).
    expr: list[Any] = json.loads(text)
    return expr


def _rule(r: Rule, table: str) -> dict[str, Any]:
    return {"family": FAMILY, "table": table, "chain": r.chain, "expr": _expr(r.expr), "comment": r.comment}


def _peer(p: PeerPieces, table: str) -> dict[str, Any]:
    rules = [_rule(r, table) for r in p.nat_rules]
    counts = [_rule(r, table) for r in p.count_rules]
    cid = p.cluster_id
    hosts = []
    for v in (4, 6):
        target = p.host_target[v]
        if target is not None:
            hosts += [{"map": f"host_v{v}", "key": m.view.text, "target": str(target),
                       "comment": comment(f"{cid}: host network -> {target}")}
                      for m in p.peer.remote if m.view.version == v]
    return {
        "cluster_id": cid,
        "egress_chain": p.chains[PeerChain.EGRESS],
        "ingress_chain": p.chains[PeerChain.INGRESS],
        "remote": _ranges(p.peer.remote),
        "local": _ranges(p.peer.local),
        "rules": [{"chain": r["chain"], "comment": r["comment"], "rule": r,
                   "count_chain": k["chain"], "count_rule": k} for r, k in zip(rules, counts, strict=True)],
        "host_network": hosts,
    }


def _rule_index(rules: Iterable[dict[str, Any]]) -> dict[tuple[str, str], dict[str, Any]]:
    return {(r["chain"], r.get("comment", "")): r for r in rules}


def _counter(rule: dict[str, Any] | None) -> tuple[int, int]:
    for e in (rule or {}).get("expr", []):
        if "counter" in e and isinstance(e["counter"], dict):
            return e["counter"].get("packets", 0), e["counter"].get("bytes", 0)
    return 0, 0


def with_counters(maps: list[dict[str, Any]], listed: dict[str, Any]) -> list[dict[str, Any]]:
    """``mappings()`` joined with a listed table: each rule gains handle, packets,
    bytes (every packet, from the counting rule), connections (the NAT rule's
    packets: the first of each connection) and count_handle.

    A rule missing from the kernel gets ``handle: None`` and zero counters
    (the table is not what the state says: the caller should re-apply).
    """
    kernel = _rule_index(item["rule"] for item in listed.get("nftables", []) if "rule" in item)
    elements: dict[tuple[str, str], dict[str, int]] = {}
    for item in listed.get("nftables", []):
        m = item.get("map")
        if not m or not str(m.get("name", "")).startswith("host_v"):
            continue
        for el in m.get("elem", []):
            head = el[0] if isinstance(el, list) else el
            inner = head.get("elem", head) if isinstance(head, dict) else {}
            val = inner.get("val", inner) if isinstance(inner, dict) else inner
            if isinstance(val, dict) and "prefix" in val:
                key = f"{val['prefix']['addr']}/{val['prefix']['len']}"
                elements[(m["name"], key)] = dict(inner.get("counter") or {})
    result: list[dict[str, Any]] = []
    for peer in maps:
        rules = []
        for r in peer["rules"]:
            k = kernel.get((r["chain"], r["comment"]))
            n = kernel.get((r.get("count_chain", ""), r["comment"]))
            connections = _counter(k)[0]
            packets, bytes_ = _counter(n)
            rules.append({**r, "handle": k.get("handle") if k else None,
                          "count_handle": n.get("handle") if n else None,
                          "packets": packets, "bytes": bytes_, "connections": connections})
        hosts = []
        for h in peer.get("host_network", []):
            counter = elements.get((h["map"], h["key"]), {})
            hosts.append({**h, "present": (h["map"], h["key"]) in elements,
                          "packets": counter.get("packets", 0), "bytes": counter.get("bytes", 0)})
        result.append({**peer, "rules": rules, "host_network": hosts})
    return result


def drops(listed: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """The drop rules in listed chains (``Nft.list_chain`` answers), with their
    counters: what the table refused that no peer's mapping took (not per peer)."""
    out = []
    for listing in listed:
        for item in listing.get("nftables", []):
            r = item.get("rule")
            if not isinstance(r, dict) or not any(isinstance(e, dict) and "drop" in e for e in r.get("expr", [])):
                continue
            packets, bytes_ = _counter(r)
            out.append({"chain": r.get("chain", ""), "comment": r.get("comment", ""), "packets": packets,
                        "bytes": bytes_, "handle": r.get("handle")})
    return out
