"""Sans-IO renderer: FabricState -> one nftables table (JSON) implementing the packet walk.

See fabric/DESIGN.md for the layout and how to read ``nft list table inet crosswire``.
In short, with ``wg`` the WireGuard interface:

- ``postrouting`` (nat, srcnat), packets leaving into ``wg``: the destination
  (our view of some peer) is looked up in the interval verdict map
  ``to_peer_v4``/``_v6``, which jumps to chain ``to-<peer>``: one rule per
  mapping rewrites the source prefix-for-prefix from our real range to the
  peer's view of it. Any other source (host network) comes back and is SNATed
  through map ``host_v4``/``_v6`` (key: our view of the peer) straight to the
  gateway's pod address as that peer sees it; what is still left is dropped.
  With ``masquerade`` one more rule SNATs what came from a peer and leaves
  towards the cluster to the gateway's own pod address.
- ``prerouting`` (nat, dstnat), packets arriving from ``wg``: the source (our
  view of the sending peer, unique) is looked up in ``from_peer_v4``/``_v6``,
  which jumps to ``from-<peer>``: one rule per mapping rewrites the destination
  from the peer's view of us to our real range; anything else is dropped.
- ``mss-clamp`` (filter, forward): TCP SYNs through ``wg`` get MSS <= MTU-40/60.
- ``count`` (filter, forward): every packet through ``wg``, looked up by our
  view of the peer in ``count_v4``/``_v6``, jumps to ``cnt-<peer>``: one
  counter-only rule per mapping (the nat chains see only first packets).

The dispatch is one map lookup whatever the number of peers; each mapping
has its own counters (rule counters: per packet in ``cnt-<peer>``, per
connection in the nat chains; element counters in ``host_v*``).
Nothing here touches the system: ``render`` and ``mappings`` return data.
"""

from __future__ import annotations

import functools
import gc
import hashlib
import ipaddress
import json
import re
from collections.abc import Iterable
from typing import Any

from fabric.model import Address, FabricState, Network, PeerFabric, RangeMap, map_into

FAMILY = "inet"
COMMENT_MAX = 128  # nftables limit for rule/element comments


class NatError(ValueError):
    """The state cannot be rendered (overlapping views, malformed CIDRs, ...)."""


# ---------------------------------------------------------------- helpers


@functools.lru_cache(maxsize=65536)
def _parse_net(cidr: str) -> Network:
    return ipaddress.ip_network(cidr, strict=True)


def parse_network(cidr: str) -> Network:
    """``ipaddress.ip_network(cidr, strict=True)``, cached (shared with routes:
    apply parses every view in both; ValueError when it is not a CIDR)."""
    return _parse_net(cidr)


def _net(cidr: str, what: str) -> Network:
    try:
        return _parse_net(cidr)
    except ValueError as e:
        raise NatError(f"{what}: {cidr!r} is not a valid CIDR ({e})") from None


def _addr(text: str, what: str) -> Address:
    try:
        return ipaddress.ip_address(text)
    except ValueError as e:
        raise NatError(f"{what}: {text!r} is not an IP address ({e})") from None


def _proto(net: Network | Address) -> str:
    return "ip" if net.version == 4 else "ip6"


_PREFIX_TEXT: dict[Network, tuple[str, int]] = {}


def _prefix(net: Network) -> dict[str, Any]:
    # str() of an address is slow; 1000 peers render every network several times.
    text = _PREFIX_TEXT.get(net)
    if text is None:
        if len(_PREFIX_TEXT) > 100_000:
            _PREFIX_TEXT.clear()
        text = _PREFIX_TEXT[net] = (str(net.network_address), net.prefixlen)
    return {"prefix": {"addr": text[0], "len": text[1]}}


def _t(net: Network) -> str:
    p = _prefix(net)["prefix"]
    return f"{p['addr']}/{p['len']}"


def _comment(text: str) -> str:
    return text if len(text) <= COMMENT_MAX else text[: COMMENT_MAX - 3] + "..."


def chain_suffix(cluster_id: str) -> str:
    """A chain-name-safe form of a cluster ID (unchanged for DNS-label-like IDs)."""
    safe = re.sub(r"[^A-Za-z0-9_.-]", "_", cluster_id)[:64]
    if safe != cluster_id:
        safe += "-" + hashlib.sha256(cluster_id.encode()).hexdigest()[:8]
    return safe


def egress_chain(cluster_id: str) -> str:
    return f"to-{chain_suffix(cluster_id)}"


def ingress_chain(cluster_id: str) -> str:
    return f"from-{chain_suffix(cluster_id)}"


def count_chain(cluster_id: str) -> str:
    return f"cnt-{chain_suffix(cluster_id)}"


def _match(proto: str, field: str, right: Any, op: str = "==") -> dict[str, Any]:
    return {"match": {"op": op, "left": {"payload": {"protocol": proto, "field": field}}, "right": right}}


def _meta(key: str, value: Any, op: str = "==") -> dict[str, Any]:
    return {"match": {"op": op, "left": {"meta": {"key": key}}, "right": value}}


# An anonymous counter starting at zero: the same kernel object as
# {"packets": 0, "bytes": 0}, but fewer tokens for libnftables to parse (6000+ of them).
_COUNTER: dict[str, Any] = {"counter": None}
_COUNTER_TEXT = '{"counter":null}'


# ---------------------------------------------------------------- validation


def _first_overlap(nets: list[tuple[Network, str]], prefix: str, views_only: bool = False) -> None:
    """Raise on the first two overlapping networks: sort and sweep, O(n log n)."""
    order = sorted(nets, key=lambda x: (x[0].version, int(x[0].network_address), -x[0].prefixlen))
    reach: tuple[int, int, Network, str] | None = None  # (version, last address, net, owner)
    for net, owner in order:
        last = int(net.broadcast_address)
        if reach is not None and reach[0] == net.version and int(net.network_address) <= reach[1]:
            other, other_owner = reach[2], reach[3]
            if views_only and owner == "local range":
                net, owner, other, other_owner = other, other_owner, net, owner
            if views_only and owner != "local range":
                raise NatError(f"{owner[8:] if owner.startswith('view of ') else owner}: view {net} "
                               f"overlaps {other} ({other_owner}); views must be unique in this cluster")
            if not views_only:
                raise NatError(f"{prefix}{owner} {other} and {net} overlap")
        if reach is None or reach[0] != net.version or last > reach[1]:
            reach = (net.version, last, net, owner)


class _Checked:
    """Parsed, validated state (all CIDRs as ipaddress objects)."""

    def __init__(self, state: FabricState) -> None:
        local = state.local
        if not local.interface or len(local.interface) > 15 or '"' in local.interface:
            raise NatError(f"interface: {local.interface!r} is not a valid interface name")
        if not local.nft_table or not re.fullmatch(r"[A-Za-z][A-Za-z0-9_.-]*", local.nft_table):
            raise NatError(f"nft_table: {local.nft_table!r} is not a valid table name")
        if not 1280 <= local.mtu <= 65535:
            raise NatError(f"mtu: {local.mtu} out of range 1280..65535")
        self.pod = [_net(c, "pod_cidrs") for c in local.pod_cidrs]
        self.service = [_net(c, "service_cidrs") for c in local.service_cidrs]
        self.gateway = _addr(local.gateway_ip, "gateway_ip") if local.gateway_ip else None
        if local.masquerade and self.gateway is None:
            raise NatError("masquerade: needs gateway_ip (the address to SNAT to)")
        seen_ids: set[str] = set()
        seen_chains: set[str] = set()
        owned: list[tuple[Network, str]] = [(n, "local range") for n in self.pod + self.service]
        # Address text by id() of the (lru-cached, alive while self is) networks:
        # hashing ipaddress objects dominated rendering 1000 peers.
        self._ptext: dict[int, tuple[str, int]] = {}
        self.chains: dict[str, tuple[str, str]] = {}
        # Per-packet counting chain (both directions), filter/forward: see _count_parts.
        self.count_chains: dict[str, tuple[str]] = {}
        self.remote: dict[str, list[tuple[RangeMap, Network, Network]]] = {}
        self.local: dict[str, list[tuple[RangeMap, Network, Network]]] = {}
        # Shared rule fragments, keyed by id() of the networks above (see _mapping_rules).
        self.elem_keys: dict[int, list[tuple[str, str]]] = {}
        self.hosts: dict[tuple[int, int], Address | None] = {}  # host_target by (real, view)  # render_text: per family
        self.frags: dict[tuple[bool, int, int], tuple[dict[str, Any], dict[str, Any], str, str, str]] = {}
        self.count_frags: dict[tuple[bool, int], tuple[dict[str, Any], str]] = {}
        for peer in state.peers:
            cid = peer.cluster_id
            if not cid:
                raise NatError("peer cluster_id: empty")
            if cid in seen_ids:
                raise NatError(f"peer {cid!r}: listed twice")
            seen_ids.add(cid)
            if chain_suffix(cid) in seen_chains:
                raise NatError(f"peer {cid!r}: chain name collides with another peer")
            seen_chains.add(chain_suffix(cid))
            self.chains[cid] = (egress_chain(cid), ingress_chain(cid))
            self.count_chains[cid] = (count_chain(cid),)
            self.remote[cid] = [self._pair(peer, m, "remote") for m in peer.remote]
            self.local[cid] = [self._pair(peer, m, "local") for m in peer.local]
            for _m, r, v in self.remote[cid] + self.local[cid]:
                for n in (r, v):
                    if id(n) not in self._ptext:
                        self._ptext[id(n)] = (str(n.network_address), n.prefixlen)
            # Our views of peers must be unique in our address space (they are
            # map keys and WireGuard allowed IPs); the peer's views of us live
            # in its address space and may repeat across peers.
            owned += [(view, f"view of peer {cid!r}") for _m, _r, view in self.remote[cid]]
            _first_overlap([(v, "its view of us") for _m, _r, v in self.local[cid]], f"peer {cid!r}: ")
        _first_overlap(owned, "", views_only=True)

    def pre(self, net: Network) -> dict[str, Any]:
        t = self._ptext.get(id(net))
        return {"prefix": {"addr": t[0], "len": t[1]}} if t else _prefix(net)

    def text(self, net: Network) -> str:
        t = self._ptext.get(id(net))
        return f"{t[0]}/{t[1]}" if t else _t(net)

    @staticmethod
    def _pair(peer: PeerFabric, m: RangeMap, side: str) -> tuple[RangeMap, Network, Network]:
        what = f"peer {peer.cluster_id!r} {side} {m.kind}"
        if m.kind not in ("pod", "service"):
            raise NatError(f"{what}: kind must be pod or service, not {m.kind!r}")
        real, view = _net(m.real, what + " real"), _net(m.view, what + " view")
        if real.version != view.version or real.prefixlen != view.prefixlen:
            raise NatError(f"{what}: view {view} must have the same family and length as {real}")
        return m, real, view


# ---------------------------------------------------------------- rendering


def _mapping_parts(c: _Checked, peer: PeerFabric, egress: bool, text: bool) -> list[tuple[Any, Any, Any]]:
    """(match, verdict, comment) of each mapping rule of the peer's chain; with
    ``text`` as compact JSON strings (for ``render_text``), else as objects."""
    cid = peer.cluster_id
    out: list[tuple[Any, Any, Any]] = []
    for m, real, view in c.local[cid]:
        # The match and the verdict depend only on (direction, real, view), which
        # most peers share (every peer maps our pod range): build each once per
        # render and share the (read-only) dicts; only chain and comment differ.
        key = (egress, id(real), id(view))
        frag = c.frags.get(key)
        if frag is None:
            p = _proto(real)
            if egress:
                field, nat, match, target = "saddr", "snat", real, view
                head = f"src {c.text(real)} -> {c.text(view)}"
            else:
                field, nat, match, target = "daddr", "dnat", view, real
                head = f"dst {c.text(view)} -> {c.text(real)}"
            if real == view:
                verdict: dict[str, Any] = {"accept": None}
                head += " (no rewrite)"
            else:
                verdict = {nat: {"family": p, "addr": c.pre(target), "flags": "netmap",
                                 "type_flags": "prefix"}}
            matched = _match(p, field, c.pre(match))
            frag = c.frags[key] = (matched, verdict, head, _dumps(matched), _dumps(verdict))
        comment = f"{cid}: {'egress' if egress else 'ingress'} {m.kind} {frag[2]}"
        if len(comment) > COMMENT_MAX:
            comment = _comment(comment)
        out.append((frag[3], frag[4], _dumps(comment)) if text else (frag[0], frag[1], comment))
    return out


def _count_parts(c: _Checked, peer: PeerFabric, egress: bool, text: bool) -> list[tuple[Any, Any]]:
    """(match, comment) of each counting rule of the peer's ``cnt-`` chain, one per
    mapping and with the same comment as its NAT rule. They run in forward, where
    every packet passes (the NAT chains see only a connection's first): egress
    before SNAT, so the source is still our real range; ingress after DNAT, so
    the destination already is. One chain serves both directions without an
    interface match: an egress packet's destination is a view of the peer and
    an ingress packet's source is one, and views never overlap our real ranges
    (``_Checked``), so an egress packet cannot match an ingress rule nor the
    reverse. No verdict: counting changes nothing."""
    out: list[tuple[Any, Any]] = []
    parts = _mapping_parts(c, peer, egress, text)
    for (_m, real, _v), (_, _, comment) in zip(c.local[peer.cluster_id], parts, strict=True):
        key = (egress, id(real))
        frag = c.count_frags.get(key)
        if frag is None:
            matched = _match(_proto(real), "saddr" if egress else "daddr", c.pre(real))
            frag = c.count_frags[key] = (matched, _dumps(matched))
        out.append((frag[1] if text else frag[0], comment))
    return out


def _count_rules(c: _Checked, peer: PeerFabric, table: str, egress: bool) -> list[dict[str, Any]]:
    chain = c.count_chains[peer.cluster_id][0]
    return [{"family": FAMILY, "table": table, "chain": chain, "expr": [match, _COUNTER], "comment": comment}
            for match, comment in _count_parts(c, peer, egress, text=False)]


def _mapping_rules(c: _Checked, peer: PeerFabric, table: str, egress: bool) -> list[dict[str, Any]]:
    """One counted rule per mapping in the peer's chain: egress rewrites our source
    to the peer's view of it, ingress rewrites the peer's view of us back to our
    real destination (both prefix-for-prefix, netmap)."""
    chain = c.chains[peer.cluster_id][0 if egress else 1]
    return [{"family": FAMILY, "table": table, "chain": chain, "expr": [match, _COUNTER, verdict],
             "comment": comment} for match, verdict, comment in _mapping_parts(c, peer, egress, text=False)]


def host_target(c: _Checked, cid: str, version: int) -> Address | None:
    """The gateway's pod address as peer ``cid`` sees it (SNAT target for host-network sources)."""
    if c.gateway is None or c.gateway.version != version:
        return None
    for _m, real, view in c.local[cid]:
        # Most peers share their views of us: compute each (real, view) once.
        key = (id(real), id(view))
        if key not in c.hosts:
            c.hosts[key] = map_into(c.gateway, real, view) if c.gateway in real else None
        if c.hosts[key] is not None:
            return c.hosts[key]
    return None


def _host_elements(c: _Checked, state: FabricState, version: int, nets: bool = False) -> list[Any]:
    # Keyed by our views of each peer (the destination), valued with the final
    # address, so conntrack holds one rewrite. (``nets``: the key's val is the
    # network itself, for _host_elements_text.)
    out: list[Any] = []
    for peer in state.peers:
        target = host_target(c, peer.cluster_id, version)
        if target is None:
            continue
        for _m, _real, view in c.remote[peer.cluster_id]:
            if view.version == version:
                key = {"elem": {"val": view if nets else c.pre(view),
                                "comment": _comment(f"{peer.cluster_id}: host network -> {target}")}}
                out.append([key, str(target)])
    return out


def _elements(c: _Checked, state: FabricState, version: int, direction: int | None) -> list[Any]:
    """Our views of every peer of one family; with ``direction`` (0 egress, 1 ingress,
    2 counting) as verdict-map elements jumping to that peer's chain."""
    out: list[Any] = []
    for peer in state.peers:
        for m, _real, view in c.remote[peer.cluster_id]:
            if view.version != version:
                continue
            key = {"elem": {"val": c.pre(view), "comment": _comment(f"{peer.cluster_id} {m.kind}")}}
            # jump, not goto: a packet no per-peer rule takes comes back to the
            # base chain for the host-network map and the final drop.
            out.append([key, {"jump": {"target": _targets(c, peer.cluster_id)[direction]}}]
                       if direction is not None else key)
    return out


def _targets(c: _Checked, cid: str) -> tuple[str, str, str]:
    return c.chains[cid] + c.count_chains[cid]


def _prefix_text(c: _Checked, net: Network) -> str:
    pre = c.pre(net)["prefix"]
    return f'{{"prefix":{{"addr":"{pre["addr"]}","len":{pre["len"]}}}}}'


def _elements_text(c: _Checked, state: FabricState, version: int, direction: int | None) -> list[str]:
    """``_elements`` as compact JSON strings, for ``render_text``."""
    keys = c.elem_keys.get(version)
    if keys is None:  # the same keys serve both verdict maps and the set
        keys = c.elem_keys[version] = [
            (peer.cluster_id, f'{{"elem":{{"val":{_prefix_text(c, view)},'
                              f'"comment":{_dumps(_comment(f"{peer.cluster_id} {m.kind}"))}}}}}')
            for peer in state.peers for m, _real, view in c.remote[peer.cluster_id] if view.version == version]
    if direction is None:
        return [key for _cid, key in keys]
    targets = {cid: f',{{"jump":{{"target":{_dumps(_targets(c, cid)[direction])}}}}}]' for cid in c.chains}
    return [f"[{key}{targets[cid]}" for cid, key in keys]


def _host_elements_text(c: _Checked, state: FabricState, version: int) -> list[str]:
    """``_host_elements`` as compact JSON strings, for ``render_text``."""
    return [f'[{{"elem":{{"val":{_prefix_text(c, el[0]["elem"]["val"])},'
            f'"comment":{_dumps(el[0]["elem"]["comment"])}}}}},{_dumps(el[1])}]'
            for el in _host_elements(c, state, version, nets=True)]


def render(state: FabricState) -> dict[str, Any]:
    """The nftables JSON batch that replaces table ``inet <nft_table>`` wholly and atomically."""
    # 1000 peers make ~40 000 small dicts and lists. With the cyclic collector
    # on, every 700 of them start a pass, and the older generations' passes walk
    # the whole daemon heap; nothing here makes cycles, so pause it while building.
    out = _render_paused(state, raw=False)
    assert isinstance(out, dict)
    return out


def _render_paused(state: FabricState, raw: bool) -> dict[str, Any] | str:
    enabled = gc.isenabled()
    gc.disable()
    try:
        return _render(state, raw)
    finally:
        if enabled:
            gc.enable()


def render_text(state: FabricState) -> str:
    """``render(state)`` as compact JSON text, what ``Nft.apply`` sends.

    The same batch, byte for byte ``json.dumps(render(state), separators=(",", ":"))``
    (the unit tests check it), but the per-peer bulk (rules and map elements,
    ~12 000 objects for 1000 peers) is pasted from fragments serialized once
    instead of being built as dicts and then dumped.
    """
    out = _render_paused(state, raw=True)
    assert isinstance(out, str)
    return out


# json.dumps builds a new encoder on every call with non-default separators;
# strings (most calls: comments, chain names) go straight to the C escaper,
# which is what the encoder itself uses for them (ensure_ascii).
_ENCODE = json.JSONEncoder(separators=(",", ":")).encode
_QUOTE: Any = json.encoder.encode_basestring_ascii


def _dumps(obj: Any) -> str:
    return _QUOTE(obj) if type(obj) is str else _ENCODE(obj)


def _render(state: FabricState, raw: bool) -> dict[str, Any] | str:
    c = _Checked(state)
    local = state.local
    t = local.nft_table
    wg = local.interface
    tbl = {"family": FAMILY, "name": t}
    cmds_: list[Any] = [
        # add+delete: replaces whatever is there (or nothing) in the same batch.
        {"add": {"table": dict(tbl)}},
        {"delete": {"table": dict(tbl)}},
        {"add": {"table": dict(tbl)}},
    ]

    cmds: list[Any] = cmds_  # dicts, or (raw) also pre-serialized strings

    def add(kind: str, body: dict[str, Any], raw_elems: list[str] | None = None) -> None:
        cmd = {"add": {kind: {"family": FAMILY, "table": t, **body}}}
        if raw_elems:
            # "elem" is the body's last key: paste it before the closing braces.
            cmds.append(_dumps(cmd)[:-3] + ',"elem":[' + ",".join(raw_elems) + "]}}}")
        else:
            cmds.append(cmd)

    # Chains before the maps whose elements jump to them.
    add("chain", {"name": "prerouting", "type": "nat", "hook": "prerouting", "prio": -100, "policy": "accept"})
    add("chain", {"name": "postrouting", "type": "nat", "hook": "postrouting", "prio": 100, "policy": "accept"})
    add("chain", {"name": "mss-clamp", "type": "filter", "hook": "forward", "prio": -150, "policy": "accept"})
    # After DNAT (prerouting) and before SNAT (postrouting): real addresses on our side.
    add("chain", {"name": "count", "type": "filter", "hook": "forward", "prio": 0, "policy": "accept"})
    for peer in state.peers:
        for name in _targets(c, peer.cluster_id):
            if raw:
                cmds.append(f'{{"add":{{"chain":{{"family":"{FAMILY}","table":{_dumps(t)},"name":{_dumps(name)}}}}}}}')
            else:
                add("chain", {"name": name})
    for v, addr_type in ((4, "ipv4_addr"), (6, "ipv6_addr")):
        for name, way in ((f"to_peer_v{v}", 0), (f"from_peer_v{v}", 1), (f"count_v{v}", 2)):
            body: dict[str, Any] = {"name": name, "type": addr_type, "map": "verdict", "flags": ["interval"]}
            if raw:
                add("map", body, _elements_text(c, state, v, way))
                continue
            elems = _elements(c, state, v, way)
            if elems:
                body["elem"] = elems
            add("map", body)
        body = {"name": f"peer_views_v{v}", "type": addr_type, "flags": ["interval"]}
        if raw:
            add("set", body, _elements_text(c, state, v, None))
        else:
            elems = _elements(c, state, v, None)
            if elems:
                body["elem"] = elems
            add("set", body)
        body = {"name": f"host_v{v}", "type": addr_type, "map": addr_type, "flags": ["interval"],
                "stmt": [{"counter": None}]}  # a counter on every element
        if raw:
            add("map", body, _host_elements_text(c, state, v))
            continue
        elems = _host_elements(c, state, v)
        if elems:
            body["elem"] = elems
        add("map", body)


    def rule(chain: str, expr: list[dict[str, Any]], comment: str) -> None:
        add("rule", {"chain": chain, "expr": expr, "comment": _comment(comment)})

    for v, p in ((4, "ip"), (6, "ip6")):
        rule("prerouting", [_meta("iifname", wg),
                            {"vmap": {"key": {"payload": {"protocol": p, "field": "saddr"}},
                                      "data": f"@from_peer_v{v}"}}],
             f"from {wg} {p}: the source (our view of a peer) picks the peer")
    rule("prerouting", [_meta("iifname", wg), _COUNTER, {"drop": None}],
         f"from {wg}: source in no peer view, or destination not offered to that peer: drop")
    for v, p in ((4, "ip"), (6, "ip6")):
        rule("postrouting", [_meta("oifname", wg),
                             {"vmap": {"key": {"payload": {"protocol": p, "field": "daddr"}},
                                       "data": f"@to_peer_v{v}"}}],
             f"into {wg} {p}: the destination (our view of a peer) picks the peer")
    for v, p in ((4, "ip"), (6, "ip6")):
        rule("postrouting", [_meta("oifname", wg),
                             {"snat": {"family": p, "addr": {"map": {
                                 "key": {"payload": {"protocol": p, "field": "daddr"}}, "data": f"@host_v{v}"}}}}],
             f"into {wg} {p}: other sources (host network) -> the gateway as that peer sees it")
    rule("postrouting", [_meta("oifname", wg), _COUNTER, {"drop": None}],
         f"into {wg}: no mapping for this source and peer: drop")
    if local.masquerade and c.gateway is not None:
        g = c.gateway
        rule("postrouting", [_meta("oifname", wg, "!="),
                             _match(_proto(g), "saddr", f"@peer_views_v{g.version}"), _COUNTER,
                             {"snat": {"family": _proto(g), "addr": str(g)}}],
             f"masquerade: from peers into the cluster -> {g}")
    for v, p in ((4, "ip"), (6, "ip6")):
        rule("count", [_meta("oifname", wg),
                       {"vmap": {"key": {"payload": {"protocol": p, "field": "daddr"}}, "data": f"@count_v{v}"}}],
             f"into {wg} {p}: count every packet, per peer and mapping")
        rule("count", [_meta("iifname", wg),
                       {"vmap": {"key": {"payload": {"protocol": p, "field": "saddr"}}, "data": f"@count_v{v}"}}],
             f"from {wg} {p}: count every packet, per peer and mapping")
    for v, nfproto in ((4, "ipv4"), (6, "ipv6")):
        mss = local.mtu - (40 if v == 4 else 60)
        for direction in ("iifname", "oifname"):
            rule("mss-clamp", [
                _meta(direction, wg),
                _meta("nfproto", nfproto),
                {"match": {"op": "==", "left": {"&": [{"payload": {"protocol": "tcp", "field": "flags"}},
                                                      ["syn", "rst"]]}, "right": "syn"}},
                {"match": {"op": ">", "left": {"tcp option": {"name": "maxseg", "field": "size"}},
                           "right": mss}},
                {"mangle": {"key": {"tcp option": {"name": "maxseg", "field": "size"}}, "value": mss}},
            ], f"{direction} {wg} {nfproto}: clamp MSS to MTU {local.mtu}")
    if raw:
        for peer in state.peers:
            cmds.extend(_peer_rules_text(c, peer, t))
        return '{"nftables":[' + ",".join(x if isinstance(x, str) else _dumps(x) for x in cmds) + "]}"
    for peer in state.peers:
        for r in (_mapping_rules(c, peer, t, egress=True) + _mapping_rules(c, peer, t, egress=False)
                  + _count_rules(c, peer, t, egress=True) + _count_rules(c, peer, t, egress=False)):
            cmds.append({"add": {"rule": r}})
    return {"nftables": cmds}


# ---------------------------------------------------------------- reporting


def _peer_rules_text(c: _Checked, peer: PeerFabric, table: str) -> list[str]:
    """The peer's mapping and counting rules as pre-serialized batch commands
    (the fast path shared by ``render_text`` and ``render_delta``)."""
    head = f'{{"add":{{"rule":{{"family":"{FAMILY}","table":{_dumps(table)},"chain":'
    out: list[str] = []
    for egress in (True, False):
        chain = _dumps(c.chains[peer.cluster_id][0 if egress else 1])
        for match, verdict, comment in _mapping_parts(c, peer, egress, text=True):
            out.append(f'{head}{chain},"expr":[{match},{_COUNTER_TEXT},{verdict}],"comment":{comment}}}}}}}')
    chain = _dumps(c.count_chains[peer.cluster_id][0])
    for egress in (True, False):
        for match, comment in _count_parts(c, peer, egress, text=True):
            out.append(f'{head}{chain},"expr":[{match},{_COUNTER_TEXT}],"comment":{comment}}}}}}}')
    return out


def _rule_index(rules: Iterable[dict[str, Any]]) -> dict[tuple[str, str], dict[str, Any]]:
    return {(r["chain"], r.get("comment", "")): r for r in rules}


def mappings(state: FabricState) -> list[dict[str, Any]]:
    """Per peer: real ranges, our views, the peer's views of us, and what implements them.

    ``rules``: the per-peer NAT chain rules, identified by (chain, comment), each
    with its per-packet counting rule (``count_chain``, same comment);
    ``host_network``: the ``host_v4``/``host_v6`` map elements (key: our view of
    the peer). ``with_counters`` fills in packets/bytes (and rule handles) from
    ``Nft.list_table``.
    """
    c = _Checked(state)
    t = state.local.nft_table
    out: list[dict[str, Any]] = []
    for peer in state.peers:
        cid = peer.cluster_id
        rules = _mapping_rules(c, peer, t, egress=True) + _mapping_rules(c, peer, t, egress=False)
        counts = _count_rules(c, peer, t, egress=True) + _count_rules(c, peer, t, egress=False)
        out.append({
            "cluster_id": cid,
            "egress_chain": egress_chain(cid),
            "ingress_chain": ingress_chain(cid),
            "remote": [{"kind": m.kind, "real": str(r), "view": str(v)} for m, r, v in c.remote[cid]],
            "local": [{"kind": m.kind, "real": str(r), "view": str(v)} for m, r, v in c.local[cid]],
            "rules": [{"chain": r["chain"], "comment": r["comment"], "rule": r,
                       "count_chain": k["chain"], "count_rule": k} for r, k in zip(rules, counts, strict=True)],
            "host_network": _host_rows(c, peer),
        })
    return out


def _host_rows(c: _Checked, peer: PeerFabric) -> list[dict[str, Any]]:
    rows = []
    for v in (4, 6):
        target = host_target(c, peer.cluster_id, v)
        if target is None:
            continue
        for _m, _r, view in c.remote[peer.cluster_id]:
            if view.version == v:
                rows.append({"map": f"host_v{v}", "key": c.text(view), "target": str(target),
                             "comment": _comment(f"{peer.cluster_id}: host network -> {target}")})
    return rows


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


# ---------------------------------------------------------------- changes only


def _base_inputs(state: FabricState) -> tuple[Any, ...]:
    lo = state.local
    return (lo.interface, lo.nft_table, lo.mtu, lo.pod_cidrs, lo.service_cidrs, lo.gateway_ip, lo.masquerade)


def render_delta(previous: FabricState, state: FabricState) -> str | None:
    """A batch (JSON text) taking the table ``render(previous)`` made to the one
    ``render(state)`` makes, touching only the peers that were added, removed or
    changed; None when something shared by all peers changed (render it wholly).

    Only valid if the kernel's table really is ``render(previous)``: when it is
    not, the batch fails as a whole (a missing chain or element), nothing
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
    t = state.local.nft_table
    head = f'"family":"{FAMILY}","table":{_dumps(t)}'
    cmds: list[str] = []
    # Out: the old peers' elements (map keys are our views of them) ...
    c_old = _Checked(FabricState(previous.local, tuple(gone + changed)))
    for v in (4, 6):
        views = [_prefix_text(c_old, view) for p in gone + changed for _m, _r, view in c_old.remote[p.cluster_id]
                 if view.version == v]
        hosts = [_prefix_text(c_old, el[0]["elem"]["val"])
                 for el in _host_elements(c_old, FabricState(previous.local, tuple(gone + changed)), v, nets=True)]
        for name, keys in ((f"to_peer_v{v}", views), (f"from_peer_v{v}", views), (f"count_v{v}", views),
                           (f"peer_views_v{v}", views), (f"host_v{v}", hosts)):
            if keys:
                cmds.append(f'{{"delete":{{"element":{{{head},"name":"{name}","elem":[{",".join(keys)}]}}}}}}')
    # ... then their rules; chains of removed peers go (nothing jumps to them any more).
    for p in gone + changed:
        for chain in _targets(c_old, p.cluster_id):
            cmds.append(f'{{"flush":{{"chain":{{{head},"name":{_dumps(chain)}}}}}}}')
    for p in gone:
        for chain in _targets(c_old, p.cluster_id):
            cmds.append(f'{{"delete":{{"chain":{{{head},"name":{_dumps(chain)}}}}}}}')
    # In: chains of new peers, then rules and elements of new and changed peers.
    sub = FabricState(state.local, tuple(new[p.cluster_id] for p in changed) + tuple(added))
    c = _Checked(sub)
    for p in added:
        for chain in _targets(c, p.cluster_id):
            # add + flush: should the chain already exist (the kernel is ahead of
            # ``previous``), its rules are not doubled. Elements need no such care:
            # adding one that exists with another value, or overlaps, fails the batch.
            cmds.append(f'{{"add":{{"chain":{{{head},"name":{_dumps(chain)}}}}}}}')
            cmds.append(f'{{"flush":{{"chain":{{{head},"name":{_dumps(chain)}}}}}}}')
    for p in sub.peers:
        cmds.extend(_peer_rules_text(c, p, t))
    for v in (4, 6):
        for name, elems in ((f"to_peer_v{v}", _elements_text(c, sub, v, 0)),
                            (f"from_peer_v{v}", _elements_text(c, sub, v, 1)),
                            (f"count_v{v}", _elements_text(c, sub, v, 2)),
                            (f"peer_views_v{v}", _elements_text(c, sub, v, None)),
                            (f"host_v{v}", _host_elements_text(c, sub, v))):
            if elems:
                cmds.append(f'{{"add":{{"element":{{{head},"name":"{name}","elem":[{",".join(elems)}]}}}}}}')
    return '{"nftables":[' + ",".join(cmds) + "]}"
