"""What an exporting gateway lets each peer reach: the data the export policy is made of.

Frozen dataclasses (stdlib only, so :mod:`fabric.model` can hold one): two
policies compare equal exactly when nothing in the nftables export table needs
changing. Every address is in *our* real address space: the policy filters
traffic from a peer after ingress DNAT, when its destination is already ours.
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
