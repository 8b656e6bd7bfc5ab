"""Each peer's part of the table, built once per state as pre-serialized JSON.

``build(state)`` validates the state (``check``) and makes, for every peer, its
chains, its NAT and counting rules and its map/set elements as compact JSON
text (``PeerPieces``); the whole-table batch, the changes-only batch and the
``/api/v1/nat`` report are all composed from these (render.py, report.py).

Why text: for 1000 peers the table holds ~12 000 per-peer objects, and
building them as dicts to serialize them afterwards cost several times more
than pasting fragments. Most of the text is shared: the match and NAT verdict
of a mapping rule depend only on (direction, real, view), and nearly every peer
maps the same real ranges to the same views of us, so each is written once per
build; only chain names and comments are escaped per peer. The text is what
``json.dumps(..., separators=(",", ":"))`` makes of the same objects, so the
report reads the rules back with ``json.loads``.

``build`` keeps the tables of the last two states (keyed by the frozen
``FabricState``): an apply validates, renders and verifies one state, and the
API reports the same one, without building it again.
"""

from __future__ import annotations

import contextlib
import functools
import gc
import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from fabric.model import Address, FabricState, map_into
from fabric.nat.check import Checked, CheckedLocal, CheckedPeer, Mapping, check
from fabric.nat.names import FAMILY, Direction, PeerChain, comment

# json.dumps builds a new encoder on every call with non-default separators;
# strings (most calls: comments, chain names) go straight to the C escaper,
# which is what the encoder itself uses for them (ensure_ascii).
_ENCODE = json.JSONEncoder(separators=(",", ":")).encode
_QUOTE: Any = json.encoder.encode_basestring_ascii

# An anonymous counter starting at zero: the same kernel object as
# {"packets": 0, "bytes": 0}, but fewer tokens for libnftables to parse (6000+ of them).
COUNTER = '{"counter":null}'


def dumps(obj: Any) -> str:
    """Compact JSON, as the rest of the batch is written."""
    return str(_QUOTE(obj)) if type(obj) is str else _ENCODE(obj)


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


@dataclass(frozen=True)
class PeerPieces:
    """One peer's chains, rules and elements, as JSON text."""

    peer: CheckedPeer
    chains: dict[PeerChain, str]  # chain names
    # Rule objects ({"family":..,"table":..,"chain":..,"expr":..,"comment":..}):
    # one NAT rule per mapping of ours (egress, then ingress) and its counting
    # twin with the same comment, in the same order.
    nat_rules: tuple[str, ...]
    count_rules: tuple[str, ...]
    keys: dict[int, tuple[str, ...]]  # by IP version: our views of the peer as commented element keys
    jumps: dict[PeerChain, str]  # the verdict that closes a map element: ,{"jump":{"target":...}}]
    host: dict[int, tuple[str, ...]]  # by IP version: host_v* elements (our view -> gateway as the peer sees it)
    host_target: dict[int, Address | None]  # by IP version

    @property
    def cluster_id(self) -> str:
        return self.peer.cluster_id

    def elements(self, chain: PeerChain, version: int) -> Iterator[str]:
        """The peer's elements of verdict map ``chain.map(version)``."""
        jump = self.jumps[chain]
        return (f"[{key}{jump}" for key in self.keys[version])


@dataclass(frozen=True)
class Table:
    """A validated state and every peer's pieces, in the state's order."""

    local: CheckedLocal
    peers: tuple[PeerPieces, ...]

    def peer(self, cluster_id: str) -> PeerPieces:
        return next(p for p in self.peers if p.cluster_id == cluster_id)


class Builder:
    """Builds peers' pieces for one local side, sharing fragments between peers."""

    def __init__(self, local: CheckedLocal) -> None:
        self.local = local
        self._rule_head = f'{{"family":"{FAMILY}","table":{dumps(local.table)},"chain":'
        # Shared fragments, keyed by what they depend on (CIDR texts as parsed).
        self._nat: dict[tuple[Direction, str, str], tuple[str, str, str]] = {}
        self._count: dict[tuple[Direction, str], str] = {}
        self._host: dict[tuple[str, str], Address | None] = {}

    def _nat_frag(self, direction: Direction, m: Mapping) -> tuple[str, str, str]:
        """(match, verdict, comment tail) of the NAT rule of mapping ``m``."""
        key = (direction, m.real.text, m.view.text)
        frag = self._nat.get(key)
        if frag is None:
            p = _proto(m.real.version)
            if direction is Direction.EGRESS:
                field, nat, match, target = "saddr", "snat", m.real, m.view
                head = f"src {m.real.text} -> {m.view.text}"
            else:
                field, nat, match, target = "daddr", "dnat", m.view, m.real
                head = f"dst {m.view.text} -> {m.real.text}"
            if m.real.text == m.view.text:
                verdict = '{"accept":null}'
                head += " (no rewrite)"
            else:
                verdict = (f'{{"{nat}":{{"family":"{p}","addr":{target.prefix},'
                           f'"flags":"netmap","type_flags":"prefix"}}}}')
            matched = f'{{"match":{{"op":"==","left":{{"payload":{{"protocol":"{p}","field":"{field}"}}}},' \
                      f'"right":{match.prefix}}}}}'
            frag = self._nat[key] = (matched, verdict, head)
        return frag

    def _count_frag(self, direction: Direction, m: Mapping) -> str:
        """The match of the counting rule of mapping ``m``: the real side, where forward sees it."""
        key = (direction, m.real.text)
        frag = self._count.get(key)
        if frag is None:
            field = "saddr" if direction is Direction.EGRESS else "daddr"
            frag = self._count[key] = (
                f'{{"match":{{"op":"==","left":{{"payload":{{"protocol":"{_proto(m.real.version)}",'
                f'"field":"{field}"}}}},"right":{m.real.prefix}}}}}')
        return frag

    def host_target(self, peer: CheckedPeer, version: int) -> Address | None:
        """The gateway's pod address as ``peer`` sees it (SNAT target for host-network sources)."""
        gateway = self.local.gateway
        if gateway is None or gateway.version != version:
            return None
        for m in peer.local:
            key = (m.real.text, m.view.text)
            if key not in self._host:  # most peers share their views of us
                self._host[key] = map_into(gateway, m.real.net, m.view.net) if gateway in m.real.net else None
            target = self._host[key]
            if target is not None:
                return target
        return None

    def peer(self, peer: CheckedPeer) -> PeerPieces:
        cid = peer.cluster_id
        chains = {pc: pc.chain(cid) for pc in PeerChain}
        quoted = {pc: dumps(name) for pc, name in chains.items()}
        # One counted NAT rule per mapping in the peer's chain: egress rewrites our
        # source to the peer's view of it, ingress rewrites the peer's view of us
        # back to our real destination (both prefix-for-prefix, netmap).
        # The counting rules run in forward, where every packet passes (the NAT
        # chains see only a connection's first): egress before SNAT, so the source
        # is still our real range; ingress after DNAT, so the destination already
        # is. One chain serves both directions without an interface match: an
        # egress packet's destination is a view of the peer and an ingress
        # packet's source is one, and views never overlap our real ranges
        # (check), so an egress packet cannot match an ingress rule nor the
        # reverse. No verdict: counting changes nothing.
        nat_rules: list[str] = []
        count_rules: list[str] = []
        head = self._rule_head
        for direction, chain in ((Direction.EGRESS, PeerChain.EGRESS), (Direction.INGRESS, PeerChain.INGRESS)):
            nat_head = f"{head}{quoted[chain]},"
            count_head = f"{head}{quoted[PeerChain.COUNT]},"
            for m in peer.local:
                matched, verdict, tail = self._nat_frag(direction, m)
                text = f"{cid}: {direction.value} {m.kind} {tail}"
                note = dumps(comment(text) if len(text) > 128 else text)
                nat_rules.append(f'{nat_head}"expr":[{matched},{COUNTER},{verdict}],"comment":{note}}}')
                count_rules.append(f'{count_head}"expr":[{self._count_frag(direction, m)},{COUNTER}],'
                                   f'"comment":{note}}}')
        keys: dict[int, tuple[str, ...]] = {}
        host: dict[int, tuple[str, ...]] = {}
        targets: dict[int, Address | None] = {}
        for v in (4, 6):
            views = [m for m in peer.remote if m.view.version == v]
            keys[v] = tuple(f'{{"elem":{{"val":{m.view.prefix},"comment":{dumps(comment(f"{cid} {m.kind}"))}}}}}'
                            for m in views)
            # Keyed by our views of the peer (the destination), valued with the
            # final address, so conntrack holds one rewrite.
            target = targets[v] = self.host_target(peer, v)
            if target is None:
                host[v] = ()
                continue
            tail = f'"comment":{dumps(comment(f"{cid}: host network -> {target}"))}}}}},"{target}"]'
            host[v] = tuple(f'[{{"elem":{{"val":{m.view.prefix},{tail}' for m in views)
        # jump, not goto: a packet no per-peer rule takes comes back to the base
        # chain for the host-network map and the final drop.
        jumps = {pc: f',{{"jump":{{"target":{q}}}}}]' for pc, q in quoted.items()}
        return PeerPieces(peer, chains, tuple(nat_rules), tuple(count_rules), keys, jumps, host, targets)


@functools.lru_cache(maxsize=2)
def build(state: FabricState) -> Table:
    """``state`` validated (NatError if it cannot be rendered) and cut into per-peer pieces."""
    with gc_paused():
        checked: Checked = check(state)
        builder = Builder(checked.local)
        return Table(checked.local, tuple(builder.peer(p) for p in checked.peers))
