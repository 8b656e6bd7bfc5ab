"""Sans-IO NAT: FabricState -> one nftables table (JSON) implementing the packet walk.

See fabric/DESIGN.md for the layout and how to read ``nft list table inet crosswire``.
In short, with ``wg`` the WireGuard interface:

- ``postrouting`` (nat, srcnat), packets leaving into ``wg``: the destination
  (our view of some peer) is looked up in the interval verdict map
  ``to_peer_v4``/``_v6``, which jumps to chain ``to-<peer>``: one rule per
  mapping rewrites the source prefix-for-prefix from our real range to the
  peer's view of it. Any other source (host network) comes back and is SNATed
  through map ``host_v4``/``_v6`` (key: our view of the peer) straight to the
  gateway's pod address as that peer sees it; what is still left is dropped.
  With ``masquerade`` one more rule SNATs what came from a peer and leaves
  towards the cluster to the gateway's own pod address.
- ``prerouting`` (nat, dstnat), packets arriving from ``wg``: the source (our
  view of the sending peer, unique) is looked up in ``from_peer_v4``/``_v6``,
  which jumps to ``from-<peer>``: one rule per mapping rewrites the destination
  from the peer's view of us to our real range; anything else is dropped.
- ``mss-clamp`` (filter, forward): TCP SYNs through ``wg`` get MSS <= MTU-40/60.
- ``count`` (filter, forward): every packet through ``wg``, looked up by our
  view of the peer in ``count_v4``/``_v6``, jumps to ``cnt-<peer>``: one
  counter-only rule per mapping (the nat chains see only first packets).

Modules: ``names`` (family, chain names), ``check`` (validated, parsed input),
``pieces`` (each peer's chains, rules and elements as JSON text, built once per
state), ``render`` (the whole-table and the changes-only batch), ``report``
(``mappings``/``with_counters``/``drops``, what ``/api/v1/nat`` shows). Nothing here
touches the system: every function returns data.
"""

from fabric.nat.check import NatError
from fabric.nat.names import (
                              BASE_CHAINS,
                              FAMILY,
                              MARKER_SET,
                              chain_suffix,
                              count_chain,
                              egress_chain,
                              ingress_chain,
)
from fabric.nat.pieces import build
from fabric.nat.render import render_delta, render_text
from fabric.nat.report import counts, drops, listed_objects, mappings, totals, with_counters

__all__ = [
    "BASE_CHAINS", "FAMILY", "MARKER_SET", "NatError", "build", "chain_suffix", "count_chain", "counts", "drops", "egress_chain",
    "ingress_chain", "listed_objects", "mappings", "render_delta", "render_text", "totals",
    "with_counters",
]
