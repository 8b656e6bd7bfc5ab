"""What one packet becomes, step by step, on this gateway and on the peer's: ``trace(state, query)``.

Sans-IO: a ``FabricState`` (what the gateway programs) and a ``Query`` (source,
destination, protocol, port) in, a ``Trace`` (a verdict and the steps in the
order the kernel takes them) out. Every chain, rule comment and map element a
step names is read from the pieces the table is rendered from
(``pieces.build``; the base rules of ``render``), never written again here, so
the trace names exactly what ``nft list table inet crosswire`` shows.

The peer's half comes from the views both sides agreed: the peer's mappings
for us are ours mirrored (its ``remote`` is our ``local`` and the reverse), so
the peer's chains and rule comments are built with the same ``Builder`` as if
we were the peer (``_mirror``). Its table name, interface and masquerade
setting are not known here; only its per-peer chains are named.

Two directions (see the README, "Words and the packet walk"):

* **egress**: the destination lies in one of our views of a peer. Route into
  WireGuard, the peer picked by ``to_peer_v*``, the source rewritten in
  ``to-<peer>`` (or through ``host_v*`` for host-network sources), the tunnel,
  then at the peer ``from-<us>`` rewrites the destination to its real range.
* **ingress**: the source lies in one of our views of a peer (it arrived from
  that peer; the peer rewrote it in its ``to-<us>``). ``from_peer_v*`` picks the
  peer, ``from-<peer>`` rewrites the destination (the peer's view of us) to our
  real range, or the packet is dropped.

Sparse views (fabric/DESIGN.md, "Sparse views in the table"): a source no
mapping takes, towards a peer whose ``local`` holds an egress block, is SNATed
into the block (shown as its first address: the kernel picks); a source in our
block view of a peer is that peer's client; a destination in a block is
dropped by the block's owner; mapped single addresses name their map element.

A packet from a peer to the gateway pod itself (after DNAT: its IPv4 or IPv6
address) is delivered to the gateway, not forwarded: the guard decides it (a
``guard`` step, chain ``input`` of the policy table), never the export filter.
Only the peer gateway's health probe passes (UDP ``health_port`` from the peer
gateway's address as we view it); the peer's own guard is shown likewise for a
packet to its gateway (assuming its health port is ours).

Anything else is no peer's: the verdict says so (``no-peer``, or ``local``
for our own ranges). Where exports exist, an ``export`` step (the export
verdict of the exporting gateway, after translation) is asked of the
``exports`` callback; without one no such step is emitted.
"""

from __future__ import annotations

import ipaddress
import json
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from typing import Any, Literal

from fabric.exports.guard import table_name
from fabric.exports.policy import counter_name, guard_comment, probe_comment
from fabric.model import Address, FabricState, PeerFabric, map_into
from fabric.nat.check import CheckedLocal, Mapping, check_peer
from fabric.nat.names import PeerChain
from fabric.nat.pieces import Builder, PeerPieces, build, drop_comment
from fabric.nat.render import _base_rules
from fabric.routes import ROUTE_PROTO

PROTOS = ("tcp", "udp", "icmp")
Proto = Literal["tcp", "udp", "icmp"]
Verdict = Literal["delivered", "dropped", "no-peer", "local"]
AGENT_PROTO = 246  # fabric.agent.AGENT_PROTO (not imported: it pulls in the agent's HTTP client)

# Step kinds, in the order they can occur.
ROUTE, MSS, PEER, SNAT, TUNNEL, DNAT, EXPORT, GUARD, MASQUERADE, DELIVER, DROP = (
    "route", "mss-clamp", "peer", "snat", "tunnel", "dnat", "export", "guard", "masquerade", "deliver", "drop")
# EXPORT is the export verdict: emitted only where exports exist (see ``ExportCheck``).
# GUARD is the verdict of the gateway's own input (the policy table's ``input``
# chain) on a packet from a peer to the gateway pod itself.


class TraceError(ValueError):
    """A query that cannot be traced (the message names the parameter)."""


@dataclass(frozen=True)
class Query:
    src: Address
    dst: Address
    proto: Proto = "tcp"
    dport: int | None = None


def parse_query(src: str | None, dst: str | None, proto: str | None = None, dport: str | int | None = None) -> Query:
    """The query from text (API parameters, CLI arguments); TraceError names what is wrong."""
    addrs = []
    for name, value in (("src", src), ("dst", dst)):
        if value is None or not str(value).strip():
            raise TraceError(f"{name}: required (an IPv4 or IPv6 address)")
        try:
            addrs.append(ipaddress.ip_address(str(value).strip()))
        except ValueError:
            raise TraceError(f"{name}: {str(value)[:64]!r} is not an IP address") from None
    if addrs[0].version != addrs[1].version:
        raise TraceError(f"src and dst must be of the same family (IPv{addrs[0].version} and IPv{addrs[1].version})")
    p = (proto or "tcp").strip().lower()
    if p not in PROTOS:
        raise TraceError(f"proto: {str(proto)[:16]!r} is not one of {', '.join(PROTOS)}")
    port: int | None = None
    if dport is not None and str(dport).strip() != "":
        text = str(dport).strip()
        if not text.isdigit() or not 1 <= int(text) <= 65535:
            raise TraceError(f"dport: {text[:16]!r} is not a port (1-65535)")
        if p == "icmp":
            raise TraceError("dport: icmp has no ports")
        port = int(text)
    return Query(addrs[0], addrs[1], p, port)  # type: ignore[arg-type]


@dataclass(frozen=True)
class Step:
    """One thing done to the packet. ``src``/``dst``: the packet after the step."""

    kind: str
    at: str  # the cluster whose gateway does it
    text: str
    src: str
    dst: str
    chain: str | None = None  # nftables chain of the rule (None: not nftables)
    rule: str | None = None  # the rule's comment, as `nft list` shows it
    element: str | None = None  # the map element that matched
    counted: str | None = None  # the chain counting every packet of this mapping (same rule comment)
    drop: bool = False


@dataclass(frozen=True)
class ExportPoint:
    """Where an export verdict is due: the exporting gateway (``at``) after its
    translation, for a packet from its peer ``peer``; addresses in ``at``'s terms."""

    at: str
    peer: str
    src: Address
    dst: Address
    kind: str  # of the destination's mapping: pod | service | export | gateway
    proto: Proto
    dport: int | None


# The export verdict (per-peer exports enforcement): given where it is due,
# the ``export`` step (``drop=True`` when refused), or None where the exporter
# has no exports for that peer (everything shared: no step).
ExportCheck = Callable[[ExportPoint], Step | None]


@dataclass(frozen=True)
class Trace:
    query: Query
    cluster_id: str
    direction: Literal["egress", "ingress"] | None
    peer: str | None
    verdict: Verdict
    reason: str
    steps: tuple[Step, ...]

    def as_json(self) -> dict[str, Any]:
        q = self.query
        last = self.steps[-1] if self.steps else None
        return {
            "src": str(q.src), "dst": str(q.dst), "proto": q.proto, "dport": q.dport,
            "cluster_id": self.cluster_id, "direction": self.direction, "peer": self.peer,
            "verdict": self.verdict, "reason": self.reason,
            # What the destination sees: the packet as delivered.
            "delivered": {"src": last.src, "dst": last.dst} if self.verdict == "delivered" and last else None,
            "steps": [{"step": i, **asdict(s)} for i, s in enumerate(self.steps, 1)],
        }


# ------------------------------------------------------------------ the table's names


def _base_rule(local: CheckedLocal, chain: str, *needles: str) -> str:
    """The comment of the base-chain rule whose expressions hold every needle (JSON text)."""
    for c, expr, note in _base_rules(local):
        text = json.dumps(expr, separators=(",", ":"))
        if c == chain and all(n in text for n in needles):
            return note
    raise AssertionError(f"no base rule in {chain} with {needles}")  # the renderer changed: fix here


def _element(p: PeerPieces, name: str, addr: Address) -> str | None:
    """Map ``name``'s element holding ``addr`` among the peer's, as nft lists it
    (the key is our view of the peer, collapsed with adjacent sparse views)."""
    k = p.key_of(addr)
    text = p.elements.get(name, "")
    for el in json.loads(f"[{text}]") if text and k is not None else []:
        head, data = (el[0], el[1]) if isinstance(el, list) else (el, None)
        inner = head["elem"]
        val = inner["val"]["prefix"]
        key = f"{val['addr']}/{val['len']}"
        if key != k.cidr.text:  # type: ignore[union-attr]
            continue
        out = f'{key} comment "{inner.get("comment", "")}"'
        if isinstance(data, dict) and "jump" in data:
            return f"{out} : jump {data['jump']['target']}"
        return f"{out} : {data}" if data is not None else out
    return None


def _what(kind: str) -> str:
    """How a mapping's range is named in the steps' text: "<cluster>'s <what>"."""
    return {"export": "exported addresses", "gateway": "gateway", "egress": "egress block"}.get(kind, f"{kind}s")


def _block(maps: tuple[Mapping, ...], version: int) -> int | None:
    return next((i for i, m in enumerate(maps) if m.block and m.view.version == version), None)


def _mirror(state: FabricState, peer: PeerFabric, local: CheckedLocal) -> PeerPieces:
    """Our part of the peer's table: the peer's mappings for us are ours mirrored."""
    mirrored = PeerFabric(cluster_id=state.local.cluster_id, public_key="", endpoint=None,
                          remote=peer.local, local=peer.remote)
    theirs = replace(local, pods=(), services=(), gateway=None, masquerade=False)
    return Builder(theirs).peer(check_peer(mirrored))


def _find(maps: tuple[Mapping, ...], addr: Address, side: Literal["real", "view"]) -> int | None:
    for i, m in enumerate(maps):
        if side == "real" and m.block:
            continue  # no real range: the placeholder 0.0.0.0/N holds no client
        net = m.real.net if side == "real" else m.view.net
        if addr.version == net.version and addr in net:
            return i
    return None


# ------------------------------------------------------------------ trace


def trace(state: FabricState, query: Query, exports: ExportCheck | None = None) -> Trace:
    """Every step ``query``'s packet takes through this gateway (and the peer's)."""
    table = build(state)
    me = state.local.cluster_id
    src, dst = query.src, query.dst
    for p in table.peers:
        if _find(p.peer.remote, src, "view") is not None:
            return _Walk(state, table.local, p, query, exports).ingress()
    for p in table.peers:
        if _find(p.peer.remote, dst, "view") is not None:
            return _Walk(state, table.local, p, query, exports).egress()
    local = table.local
    for c, kind in [*((c, "pod") for c in local.pods), *((c, "service") for c in local.services)]:
        if dst.version == c.net.version and dst in c.net:
            return Trace(query, me, None, None, "local",
                         f"{dst} is in {me}'s own {kind} range {c.text}: crosswire does not touch it", ())
    return Trace(query, me, None, None, "no-peer",
                 f"no peer owns {dst}: it is in none of {me}'s views of its peers, so the gateway "
                 "does not route it into the tunnel (a peer still pending has no views programmed)", ())


class _Walk:
    def __init__(self, state: FabricState, local: CheckedLocal, pieces: PeerPieces, query: Query,
                 exports: ExportCheck | None) -> None:
        self.local, self.p, self.q, self.exports = local, pieces, query, exports
        self.me, self.them = state.local.cluster_id, pieces.cluster_id
        self.wg = local.interface
        self.v = query.src.version
        self.src, self.dst = query.src, query.dst
        self.steps: list[Step] = []
        self.fabric = next(f for f in state.peers if f.cluster_id == self.them)
        self.theirs = _mirror(state, self.fabric, local)
        self.health_port = state.local.health_port
        self.policy_table = table_name(state.local.nft_table)

    # --- helpers

    def add(self, kind: str, at: str, text: str, **nft: Any) -> Step:
        step = Step(kind, at, text, str(self.src), str(self.dst), **nft)
        self.steps.append(step)
        return step

    def done(self, direction: Literal["egress", "ingress"], verdict: Verdict, reason: str) -> Trace:
        return Trace(self.q, self.me, direction, self.them, verdict, reason, tuple(self.steps))

    def mss(self, option: str) -> None:
        if self.q.proto == "tcp":
            nf = "ipv4" if self.v == 4 else "ipv6"
            self.add(MSS, self.me, f"TCP SYNs: MSS clamped to fit MTU {self.local.mtu} (other packets pass)",
                     chain="mss-clamp", rule=_base_rule(self.local, "mss-clamp", f'"{option}"', f'"{nf}"'))

    def export(self, at: str, peer: str, kind: str) -> bool:
        """The export verdict step, where exports exist; False when it refuses the packet."""
        if self.exports is None:
            return True
        step = self.exports(ExportPoint(at, peer, self.src, self.dst, kind, self.q.proto, self.q.dport))
        if step is None:
            return True
        self.steps.append(replace(step, src=str(self.src), dst=str(self.dst)))
        return not step.drop

    def port(self) -> str:
        return f":{self.q.dport}" if self.q.dport else ""

    # --- egress: from this cluster into a peer

    def egress(self) -> Trace:
        me, them, p = self.me, self.them, self.p
        i = _find(p.peer.remote, self.dst, "view")
        assert i is not None
        view = p.peer.remote[i]
        self.add(ROUTE, me, f"{self.dst} is in {me}'s view of {them}'s {_what(view.kind)} {view.view.text}: the nodes "
                 f"route it to the gateway pod (proto {AGENT_PROTO}), the gateway into {self.wg} "
                 f"({view.view.text} dev {self.wg} proto {ROUTE_PROTO})")
        self.mss("oifname")
        vmap = PeerChain.EGRESS.map(self.v)
        self.add(PEER, me, f"the destination picks peer {them}: jump to {p.chains[PeerChain.EGRESS]}",
                 chain="postrouting", rule=_base_rule(self.local, "postrouting", f'"@{vmap}"'),
                 element=f"@{vmap} {_element(p, vmap, self.dst)}")
        j = _find(p.peer.local, self.src, "real")
        b = _block(p.peer.local, self.v)
        if j is not None:
            m, r = p.peer.local[j], p.mapping_rules[j]
            before = self.src
            self.src = map_into(before, m.real.net, m.view.net)
            what = (f"source {before} is in {me}'s {m.kind} range {m.real.text}, which {them} sees as "
                    f"{m.view.text}: rewritten to {self.src}" if m.real.text != m.view.text else
                    f"source {before} is in {me}'s {m.kind} range {m.real.text}, which {them} sees unchanged")
            self.add(SNAT, me, what, chain=r.egress.chain, rule=r.egress.comment, counted=r.count_egress.chain,
                     element=r.egress_element)
        elif b is not None:
            # Many-to-few: the kernel picks an address of the block and, where
            # needed, a source port, keeping every tuple unique.
            block, r = p.peer.local[b].view, p.mapping_rules[b]
            before, self.src = self.src, block.net.network_address
            self.add(SNAT, me, f"source {before} is in no range {them} has a view of: SNAT into the egress block "
                     f"{block.text} ({them}'s name for {me}'s clients; address and port chosen by the kernel, "
                     f"shown here as {self.src})", chain=r.egress.chain, rule=r.egress.comment,
                     counted=r.count_egress.chain)
        else:
            host = f"host_v{self.v}"
            target = p.host_target[self.v]
            if target is None:
                self.add(DROP, me, f"source {self.src} is in no range {them} has a view of, and {them} has no "
                         f"address for this gateway to stand in for it: dropped (counted)",
                         chain="postrouting", rule=_base_rule(self.local, "postrouting", '"drop"'), drop=True)
                return self.done("egress", "dropped", f"{me} has no mapping for source {self.src} towards {them}")
            before, self.src = self.src, target
            self.add(SNAT, me, f"source {before} is in no range {them} has a view of (host network): rewritten "
                     f"to this gateway's pod address as {them} sees it, {target}", chain="postrouting",
                     rule=_base_rule(self.local, "postrouting", f'"@{host}"'),
                     element=f"@{host} {_element(p, host, self.dst)}")
        endpoint = self.fabric.endpoint or "(no endpoint yet: waits for the peer to reach us)"
        self.add(TUNNEL, me, f"WireGuard {self.wg} to peer {them} (its allowed IPs are {me}'s views of it) at "
                 f"{endpoint}; the destination is left to {them}, whose view of {me} now holds the source")
        # The peer's side, from the views it agreed (its mappings for us are ours mirrored).
        t = self.theirs
        k = _find(t.peer.remote, self.src, "view")
        vmap = PeerChain.INGRESS.map(self.v)
        if k is not None:
            self.add(PEER, them, f"the source picks peer {me}: jump to {t.chains[PeerChain.INGRESS]}",
                     chain="prerouting", element=f"@{vmap} {_element(t, vmap, self.src)}")
        # The peer's ingress rule for this view: the i-th of its local mappings (ours, mirrored).
        m, r = t.peer.local[i], t.mapping_rules[i]
        if r.ingress is None:
            self.add(DROP, them, f"destination {self.dst} is in {them}'s egress block for {me} (the name {me} gives "
                     f"{them}'s clients), not an address {them} offers: dropped (counted against {me})",
                     chain=t.chains[PeerChain.INGRESS], rule=drop_comment(me), drop=True)
            return self.done("egress", "dropped", f"{self.dst} is {them}'s egress block: nothing is offered under it")
        before = self.dst
        self.dst = map_into(before, m.view.net, m.real.net)
        what = (f"destination {before} ({me}'s view of {them}'s {_what(m.kind)} {m.view.text}) rewritten "
                f"to {self.dst}, " + (f"by the element {r.ingress_element} of its map" if r.ingress_element else
                                      f"in its {m.kind} range {m.real.text}") if m.real.text != m.view.text else
                f"destination {before} kept ({me} sees {them}'s {m.real.text} unchanged)")
        self.add(DNAT, them, what, chain=r.ingress.chain, rule=r.ingress.comment,
                 counted=r.count_ingress.chain if r.count_ingress else None, element=r.ingress_element)
        if self.fabric.probe_ip is not None and str(self.q.dst) == self.fabric.probe_ip:
            return self.guard(them, me, str(self.src) == self.gateway_as_they_see_it(), "egress")
        if not self.export(them, me, m.kind):
            return self.done("egress", "dropped", f"{them} does not export {self.dst}{self.port()}/{self.q.proto} to {me}")
        self.add(DELIVER, them, f"delivered to {self.where(them, m.kind)}; it sees the client as {self.src}")
        return self.done("egress", "delivered",
                         f"{self.q.src} -> {self.q.dst} reaches {them} {m.kind} {self.dst}, which sees it from {self.src}")

    def gateway_as_they_see_it(self) -> str | None:
        """Our gateway pod's address as the peer views it: the source our probes carry there."""
        g = self.local.gateway_of(self.v)
        if g is None:
            return None
        j = _find(self.p.peer.local, g, "real")
        if j is not None:
            m = self.p.peer.local[j]
            return str(map_into(g, m.real.net, m.view.net))
        target = self.p.host_target[self.v]  # not in a mapped range: the host-network SNAT
        return None if target is None else str(target)

    def guard(self, at: str, sender: str, from_gateway: bool, direction: Literal["egress", "ingress"]) -> Trace:
        """The guard of ``at``'s gateway on a packet from its peer ``sender`` to the gateway
        itself: only ``sender``'s gateway's health probe passes (``from_gateway``: the
        source is that gateway as ``at`` views it)."""
        port, proto = self.health_port, "ip" if self.v == 4 else "ip6"
        where = f"{at}'s gateway pod {self.dst}" + self.port()
        table = self.policy_table if at == self.me else "its policy table"
        if from_gateway and port is not None and self.q.proto == "udp" and self.q.dport == port:
            self.add(GUARD, at, f"to {at}'s gateway itself: {sender}'s gateway's health probe (UDP {port} from "
                     f"{self.src}, {sender}'s gateway as {at} views it): accepted ({table}, chain input)",
                     chain="input", rule=probe_comment(self.wg, proto) if at == self.me else None)
            self.add(DELIVER, at, f"delivered to {where}: the health echo answers it")
            return self.done(direction, "delivered", f"{sender}'s health probe reaches {at}'s gateway {self.dst}")
        allowed = f"UDP {port}" if port is not None else "nothing"
        self.add(GUARD, at, f"{self.dst} is {at}'s gateway itself: a peer may send it only its own gateway's health "
                 f"probes ({allowed}, from its gateway's address), and replies: dropped without an answer (no RST), "
                 f"counted against {sender} ({table}, chain input, counter {counter_name(sender)})",
                 chain="input", rule=guard_comment(self.wg) if at == self.me else None, drop=True)
        return self.done(direction, "dropped", f"{sender} may not reach {where}/{self.q.proto}: the gateway "
                         "takes only health probes from a peer")

    def where(self, at: str, kind: str) -> str:
        target = f"{self.dst}{self.port()}"
        return {"service": f"{at}'s service {target}: {at}'s service proxy picks a pod" if at != self.me else
                           f"{at}'s service {target}: the service proxy picks a pod",
                "export": f"{at}'s exported address {target} (a service's proxy picks a pod)",
                "gateway": f"{at}'s gateway pod {target}"}.get(kind, f"{at}'s pod {target}")

    # --- ingress: from a peer into this cluster

    def ingress(self) -> Trace:
        me, them, p, t = self.me, self.them, self.p, self.theirs
        i = _find(p.peer.remote, self.src, "view")
        assert i is not None
        view = p.peer.remote[i]
        # What the peer did before sending: its egress rule for this range (our view of it, mirrored).
        m, r = t.peer.local[i], t.mapping_rules[i]
        if view.block:
            real = None
            text = (f"the source, one of {them}'s clients, was SNATed by {them} into {me}'s egress block for it "
                    f"{view.view.text} (address and port chosen by {them}'s kernel): {self.src}")
        else:
            real = map_into(self.src, view.view.net, view.real.net)
            text = (f"source {real} (its {view.kind} range {view.real.text}) rewritten to {self.src}, in {me}'s "
                    f"view of it {view.view.text}" if m.real.text != m.view.text else
                    f"source {real} kept ({me} sees {them}'s {view.real.text} unchanged)")
        self.steps.append(Step(SNAT, them, text, str(self.src), str(self.dst), chain=r.egress.chain,
                               rule=r.egress.comment, element=r.egress_element, counted=r.count_egress.chain))
        self.add(TUNNEL, me, f"arrives over WireGuard {self.wg} from peer {them}: {self.src} is in its allowed IPs "
                 f"({view.view.text}), so WireGuard accepts it only from {them}")
        vmap = PeerChain.INGRESS.map(self.v)
        self.add(PEER, me, f"the source picks peer {them}: jump to {p.chains[PeerChain.INGRESS]}",
                 chain="prerouting", rule=_base_rule(self.local, "prerouting", f'"@{vmap}"'),
                 element=f"@{vmap} {_element(p, vmap, self.src)}")
        j = _find(p.peer.local, self.dst, "view")
        if j is None or p.mapping_rules[j].ingress is None:
            hint = ""
            rj = _find(p.peer.local, self.dst, "real")
            if j is not None:
                hint = f" (it is {them}'s egress block naming {me}'s clients, not an address offered to {them})"
                what = f"destination {self.dst} is in {them}'s egress block for {me}"
            else:
                what = f"destination {self.dst} is in none of {them}'s views of {me}"
                if rj is not None:
                    lm = p.peer.local[rj]
                    hint = f" ({them} addresses {me}'s {self.dst} as {map_into(self.dst, lm.real.net, lm.view.net)})"
            self.add(DROP, me, f"{what}: not offered to {them}, dropped (counted against {them}){hint}",
                     chain=p.chains[PeerChain.INGRESS], rule=drop_comment(them), drop=True)
            return self.done("ingress", "dropped", f"{self.dst} is not offered to {them}{hint}")
        lm, lr = p.peer.local[j], p.mapping_rules[j]
        assert lr.ingress is not None
        before = self.dst
        self.dst = map_into(before, lm.view.net, lm.real.net)
        what = (f"destination {before} ({them}'s view of {me}'s {_what(lm.kind)} {lm.view.text}) rewritten to "
                f"{self.dst}" if lm.real.text != lm.view.text else
                f"destination {before} kept ({them} sees {lm.real.text} unchanged)")
        self.add(DNAT, me, what, chain=lr.ingress.chain, rule=lr.ingress.comment,
                 counted=lr.count_ingress.chain if lr.count_ingress else None, element=lr.ingress_element)
        if self.dst in self.local.gateways():
            probe = self.fabric.probe_ip is not None and str(self.src) == self.fabric.probe_ip
            return self.guard(me, them, probe, "ingress")
        self.mss("iifname")
        if not self.export(me, them, lm.kind):
            return self.done("ingress", "dropped", f"{me} does not export {self.dst}{self.port()}/{self.q.proto} to {them}")
        g = self.local.gateway
        if self.local.masquerade and g is not None and g.version == self.v:
            before, self.src = self.src, g
            self.add(MASQUERADE, me, f"masquerade: source {before} rewritten to the gateway's pod address {g}",
                     chain="postrouting", rule=_base_rule(self.local, "postrouting", '"@peer_views_'))
        self.add(DELIVER, me, f"delivered to {self.where(me, lm.kind)}; it sees the client as {self.src}")
        sender = f"{them}'s {real}" if real is not None else f"a client of {them} (as {self.q.src})"
        return self.done("ingress", "delivered",
                         f"{sender} reaches {me} {lm.kind} {self.dst}, which sees it from {self.src}")
