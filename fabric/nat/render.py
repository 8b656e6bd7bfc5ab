"""The nftables batches, composed from the peers' pieces (pieces.py).

``render_text(state)``: the batch (compact JSON text, what ``Nft.apply`` sends)
that replaces table ``inet <nft_table>`` wholly and atomically: add table (so
the delete cannot fail), delete it, add it, then the marker set (the table
is crosswire's: names.MARKER_SET), the base chains, the per-peer
chains, the maps and sets with every peer's elements, the base rules and every
peer's rules. ``render_delta(previous, state)``: a batch changing only the
peers that differ, or None when the whole batch should be sent.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from fabric.model import FabricState
from fabric.nat.check import CheckedLocal
from fabric.nat.names import FAMILY, MARKER_SET, PeerChain, comment
from fabric.nat.pieces import PeerPieces, Table, build, dumps, element_maps, gc_paused, peer_pieces


def render_text(state: FabricState) -> str:
    """The nftables JSON batch (text) that replaces table ``inet <nft_table>`` wholly and atomically."""
    table = build(state)
    with gc_paused():
        return _full(table)


def _full(table: Table) -> str:
    local = table.local
    t = local.table
    tbl = {"family": FAMILY, "name": t}
    # add+delete: replaces whatever is there (or nothing) in the same batch.
    cmds: list[str] = [dumps({"add": {"table": tbl}}), dumps({"delete": {"table": tbl}}), dumps({"add": {"table": tbl}})]

    def add(kind: str, body: dict[str, Any], elems: list[str] | None = None) -> None:
        text = dumps({"add": {kind: {"family": FAMILY, "table": t, **body}}})
        # "elem" is the body's last key: paste it before the closing braces.
        cmds.append(text[:-3] + ',"elem":[' + ",".join(elems) + "]}}}" if elems else text)

    # The mark that the table is ours (see names.MARKER_SET): before anything else.
    add("set", {"name": MARKER_SET, "type": "ipv4_addr"})
    # Chains before the maps whose elements jump to them.
    add("chain", {"name": "prerouting", "type": "nat", "hook": "prerouting", "prio": -100, "policy": "accept"})
    add("chain", {"name": "postrouting", "type": "nat", "hook": "postrouting", "prio": 100, "policy": "accept"})
    add("chain", {"name": "mss-clamp", "type": "filter", "hook": "forward", "prio": -150, "policy": "accept"})
    # After DNAT (prerouting) and before SNAT (postrouting): real addresses on our side.
    add("chain", {"name": "count", "type": "filter", "hook": "forward", "prio": 0, "policy": "accept"})
    head = f'{{"add":{{"chain":{{"family":"{FAMILY}","table":{dumps(t)},"name":'
    cmds += [f"{head}{q}}}}}}}" for p in table.peers for q in p.quoted]
    cmds += [text for p in table.peers for _, text in p.sets]  # before the rules that look them up
    for v, addr_type in ((4, "ipv4_addr"), (6, "ipv6_addr")):
        *verdict_maps, views, host = element_maps(v)
        for name in verdict_maps:
            add("map", {"name": name, "type": addr_type, "map": "verdict", "flags": ["interval"]},
                _elements(table.peers, name))
        add("set", {"name": views, "type": addr_type, "flags": ["interval"]}, _elements(table.peers, views))
        add("map", {"name": host, "type": addr_type, "map": addr_type, "flags": ["interval"],
                    "stmt": [{"counter": None}]},  # a counter on every element
            _elements(table.peers, host))
    cmds += [dumps({"add": {"rule": {"family": FAMILY, "table": t, "chain": chain, "expr": expr,
                                     "comment": comment(note)}}}) for chain, expr, note in _base_rules(local)]
    for p in table.peers:
        cmds += [f'{{"add":{{"rule":{r.text}}}}}' for r in p.nat_rules + p.count_rules]
    return '{"nftables":[' + ",".join(cmds) + "]}"


def _elements(peers: Iterable[PeerPieces], name: str) -> list[str]:
    return [e for p in peers if (e := p.elements[name])]


def _meta(key: str, value: Any, op: str = "==") -> dict[str, Any]:
    return {"match": {"op": op, "left": {"meta": {"key": key}}, "right": value}}


def _base_rules(local: CheckedLocal) -> list[tuple[str, list[dict[str, Any]], str]]:
    """(chain, expressions, comment) of the base chains' rules: the dispatch by
    map lookup, the host-network SNAT, the drops, masquerade, counting, MSS."""
    wg = local.interface
    counter: dict[str, Any] = {"counter": None}
    out: list[tuple[str, list[dict[str, Any]], str]] = []

    def lookup(p: str, field: str, data: str) -> dict[str, Any]:
        return {"vmap": {"key": {"payload": {"protocol": p, "field": field}}, "data": f"@{data}"}}

    for v, p in ((4, "ip"), (6, "ip6")):
        out.append(("prerouting", [_meta("iifname", wg), lookup(p, "saddr", PeerChain.INGRESS.map(v))],
                    f"from {wg} {p}: the source (our view of a peer) picks the peer"))
    out.append(("prerouting", [_meta("iifname", wg), counter, {"drop": None}],
                f"from {wg}: source in no peer view: drop"))  # a peer's own misses: from-<peer>
    for v, p in ((4, "ip"), (6, "ip6")):
        out.append(("postrouting", [_meta("oifname", wg), lookup(p, "daddr", PeerChain.EGRESS.map(v))],
                    f"into {wg} {p}: the destination (our view of a peer) picks the peer"))
    for v, p in ((4, "ip"), (6, "ip6")):
        out.append(("postrouting", [_meta("oifname", wg), {"snat": {"family": p, "addr": {"map": {
                        "key": {"payload": {"protocol": p, "field": "daddr"}}, "data": f"@host_v{v}"}}}}],
                    f"into {wg} {p}: other sources (host network) -> the gateway as that peer sees it"))
    out.append(("postrouting", [_meta("oifname", wg), counter, {"drop": None}],
                f"into {wg}: no mapping for this source and peer: drop"))
    # Dual stack: one masquerade rule per family the gateway has an address in.
    for g in (local.gateways() if local.masquerade else ()):
        p = "ip" if g.version == 4 else "ip6"
        out.append(("postrouting", [
            _meta("oifname", wg, "!="),
            {"match": {"op": "==", "left": {"payload": {"protocol": p, "field": "saddr"}},
                       "right": f"@peer_views_v{g.version}"}},
            counter, {"snat": {"family": p, "addr": str(g)}}], f"masquerade: from peers into the cluster -> {g}"))
    for v, p in ((4, "ip"), (6, "ip6")):
        count = PeerChain.COUNT.map(v)
        out.append(("count", [_meta("oifname", wg), lookup(p, "daddr", count)],
                    f"into {wg} {p}: count every packet, per peer and mapping"))
        out.append(("count", [_meta("iifname", wg), lookup(p, "saddr", count)],
                    f"from {wg} {p}: count every packet, per peer and mapping"))
    for v, nfproto in ((4, "ipv4"), (6, "ipv6")):
        mss = local.mtu - (40 if v == 4 else 60)
        for direction in ("iifname", "oifname"):
            out.append(("mss-clamp", [
                _meta(direction, wg),
                _meta("nfproto", nfproto),
                {"match": {"op": "==", "left": {"&": [{"payload": {"protocol": "tcp", "field": "flags"}},
                                                      ["syn", "rst"]]}, "right": "syn"}},
                {"match": {"op": ">", "left": {"tcp option": {"name": "maxseg", "field": "size"}},
                           "right": mss}},
                {"mangle": {"key": {"tcp option": {"name": "maxseg", "field": "size"}}, "value": mss}},
            ], f"{direction} {wg} {nfproto}: clamp MSS to MTU {local.mtu}"))
    return out


# ---------------------------------------------------------------- changes only


def _base_inputs(state: FabricState) -> tuple[Any, ...]:
    lo = state.local
    return (lo.interface, lo.nft_table, lo.mtu, lo.pod_cidrs, lo.service_cidrs, lo.gateway_ip, lo.masquerade,
            lo.gateway_ip6)


def render_delta(previous: FabricState, state: FabricState) -> str | None:
    """A batch (JSON text) taking the table ``render_text(previous)`` made to the one
    ``render_text(state)`` makes, touching only the peers that were added, removed
    or changed; None when something shared by all peers changed (render it wholly).

    Only valid if the kernel's table really is ``render_text(previous)``: when it
    is not, the batch fails as a whole (a missing chain or element), nothing
    changes, and the caller falls back to the whole-table replace. Unchanged
    peers keep their rules, elements and counters.
    """
    if _base_inputs(previous) != _base_inputs(state):
        return None
    old = {p.cluster_id: p for p in previous.peers}
    new = {p.cluster_id: p for p in state.peers}
    gone = [p for cid, p in old.items() if cid not in new]
    changed = [p for cid, p in old.items() if cid in new and (p.remote, p.local) != (new[cid].remote, new[cid].local)]
    added = [p for cid, p in new.items() if cid not in old]
    if not (gone or changed or added):
        return None  # nothing the table holds differs: apply keeps the table as it is
    if 2 * (len(gone) + len(changed) + len(added)) > max(len(old), len(new)):
        # Most of the table changes: the whole batch costs no more (libnftables
        # also fetches the sets' existing elements for a delta) and renders once.
        return None
    table = build(state)
    with gc_paused():
        # The shared inputs are equal, so the old peers' pieces are the new local
        # side's (kept from building ``previous``, as a rule).
        out = [peer_pieces(table.local, p) for p in gone + changed]
        by_id = {p.cluster_id: p for p in table.peers}
        into = [by_id[p.cluster_id] for p in changed + added]
        return _delta(table, out, into, {p.cluster_id for p in gone}, {p.cluster_id for p in added})


def _delta(table: Table, out: list[PeerPieces], into: list[PeerPieces], gone: set[str], added: set[str]) -> str:
    head = f'"family":"{FAMILY}","table":{dumps(table.local.table)}'
    cmds: list[str] = []

    def elements(verb: str, name: str, elems: list[str]) -> None:
        if elems:
            cmds.append(f'{{"{verb}":{{"element":{{{head},"name":"{name}","elem":[{",".join(elems)}]}}}}}}')

    def chains(verb: str, peers: list[PeerPieces]) -> None:
        cmds.extend(f'{{"{verb}":{{"chain":{{{head},"name":{q}}}}}}}' for p in peers for q in p.quoted)

    # Out: the old peers' elements (keys only: our views of them) ...
    for v in (4, 6):
        *keyed, host = element_maps(v)
        views = [k.cidr.prefix for p in out for k in p.keys if k.cidr.version == v]
        for name in keyed:
            elements("delete", name, views)
        elements("delete", host, [k.cidr.prefix for p in out if p.host_target[v] is not None
                                  for k in p.keys if k.cidr.version == v])
    # ... then their rules, then their sets (no rule looks them up any more);
    # chains of removed peers go (nothing jumps to them any more).
    chains("flush", out)
    cmds.extend(f'{{"delete":{{"set":{{{head},"name":{dumps(name)}}}}}}}' for p in out for name, _ in p.sets)
    chains("delete", [p for p in out if p.cluster_id in gone])
    # In: chains of new peers, then rules and elements of new and changed peers.
    for p in into:
        if p.cluster_id in added:
            # add + flush: should the chain already exist (the kernel is ahead of
            # ``previous``), its rules are not doubled. Elements need no such care:
            # adding one that exists with another value, or overlaps, fails the batch.
            for q in p.quoted:
                cmds.append(f'{{"add":{{"chain":{{{head},"name":{q}}}}}}}')
                cmds.append(f'{{"flush":{{"chain":{{{head},"name":{q}}}}}}}')
    cmds += [text for p in into for _, text in p.sets]
    for p in into:
        cmds += [f'{{"add":{{"rule":{r.text}}}}}' for r in p.nat_rules + p.count_rules]
    for v in (4, 6):
        for name in element_maps(v):
            elements("add", name, _elements(into, name))
    return '{"nftables":[' + ",".join(cmds) + "]}"
