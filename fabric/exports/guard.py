"""The policy table's input from a ``FabricState`` (sans-IO): ``table_of(state)``.

The guard needs of each peer every view of ours of it (a source there is the
peer's: its drops are counted on its counter) and its gateway's address as we
view it (the source of its health probes); of us the WireGuard interface, the
health port and the table's name. fabric/DESIGN.md, "The guard".
"""

from __future__ import annotations

import functools

from fabric.exports.model import PeerGuard, PolicyTable
from fabric.model import FabricState


def table_name(nft_table: str) -> str:
    """The policy table beside the NAT table ``nft_table``."""
    return f"{nft_table}-exports"


@functools.lru_cache(maxsize=2)  # the state programmed and the one being read: each read asks
def table_of(state: FabricState) -> PolicyTable:
    lo = state.local
    peers = tuple(PeerGuard(p.cluster_id, p.routed(), p.probe_ip) for p in state.peers)
    return PolicyTable(lo.interface, table_name(lo.nft_table), lo.health_port, peers, state.exports)
