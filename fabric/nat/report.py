"""What ``/api/v1/nat`` shows: per peer its mappings and the rules and elements
that implement them (``mappings``), joined with the kernel's counters
(``with_counters``). Read from the same pieces the batches are made of."""

from __future__ import annotations

import functools
import ipaddress
import json
from collections.abc import Collection, Iterable
from typing import Any

from fabric.model import FabricState
from fabric.nat.check import Mapping
from fabric.nat.names import FAMILY, PeerChain, comment
from fabric.nat.pieces import PeerPieces, Rule, build, drop_comment


def mappings(state: FabricState, only: Collection[str] | None = None) -> list[dict[str, Any]]:
    """Per peer: real ranges, our views, the peer's views of us, and what implements them.

    ``rules``: per mapping and direction, the NAT rule that implements it,
    identified by (chain, comment), with its per-packet counting rule
    (``count_chain``, ``count_comment``), its ``direction`` and mapping (``kind``,
    ``real``, ``view``); a single
    address's row names its ``element`` of the shared map rule, an egress
    block's ``shows`` "any source -> first-last";
    ``host_network``: the ``host_v4``/``host_v6`` map elements (key: our view of
    the peer). ``with_counters`` fills in packets/bytes (and rule handles) from
    ``Nft.list_table``. ``only``: just these peers (the others are not
    reported at all; the table's pieces are cached, so one peer costs one peer).
    ``not_offered``: the rule (chain, comment) that drops what the peer sends to
    an address not offered to it, its count filled in likewise.
    """
    table = build(state)
    return [_peer(p, table.local.table) for p in table.of(only)]


def counts(state: FabricState) -> list[tuple[str, int, int, int]]:
    """Per peer (cluster ID, mappings both ways, NAT rules, host-network elements):
    what a summary counts, from the cached pieces, without building report rows."""
    out = []
    for p in build(state).peers:
        rules = sum((mr.egress is not None) + (mr.ingress is not None) for mr in p.mapping_rules)
        hosts = sum(1 for k in p.keys if p.host_target[k.cidr.version] is not None)
        out.append((p.cluster_id, len(p.peer.remote) + len(p.peer.local), rules, hosts))
    return out


def listed_objects(state: FabricState, only: Collection[str]) -> tuple[
        list[str], dict[str, list[str]], dict[str, list[str]]]:
    """What ``with_counters`` needs of the kernel for these peers: their chains, and
    by set or map name the elements (keys) that count them: their counting sets'
    addresses, their keys in the shared host maps."""
    chains: list[str] = []
    sets: dict[str, list[str]] = {}
    maps: dict[str, list[str]] = {}
    for p in build(state).of(only):
        chains += [p.chains[PeerChain.EGRESS], p.chains[PeerChain.INGRESS], p.chains[PeerChain.COUNT]]
        for mr in p.mapping_rules:
            if mr.count_set is not None and mr.count_element is not None:
                sets.setdefault(mr.count_set, []).append(mr.count_element)
        for v in (4, 6):
            if p.host_target[v] is not None:
                maps.setdefault(f"host_v{v}", []).extend(k.cidr.text for k in p.keys if k.cidr.version == v)
    return chains, sets, maps


def _ranges(maps: tuple[Mapping, ...]) -> list[dict[str, str]]:
    return [{"kind": m.kind, "real": m.real.text, "view": m.view.text, **({"shows": _block(m)} if m.block else {})}
            for m in maps]


def _block(m: Mapping) -> str:
    return _span(m.view.text)


@functools.lru_cache(maxsize=16384)
def _span(view: str) -> str:
    # Formatting addresses is slow and the table's verify reports every peer's blocks
    # every time: each view once.
    net = ipaddress.ip_network(view)
    return f"any source -> {net.network_address}-{net.broadcast_address}"


@functools.lru_cache(maxsize=4096)
def _expr(text: str) -> list[Any]:
    # Most peers share their rules' expressions (the same text object): parse
    # each once; the report's rules share the result (read-only).
    expr: list[Any] = json.loads(text)
    return expr


def _rule(r: Rule, table: str) -> dict[str, Any]:
    return {"family": FAMILY, "table": table, "chain": r.chain, "expr": _expr(r.expr), "comment": r.comment}


def _peer(p: PeerPieces, table: str) -> dict[str, Any]:
    cid = p.cluster_id
    rows = []
    # Egress rows, then ingress rows, each in mapping order (an egress block
    # has no ingress rule). A single address's NAT rule is its family's shared
    # map rule: the row names its element, and the rule's counter (connections)
    # is that of every element, reported once per rule as ``map_connections``.
    for direction in ("egress", "ingress"):
        for m, mr in zip(p.peer.local, p.mapping_rules, strict=True):
            nat, count, element = ((mr.egress, mr.count_egress, mr.egress_element) if direction == "egress" else
                                   (mr.ingress, mr.count_ingress, mr.ingress_element))
            if nat is None or count is None:
                continue
            row: dict[str, Any] = {"chain": nat.chain, "comment": nat.comment, "rule": _rule(nat, table),
                   "count_chain": count.chain, "count_comment": count.comment, "count_rule": _rule(count, table),
                   "direction": direction, "kind": m.kind, "real": m.real.text, "view": m.view.text}
            if element is not None:
                row["element"] = element
            if mr.count_set is not None:  # packets/bytes: the element's counter (both ways)
                row["count_set"], row["count_element"] = mr.count_set, mr.count_element
            if m.block:
                row["shows"] = _block(m)
            rows.append(row)
    hosts = []
    for v in (4, 6):
        target = p.host_target[v]
        if target is not None:
            t = str(target)  # once per peer, not per key: formatting an address is slow
            note = comment(f"{cid}: host network -> {t}")
            hosts += [{"map": f"host_v{v}", "key": k.cidr.text, "target": t, "comment": note}
                      for k in p.keys if k.cidr.version == v]
    return {
        "cluster_id": cid,
        "egress_chain": p.chains[PeerChain.EGRESS],
        "ingress_chain": p.chains[PeerChain.INGRESS],
        "remote": _ranges(p.peer.remote),
        "local": _ranges(p.peer.local),
        "rules": rows,
        "host_network": hosts,
        # The last rule of from-<peer>: the peer's packets to addresses not offered to it.
        "not_offered": {"chain": p.chains[PeerChain.INGRESS], "comment": drop_comment(cid)},
    }


def _rule_index(rules: Iterable[dict[str, Any]]) -> dict[tuple[str, str], dict[str, Any]]:
    return {(r["chain"], r.get("comment", "")): r for r in rules}


def _counter(rule: dict[str, Any] | None) -> tuple[int, int]:
    for e in (rule or {}).get("expr", []):
        if "counter" in e and isinstance(e["counter"], dict):
            return e["counter"].get("packets", 0), e["counter"].get("bytes", 0)
    return 0, 0


def with_counters_elements(listed: dict[str, Any]) -> dict[tuple[str, str], dict[str, int]]:
    """The counters of the listed host-map and counting-set elements, by (name, CIDR)."""
    elements: dict[tuple[str, str], dict[str, int]] = {}
    for item in listed.get("nftables", []):
        m = item.get("map") or item.get("set")
        if not m or not str(m.get("name", "")).startswith(("host_v", "exp-")):
            continue
        for el in m.get("elem", []):
            head = el[0] if isinstance(el, list) else el
            inner = head.get("elem", head) if isinstance(head, dict) else {}
            val = inner.get("val", inner) if isinstance(inner, dict) else inner
            if isinstance(val, dict) and "prefix" in val:
                key = f"{val['prefix']['addr']}/{val['prefix']['len']}"
            elif isinstance(val, str):  # a one-address key is listed bare
                key = f"{val}/{128 if ':' in val else 32}"
            else:
                continue
            elements[(m["name"], key)] = dict(inner.get("counter") or {})
    return elements


def with_counters(maps: list[dict[str, Any]], listed: dict[str, Any]) -> list[dict[str, Any]]:
    """``mappings()`` joined with a listed table: each rule gains handle, packets,
    bytes (every packet, from the counting rule), connections (the NAT rule's
    packets: the first of each connection) and count_handle.

    A rule missing from the kernel gets ``handle: None`` and zero counters
    (the table is not what the state says: the caller should re-apply).
    """
    kernel = _rule_index(item["rule"] for item in listed.get("nftables", []) if "rule" in item)
    elements = with_counters_elements(listed)
    result: list[dict[str, Any]] = []
    for peer in maps:
        rules = []
        for r in peer["rules"]:
            k = kernel.get((r["chain"], r["comment"]))
            n = kernel.get((r.get("count_chain", ""), r.get("count_comment", r["comment"])))
            connections = _counter(k)[0]
            packets, bytes_ = _counter(n)
            if "count_set" in r:
                bits = 128 if ":" in r["count_element"] else 32
                counter = elements.get((r["count_set"], f"{r['count_element']}/{bits}"), {})
                packets, bytes_ = counter.get("packets", 0), counter.get("bytes", 0)
            shared = "element" in r  # the map rule counts every element's connections: not this one's
            counted = any("counter" in e for e in r["rule"]["expr"])  # the ingress map rule has no counter
            rules.append({**r, "handle": k.get("handle") if k else None,
                          "count_handle": n.get("handle") if n else None,
                          "packets": packets, "bytes": bytes_, "connections": None if shared else connections,
                          **({"map_connections": connections if counted else None} if shared else {})})
        hosts = []
        for h in peer.get("host_network", []):
            counter = elements.get((h["map"], h["key"]), {})
            hosts.append({**h, "present": (h["map"], h["key"]) in elements,
                          "packets": counter.get("packets", 0), "bytes": counter.get("bytes", 0)})
        drop = peer.get("not_offered")
        if drop is not None:
            k = kernel.get((drop["chain"], drop["comment"]))
            packets, bytes_ = _counter(k)
            drop = {**drop, "handle": k.get("handle") if k else None, "packets": packets, "bytes": bytes_}
        result.append({**peer, "rules": rules, "host_network": hosts, "not_offered": drop})
    return result


# Per peer: (cluster ID, its rows as (chain, NAT rule key, counting rule key, counting
# element (set, CIDR) or None, shared map rule?), its not-offered drop rule key).
_Keys = tuple[tuple[str, tuple[tuple[str, tuple[str, str], tuple[str, str], tuple[str, str] | None, bool], ...],
                    tuple[str, str]], ...]


@functools.lru_cache(maxsize=2)
def _total_keys(state: FabricState) -> _Keys:
    """What ``totals`` looks up for a state: built once per state from the report rows,
    which are then dropped (a few hundred KB of keys instead of the rows)."""
    out = []
    for peer in mappings(state):
        rows = []
        for r in peer["rules"]:
            element = None
            if "count_set" in r:
                bits = 128 if ":" in r["count_element"] else 32
                element = (r["count_set"], f"{r['count_element']}/{bits}")
            rows.append((r["chain"], (r["chain"], r["comment"]),
                         (r.get("count_chain", ""), r.get("count_comment", r["comment"])), element, "element" in r))
        drop = peer["not_offered"]
        out.append((peer["cluster_id"], tuple(rows), (drop["chain"], drop["comment"])))
    return tuple(out)


def totals(state: FabricState, listed: dict[str, Any], denied: dict[str, dict[str, int]]
           ) -> tuple[list[tuple[str, str, int, int, int]], dict[str, int]]:
    """What ``with_counters`` rows sum to, without building them (a scrape of 1,000 peers):
    per peer and NAT chain (packets, bytes, connections), and per peer the packets it had
    dropped (``denied``, the policy's, plus its not-offered rule's)."""
    kernel = _rule_index(item["rule"] for item in listed.get("nftables", []) if "rule" in item)
    elements = with_counters_elements(listed)
    per: list[tuple[str, str, int, int, int]] = []
    dropped: dict[str, int] = {}
    for cid, rows, drop in _total_keys(state):
        sums: dict[str, list[int]] = {}
        for chain, nat_key, count_key, element, shared in rows:
            c = sums.setdefault(chain, [0, 0, 0])
            if element is not None:
                counter = elements.get(element, {})
                c[0] += counter.get("packets", 0)
                c[1] += counter.get("bytes", 0)
            else:
                packets, bytes_ = _counter(kernel.get(count_key))
                c[0] += packets
                c[1] += bytes_
            if not shared:
                c[2] += _counter(kernel.get(nat_key))[0]
        per += [(cid, chain, pk, by, cn) for chain, (pk, by, cn) in sorted(sums.items())]
        dropped[cid] = denied.get(cid, {}).get("packets", 0) + _counter(kernel.get(drop))[0]
    return per, dropped


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
