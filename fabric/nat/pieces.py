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
API reports the same one, without building it again.
"""

from __future__ import annotations

import contextlib
import functools
import gc
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, NamedTuple

from fabric.model import Address, FabricState, map_into
from fabric.nat.check import Checked, CheckedLocal, CheckedPeer, Mapping, check
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


@dataclass(frozen=True)
class PeerPieces:
    """One peer's chains, rules and elements, as JSON text."""

    peer: CheckedPeer
    chains: dict[PeerChain, str]  # chain names
    quoted: tuple[str, ...]  # the chain names as JSON strings, in ``CHAINS`` order
    # One NAT rule per mapping of ours (egress, then ingress) and its counting
    # twin with the same comment, in the same order.
    nat_rules: tuple[Rule, ...]
    count_rules: tuple[Rule, ...]
    # By map or set name (``element_maps``): the peer's elements, comma-separated
    # ("" for none). Keys are our views of the peer; the verdict maps jump to
    # the peer's chains, host_v* holds the gateway as the peer sees it.
    elements: dict[str, str]
    host_target: dict[int, Address | None]  # by IP version

    @property
    def cluster_id(self) -> str:
        return self.peer.cluster_id


@dataclass(frozen=True)
class Table:
    """A validated state and every peer's pieces, in the state's order."""

    local: CheckedLocal
    peers: tuple[PeerPieces, ...]


class Builder:
    """Builds peers' pieces for one local side, sharing fragments between peers."""

    def __init__(self, local: CheckedLocal) -> None:
        self.local = local
        self._rule_head = f'{{"family":"{FAMILY}","table":{dumps(local.table)},"chain":'
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
        for m in peer.local:
            key = (version, m.real.text, m.view.text)  # per family: dual stack has two gateway addresses
            if key not in self._host:  # most peers share their views of us
                addr = map_into(gateway, m.real.net, m.view.net) if gateway in m.real.net else None
                self._host[key] = None if addr is None else (addr, str(addr))
            target = self._host[key]
            if target is not None:
                return target
        return None

    def peer(self, peer: CheckedPeer) -> PeerPieces:
        cid = peer.cluster_id
        chains = {pc: f"{pc.prefix}-{peer.suffix}" for pc in CHAINS}
        quoted = tuple(dumps(chains[pc]) for pc in CHAINS)
        egress, ingress, count = quoted
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
        nat_rules: list[Rule] = []
        count_rules: list[Rule] = []
        head = self._rule_head
        for direction, pc, chain in ((Direction.EGRESS, PeerChain.EGRESS, egress),
                                     (Direction.INGRESS, PeerChain.INGRESS, ingress)):
            for m in peer.local:
                expr, after_id, counted = self._rule_frags(direction, m)
                note = comment(f"{cid}: {after_id}")
                text = dumps(note)
                nat_rules.append(Rule(chains[pc], expr, note, f'{head}{chain},"expr":{expr},"comment":{text}}}'))
                count_rules.append(Rule(chains[PeerChain.COUNT], counted, note,
                                        f'{head}{count},"expr":{counted},"comment":{text}}}'))
        elements: dict[str, str] = {}
        targets: dict[int, Address | None] = {}
        # jump, not goto: a packet no per-peer rule takes comes back to the base
        # chain for the host-network map and the final drop.
        jumps = [f',{{"jump":{{"target":{q}}}}}]' for q in quoted]
        for v in (4, 6):
            *verdict_maps, views_set, host_map = self._maps[v]
            target = self._host_target(peer, v)
            targets[v] = target[0] if target else None
            views = [m for m in peer.remote if m.view.version == v]
            if not views:
                elements.update(dict.fromkeys(self._maps[v], ""))
                continue
            keys = [f'{{"elem":{{"val":{m.view.prefix},"comment":{dumps(comment(f"{cid} {m.kind}"))}}}}}'
                    for m in views]
            for name, jump in zip(verdict_maps, jumps, strict=True):
                elements[name] = ",".join([f"[{key}{jump}" for key in keys])
            elements[views_set] = ",".join(keys)
            # Keyed by our views of the peer (the destination), valued with the
            # final address, so conntrack holds one rewrite.
            if target is None:
                elements[host_map] = ""
                continue
            tail = f',"comment":{dumps(comment(f"{cid}: host network -> {target[1]}"))}}}}},"{target[1]}"]'
            elements[host_map] = ",".join([f'[{{"elem":{{"val":{m.view.prefix}{tail}' for m in views])
        return PeerPieces(peer, chains, quoted, tuple(nat_rules), tuple(count_rules), elements, targets)


@functools.lru_cache(maxsize=2)
def build(state: FabricState) -> Table:
    """``state`` validated (NatError if it cannot be rendered) and cut into per-peer pieces."""
    with gc_paused():
        checked: Checked = check(state)
        builder = Builder(checked.local)
        return Table(checked.local, tuple(builder.peer(p) for p in checked.peers))
