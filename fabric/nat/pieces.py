"""Each peer's part of the table, built once per state as pre-serialized JSON.

``build(state)`` validates the state (``check``) and makes, for every peer, its
chains, its NAT and counting rules and its map/set elements as compact JSON
text (``PeerPieces``); the whole-table batch, the changes-only batch and the
``/api/v1/nat`` report are all composed from these (render.py, report.py).

Why text: for 1000 peers the table holds ~12 000 per-peer objects, and
building them as dicts to serialize them afterwards cost several times more
than pasting fragments. Most of the text is shared: the expressions of a
mapping rule depend only on (direction, kind, real, view), and nearly every
peer maps the same real ranges to the same views of us, so each is written
once per build; only chain names and comments are escaped per peer. The text
is what ``json.dumps(..., separators=(",", ":"))`` makes of the same objects
(the report parses each shared expression back once).

``build`` keeps the tables of the last two states (keyed by the frozen
``FabricState``): an apply validates, renders and verifies one state, and the
API reports the same one, without building it again. Each peer's pieces are
also kept on their own (``peer_pieces``, keyed by our checked side and the
frozen ``PeerFabric``), so a new state where one peer changed builds that
peer and runs only the checks that involve all peers.
"""

from __future__ import annotations

import contextlib
import functools
import gc
import json
from collections.abc import Callable, Collection, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

from fabric.model import Address, FabricState, PeerFabric, collapse, map_into
from fabric.nat.check import (
    CheckedLocal,
    CheckedPeer,
    Cidr,
    Mapping,
    check_local,
    check_peer,
    check_peers,
    cidr,
)
from fabric.nat.names import FAMILY, Direction, PeerChain, comment

# json.dumps builds a new encoder on every call with non-default separators;
# strings (most calls: comments, chain names) go straight to the C escaper,
# which is what the encoder itself uses for them (ensure_ascii).
_ENCODE = json.JSONEncoder(separators=(",", ":")).encode
_QUOTE: Callable[[str], str] = json.encoder.encode_basestring_ascii

# An anonymous counter starting at zero: the same kernel object as
# {"packets": 0, "bytes": 0}, but fewer tokens for libnftables to parse (6000+ of them).
COUNTER = '{"counter":null}'


def dumps(obj: Any) -> str:
    """Compact JSON, as the rest of the batch is written."""
    return _QUOTE(obj) if type(obj) is str else _ENCODE(obj)


def _proto(version: int) -> str:
    return "ip" if version == 4 else "ip6"


@contextlib.contextmanager
def gc_paused() -> Iterator[None]:
    # 1000 peers make tens of thousands of small objects. With the cyclic
    # collector on, every 700 of them start a pass, and the older generations'
    # passes walk the whole daemon heap; nothing here makes cycles.
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


# From this many single-address mappings of one peer and family on, they share
# one map rule per direction (one lookup, whatever their number) instead of a rule each.
MAP_MIN = 4

# Iterating an Enum class runs Python code each time; rendering does it per peer.
CHAINS = tuple(PeerChain)


def element_maps(version: int) -> tuple[str, ...]:
    """The maps and sets keyed by our views of the peers, in the table's order."""
    return (*(pc.map(version) for pc in CHAINS), f"peer_views_v{version}", f"host_v{version}")


class Rule(NamedTuple):
    """One per-peer rule: ``text`` is its JSON object for the batches; chain,
    expressions (JSON text, shared by the peers with the same mapping) and
    comment identify it in the report."""

    chain: str
    expr: str
    comment: str
    text: str


class MappingRules(NamedTuple):
    """What implements one of the peer's ``local`` mappings (same index)."""

    egress: Rule  # in to-<peer>: our source -> the peer's view of it
    ingress: Rule | None  # in from-<peer>: the peer's view of us -> our real address (None: an egress block)
    count_egress: Rule  # its counting twins in cnt-<peer>
    count_ingress: Rule | None
    # A single address (``Mapping.single``): the rules are the peer's shared map
    # rules of that family, and these its elements ("real : view", "view : real").
    egress_element: str | None = None
    ingress_element: str | None = None
    # ... and their counting twins are the two lookups of the peer's counting
    # set of that family: this mapping is its element (our real address).
    count_set: str | None = None
    count_element: str | None = None


class Key(NamedTuple):
    """A key of the maps and sets keyed by our views of the peer."""

    cidr: Cidr
    note: str  # the element comment: "<peer> <kind>[+<kind>...]"


@dataclass(frozen=True)
class PeerPieces:
    """One peer's chains, rules and elements, as JSON text."""

    peer: CheckedPeer
    chains: dict[PeerChain, str]  # chain names
    quoted: tuple[str, ...]  # the chain names as JSON strings, in ``CHAINS`` order
    # The rules of the peer's chains in table order: to-<peer>, then
    # from-<peer> (nat_rules); cnt-<peer>, egress twins then ingress twins (count_rules).
    nat_rules: tuple[Rule, ...]
    count_rules: tuple[Rule, ...]
    # By map or set name (``element_maps``): the peer's elements, comma-separated
    # ("" for none). Keys are our views of the peer; the verdict maps jump to
    # the peer's chains, host_v* holds the gateway as the peer sees it.
    elements: dict[str, str]
    host_target: dict[int, Address | None]  # by IP version
    mapping_rules: tuple[MappingRules, ...] = ()  # per ``peer.local`` mapping
    keys: tuple[Key, ...] = ()  # of every map/set above, both families
    # The peer's own sets (name, its "add set" command with elements): one per
    # family holding our mapped single addresses, a counter on each element.
    sets: tuple[tuple[str, str], ...] = ()

    @property
    def cluster_id(self) -> str:
        return self.peer.cluster_id

    def key_of(self, addr: Address) -> Key | None:
        """The map key (our view of the peer, maybe collapsed with its neighbours) holding ``addr``."""
        return next((k for k in self.keys if addr.version == k.cidr.version and addr in k.cidr.net), None)


@dataclass(frozen=True)
class Table:
    """A validated state and every peer's pieces, in the state's order."""

    local: CheckedLocal
    peers: tuple[PeerPieces, ...]

    @functools.cached_property
    def _position(self) -> dict[str, int]:
        return {p.peer.cluster_id: i for i, p in enumerate(self.peers)}

    def of(self, only: Collection[str] | None) -> Sequence[PeerPieces]:
        """The pieces of the peers in ``only`` (None: all), in the state's order, found
        by ID: a page's NAT asks for one peer of 1,000 every poll."""
        if only is None:
            return self.peers
        return [self.peers[i] for i in sorted({self._position[c] for c in only if c in self._position})]


class Builder:
    """Builds peers' pieces for one local side, sharing fragments between peers."""

    def __init__(self, local: CheckedLocal) -> None:
        self.local = local
        self._rule_head = f'{{"family":"{FAMILY}","table":{dumps(local.table)},"chain":'
        self._set_head = f'"family":"{FAMILY}","table":{dumps(local.table)}'
        self._maps = {v: element_maps(v) for v in (4, 6)}
        # Shared fragments, keyed by what they depend on (CIDR texts as parsed).
        self._rules: dict[tuple[Direction, str, str, str], tuple[str, str, str]] = {}
        self._host: dict[tuple[int, str, str], tuple[Address, str] | None] = {}

    def _rule_frags(self, direction: Direction, m: Mapping) -> tuple[str, str, str]:
        """The expressions of mapping ``m``'s NAT rule (match, counter, verdict),
        its comment after the cluster ID, and the expressions of its counting
        rule (match on the real side, where forward sees it; counter)."""
        key = (direction, m.kind, m.real.text, m.view.text)
        frag = self._rules.get(key)
        if frag is None:
            p = _proto(m.real.version)
            if direction is Direction.EGRESS:
                field, nat, match, target = "saddr", "snat", m.real, m.view
                note = f"{direction.value} {m.kind} src {m.real.text} -> {m.view.text}"
            else:
                field, nat, match, target = "daddr", "dnat", m.view, m.real
                note = f"{direction.value} {m.kind} dst {m.view.text} -> {m.real.text}"
            if m.real.text == m.view.text:
                verdict = '{"accept":null}'
                note += " (no rewrite)"
            else:
                verdict = (f'{{"{nat}":{{"family":"{p}","addr":{target.prefix},'
                           f'"flags":"netmap","type_flags":"prefix"}}}}')
            left = f'{{"match":{{"op":"==","left":{{"payload":{{"protocol":"{p}","field":"{field}"}}}},"right":'
            frag = self._rules[key] = (f"[{left}{match.prefix}}}}},{COUNTER},{verdict}]", note,
                                       f"[{left}{m.real.prefix}}}}},{COUNTER}]")
        return frag

    def _host_target(self, peer: CheckedPeer, version: int) -> tuple[Address, str] | None:
        gateway = self.local.gateway_of(version)
        if gateway is None:
            return None
        if any(m.block and m.view.version == version for m in peer.local):
            return None  # the egress block's catch-all in to-<peer> already takes every other source
        for m in peer.local:
            key = (version, m.real.text, m.view.text)  # per family: dual stack has two gateway addresses
            if key not in self._host:  # most peers share their views of us
                addr = map_into(gateway, m.real.net, m.view.net) if gateway in m.real.net else None
                self._host[key] = None if addr is None else (addr, str(addr))
            target = self._host[key]
            if target is not None:
                return target
        return None

    def _block_frags(self, m: Mapping) -> tuple[str, str, str]:
        """An egress block's rule (match the family only, SNAT into the block's
        range, ``persistent`` so one client keeps one address), comment, and its
        counting twin: every packet of that family into the interface (there is
        no real range to match on)."""
        key = (Direction.EGRESS, m.kind, m.real.text, m.view.text)
        frag = self._rules.get(key)
        if frag is None:
            p, nf = _proto(m.view.version), "ipv4" if m.view.version == 4 else "ipv6"
            first, last = str(m.view.net.network_address), str(m.view.net.broadcast_address)
            family = f'{{"match":{{"op":"==","left":{{"meta":{{"key":"nfproto"}}}},"right":"{nf}"}}}}'
            wg = f'{{"match":{{"op":"==","left":{{"meta":{{"key":"oifname"}}}},"right":{dumps(self.local.interface)}}}}}'
            snat = f'{{"snat":{{"family":"{p}","addr":{{"range":["{first}","{last}"]}},"flags":"persistent"}}}}'
            frag = self._rules[key] = (f"[{family},{COUNTER},{snat}]", f"egress block: any source -> {first}-{last}",
                                       f"[{wg},{family},{COUNTER}]")
        return frag

    def _map_frags(self, direction: Direction, maps: list[Mapping], named: str) -> tuple[str, list[str]]:
        """One rule for all of a family's single-address mappings, rewriting
        through an anonymous map: one hash lookup, whatever their number.
        Egress first matches our addresses in the peer's named set ``named``
        (which also counts them), so its counter counts only their connections;
        ingress has no match and no counter (a miss ends the rule and the
        packet meets prerouting's counted drop): anonymous sets cost the kernel
        as much to create as tens of rules. Returns the expressions and each
        mapping's element ("from : to")."""
        p = _proto(maps[0].view.version)
        pairs = [(m.real.text.split("/")[0], m.view.text.split("/")[0]) for m in maps]
        if direction is Direction.EGRESS:
            field, nat = "saddr", "snat"
        else:
            field, nat = "daddr", "dnat"
            pairs = [(v, r) for r, v in pairs]
        payload = f'{{"payload":{{"protocol":"{p}","field":"{field}"}}}}'
        data = ",".join(f'["{a}","{b}"]' for a, b in pairs)
        match = (f'{{"match":{{"op":"==","left":{payload},"right":{dumps("@" + named)}}}}},{COUNTER},'
                 if direction is Direction.EGRESS else "")
        expr = f'[{match}{{"{nat}":{{"family":"{p}","addr":{{"map":{{"key":{payload},"data":{{"set":[{data}]}}}}}}}}}}]'
        return expr, [f"{a} : {b}" for a, b in pairs]

    def _keys(self, peer: CheckedPeer) -> list[Key]:
        """The map keys: each pod/service view as it is, the sparse views
        (export, gateway, egress) collapsed into the fewest CIDRs, as IPAM
        mostly allocates them adjacent (22 /32s of a peer become a few keys)."""
        cid = peer.cluster_id
        keys = [Key(m.view, f"{cid} {m.kind}") for m in peer.remote if m.kind in ("pod", "service")]
        sparse = sorted((m for m in peer.remote if m.kind not in ("pod", "service")),
                        key=lambda m: (m.view.version, int(m.view.net.network_address)))
        k = 0  # the views (in order) inside each collapsed CIDR, also in order
        for text in collapse(m.view.text for m in sparse):
            net = cidr(text)
            end, inside = int(net.net.broadcast_address), []
            while k < len(sparse) and sparse[k].view.version == net.version \
                    and int(sparse[k].view.net.network_address) <= end:
                inside.append(sparse[k])
                k += 1
            if len(inside) == 1:
                keys.append(Key(inside[0].view, f"{cid} {inside[0].kind}"))
            else:
                keys.append(Key(net, f"{cid} {'+'.join(sorted({m.kind for m in inside}))}"))
        return keys

    def peer(self, peer: CheckedPeer) -> PeerPieces:
        cid = peer.cluster_id
        chains = {pc: f"{pc.prefix}-{peer.suffix}" for pc in CHAINS}
        quoted = tuple(dumps(chains[pc]) for pc in CHAINS)
        egress, ingress, count = quoted
        # One counted NAT rule per mapping in the peer's chain: egress rewrites our
        # source to the peer's view of it, ingress rewrites the peer's view of us
        # back to our real destination (both prefix-for-prefix, netmap).
        # Single addresses (sparse views: exports, the gateway) share one map rule
        # per family and direction; an egress block is one catch-all SNAT after
        # every other rule of its family, with no ingress rule (nothing is
        # offered under it: the peer's drop, last in from-<peer>, counts such packets).
        # The counting rules run in forward, where every packet passes (the NAT
        # chains see only a connection's first): egress before SNAT, so the source
        # is still our real range; ingress after DNAT, so the destination already
        # is. One chain serves both directions without an interface match: an
        # egress packet's destination is a view of the peer and an ingress
        # packet's source is one, and views never overlap our real ranges
        # (check), so an egress packet cannot match an ingress rule nor the
        # reverse. No verdict: counting changes nothing.
        head = self._rule_head
        targets = {PeerChain.EGRESS: egress, PeerChain.INGRESS: ingress, PeerChain.COUNT: count}

        def rule(pc: PeerChain, expr: str, note: str) -> Rule:
            return Rule(chains[pc], expr, note, f'{head}{targets[pc]},"expr":{expr},"comment":{dumps(note)}}}')

        to_rules: list[Rule] = []
        from_rules: list[Rule] = []
        count_out: list[Rule] = []
        count_in: list[Rule] = []
        made: list[MappingRules] = []
        singles: dict[int, list[int]] = {4: [], 6: []}
        blocks: list[int] = []
        sets: list[tuple[str, str]] = []
        # Few single addresses get a rule each: an anonymous set and map cost the
        # kernel more to create than a few rules (bench/nat_scale.py --sparse).
        mapped = {v: sum(m.single and m.view.version == v for m in peer.local) >= MAP_MIN for v in (4, 6)}
        for m in peer.local:
            if m.block:
                expr, after_id, counted = self._block_frags(m)
                note = comment(f"{cid}: {after_id}")
                blocks.append(len(made))
                made.append(MappingRules(rule(PeerChain.EGRESS, expr, note), None,
                                         rule(PeerChain.COUNT, counted, note), None))
                count_out.append(made[-1].count_egress)
                continue
            pair = []
            for direction, pc, out in ((Direction.EGRESS, PeerChain.EGRESS, to_rules),
                                       (Direction.INGRESS, PeerChain.INGRESS, from_rules)):
                expr, after_id, counted = self._rule_frags(direction, m)
                note = comment(f"{cid}: {after_id}")
                nat = rule(pc, expr, note)
                if not (m.single and mapped[m.view.version]):
                    out.append(nat)
                pair += [nat, rule(PeerChain.COUNT, counted, note)]
            made.append(MappingRules(pair[0], pair[2], pair[1], pair[3]))
            if m.single and mapped[m.view.version]:
                singles[m.view.version].append(len(made) - 1)
                continue  # counted by the family's set below
            count_out.append(pair[1])
            count_in.append(pair[3])
        for v in (4, 6):
            js = singles[v]
            if not js:
                continue
            kinds = "+".join(sorted({peer.local[j].kind for j in js}))
            name = f"exp-{peer.suffix}-v{v}"
            both = []
            for direction, pc, out, side in ((Direction.EGRESS, PeerChain.EGRESS, to_rules, "src"),
                                             (Direction.INGRESS, PeerChain.INGRESS, from_rules, "dst")):
                expr, elems = self._map_frags(direction, [peer.local[j] for j in js], name)
                nat = rule(pc, expr, comment(f"{cid}: {direction.value} {kinds} {side} map ({len(js)} addresses)"))
                # The per-address rules precede the maps (none overlaps a map's address in practice).
                out.append(nat)
                both.append((nat, elems))
            # Per-address counters without a rule per address: the counting
            # chain looks the address up (source out, destination in) in the
            # peer's set, whose elements count what they match. Two lookups
            # per packet whatever the number of addresses; one set, so each
            # element counts both ways.
            reals = [peer.local[j].real.text.split("/")[0] for j in js]
            addr_type = "ipv4_addr" if v == 4 else "ipv6_addr"
            sets.append((name, f'{{"add":{{"set":{{{self._set_head},"name":{dumps(name)},"type":"{addr_type}",'
                               f'"stmt":[{{"counter":null}}],"elem":[{",".join(dumps(a) for a in reals)}]}}}}}}'))
            p = _proto(v)
            twins: list[Rule] = []
            for field, direction, side, out in (("saddr", Direction.EGRESS, "src", count_out),
                                                ("daddr", Direction.INGRESS, "dst", count_in)):
                expr = (f'[{{"match":{{"op":"==","left":{{"payload":{{"protocol":"{p}","field":"{field}"}}}},'
                        f'"right":{dumps("@" + name)}}}}}]')
                twins.append(rule(PeerChain.COUNT, expr, comment(
                    f"{cid}: {direction.value} {kinds} {side} counted per address in @{name}")))
                out.append(twins[-1])
            for n, j in enumerate(js):
                made[j] = made[j]._replace(egress=both[0][0], ingress=both[1][0],
                                           egress_element=both[0][1][n], ingress_element=both[1][1][n],
                                           count_egress=twins[0], count_ingress=twins[1],
                                           count_set=name, count_element=reals[n])
        # The blocks last in to-<peer>: every source the rules above did not take.
        to_rules += [made[j].egress for j in blocks]
        # Last in from-<peer>: what the peer sends to an address not offered to it is
        # dropped here, on the peer's own counter (``drop_rule``), not on prerouting's
        # final drop, which is left with sources in no peer's view.
        from_rules.append(rule(PeerChain.INGRESS, '[{"counter":null},{"drop":null}]', drop_comment(cid)))
        keys = self._keys(peer)
        elements: dict[str, str] = {}
        host: dict[int, Address | None] = {}
        # jump, not goto: a packet no rule of to-<peer> takes comes back to the base
        # chain for the host-network map and the final drop (from-<peer> ends in its own).
        jumps = [f',{{"jump":{{"target":{q}}}}}]' for q in quoted]
        for v in (4, 6):
            *verdict_maps, views_set, host_map = self._maps[v]
            target = self._host_target(peer, v)
            host[v] = target[0] if target else None
            mine = [k for k in keys if k.cidr.version == v]
            if not mine:
                elements.update(dict.fromkeys(self._maps[v], ""))
                continue
            texts = [f'{{"elem":{{"val":{k.cidr.prefix},"comment":{dumps(comment(k.note))}}}}}' for k in mine]
            for name, jump in zip(verdict_maps, jumps, strict=True):
                elements[name] = ",".join([f"[{t}{jump}" for t in texts])
            elements[views_set] = ",".join(texts)
            # Keyed by our views of the peer (the destination), valued with the
            # final address, so conntrack holds one rewrite.
            if target is None:
                elements[host_map] = ""
                continue
            tail = f',"comment":{dumps(comment(f"{cid}: host network -> {target[1]}"))}}}}},"{target[1]}"]'
            elements[host_map] = ",".join([f'[{{"elem":{{"val":{k.cidr.prefix}{tail}' for k in mine])
        return PeerPieces(peer, chains, quoted, tuple(to_rules + from_rules), tuple(count_out + count_in),
                          elements, host, tuple(made), tuple(keys), tuple(sets))


def drop_comment(cluster_id: str) -> str:
    """The comment of the last rule of from-<peer>: the peer's packets to what it was not offered."""
    return comment(f"{cluster_id}: ingress: destination not offered to {cluster_id}: drop")


@functools.lru_cache(maxsize=8)
def _builder(local: CheckedLocal) -> Builder:
    return Builder(local)


@functools.lru_cache(maxsize=4096)
def peer_pieces(local: CheckedLocal, peer: PeerFabric) -> PeerPieces:
    """One peer checked on its own and cut into pieces, kept across states: a
    state that changes a few peers builds only those (the checks that involve
    every peer run again in ``build``). NatError for a peer that cannot be rendered."""
    builder = _builder(local)
    if len(builder._rules) > 100_000:  # shared fragments of views long gone: start again
        builder._rules.clear()
        builder._host.clear()
    return builder.peer(check_peer(peer))


@functools.lru_cache(maxsize=2)
def build(state: FabricState) -> Table:
    """``state`` validated (NatError if it cannot be rendered) and cut into per-peer pieces."""
    with gc_paused():
        local = check_local(state.local)
        pieces = tuple(peer_pieces(local, p) for p in state.peers)
        check_peers(local, [p.peer for p in pieces])
        return Table(local, pieces)
