"""The export table: per peer, only what it was given passes (sans-IO).

``render_text(policy)`` is the batch that (re)writes table ``inet <table>``
wholly; ``render_delta(previous, policy)`` changes only the peers that differ;
``denied(policy, counters)`` reads each peer's drop counter from a listing of
the table's counters; ``problems(policy, listed)`` says what the kernel lacks.
Rendered commands are plain data, so tests compare them exactly.

::

  table inet crosswire-exports {
    set created_by_crosswire { type ipv4_addr; }              # the table is ours
    counter denied-gpu { }                                    # one per peer
    map denied_v4 { type ipv4_addr : counter; flags interval;
                    elements = { 100.65.0.0/16 : "denied-gpu" } }     # our views of each peer
    set allowed_v4 { type ipv4_addr . ipv4_addr . inet_proto . inet_service; flags interval;
                     elements = { 100.65.0.0/16 . 10.96.0.10 . tcp . 80,             # peer . export
                                  100.65.0.0/16 . 10.244.5.17 . 0-255 . 0-65535 } }  # every port
    (denied_v6, allowed_v6 the same for IPv6)
    chain forward { type filter hook forward priority filter - 5; policy accept;
      iifname "wg0" ct direction reply accept                 # replies to what our side opened
      iifname "wg0" ct state related accept                   # ICMP errors about those
      iifname "wg0" ip saddr . ip daddr . meta l4proto . th dport @allowed_v4 accept
      iifname "wg0" ip6 saddr . ip6 daddr . meta l4proto . th dport @allowed_v6 accept
      iifname "wg0" counter name ip saddr map @denied_v4      # count the refusal per peer
      iifname "wg0" counter name ip6 saddr map @denied_v6
      iifname "wg0" counter drop                              # everything else from peers
    }
  }

Flat per-packet cost: a fixed seven rules; the peer is part of the key of one
set lookup (its source lies in our views of it, which are unique), so the
cost does not grow with peers or exports. Only the peer's *pod* views are
keys: its pods and its host network (which it sends from its gateway's pod
address) are the only sources a peer has. Priority ``filter - 5`` runs before
the NAT table's per-packet ``count`` chain (priority filter), so refused
packets are not counted as traffic of a mapping. Per-peer counters are named
objects, so reading them lists only the counters, not the sets.
"""

from __future__ import annotations

import functools
import ipaddress
import json
from collections.abc import Iterable
from typing import Any

from fabric.exports.model import Allowed, ExportPolicy, PeerExports
from fabric.nat.names import FAMILY, MARKER_SET, chain_suffix

PRIORITY = -5
FORWARD = "forward"
_SEP = (",", ":")
Network = ipaddress.IPv4Network | ipaddress.IPv6Network
_EVERY = [{"range": [0, 255]}, {"range": [0, 65535]}]


def table_name(nft_table: str) -> str:
    """The export table beside the NAT table ``nft_table``."""
    return f"{nft_table}-exports"


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


def denied_elements(peers: list[PeerExports], version: int) -> list[Any]:
    return [[_addr(n), counter_name(p.cluster_id)] for p in peers for n in _sources(p, version)]


class _Batch:
    def __init__(self, table: str) -> None:
        self.table = table
        self.cmds: list[dict[str, Any]] = []

    def add(self, verb: str, kind: str, **kw: Any) -> None:
        self.cmds.append({verb: {kind: {"family": FAMILY, "table": self.table, **kw}}})

    def elements(self, verb: str, name: str, elems: list[Any]) -> None:
        if elems:
            self.add(verb, "element", name=name, elem=elems)

    def rule(self, expr: list[dict[str, Any]], note: str) -> None:
        self.add("add", "rule", chain=FORWARD, expr=expr, comment=note)

    def text(self) -> str:
        return json.dumps({"nftables": self.cmds}, separators=_SEP)


def _key(v: int) -> str:
    return "ipv4_addr" if v == 4 else "ipv6_addr"


def render(policy: ExportPolicy) -> list[dict[str, Any]]:
    """The commands that replace table ``inet <policy.table>`` with this policy."""
    b = _Batch(policy.table)
    table = {"family": FAMILY, "name": policy.table}
    b.cmds += [{"add": {"table": table}}, {"delete": {"table": table}}, {"add": {"table": dict(table)}}]
    b.add("add", "set", name=MARKER_SET, type="ipv4_addr")
    peers = list(policy.peers)
    for p in peers:
        b.add("add", "counter", name=counter_name(p.cluster_id))
    for v in (4, 6):
        # Elements inline: libnftables 1.0.6 cannot add elements to a map created
        # in the same JSON batch (ENOENT); a delta adds them to the kernel's.
        denied = denied_elements(peers, v)
        b.add("add", "map", name=f"denied_v{v}", type=_key(v), map="counter", flags=["interval"],
              **({"elem": denied} if denied else {}))
        _allowed_set(b, peers, v)
    b.add("add", "chain", name=FORWARD, type="filter", hook="forward", prio=PRIORITY, policy="accept")
    _forward_rules(b, policy.interface)
    return b.cmds


def _allowed_set(b: _Batch, peers: list[PeerExports] | tuple[PeerExports, ...], v: int) -> None:
    allowed = [e for p in peers for e in allowed_elements(p, v)]
    b.add("add", "set", name=f"allowed_v{v}", type=[_key(v), _key(v), "inet_proto", "inet_service"],
          flags=["interval"], **({"elem": allowed} if allowed else {}))


def _forward_rules(b: _Batch, wg: str) -> None:
    b.rule([_meta("iifname", wg), {"match": {"op": "==", "left": {"ct": {"key": "direction"}}, "right": "reply"}},
            {"accept": None}], "replies to connections opened on this side")
    b.rule([_meta("iifname", wg), {"match": {"op": "in", "left": {"ct": {"key": "state"}}, "right": "related"}},
            {"accept": None}], "related to connections opened on this side (ICMP errors)")
    for v, proto in ((4, "ip"), (6, "ip6")):
        key = {"concat": [{"payload": {"protocol": proto, "field": "saddr"}},
                          {"payload": {"protocol": proto, "field": "daddr"}},
                          {"meta": {"key": "l4proto"}}, {"payload": {"protocol": "th", "field": "dport"}}]}
        b.rule([_meta("iifname", wg), {"match": {"op": "==", "left": key, "right": f"@allowed_v{v}"}},
                {"accept": None}], allowed_comment(wg, proto))
    for v, proto in ((4, "ip"), (6, "ip6")):
        b.rule([_meta("iifname", wg), {"counter": {"map": {"key": {"payload": {"protocol": proto, "field": "saddr"}},
                                                           "data": f"@denied_v{v}"}}}],
               f"from {wg} {proto}: count the refusal per peer")
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


def render_text(policy: ExportPolicy) -> str:
    return json.dumps({"nftables": render(policy)}, separators=_SEP)


def render_delta(previous: ExportPolicy, policy: ExportPolicy) -> str | None:
    """Only what changed (None: nothing did, or the table must be rewritten).

    Changed, added and removed peers' counters and ``denied_v*`` elements are
    changed one by one; the ``allowed_v*`` set of a family in which some
    peer's elements changed is replaced: the forward chain flushed, the set
    deleted and added again with its elements inline, the rules added again
    (0.5 s at 20 000 elements, about what the whole table costs; element-wise
    deletes and adds into the existing set measured 8-23 s, though those runs
    also hit a one-off stall, see bench/RESULTS.md). Counters are separate
    objects, so every peer's count survives
    (only the forward chain's own drop counter, for unknown sources, restarts);
    the batch is atomic, so no packet sees a half-built table; conntrack is
    not touched. The policy is
    checked per packet: connections still allowed flow on, those no longer
    allowed stop at their next packet.
    """
    if (previous.table, previous.interface) != (policy.table, policy.interface):
        return None
    old = {p.cluster_id: p for p in previous.peers}
    new = {p.cluster_id: p for p in policy.peers}
    if old == new:
        return None
    b = _Batch(policy.table)
    out = [p for c, p in old.items() if new.get(c) != p]
    into = [p for c, p in new.items() if old.get(c) != p]
    refill = [v for v in (4, 6) if [e for p in out for e in allowed_elements(p, v)]
              != [e for p in into for e in allowed_elements(p, v)]]
    if refill:
        b.add("flush", "chain", name=FORWARD)  # the rules referencing the sets go first
    for v in (4, 6):
        if v in refill:
            b.add("delete", "set", name=f"allowed_v{v}")
        b.elements("delete", f"denied_v{v}", [e[0] for e in denied_elements(out, v)])
    for c in old:
        if c not in new:
            b.add("delete", "counter", name=counter_name(c))
    for c in new:
        if c not in old:
            b.add("add", "counter", name=counter_name(c))
    for v in (4, 6):
        b.elements("add", f"denied_v{v}", denied_elements(into, v))
        if v in refill:
            _allowed_set(b, policy.peers, v)
    if refill:
        _forward_rules(b, policy.interface)
    return b.text()


def denied(policy: ExportPolicy, counters: dict[str, Any]) -> dict[str, dict[str, int]]:
    """Per peer, the packets and bytes refused (zero when its counter is absent);
    ``counters``: the JSON listing of the table's counters."""
    by_name = {c["name"]: c for item in counters.get("nftables", []) if (c := item.get("counter")) is not None}
    out = {}
    for p in policy.peers:
        c = by_name.get(counter_name(p.cluster_id), {})
        out[p.cluster_id] = {"packets": int(c.get("packets", 0)), "bytes": int(c.get("bytes", 0))}
    return out


def problems(policy: ExportPolicy, counters: dict[str, Any], chains: set[str]) -> list[str]:
    """What the kernel's export table lacks: its forward chain, a peer's counter."""
    if FORWARD not in chains:
        return [f"nft table {FAMILY} {policy.table}: chain {FORWARD} missing"]
    have = {c["name"] for item in counters.get("nftables", []) if (c := item.get("counter")) is not None}
    missing = [p.cluster_id for p in policy.peers if counter_name(p.cluster_id) not in have]
    return [f"nft table {FAMILY} {policy.table}: export counters missing for {', '.join(missing)}"] if missing else []
