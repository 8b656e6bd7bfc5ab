"""The export table: per peer, only what it was given passes (sans-IO).

``render_text(policy)`` is the batch that (re)writes table ``inet <table>``
wholly; ``render_delta(previous, policy)`` changes only the peers that differ;
``denied(policy, listed)`` reads each peer's drop counter back from a listing;
``problems(policy, listed)`` says what is missing in the kernel. Rendered
objects are plain data, so tests compare them exactly.

::

  table inet crosswire-exports {
    set created_by_crosswire { type ipv4_addr; }          # the table is ours
    map peers_v4 { type ipv4_addr : verdict; flags interval;
                   elements = { 100.65.0.0/16 comment "gpu" : jump exp-gpu } }
    map peers_v6 { ... }
    set exp-gpu_v4 { type ipv4_addr . inet_proto . inet_service; flags interval;
                     elements = { 10.96.0.10 . tcp . 80, 10.244.5.17 . 0-255 . 0-65535 } }
    set exp-gpu_v6 { ... }
    chain forward { type filter hook forward priority filter - 5; policy accept;
      iifname "wg0" ct direction reply accept           # replies to what our side opened
      iifname "wg0" ct state related accept             # their ICMP errors
      iifname "wg0" ip saddr vmap @peers_v4             # the source names the peer: one lookup
      iifname "wg0" ip6 saddr vmap @peers_v6
      iifname "wg0" counter drop                        # no peer: fail closed
    }
    chain exp-gpu {
      ip daddr . meta l4proto . th dport @exp-gpu_v4 accept   # one lookup, however many exports
      ip6 daddr . meta l4proto . th dport @exp-gpu_v6 accept
      counter drop comment "gpu: not exported"          # the per-peer denied counter
    }
  }

Priority ``filter - 5``: before the NAT table's per-packet ``count`` chain
(priority filter), so refused packets are not counted as traffic of a mapping.
"""

from __future__ import annotations

import ipaddress
import json
from typing import Any

from fabric.exportmodel import Allowed, ExportPolicy, PeerExports
from fabric.nat.names import FAMILY, MARKER_SET, chain_suffix, comment

PRIORITY = -5
FORWARD = "forward"
_SEP = (",", ":")
Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def table_name(nft_table: str) -> str:
    """The export table beside the NAT table ``nft_table``."""
    return f"{nft_table}-exports"


def peer_chain(cluster_id: str) -> str:
    return f"exp-{chain_suffix(cluster_id)}"


def peer_set(cluster_id: str, version: int) -> str:
    return f"{peer_chain(cluster_id)}_v{version}"


def denied_comment(cluster_id: str) -> str:
    return comment(f"{cluster_id}: not exported")


def _meta(key: str, value: str) -> dict[str, Any]:
    return {"match": {"op": "==", "left": {"meta": {"key": key}}, "right": value}}


def _addr(net: Network) -> Any:
    if net.prefixlen == net.max_prefixlen:
        return str(net.network_address)
    return {"prefix": {"addr": str(net.network_address), "len": net.prefixlen}}


def _normalized(allowed: tuple[Allowed, ...], version: int) -> list[tuple[Network, str | None, int | None]]:
    """The allowed entries of one family without overlaps (the kernel's interval
    sets refuse overlapping elements): networks collapsed per (proto, port), and
    port entries inside an every-port network dropped or cut around it."""
    groups: dict[tuple[str | None, int | None], list[Network]] = {}
    for a in allowed:
        net = ipaddress.ip_network(a.network)
        if net.version == version:
            groups.setdefault((a.proto, a.port), []).append(net)
    every = list(ipaddress.collapse_addresses(groups.pop((None, None), [])))  # type: ignore[type-var]
    out: list[tuple[Network, str | None, int | None]] = [(n, None, None) for n in every]
    for (proto, port), nets in sorted(groups.items(), key=lambda kv: (str(kv[0][0]), kv[0][1] or 0)):
        rest: list[Network] = list(ipaddress.collapse_addresses(nets))  # type: ignore[type-var]
        for e in every:
            cut: list[Network] = []
            for n in rest:
                if n.subnet_of(e):  # type: ignore[arg-type]
                    continue
                cut.extend(n.address_exclude(e) if e.subnet_of(n) else [n])  # type: ignore[arg-type]
            rest = cut
        out += [(n, proto, port) for n in sorted(rest)]  # type: ignore[type-var]
    return out


def elements(allowed: tuple[Allowed, ...], version: int) -> list[dict[str, Any]]:
    """A peer's set elements of one family: ``daddr . l4proto . dport``."""
    out = []
    for net, proto, port in _normalized(allowed, version):
        if proto is None:
            out.append({"concat": [_addr(net), {"range": [0, 255]}, {"range": [0, 65535]}]})
        else:
            out.append({"concat": [_addr(net), proto, port]})
    return out


def _sources(p: PeerExports, version: int) -> list[Network]:
    return [n for n in map(ipaddress.ip_network, p.sources) if n.version == version]


def _map_elements(peers: list[PeerExports], version: int) -> list[Any]:
    """``peers_v*`` elements: each view of a peer (commented with its ID) -> jump to its chain."""
    return [[{"elem": {"val": _addr(n), "comment": comment(p.cluster_id)}}, {"jump": {"target": peer_chain(p.cluster_id)}}]
            for p in peers for n in _sources(p, version)]


class _Batch:
    def __init__(self, table: str) -> None:
        self.table = table
        self.cmds: list[dict[str, Any]] = []

    def obj(self, **kw: Any) -> dict[str, Any]:
        return {"family": FAMILY, "table": self.table, **kw}

    def add(self, verb: str, kind: str, **kw: Any) -> None:
        self.cmds.append({verb: {kind: self.obj(**kw)}})

    def rule(self, chain: str, expr: list[dict[str, Any]], note: str | None = None) -> None:
        self.add("add", "rule", chain=chain, expr=expr, **({"comment": note} if note else {}))

    def peer_map_elements(self, verb: str, peers: list[PeerExports]) -> None:
        for v in (4, 6):
            elems = _map_elements(peers, v) if verb == "add" else [_addr(n) for p in peers for n in _sources(p, v)]
            if elems:
                self.add(verb, "element", name=f"peers_v{v}", elem=elems)

    def peer_sets(self, p: PeerExports) -> None:
        for v in (4, 6):
            self.add("add", "set", name=peer_set(p.cluster_id, v),
                     type=["ipv4_addr" if v == 4 else "ipv6_addr", "inet_proto", "inet_service"],
                     flags=["interval"])

    def set_elements(self, p: PeerExports) -> None:
        for v in (4, 6):
            elems = elements(p.allowed, v)
            if elems:
                self.add("add", "element", name=peer_set(p.cluster_id, v), elem=elems)

    def peer_chain(self, p: PeerExports) -> None:
        chain = peer_chain(p.cluster_id)
        self.add("add", "chain", name=chain)
        for v, proto in ((4, "ip"), (6, "ip6")):
            key = {"concat": [{"payload": {"protocol": proto, "field": "daddr"}}, {"meta": {"key": "l4proto"}},
                              {"payload": {"protocol": "th", "field": "dport"}}]}
            self.rule(chain, [{"match": {"op": "==", "left": key, "right": f"@{peer_set(p.cluster_id, v)}"}},
                              {"accept": None}])
        self.rule(chain, [{"counter": None}, {"drop": None}], denied_comment(p.cluster_id))

    def text(self) -> str:
        return json.dumps({"nftables": self.cmds}, separators=_SEP)


def render(policy: ExportPolicy) -> list[dict[str, Any]]:
    """The commands that replace table ``inet <policy.table>`` with this policy."""
    b = _Batch(policy.table)
    table = {"family": FAMILY, "name": policy.table}
    b.cmds += [{"add": {"table": table}}, {"delete": {"table": table}}, {"add": {"table": table}}]
    b.add("add", "set", name=MARKER_SET, type="ipv4_addr")
    for p in policy.peers:
        b.peer_sets(p)
        b.peer_chain(p)
        b.set_elements(p)
    for v in (4, 6):
        # Elements inline: libnftables 1.0.6 cannot add elements to a verdict map
        # created in the same JSON batch (ENOENT); a delta adds them to the kernel's map.
        elems = _map_elements(list(policy.peers), v)
        b.add("add", "map", name=f"peers_v{v}", type="ipv4_addr" if v == 4 else "ipv6_addr", map="verdict",
              flags=["interval"], **({"elem": elems} if elems else {}))
    wg = policy.interface
    b.add("add", "chain", name=FORWARD, type="filter", hook="forward", prio=PRIORITY, policy="accept")
    b.rule(FORWARD, [_meta("iifname", wg), {"match": {"op": "==", "left": {"ct": {"key": "direction"}},
                                                      "right": "reply"}}, {"accept": None}],
           "replies to connections opened on this side")
    b.rule(FORWARD, [_meta("iifname", wg), {"match": {"op": "in", "left": {"ct": {"key": "state"}},
                                                      "right": "related"}}, {"accept": None}],
           "related to connections opened on this side (ICMP errors)")
    for v, proto in ((4, "ip"), (6, "ip6")):
        b.rule(FORWARD, [_meta("iifname", wg), {"vmap": {"key": {"payload": {"protocol": proto, "field": "saddr"}},
                                                         "data": f"@peers_v{v}"}}],
               f"from {wg} {proto}: the source names the peer")
    b.rule(FORWARD, [_meta("iifname", wg), {"counter": None}, {"drop": None}],
           f"from {wg}: no peer for this source: drop")
    return b.cmds


def render_text(policy: ExportPolicy) -> str:
    return json.dumps({"nftables": render(policy)}, separators=_SEP)


def render_delta(previous: ExportPolicy, policy: ExportPolicy) -> str | None:
    """Only the peers that changed (None: nothing did, or the table must be rewritten).

    A peer whose exports changed gets its sets flushed and refilled: its chain,
    its denied counter and every other peer stay as they are, and conntrack
    keeps every connection (the policy is checked per packet, so what is still
    allowed flows on, what no longer is stops).
    """
    if (previous.table, previous.interface) != (policy.table, policy.interface):
        return None
    old = {p.cluster_id: p for p in previous.peers}
    new = {p.cluster_id: p for p in policy.peers}
    if old == new:
        return None
    b = _Batch(policy.table)
    gone = [p for c, p in old.items() if c not in new]
    moved = [p for c, p in old.items() if c in new and p.sources != new[c].sources]
    b.peer_map_elements("delete", gone + moved)
    for p in gone:
        chain = peer_chain(p.cluster_id)
        b.add("flush", "chain", name=chain)
        b.add("delete", "chain", name=chain)
        for v in (4, 6):
            b.add("delete", "set", name=peer_set(p.cluster_id, v))
    added = [p for c, p in new.items() if c not in old]
    for p in added:
        b.peer_sets(p)
        b.peer_chain(p)
        b.set_elements(p)
    for c, p in new.items():
        if c in old and old[c].allowed != p.allowed:
            for v in (4, 6):
                b.add("flush", "set", name=peer_set(c, v))
            b.set_elements(p)
    b.peer_map_elements("add", [new[p.cluster_id] for p in moved] + added)
    return b.text()


def denied(policy: ExportPolicy, listed: dict[str, Any]) -> dict[str, dict[str, int]]:
    """Per peer, the packets and bytes its drop rule counted (zero when absent)."""
    rules = {(r["chain"], r.get("comment", "")): r for item in listed.get("nftables", [])
             if (r := item.get("rule")) is not None}
    out = {}
    for p in policy.peers:
        r = rules.get((peer_chain(p.cluster_id), denied_comment(p.cluster_id)), {})
        counter = next((e["counter"] for e in r.get("expr", []) if isinstance(e.get("counter"), dict)), {})
        out[p.cluster_id] = {"packets": int(counter.get("packets", 0)), "bytes": int(counter.get("bytes", 0))}
    return out


def problems(policy: ExportPolicy, listed: dict[str, Any]) -> list[str]:
    """What the kernel's export table lacks (empty: every peer's chain and drop rule are there)."""
    items = listed.get("nftables", [])
    chains = {c["chain"]["name"] for c in items if "chain" in c}
    rules = {(r["rule"]["chain"], r["rule"].get("comment", "")) for r in items if "rule" in r}
    if FORWARD not in chains:
        return [f"nft table {policy.table}: chain {FORWARD} missing"]
    missing = [p.cluster_id for p in policy.peers
               if (peer_chain(p.cluster_id), denied_comment(p.cluster_id)) not in rules]
    return [f"nft table {policy.table}: export rules missing for {', '.join(missing)}"] if missing else []
