"""The policy table: a peer reaches only what it was given, never the gateway itself (sans-IO).

``render_text(t)`` is the batch that (re)writes table ``inet <table>`` wholly;
``render_delta(previous, t)`` changes only the peers that differ;
``denied(t, counters)`` reads each peer's drop counter from a listing of the
table's counters; ``problems(t, counted(maps), chains)`` says what the kernel
lacks (read from the ``denied_v*`` maps and the chains, cheaper than the counters).
``t`` is a ``PolicyTable`` (``fabric.exports.guard.table_of(state)``). Rendered
commands are plain data, so tests compare them exactly.

::

  table inet crosswire-exports {
    set created_by_crosswire { type ipv4_addr; }              # the table is ours
    counter denied_total { }                                  # every refusal the peers' counters count
    counter denied-gpu { }                                    # one per peer: every packet of it dropped here
    map denied_v4 { type ipv4_addr : counter; flags interval;
                    elements = { 100.65.0.0/16 : "denied-gpu", 100.80.0.0/12 : "denied-gpu" } }  # all our views of it
    set probes_v4 { type ipv4_addr; elements = { 100.65.0.1 } }                # each peer gateway, as we view it
    set allowed_v4 { type ipv4_addr . ipv4_addr . inet_proto . inet_service; flags interval;    # with exports
                     elements = { 100.65.0.0/16 . 10.96.0.10 . tcp . 80,             # peer . export
                                  100.65.0.0/16 . 10.244.5.17 . 0-255 . 0-65535 } }  # every port
    (denied_v6, probes_v6, allowed_v6 the same for IPv6)
    chain input { type filter hook input priority filter - 5; policy accept;     # the guard: always
      iifname "wg0" ct direction reply accept                 # replies to what this gateway opened (its probes)
      iifname "wg0" ct state related accept                   # ICMP errors about those (PMTU)
      iifname "wg0" ip saddr @probes_v4 udp dport 51830 accept   # a peer gateway's health probe
      iifname "wg0" ip6 saddr @probes_v6 udp dport 51830 accept
      iifname "wg0" counter name ip saddr map @denied_v4 counter name denied_total   # count the refusal per peer
      iifname "wg0" counter name ip6 saddr map @denied_v6 counter name denied_total
      iifname "wg0" counter drop                              # nothing else reaches the gateway: no RST
    }
    chain forward { type filter hook forward priority filter - 5; policy accept;   # with exports only
      iifname "wg0" ct direction reply accept                 # replies to what our side opened
      iifname "wg0" ct state related accept                   # ICMP errors about those
      iifname "wg0" ip saddr . ip daddr . meta l4proto . th dport @allowed_v4 accept
      iifname "wg0" ip6 saddr . ip6 daddr . meta l4proto . th dport @allowed_v6 accept
      iifname "wg0" counter name ip saddr map @denied_v4 counter name denied_total   # count the refusal per peer
      iifname "wg0" counter name ip6 saddr map @denied_v6 counter name denied_total
      iifname "wg0" counter drop                              # everything else from peers
    }
  }

Flat per-packet cost: a fixed seven rules per chain whatever the number of
peers and exports; the peer is part of the key of one set lookup (its source
lies in our views of it, which are unique). Only the peer's *pod* views (and
sparse views) are keys of ``allowed_v*``: its pods and its host network are the
only sources a peer has; ``denied_v*`` holds *every* view of it, so a packet
from its service view is counted against it too. Priority ``filter - 5`` runs
before the NAT table's per-packet ``count`` chain (priority filter), so refused
packets are not counted as traffic of a mapping. Per-peer counters are named
objects, so reading them lists only the counters, not the sets.
"""

from __future__ import annotations

import functools
import ipaddress
import json
from collections.abc import Collection, Iterable, Mapping
from typing import Any

from fabric.exports.guard import (
    table_name as table_name,  # re-exported: gateway.exports names the table
)
from fabric.exports.model import Allowed, PeerExports, PeerGuard, PolicyTable
from fabric.nat.names import FAMILY, MARKER_SET, chain_suffix

PRIORITY = -5
FORWARD = "forward"
INPUT = "input"
_SEP = (",", ":")
Network = ipaddress.IPv4Network | ipaddress.IPv6Network
_EVERY = [{"range": [0, 255]}, {"range": [0, 65535]}]


# Every refusal the per-peer counters count, summed by the kernel: the NAT summary reads
# one object instead of 1,000 (a cluster ID's counter is always "denied-...").
TOTAL_COUNTER = "denied_total"


def counter_name(cluster_id: str) -> str:
    return f"denied-{chain_suffix(cluster_id)}"


def _meta(key: str, value: str) -> dict[str, Any]:
    return {"match": {"op": "==", "left": {"meta": {"key": key}}, "right": value}}


def _addr(net: Network) -> Any:
    if net.prefixlen == net.max_prefixlen:
        return str(net.network_address)
    return {"prefix": {"addr": str(net.network_address), "len": net.prefixlen}}


@functools.lru_cache(maxsize=1024)
def _normalized(allowed: tuple[Allowed, ...], version: int) -> tuple[tuple[Any, ...], ...]:
    """(address, proto, port) of one family without overlaps (the kernel's interval
    sets refuse overlapping elements): networks collapsed per (proto, port), and
    port entries inside an every-port network dropped or cut around it. Cached:
    peers given the same exports share one result."""
    groups: dict[tuple[str, int], list[Network]] = {}
    every_nets: list[Network] = []
    for a in allowed:
        net = ipaddress.ip_network(a.network)
        if net.version != version:
            continue
        if a.proto is None or a.port is None:
            every_nets.append(net)
        else:
            groups.setdefault((a.proto, a.port), []).append(net)
    every: list[Network] = list(ipaddress.collapse_addresses(every_nets))  # type: ignore[type-var]
    out: list[tuple[Any, ...]] = [(_addr(n), None, None) for n in every]
    for (proto, port), nets in sorted(groups.items()):
        rest: list[Network] = list(ipaddress.collapse_addresses(nets))  # type: ignore[type-var]
        for e in every:
            cut: list[Network] = []
            for n in rest:
                if not n.overlaps(e):
                    cut.append(n)
                elif e.subnet_of(n):  # type: ignore[arg-type]
                    cut.extend(n.address_exclude(e))  # type: ignore[arg-type]
            rest = cut
        out += [(_addr(n), proto, port) for n in sorted(rest)]
    return tuple(out)


def _sources(p: PeerExports, version: int) -> list[Network]:
    return _parsed(p.sources, version)


@functools.lru_cache(maxsize=8192)
def _parsed(sources: tuple[str, ...], version: int) -> list[Network]:
    return [n for n in map(ipaddress.ip_network, sources) if n.version == version]


def allowed_elements(p: PeerExports, version: int) -> list[dict[str, Any]]:
    """A peer's ``allowed_v*`` elements: ``source view . daddr . l4proto . dport``."""
    out = []
    dst = _normalized(p.allowed, version)
    for src in _sources(p, version):
        s = _addr(src)
        for addr, proto, port in dst:
            tail = _EVERY if proto is None else [proto, port]
            out.append({"concat": [s, addr, *tail]})
    return out


def denied_elements(peers: Iterable[PeerGuard], version: int) -> list[Any]:
    """``denied_v*`` elements: every view of each peer -> its counter."""
    return [[_addr(n), counter_name(p.cluster_id)] for p in peers for n in _parsed(p.views, version)]


def probe_elements(peers: Iterable[PeerGuard], version: int) -> list[str]:
    """``probes_v*`` elements: each peer gateway's address as we view it."""
    return [p.probe for p in peers if p.probe is not None and ipaddress.ip_address(p.probe).version == version]


class _Batch:
    def __init__(self, table: str) -> None:
        self.table = table
        self.cmds: list[dict[str, Any]] = []

    def add(self, verb: str, kind: str, **kw: Any) -> None:
        self.cmds.append({verb: {kind: {"family": FAMILY, "table": self.table, **kw}}})

    def elements(self, verb: str, name: str, elems: list[Any]) -> None:
        if elems:
            self.add(verb, "element", name=name, elem=elems)

    def rule(self, expr: list[dict[str, Any]], note: str, chain: str = FORWARD) -> None:
        self.add("add", "rule", chain=chain, expr=expr, comment=note)

    def text(self) -> str:
        return json.dumps({"nftables": self.cmds}, separators=_SEP)


def _key(v: int) -> str:
    return "ipv4_addr" if v == 4 else "ipv6_addr"


def render(t: PolicyTable) -> list[dict[str, Any]]:
    """The commands that replace table ``inet <t.table>`` with this policy."""
    b = _Batch(t.table)
    table = {"family": FAMILY, "name": t.table}
    b.cmds += [{"add": {"table": table}}, {"delete": {"table": table}}, {"add": {"table": dict(table)}}]
    b.add("add", "set", name=MARKER_SET, type="ipv4_addr")
    b.add("add", "counter", name=TOTAL_COUNTER)
    for p in t.peers:
        b.add("add", "counter", name=counter_name(p.cluster_id))
    for v in (4, 6):
        # Elements inline: libnftables 1.0.6 cannot add elements to a map created
        # in the same JSON batch (ENOENT); a delta adds them to the kernel's.
        denied = denied_elements(t.peers, v)
        b.add("add", "map", name=f"denied_v{v}", type=_key(v), map="counter", flags=["interval"],
              **({"elem": denied} if denied else {}))
        probes = probe_elements(t.peers, v)
        b.add("add", "set", name=f"probes_v{v}", type=_key(v), **({"elem": probes} if probes else {}))
        if t.exports is not None:
            _allowed_set(b, t.exports.peers, v)
    b.add("add", "chain", name=INPUT, type="filter", hook="input", prio=PRIORITY, policy="accept")
    _input_rules(b, t.interface, t.health_port)
    if t.exports is not None:
        b.add("add", "chain", name=FORWARD, type="filter", hook="forward", prio=PRIORITY, policy="accept")
        _forward_rules(b, t.interface)
    return b.cmds


def _allowed_set(b: _Batch, peers: list[PeerExports] | tuple[PeerExports, ...], v: int) -> None:
    allowed = [e for p in peers for e in allowed_elements(p, v)]
    b.add("add", "set", name=f"allowed_v{v}", type=[_key(v), _key(v), "inet_proto", "inet_service"],
          flags=["interval"], **({"elem": allowed} if allowed else {}))


def _replies(b: _Batch, wg: str, chain: str, who: str) -> None:
    b.rule([_meta("iifname", wg), {"match": {"op": "==", "left": {"ct": {"key": "direction"}}, "right": "reply"}},
            {"accept": None}], f"replies to connections opened {who}", chain)
    b.rule([_meta("iifname", wg), {"match": {"op": "in", "left": {"ct": {"key": "state"}}, "right": "related"}},
            {"accept": None}], f"related to connections opened {who} (ICMP errors)", chain)


def _count_per_peer(b: _Batch, wg: str, chain: str) -> None:
    for v, proto in ((4, "ip"), (6, "ip6")):
        # A source in no peer's views ends the rule at the map: the total counts what the peers' counters do.
        b.rule([_meta("iifname", wg), {"counter": {"map": {"key": {"payload": {"protocol": proto, "field": "saddr"}},
                                                           "data": f"@denied_v{v}"}}}, {"counter": TOTAL_COUNTER}],
               f"from {wg} {proto}: count the refusal per peer", chain)


def _input_rules(b: _Batch, wg: str, health_port: int | None) -> None:
    """The guard: from a peer, the gateway itself takes only replies to what it opened
    and, on ``health_port``, each peer gateway's probes from that gateway's address."""
    _replies(b, wg, INPUT, "by this gateway")
    if health_port is not None:
        for v, proto in ((4, "ip"), (6, "ip6")):
            b.rule([_meta("iifname", wg),
                    {"match": {"op": "==", "left": {"payload": {"protocol": proto, "field": "saddr"}},
                               "right": f"@probes_v{v}"}},
                    {"match": {"op": "==", "left": {"payload": {"protocol": "udp", "field": "dport"}},
                               "right": health_port}},
                    {"accept": None}], probe_comment(wg, proto), INPUT)
    _count_per_peer(b, wg, INPUT)
    b.rule([_meta("iifname", wg), {"counter": None}, {"drop": None}], guard_comment(wg), INPUT)


def probe_comment(wg: str, proto: str) -> str:
    """The comment of the guard rule that lets a peer gateway's health probe in."""
    return f"from {wg} {proto}: a peer gateway's health probe, from its own address"


def guard_comment(wg: str) -> str:
    """The comment of the guard's drop: anything else from a peer to the gateway itself."""
    return f"from {wg} to this gateway: not for a peer: drop"


def _forward_rules(b: _Batch, wg: str) -> None:
    _replies(b, wg, FORWARD, "on this side")
    for v, proto in ((4, "ip"), (6, "ip6")):
        key = {"concat": [{"payload": {"protocol": proto, "field": "saddr"}},
                          {"payload": {"protocol": proto, "field": "daddr"}},
                          {"meta": {"key": "l4proto"}}, {"payload": {"protocol": "th", "field": "dport"}}]}
        b.rule([_meta("iifname", wg), {"match": {"op": "==", "left": key, "right": f"@allowed_v{v}"}},
                {"accept": None}], allowed_comment(wg, proto))
    _count_per_peer(b, wg, FORWARD)
    b.rule([_meta("iifname", wg), {"counter": None}, {"drop": None}], drop_comment(wg))


def allowed_comment(wg: str, proto: str) -> str:
    """The comment of the rule that passes what a peer was given (``proto``: ip or ip6)."""
    return f"from {wg} {proto}: what each peer was given"


def drop_comment(wg: str) -> str:
    """The comment of the rule that drops everything else from the peers."""
    return f"from {wg}: not exported to the sender: drop"


def allows(allowed: Iterable[Allowed], dst: str, proto: str, dport: int | None) -> Allowed | None:
    """The entry that lets a new connection to ``dst`` (``proto``, ``dport``) through, as the
    ``allowed_v4``/``allowed_v6`` lookup decides it for a peer's share; None: refused."""
    a = ipaddress.ip_address(dst)
    for e in allowed:
        net = ipaddress.ip_network(e.network)
        if net.version == a.version and a in net and (e.proto is None or (e.proto == proto and e.port == dport)):
            return e
    return None


def render_text(t: PolicyTable) -> str:
    return json.dumps({"nftables": render(t)}, separators=_SEP)


def render_delta(previous: PolicyTable, t: PolicyTable) -> str | None:
    """Only what changed (None: nothing did, or the table must be rewritten).

    Changed, added and removed peers' counters, ``denied_v*`` and ``probes_v*``
    elements are changed one by one; the ``allowed_v*`` set of a family in
    which some peer's elements changed is replaced: the forward chain flushed,
    the set deleted and added again with its elements inline, the rules added
    again (0.5 s at 20 000 elements, about what the whole table costs;
    element-wise deletes and adds into the existing set measured 8-23 s, though
    those runs also hit a one-off stall, see bench/RESULTS.md). Counters are
    separate objects, so every peer's count survives (only the forward chain's
    own drop counter, for unknown sources, restarts); the batch is atomic, so
    no packet sees a half-built table; conntrack is not touched. The policy is
    checked per packet: connections still allowed flow on, those no longer
    allowed stop at their next packet. Exports switched on or off, another
    interface, table or health port: the whole table (None).
    """
    shared = (t.table, t.interface, t.health_port, t.exports is None)
    if (previous.table, previous.interface, previous.health_port, previous.exports is None) != shared:
        return None
    old_x = previous.exports.peers if previous.exports is not None else ()
    new_x = t.exports.peers if t.exports is not None else ()
    old = {p.cluster_id: p for p in previous.peers}
    new = {p.cluster_id: p for p in t.peers}
    if old == new and old_x == new_x:
        return None
    b = _Batch(t.table)
    out = [p for c, p in old.items() if new.get(c) != p]
    into = [p for c, p in new.items() if old.get(c) != p]
    refill = [v for v in (4, 6) if t.exports is not None and _allowed(old_x, v) != _allowed(new_x, v)]
    if refill:
        b.add("flush", "chain", name=FORWARD)  # the rules referencing the sets go first
    for v in (4, 6):
        if v in refill:
            b.add("delete", "set", name=f"allowed_v{v}")
        b.elements("delete", f"denied_v{v}", [e[0] for e in denied_elements(out, v)])
        b.elements("delete", f"probes_v{v}", probe_elements(out, v))
    for c in old:
        if c not in new:
            b.add("delete", "counter", name=counter_name(c))
    for c in new:
        if c not in old:
            b.add("add", "counter", name=counter_name(c))
    for v in (4, 6):
        b.elements("add", f"denied_v{v}", denied_elements(into, v))
        b.elements("add", f"probes_v{v}", probe_elements(into, v))
        if v in refill:
            _allowed_set(b, new_x, v)
    if refill:
        _forward_rules(b, t.interface)
    return b.text()


def _allowed(peers: Iterable[PeerExports], v: int) -> list[dict[str, Any]]:
    return [e for p in peers for e in allowed_elements(p, v)]


def denied(t: PolicyTable, counters: Mapping[str, Mapping[str, int]],
           only: Collection[str] | None = None) -> dict[str, dict[str, int]]:
    """Per peer (``only``: just these), the packets and bytes dropped (zero when its
    counter is absent); ``counters``: the table's named counters by name
    (``listed_counters``, or the kernel's: fabric.nftdump.counters)."""
    out = {}
    for p in t.peers:
        if only is not None and p.cluster_id not in only:
            continue
        c = counters.get(counter_name(p.cluster_id), {})
        out[p.cluster_id] = {"packets": int(c.get("packets", 0)), "bytes": int(c.get("bytes", 0))}
    return out


def listed_counters(listing: dict[str, Any]) -> dict[str, dict[str, int]]:
    """The named counters of libnftables' JSON listing (``list counters``), by name."""
    return {c["name"]: {"packets": int(c.get("packets", 0)), "bytes": int(c.get("bytes", 0))}
            for item in listing.get("nftables", []) if (c := item.get("counter")) is not None}


def counted(listings: Iterable[dict[str, Any]]) -> set[str]:
    """The counter names the ``denied_v*`` maps' elements point to (``listings``: the maps
    as ``nft -j list map`` gives them). An element names an existing counter, so these
    are the peers whose drops are counted."""
    out: set[str] = set()
    for listing in listings:
        for item in listing.get("nftables", []):
            for e in (item.get("map") or {}).get("elem", []):
                if isinstance(e, list) and len(e) == 2 and isinstance(e[1], str):
                    out.add(e[1])
    return out


def problems(t: PolicyTable, names: set[str], chains: set[str]) -> list[str]:
    """What the kernel's policy table lacks: its input chain (the guard), its forward
    chain (with exports), a peer's counted views (``names``: what ``counted`` read)."""
    for chain in (INPUT, FORWARD) if t.exports is not None else (INPUT,):
        if chain not in chains:
            return [f"nft table {FAMILY} {t.table}: chain {chain} missing"]
    missing = [p.cluster_id for p in t.peers if p.views and counter_name(p.cluster_id) not in names]
    return [f"nft table {FAMILY} {t.table}: peer counters missing for {', '.join(missing)}"] if missing else []
