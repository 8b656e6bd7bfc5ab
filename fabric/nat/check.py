"""Validated, parsed input of the NAT table: ``check(state)`` -> ``Checked``, or NatError.

Everything rendering needs is parsed here once, CIDRs as ``Cidr`` (the network
plus its text and JSON forms, parsed once per distinct CIDR text: most peers
share the same real ranges and views of us). What is checked: interface and
table names, MTU, CIDRs (strict, same family and length for each real/view
pair), unique cluster IDs and chain names, our views of peers unique in our
address space (they are map keys and WireGuard allowed IPs) and not
overlapping our own ranges, and each peer's views of us not overlapping each
other (they live in that peer's address space, so they may repeat across peers).
Kinds (``fabric.model.Kind``): an egress block's real side is the placeholder
0.0.0.0/N or ::/N of the block's own length, at most one block per family and
side; a gateway mapping is one address.
"""

from __future__ import annotations

import functools
import ipaddress
import re
from dataclasses import dataclass

from fabric.model import KINDS, Address, FabricState, LocalFabric, Network, PeerFabric
from fabric.nat.names import chain_suffix


class NatError(ValueError):
    """The state cannot be rendered (overlapping views, malformed CIDRs, ...)."""


@dataclass(frozen=True)
class Cidr:
    """A parsed network with the forms the table is written in."""

    net: Network
    text: str  # "10.244.0.0/16"
    prefix: str  # its nftables JSON: {"prefix":{"addr":"10.244.0.0","len":16}}

    @property
    def version(self) -> int:
        return self.net.version


@functools.lru_cache(maxsize=65536)
def _cidr(text: str) -> Cidr:
    # str() of an ipaddress object is slow; 1000 peers use every network several times.
    net = ipaddress.ip_network(text, strict=True)
    addr = str(net.network_address)
    return Cidr(net, f"{addr}/{net.prefixlen}", f'{{"prefix":{{"addr":"{addr}","len":{net.prefixlen}}}}}')


def cidr(text: str) -> Cidr:
    """A valid CIDR text, parsed (cached)."""
    return _cidr(text)


def _parse(text: str, what: str) -> Cidr:
    try:
        return _cidr(text)
    except ValueError as e:
        raise NatError(f"{what}: {text!r} is not a valid CIDR ({e})") from None


@dataclass(frozen=True)
class Mapping:
    """One real range and the prefix under which the other side addresses it."""

    kind: str
    real: Cidr
    view: Cidr

    @property
    def block(self) -> bool:
        """An egress block: no real range, every source of its family maps into ``view``."""
        return self.kind == "egress"

    @property
    def single(self) -> bool:
        """One address (an export or the gateway) rewritten: an element of the peer's
        one SNAT and one DNAT map per family, not a rule of its own."""
        return (self.kind in ("export", "gateway") and self.real.net.prefixlen == self.real.net.max_prefixlen
                and self.real.text != self.view.text)


@dataclass(frozen=True)
class CheckedLocal:
    interface: str
    table: str
    mtu: int
    pods: tuple[Cidr, ...]
    services: tuple[Cidr, ...]
    gateway: Address | None
    masquerade: bool
    gateway6: Address | None = None  # dual stack: the IPv6 one (``gateway`` is IPv4)

    def gateways(self) -> tuple[Address, ...]:
        return tuple(g for g in (self.gateway, self.gateway6) if g is not None)

    def gateway_of(self, version: int) -> Address | None:
        """The gateway's own pod address in IP family ``version``, if it has one."""
        return next((g for g in self.gateways() if g.version == version), None)


@dataclass(frozen=True)
class CheckedPeer:
    cluster_id: str
    suffix: str  # chain_suffix(cluster_id)
    remote: tuple[Mapping, ...]  # the peer's real ranges -> our views of them
    local: tuple[Mapping, ...]  # our real ranges -> the peer's views of them


@dataclass(frozen=True)
class Checked:
    local: CheckedLocal
    peers: tuple[CheckedPeer, ...]


def check_local(local: LocalFabric) -> CheckedLocal:
    if not local.interface or len(local.interface) > 15 or '"' in local.interface:
        raise NatError(f"interface: {local.interface!r} is not a valid interface name")
    if not local.nft_table or not re.fullmatch(r"[A-Za-z][A-Za-z0-9_.-]*", local.nft_table):
        raise NatError(f"nft_table: {local.nft_table!r} is not a valid table name")
    if not 1280 <= local.mtu <= 65535:
        raise NatError(f"mtu: {local.mtu} out of range 1280..65535")
    pods = tuple(_parse(c, "pod_cidrs") for c in local.pod_cidrs)
    services = tuple(_parse(c, "service_cidrs") for c in local.service_cidrs)
    gateway = None
    if local.gateway_ip:
        try:
            gateway = ipaddress.ip_address(local.gateway_ip)
        except ValueError as e:
            raise NatError(f"gateway_ip: {local.gateway_ip!r} is not an IP address ({e})") from None
    gateway6 = None
    if local.gateway_ip6:
        try:
            gateway6 = ipaddress.IPv6Address(local.gateway_ip6)
        except ValueError as e:
            raise NatError(f"gateway_ip6: {local.gateway_ip6!r} is not an IPv6 address ({e})") from None
        if gateway is not None and gateway.version == 6:
            raise NatError("gateway_ip6: gateway_ip is already IPv6 (gateway_ip6 is for dual stack)")
    if local.masquerade and gateway is None:
        raise NatError("masquerade: needs gateway_ip (the address to SNAT to)")
    return CheckedLocal(local.interface, local.nft_table, local.mtu, pods, services, gateway, local.masquerade,
                        gateway6)


def check_peer(peer: PeerFabric) -> CheckedPeer:
    """One peer on its own (what does not depend on the other peers)."""
    cid = peer.cluster_id
    if not cid:
        raise NatError("peer cluster_id: empty")

    def pair(kind: str, real: str, view: str, side: str) -> Mapping:
        what = f"peer {cid!r} {side} {kind}"
        if kind not in KINDS:
            raise NatError(f"{what}: kind must be one of {', '.join(KINDS)}, not {kind!r}")
        r, v = _parse(real, what + " real"), _parse(view, what + " view")
        if r.net.version != v.net.version or r.net.prefixlen != v.net.prefixlen:
            raise NatError(f"{what}: view {v.text} must have the same family and length as {r.text}")
        if kind == "egress" and int(r.net.network_address) != 0:
            # Only family and size: the block names every client of the peer.
            raise NatError(f"{what}: real must be {'0.0.0.0' if r.version == 4 else '::'}/{v.net.prefixlen} "
                           f"(an egress block has no real range), not {r.text}")
        if kind == "gateway" and r.net.num_addresses != 1:
            raise NatError(f"{what}: real {r.text} must be one address (/32 or /128)")
        return Mapping(kind, r, v)

    def one_block(maps: tuple[Mapping, ...], side: str) -> None:
        for version in (4, 6):
            blocks = [m.view.text for m in maps if m.kind == "egress" and m.view.version == version]
            if len(blocks) > 1:
                raise NatError(f"peer {cid!r} {side} egress: one block per IP family, got {', '.join(blocks)}")

    remote = tuple(pair(m.kind, m.real, m.view, "remote") for m in peer.remote)
    local = tuple(pair(m.kind, m.real, m.view, "local") for m in peer.local)
    one_block(remote, "remote")
    one_block(local, "local")
    # One view per address we offer: two would make our source ambiguous (and the
    # kernel refuses a map with the same key twice).
    views: dict[str, str] = {}
    for m in local:
        if m.kind in ("export", "gateway"):
            if m.real.text in views:
                raise NatError(f"peer {cid!r} local {m.kind}: real {m.real.text} has two views, {views[m.real.text]} "
                               f"and {m.view.text} (one view per address)")
            views[m.real.text] = m.view.text
    _first_overlap([(m.view.net, "its view of us") for m in local], f"peer {cid!r}: ")
    return CheckedPeer(cid, chain_suffix(cid), remote, local)


def check(state: FabricState) -> Checked:
    local = check_local(state.local)
    return Checked(local, check_peers(local, [check_peer(p) for p in state.peers]))


def check_peers(local: CheckedLocal, peers: list[CheckedPeer]) -> tuple[CheckedPeer, ...]:
    """What depends on all peers together (each checked on its own by ``check_peer``):
    unique cluster IDs and chain names, our views unique and clear of our ranges."""
    seen_ids: set[str] = set()
    seen_chains: set[str] = set()
    owned: list[tuple[Network, str]] = [(c.net, "local range") for c in local.pods + local.services]
    for checked in peers:
        cid = checked.cluster_id
        if cid in seen_ids:
            raise NatError(f"peer {cid!r}: listed twice")
        seen_ids.add(cid)
        if checked.suffix in seen_chains:
            raise NatError(f"peer {cid!r}: chain name collides with another peer")
        seen_chains.add(checked.suffix)
        owned += [(m.view.net, f"view of peer {cid!r}") for m in checked.remote]
    _first_overlap(owned, "", views_only=True)
    return tuple(peers)


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
