"""What peers export to us: the ``exports`` message checked, and our view of it.

A peer sends, over the peering channel (message ``exports``), the exports it
shares with us: name, ports (None: every port), and *real* addresses (its own
address space). ``parse_body`` refuses anything malformed or outside the
sender's announced ranges. ``imported`` (pure) translates each address into
our view of that peer: the addresses our pods use, and what DNS answers.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from fabric.model import RangeMap, map_into
from gateway.errors import GatewayError
from gateway.exports.config import ExportsError, parse_name, parse_port

MAX_EXPORTS = 1000
MAX_ADDRESSES = 256


@dataclass(frozen=True)
class ImportedService:
    """One service a peer exports to us, as our pods reach it.

    ``name`` is ``<service>.<namespace>``; ``addresses`` are in *our* view of the
    peer (empty: none of its addresses lies in a range we have a view of);
    ``ports`` as ``"80/tcp"``, None meaning every port and protocol.
    """

    peer: str  # the exporting peer's cluster_id
    name: str
    ports: tuple[str, ...] | None
    addresses: tuple[str, ...]

    @property
    def hosts(self) -> tuple[str, ...]:
        """The single addresses (/32, /128) among ``addresses``, as plain IPs: what A/AAAA records hold."""
        nets = [ipaddress.ip_network(a) for a in self.addresses]
        return tuple(str(n.network_address) for n in nets if n.prefixlen == n.max_prefixlen)

    def dns_names(self, zone: str) -> tuple[str, str]:
        """The name every offering peer answers for, and this peer's own."""
        return f"{self.name}.svc.{zone}", f"{self.peer}.{self.name}.svc.{zone}"


def parse_body(value: object, ranges: Iterable[tuple[str, str]]) -> list[dict[str, Any]]:
    """The ``exports`` of a message, checked (GatewayError 400 naming the field)."""
    own = [ipaddress.ip_network(c) for _, c in ranges]
    if not isinstance(value, list) or len(value) > MAX_EXPORTS:
        raise GatewayError(f"exports: expected a list of at most {MAX_EXPORTS} {{name, ports, addresses}}", 400)
    out = []
    try:
        for i, item in enumerate(value):
            k = f"exports[{i}]"
            if not isinstance(item, dict):
                raise ExportsError(f"{k}: expected {{name, ports, addresses}}")
            name = parse_name(item.get("name"), f"{k}.name")
            ports = item.get("ports")
            if ports is not None:
                if not isinstance(ports, list):
                    raise ExportsError(f"{k}.ports: expected a list or null")
                ports = [str(parse_port(p, f"{k}.ports[{j}]")) for j, p in enumerate(ports)]
            addrs = item.get("addresses")
            if not isinstance(addrs, list) or len(addrs) > MAX_ADDRESSES:
                raise ExportsError(f"{k}.addresses: expected a list of at most {MAX_ADDRESSES} CIDRs")
            checked = []
            for j, a in enumerate(addrs):
                try:
                    net = ipaddress.ip_network(str(a), strict=True)
                except ValueError:
                    raise ExportsError(f"{k}.addresses[{j}]: {a!r} is not an IP address or CIDR") from None
                if not any(net.version == o.version and net.subnet_of(o) for o in own):  # type: ignore[arg-type]
                    raise ExportsError(f"{k}.addresses[{j}]: {net} is not inside the sender's ranges")
                checked.append(str(net))
            out.append({"name": name, "ports": ports, "addresses": checked})
    except ExportsError as e:
        raise GatewayError(str(e), 400) from None
    return out


def to_view(cidr: str, views: Sequence[RangeMap]) -> str | None:
    """A CIDR in the peer's space -> ours, through the view containing it (None: no view)."""
    net = ipaddress.ip_network(cidr)
    for m in views:
        real, view = ipaddress.ip_network(m.real), ipaddress.ip_network(m.view)
        if net.version == real.version and net.subnet_of(real):  # type: ignore[arg-type]
            return str(ipaddress.ip_network(f"{map_into(net.network_address, real, view)}/{net.prefixlen}"))
    return None


def imported(bodies: Mapping[str, list[dict[str, Any]]],
             views: Mapping[str, Sequence[RangeMap]]) -> tuple[ImportedService, ...]:
    """Every imported service, our view addresses, sorted by (name, peer)."""
    out = []
    for peer, body in bodies.items():
        ours = views.get(peer, ())
        for e in body:
            addrs = tuple(a for a in (to_view(c, ours) for c in e["addresses"]) if a is not None)
            ports = None if e.get("ports") is None else tuple(e["ports"])
            out.append(ImportedService(peer=peer, name=e["name"], ports=ports, addresses=addrs))
    return tuple(sorted(out, key=lambda s: (s.name, s.peer)))
