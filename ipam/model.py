"""The values IPAM takes and returns: peer ranges, views, local ranges, pools."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Kind = Literal["pod", "service", "export", "gateway", "egress"]
# Full views: a peer's whole pod/service range, kept as is when free.
FULL_KINDS: tuple[Kind, ...] = ("pod", "service")
# Sparse views (DESIGN.md, "Sparse views"): always placed in the pools, never
# kept as the real range, and held in quarantine for a while when released.
#   export:  an address (or small CIDR) the peer exports to us
#   gateway: the peer gateway's pod address (health probes)
#   egress:  a block naming the peer's clients; its real is 0.0.0.0/N or ::/N,
#            which only says family and size (every source of the peer maps into it)
SPARSE_KINDS: tuple[Kind, ...] = ("export", "gateway", "egress")
KINDS: tuple[Kind, ...] = FULL_KINDS + SPARSE_KINDS

# Default pools for remapped views, tried in order. 100.64.0.0/10 (RFC 6598
# shared address space) first: no Kubernetes distribution uses it by default.
# Then RFC 1918, with 10.0.0.0/8 late because it holds most distribution
# defaults (kubeadm 10.244/16 + 10.96/12, k3s 10.42/16 + 10.43/16, AKS, GKE,
# OpenShift 10.128/14): a view placed on a popular real range forces later
# peers that really use that range into a remap instead of keeping it.
# Views never overlap local ranges anyway. fd00::/8 (ULA) for IPv6.
DEFAULT_POOLS: tuple[str, ...] = (
    "100.64.0.0/10",
    "172.16.0.0/12",
    "10.0.0.0/8",
    "192.168.0.0/16",
    "fd00::/8",
)


@dataclass(frozen=True, slots=True)
class PeerRange:
    """A range a peer claims as its own (in the peer's address space)."""

    kind: Kind
    cidr: str


@dataclass(frozen=True, slots=True)
class View:
    """How we address one range of a peer.

    ``real`` is the peer's CIDR (canonical form), ``view`` ours for it; both
    have the same prefix length. ``view == real`` means no rewriting (full
    kinds only: sparse views always lie in a pool).
    """

    peer: str
    kind: Kind
    real: str
    view: str

    @property
    def remapped(self) -> bool:
        return self.view != self.real


@dataclass(frozen=True, slots=True)
class LocalRanges:
    """This cluster's own ranges: no view may overlap any of them."""

    pod: tuple[str, ...]
    service: tuple[str, ...]
    reserved: tuple[str, ...] = ()  # node/underlay CIDRs, config's reserved_cidrs


@dataclass(frozen=True, slots=True)
class Conflict:
    """A stored view that now overlaps a local range (the config changed).

    The view stays allocated (routing to it keeps working as before) until the
    operator re-peers: ``release(peer)`` then ``allocate(peer, ranges)``.
    """

    view: View
    local: str  # the local/reserved range it overlaps, e.g. "pod 100.64.0.0/16"
