"""The desired state of the data plane: what the gateway asks the fabric to program.

The gateway (control plane) builds these from its config, keys, IPAM and the
peering exchange; the fabric renders them into WireGuard peers, routes and an
nftables table. Frozen dataclasses, so two states compare equal exactly when
nothing needs reprogramming.

Address spaces (the README, "Words and the packet walk"): every CIDR is tagged with the
cluster whose address space it lives in.
"""

from __future__ import annotations

import functools
import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Literal

from fabric.exports.model import ExportPolicy

# pod/service: a whole range (full views). export/gateway: one address (or a
# small exported CIDR) a sparse viewer addresses; egress: the block a sparse
# viewer names the peer's clients by (real is the placeholder 0.0.0.0/N or
# ::/N: only family and size). fabric/DESIGN.md, "Sparse views in the table".
Kind = Literal["pod", "service", "export", "gateway", "egress"]
KINDS: tuple[Kind, ...] = ("pod", "service", "export", "gateway", "egress")
Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Address = ipaddress.IPv4Address | ipaddress.IPv6Address

# The address space a peer's ranges (and so our views of them) may lie in unless
# an operator says otherwise: RFC 1918, RFC 6598 shared space, IPv6 ULA fd00::/8.
# Never public space: a route there would capture real destinations.
PEER_SPACE: tuple[str, ...] = ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "100.64.0.0/10", "fd00::/8")


def map_into(addr: Address, real: Network, view: Network) -> Address:
    """``addr`` (inside ``real``) moved prefix-for-prefix into ``view``: the one
    address translation every part of crosswire uses (NAT, probes, routes)."""
    offset = int(addr) - int(real.network_address)
    return ipaddress.ip_address(int(view.network_address) + offset)


@dataclass(frozen=True)
class RangeMap:
    """One range and the prefix under which the *other* side addresses it.

    ``real`` and ``view`` have the same prefix length; a view equal to the real
    range means no rewriting. Kind ``egress`` has no real range: ``real`` is
    "0.0.0.0/N" or "::/N" and every source of that family maps into ``view``.
    """

    kind: Kind
    real: str
    view: str


@dataclass(frozen=True)
class PeerFabric:
    """Everything the data plane needs about one peer cluster."""

    cluster_id: str
    public_key: str  # WireGuard public key, base64
    endpoint: str | None  # "host:port" / "[v6]:port" the peer listens on; None = wait for it
    preshared_key: str | None = field(default=None, repr=False)  # base64; secret
    # The peer's real ranges (peer address space) -> OUR views of them (our
    # address space). The views are this peer's WireGuard allowed IPs, the
    # routes into the tunnel, and the DNAT-free destination side.
    remote: tuple[RangeMap, ...] = ()
    # OUR real ranges (our address space) -> the PEER's views of them (peer
    # address space). Egress SNAT rewrites our sources prefix-for-prefix to these.
    local: tuple[RangeMap, ...] = ()
    # The peer gateway's own pod address as we address it (inside one of
    # ``remote``'s views): the target of health probes.
    probe_ip: str | None = None
    persistent_keepalive: int = 25

    def routed(self) -> tuple[str, ...]:
        """Our views of the peer as routes and WireGuard allowed IPs: whole-range views
        as they are, sparse ones (one address per export, mostly allocated adjacent)
        collapsed into the fewest CIDRs covering exactly the same addresses."""
        return routed_cidrs(self.remote)


# The one MTU range for the WireGuard interface: IPv6 inside the tunnel needs
# 1280; above 9000 no underlay (jumbo frames) could carry the encapsulation.
MTU_MIN = 1280
MTU_MAX = 9000


@dataclass(frozen=True)
class LocalFabric:
    """This gateway's side."""

    cluster_id: str
    interface: str  # WireGuard interface name (unique on the machine in the lab)
    listen_port: int
    private_key: str = field(repr=False)  # base64; secret
    mtu: int = 1420
    pod_cidrs: tuple[str, ...] = ()
    service_cidrs: tuple[str, ...] = ()
    # The gateway's own pod address: SNAT source for traffic from the host
    # network, and for everything delivered inward when ``masquerade`` is on.
    gateway_ip: str | None = None
    masquerade: bool = False
    nft_table: str = "crosswire"
    # Dual stack: the gateway pod's IPv6 address (``gateway_ip`` is then the
    # IPv4 one), the same role for IPv6: SNAT source for IPv6 host-network
    # traffic and, with ``masquerade``, for IPv6 delivered inward.
    gateway_ip6: str | None = None
    # UDP port of the gateway's health echo: the one thing a peer may send to the
    # gateway itself (from its own gateway address; fabric/DESIGN.md "The guard").
    health_port: int | None = None


@dataclass(frozen=True)
class FabricState:
    local: LocalFabric
    peers: tuple[PeerFabric, ...] = ()
    # None: peers reach all of our ranges; else only what each is given (fabric.exports.policy).
    exports: ExportPolicy | None = None

    def __hash__(self) -> int:
        # Computed once: lru_caches (the NAT pieces, the policy table) key on the state at
        # every read, and hashing 1,000 peers' fields each time cost a page poll ~10 ms.
        h: int | None = self.__dict__.get("_hash")
        if h is None:
            h = hash((self.local, self.peers, self.exports))
            object.__setattr__(self, "_hash", h)
        return h

    def __getstate__(self) -> dict[str, object]:
        # str hashes differ between processes (PYTHONHASHSEED): never carry one over
        return {k: v for k, v in self.__dict__.items() if k != "_hash"}


@functools.lru_cache(maxsize=8192)
def routed_cidrs(remote: tuple[RangeMap, ...]) -> tuple[str, ...]:
    """See ``PeerFabric.routed``."""
    whole = [m.view for m in remote if m.kind in ("pod", "service")]
    return tuple(whole + collapse(m.view for m in remote if m.kind not in ("pod", "service")))


def collapse(cidrs: Iterable[str]) -> list[str]:
    """The fewest CIDRs covering exactly ``cidrs`` (IPv4 first, each family in address order):
    the one way sparse views are merged (routes, allowed IPs, the NAT table's map keys)."""
    nets = [ipaddress.ip_network(c) for c in cidrs]
    v4 = [n for n in nets if isinstance(n, ipaddress.IPv4Network)]
    v6 = [n for n in nets if isinstance(n, ipaddress.IPv6Network)]
    return [str(n) for n in ipaddress.collapse_addresses(v4)] + [str(n) for n in ipaddress.collapse_addresses(v6)]
