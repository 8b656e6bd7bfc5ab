"""What the DNS answers from: a snapshot of the services peers export to us.

``ImportedService`` is the one type between the imports read model (what the
peering channel brought in) and the DNS answer core; a snapshot is a tuple of
them, taken whenever the DNS server asks. ``imports_snapshot`` is the one
place that maps the gateway's state onto it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from gateway.controlplane import ControlPlane


@dataclass(frozen=True)
class ImportedService:
    peer: str  # the exporting peer's cluster_id
    name: str  # "<service>.<namespace>"
    ports: tuple[str, ...]  # "80/tcp", ...; () = every port
    addresses: tuple[str, ...]  # this cluster's view addresses of it, IPv4 and/or IPv6


Snapshot = tuple[ImportedService, ...]
EMPTY: Snapshot = ()


def imports_snapshot(cp: ControlPlane) -> Snapshot:
    """INTEGRATION SEAM: the services our peers export to us, as the DNS answers them.

    Until the imports read model exists this is empty (the zone answers NXDOMAIN
    for every service). It is called on every query, so it must be cheap and must
    return a new tuple only when something changed (the answer core re-indexes
    on change); addresses are ours, already translated into our views of the peer.
    """
    return EMPTY
