"""Routes to our views of the peers, through the WireGuard interface.

Every route we own carries rtnetlink protocol ``ROUTE_PROTO`` (245, unassigned
in /etc/iproute2/rt_protos; ``ip route show proto 245`` lists them; the node
agent uses 246), so a sync can find and remove its own stale routes and never
touches anyone else's. The planning is pure (``plan``); ``sync_routes`` and
``remove_routes`` are the pyroute2 adapter (sync ``IPRoute``; with ``netns``
opened with ``flags=0`` so a typo does not create a namespace).
"""

from __future__ import annotations

import errno
import ipaddress
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

ROUTE_PROTO = 245
MAIN_TABLE = 254

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


class RouteError(RuntimeError):
    """A route could not be programmed; the message names the interface and the route."""


@dataclass(frozen=True)
class RoutePlan:
    add: tuple[Network, ...]
    remove: tuple[Network, ...]


def parse_cidrs(cidrs: Iterable[str]) -> set[Network]:
    out: set[Network] = set()
    for c in cidrs:
        try:
            out.add(ipaddress.ip_network(c, strict=True))
        except ValueError as e:
            raise RouteError(f"route {c!r}: not a valid CIDR ({e})") from None
    return out


def _key(n: Network) -> tuple[int, int, int]:
    return (n.version, int(n.network_address), n.prefixlen)


def plan(desired: set[Network], present: set[Network]) -> RoutePlan:
    """What to add (or replace) and what to remove to get from ``present`` to ``desired``."""
    return RoutePlan(add=tuple(sorted(desired - present, key=_key)),
                     remove=tuple(sorted(present - desired, key=_key)))


@contextmanager
def _iproute(netns: str | None) -> Iterator[Any]:
    from pyroute2 import IPRoute

    try:
        ipr = IPRoute(netns=netns, flags=0) if netns else IPRoute()
    except OSError as e:
        raise RouteError(f"cannot open netlink in netns {netns!r}: {e}") from None
    try:
        yield ipr
    finally:
        ipr.close()


def _ifindex(ipr: Any, interface: str) -> int | None:
    idx = ipr.link_lookup(ifname=interface)
    return int(idx[0]) if idx else None


def _present(ipr: Any, ifindex: int, table: int) -> set[Network]:
    out: set[Network] = set()
    for family in (2, 10):  # AF_INET, AF_INET6
        for m in ipr.route("dump", family=family):
            if m["proto"] != ROUTE_PROTO or m.get("table") != (table if table < 256 else 252):
                continue
            if m.get_attr("RTA_TABLE", m["table"]) != table or m.get_attr("RTA_OIF") != ifindex:
                continue
            dst = m.get_attr("RTA_DST") or ("0.0.0.0" if family == 2 else "::")
            out.add(ipaddress.ip_network(f"{dst}/{m['dst_len']}"))
    return out


def sync_routes(interface: str, cidrs: Iterable[str], *, table: int = MAIN_TABLE,
                netns: str | None = None) -> RoutePlan:
    """Exactly ``cidrs`` routed via ``interface`` with our proto; our stale ones removed."""
    desired = parse_cidrs(cidrs)
    with _iproute(netns) as ipr:
        idx = _ifindex(ipr, interface)
        if idx is None:
            raise RouteError(f"interface {interface!r} does not exist" + (f" in netns {netns}" if netns else ""))
        present = _present(ipr, idx, table)
        p = plan(desired, present)
        for net in p.add:
            try:
                ipr.route("replace", dst=str(net), oif=idx, proto=ROUTE_PROTO, table=table,
                          scope=253, family=2 if net.version == 4 else 10)  # scope link
            except Exception as e:
                raise RouteError(f"route {net} dev {interface}: {e}") from None
        for net in p.remove:
            try:
                ipr.route("del", dst=str(net), oif=idx, proto=ROUTE_PROTO, table=table,
                          scope=253, family=2 if net.version == 4 else 10)
            except Exception as e:
                if getattr(e, "code", None) != errno.ESRCH:
                    raise RouteError(f"removing route {net} dev {interface}: {e}") from None
        return p


def list_routes(interface: str, *, table: int = MAIN_TABLE, netns: str | None = None) -> set[Network]:
    """Our routes via ``interface`` (empty if the interface is gone)."""
    with _iproute(netns) as ipr:
        idx = _ifindex(ipr, interface)
        return set() if idx is None else _present(ipr, idx, table)


def remove_routes(interface: str, *, table: int = MAIN_TABLE, netns: str | None = None) -> None:
    """Remove all our routes via ``interface``; nothing to do if it is gone."""
    with _iproute(netns) as ipr:
        if _ifindex(ipr, interface) is None:
            return  # the kernel removed its routes with the link
    sync_routes(interface, (), table=table, netns=netns)
