"""What each peer may reach: the data the policy table (``inet <nft_table>-exports``) is made of.

Frozen dataclasses (stdlib only, so :mod:`fabric.model` can hold one): two
policies compare equal exactly when nothing in the nftables table needs
changing. Every address is in *our* real address space: the policy filters
traffic from a peer after ingress DNAT, when its destination is already ours.

``PolicyTable`` is the whole table: the guard (always: a peer never reaches
the gateway itself, fabric/DESIGN.md "The guard") and, with ``exports``
configured, the export filter (``ExportPolicy``).
"""

from __future__ import annotations

from dataclasses import dataclass

# Protocols an export may name with ports; every one carries a destination port
# where ``th dport`` reads it.
PROTOCOLS = ("tcp", "udp", "sctp")


@dataclass(frozen=True, order=True)
class Allowed:
    """One allowed destination: a CIDR of ours, and one protocol/port or everything."""

    network: str  # "10.96.0.10/32", "10.244.6.0/24", "fd00::5/128"
    proto: str | None = None  # one of PROTOCOLS; None: every protocol and port
    port: int | None = None  # with proto


@dataclass(frozen=True)
class PeerExports:
    """One peer's share: where its traffic comes from and what it may reach."""

    cluster_id: str
    # Our views of the peer (CIDRs): after ingress DNAT its packets' sources lie
    # in them, so they name the peer (one verdict-map lookup).
    sources: tuple[str, ...]
    allowed: tuple[Allowed, ...] = ()


@dataclass(frozen=True)
class ExportPolicy:
    """The whole policy of one gateway: None in ``FabricState.exports`` means
    every peer reaches all of our ranges (no export table at all)."""

    interface: str  # the WireGuard interface packets from peers arrive on
    table: str  # the nftables table (inet) that holds the policy
    peers: tuple[PeerExports, ...] = ()


@dataclass(frozen=True)
class PeerGuard:
    """One peer as the guard and the drop counters know it."""

    cluster_id: str
    # Every view of ours of the peer (collapsed like its routes): a source in them
    # is this peer's, so each of its dropped packets is counted on its counter.
    views: tuple[str, ...]
    # The peer gateway's own address as we view it: its health probes come from it.
    probe: str | None = None


@dataclass(frozen=True)
class PolicyTable:
    """Table ``inet <table>``: per peer a drop counter, the guard's ``input`` chain,
    and, when ``exports`` is set, the export filter's ``forward`` chain."""

    interface: str  # the WireGuard interface packets from peers arrive on
    table: str
    health_port: int | None  # UDP port of the health echo (None: no probe is let in)
    peers: tuple[PeerGuard, ...] = ()
    exports: ExportPolicy | None = None
