"""Sparse views: what a gateway in ``ipam.views: sparse`` asks its IPAM for, per peer.

Pure. A sparse gateway addresses a peer only through what the peer exports to
it, plus the two things the fabric itself needs (ipam/DESIGN.md, "Sparse
views"):

- ``egress``: one block per IP family the peer uses, from our pools, naming
  the peer's clients (the peer translates all its traffic to us into it);
- ``gateway``: the peer gateway's pod address (our health probes' target);
- ``export``: every address the peer exports to us, one view address each
  (a small exported CIDR gets a block of the same size).

A peer's mode is read off its views (no extra state): views of kind pod or
service are full, anything else sparse. So a peering made before this mode
existed stays full after an upgrade, whatever ``ipam.views`` says, until the
operator re-peers it.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Sequence
from typing import Any, Literal

from fabric.model import RangeMap
from gateway.config import IpamConfig

Mode = Literal["full", "sparse"]

# An exported CIDR costs as many view addresses as it holds: a /24 (or /120)
# at most, so one export cannot eat the pool.
MAX_EXPORT_ADDRESSES = 256


class SparseError(ValueError):
    """An export that cannot be viewed sparsely (the message names it)."""


def mode_of(views: Iterable[RangeMap]) -> Mode | None:
    """How ``views`` view their peer: None when there are none."""
    kinds = {m.kind for m in views}
    if not kinds:
        return None
    return "full" if kinds & {"pod", "service"} else "sparse"


def claims(cfg: IpamConfig, ranges: Sequence[tuple[str, str]], gateway_ip: str | None,
           exports: Sequence[dict[str, Any]]) -> list[tuple[str, str]]:
    """The (kind, real) claims of a peer viewed sparsely.

    ``ranges`` are the peer's announced (kind, cidr); ``exports`` what it
    exports to us (the ``exports`` message's body: real addresses, already
    checked to lie in its ranges). Overlapping exported addresses are viewed
    once, through the widest (never merged: each keeps its own view when
    another export comes or goes); the gateway's address is covered by an
    export that contains it.
    """
    out = cfg.egress_ranges({ipaddress.ip_network(c).version for _, c in ranges})
    nets: list[ipaddress.IPv4Network | ipaddress.IPv6Network] = []
    for e in exports:
        for a in e.get("addresses", ()):
            net = ipaddress.ip_network(a)
            if net.num_addresses > MAX_EXPORT_ADDRESSES:
                raise SparseError(
                    f"export {e.get('name')!r}: address {net} would need {net.num_addresses} view "
                    f"addresses; at most {MAX_EXPORT_ADDRESSES} per exported CIDR under ipam.views: sparse")
            nets.append(net)
    # Each address keeps its own view (never merged with a neighbour's: adding
    # an export must not move another's address); one inside another exported
    # CIDR is reached through that CIDR's view.
    exported: list[str] = []
    reach: tuple[int, int] = (0, -1)  # (version, last address) of the widest kept so far
    for n in sorted(set(nets), key=lambda n: (n.version, int(n.network_address), n.prefixlen)):
        if (n.version, int(n.broadcast_address)) <= reach:
            continue  # inside an exported CIDR kept before it
        exported.append(str(n))
        reach = (n.version, int(n.broadcast_address))
    if gateway_ip is not None:
        gw = ipaddress.ip_address(gateway_ip)
        if not any(gw in ipaddress.ip_network(n) for n in exported):
            out.append(("gateway", str(ipaddress.ip_network(gw))))
    out += [("export", n) for n in exported]
    return out

