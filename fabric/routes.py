"""Routes crosswire owns, for the gateway and the node agent alike.

Every route we own carries an rtnetlink protocol number: ``ROUTE_PROTO``
(245) for the gateway's routes into its WireGuard interface, the node agent's
own (246, ``fabric.agent.AGENT_PROTO``) for its routes towards the gateway pod.
Both are unassigned in /etc/iproute2/rt_protos (``ip route show proto 245``
lists them). A sync finds and removes its own stale routes by that number and
never touches a route without it.

Sans-IO core: ``parse_cidrs``, ``key`` and ``plan`` (desired vs present, each a
mapping network -> ``NextHop``, into adds/replaces and removes). A route into a
device has ``NextHop(via=None, oif=...)``; a route through a router names it in
``via``. ``RouteTable`` is the one netlink adapter; ``sync_routes``,
``list_routes`` and ``remove_routes`` are the gateway's calls on it.
"""

from __future__ import annotations

import errno
import functools
import ipaddress
import os
import socket
import struct
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

from fabric.nft import NftError, in_netns

_T = TypeVar("_T")

ROUTE_PROTO = 245
MAIN_TABLE = 254

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Address = ipaddress.IPv4Address | ipaddress.IPv6Address


class RouteError(RuntimeError):
    """A route could not be parsed or programmed; the message names the route."""


@dataclass(frozen=True)
class NextHop:
    """Where a route points: a router address (None: straight into the device) and an interface."""

    via: str | None
    oif: int


@dataclass(frozen=True)
class Plan:
    add: tuple[tuple[Network, NextHop], ...] = ()  # add, or replace when the next hop moved
    remove: tuple[Network, ...] = ()

    @property
    def empty(self) -> bool:
        return not self.add and not self.remove


def key(n: Network) -> tuple[int, int, int]:
    """Sort key: IPv4 first, then by address and prefix length."""
    return (n.version, int(n.network_address), n.prefixlen)


@functools.lru_cache(maxsize=65536)
def _parse(cidr: str) -> Network:
    # Cached: apply parses every view twice (validate, sync) and verify once more;
    # 2000 views cost tens of ms each time uncached.
    return ipaddress.ip_network(cidr, strict=True)


def parse_cidrs(cidrs: Iterable[str]) -> set[Network]:
    out: set[Network] = set()
    for c in cidrs:
        try:
            out.add(_parse(c))
        except ValueError as e:
            raise RouteError(f"route {c!r}: not a valid CIDR ({e})") from None
    return out


def plan(desired: Mapping[Network, NextHop], present: Mapping[Network, NextHop],
         keep_families: frozenset[int] = frozenset()) -> Plan:
    """Routes to add (or replace, when the next hop moved) and stale ones to remove.

    Present routes of a family in ``keep_families`` (e.g. its next hop did not
    resolve this time) are left alone rather than removed.
    """
    add = tuple((n, h) for n, h in sorted(desired.items(), key=lambda i: key(i[0]))
                if present.get(n) != h)
    remove = tuple(sorted((n for n in present if n not in desired and n.version not in keep_families),
                          key=key))
    return Plan(add=add, remove=remove)


# ------------------------------------------------------------------ rtnetlink
#
# Writes and dumps are hand-encoded rtnetlink, batched, because pyroute2 0.9 is
# measurably too slow here. 2000 routes (1000 IPv4, 1000 IPv6) in a namespace on
# the shared 2-core box, median of 5 (runs swing 2-3x with the load): installing
# them took 34 ms batched, 2400 ms with IPRoute.route("replace") one by one and
# 2100 ms with AsyncIPRoute and asyncio.gather (its asyncio core spends ~1 ms
# of Python per request); dumping them took 113 ms vs 339 ms. Through pyroute2
# the gateway's 1000-peer apply (~1 s in total, fabric/DESIGN.md) would triple,
# and every node's agent dumps on every poll. The agent's next-hop lookup (one
# request per poll) is not hot and goes through pyroute2 (``RouteTable.lookup``).

_RTM_NEWROUTE, _RTM_DELROUTE, _RTM_GETROUTE = 24, 25, 26
_NLMSG_ERROR, _NLMSG_DONE = 2, 3
_F_REQUEST, _F_ACK, _F_REPLACE, _F_CREATE, _F_DUMP = 0x1, 0x4, 0x100, 0x400, 0x300
_RTA_DST, _RTA_OIF, _RTA_GATEWAY, _RTA_TABLE = 1, 4, 5, 15
_SCOPE_UNIVERSE, _SCOPE_LINK, _SCOPE_NOWHERE, _RTN_UNICAST = 0, 253, 255, 1
RTNH_F_ONLINK = 4
_BATCH = 32768  # bytes per datagram


def _rta(kind: int, data: bytes) -> bytes:
    length = 4 + len(data)
    return struct.pack("=HH", length, kind) + data + b"\0" * (-length % 4)


def route_message(kind: int, flags: int, seq: int, net: Network, hop: NextHop | None, *,
                  proto: int, table: int) -> bytes:
    """One RTM_NEWROUTE / RTM_DELROUTE message (pure: unit-tested against the kernel's layout).

    A delete matches as ``ip route del`` does: any scope and type, but only our
    proto, and the interface when ``hop`` is given.
    """
    family = socket.AF_INET if net.version == 4 else socket.AF_INET6
    rtm_flags = 0
    if kind == _RTM_DELROUTE:
        scope, rtype = _SCOPE_NOWHERE, 0
    elif hop is not None and hop.via is not None:
        # The looked-up next hop is a neighbour on oif by construction, but not
        # always inside a connected prefix (flannel's vxlan routes are onlink).
        scope, rtype, rtm_flags = _SCOPE_UNIVERSE, _RTN_UNICAST, RTNH_F_ONLINK
    else:
        scope, rtype = _SCOPE_LINK, _RTN_UNICAST
    body = struct.pack("=BBBBBBBBI", family, net.prefixlen, 0, 0, table if table < 256 else 252,
                       proto, scope, rtype, rtm_flags)
    body += _rta(_RTA_DST, net.network_address.packed)
    if hop is not None:
        body += _rta(_RTA_OIF, struct.pack("=I", hop.oif))
        if hop.via is not None and kind != _RTM_DELROUTE:
            body += _rta(_RTA_GATEWAY, ipaddress.ip_address(hop.via).packed)
    body += _rta(_RTA_TABLE, struct.pack("=I", table))
    return struct.pack("=IHHII", 16 + len(body), kind, flags, seq, 0) + body


def _messages(data: bytes) -> Iterable[tuple[int, int, bytes]]:
    off = 0
    while off + 16 <= len(data):
        length, kind, _flags, seq, _pid = struct.unpack_from("=IHHII", data, off)
        if length < 16:
            break
        yield kind, seq, data[off + 16: off + length]
        off += (length + 3) & ~3


def _attrs(data: bytes) -> dict[int, bytes]:
    out: dict[int, bytes] = {}
    off = 0
    while off + 4 <= len(data):
        length, kind = struct.unpack_from("=HH", data, off)
        if length < 4:
            break
        out[kind & 0x3FFF] = data[off + 4: off + length]
        off += (length + 3) & ~3
    return out


class RouteTable:
    """Our routes (one proto) in one table; with ``oif``, only those through that interface.

    Opens its sockets in the calling thread's network namespace; blocking, no event loop.
    """

    def __init__(self, proto: int, table: int = MAIN_TABLE, oif: int | None = None) -> None:
        self.proto = proto
        self.table = table
        self.oif = oif
        self.sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, 0)  # NETLINK_ROUTE
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
        self.sock.bind((0, 0))
        self.seq = 0
        self._ipr: Any = None

    def close(self) -> None:
        self.sock.close()
        if self._ipr is not None:
            self._ipr.close()

    def _dump(self, family: int) -> list[tuple[bytes, dict[int, bytes]]]:
        self.seq += 1
        rtm = struct.pack("=BBBBBBBBI", family, 0, 0, 0, 0, 0, 0, 0, 0)
        self.sock.send(struct.pack("=IHHII", 16 + len(rtm), _RTM_GETROUTE, _F_REQUEST | _F_DUMP,
                                   self.seq, 0) + rtm)
        out: list[tuple[bytes, dict[int, bytes]]] = []
        while True:
            for kind, _seq, payload in _messages(self.sock.recv(1 << 20)):
                if kind == _NLMSG_DONE:
                    return out
                if kind == _NLMSG_ERROR:
                    (err,) = struct.unpack_from("=i", payload)
                    raise OSError(-err, os.strerror(-err))
                if kind == _RTM_NEWROUTE:
                    out.append((payload[:12], _attrs(payload[12:])))

    def present(self) -> dict[Network, NextHop]:
        """Our routes now in the kernel."""
        out: dict[Network, NextHop] = {}
        for family in (socket.AF_INET, socket.AF_INET6):
            for header, attrs in self._dump(family):
                fam, dst_len, _s, _t, tbl, proto = struct.unpack_from("=BBBBBB", header)
                if proto != self.proto:
                    continue
                if _RTA_TABLE in attrs:
                    tbl = struct.unpack("=I", attrs[_RTA_TABLE])[0]
                oif = struct.unpack("=I", attrs[_RTA_OIF])[0] if _RTA_OIF in attrs else 0
                if tbl != self.table or (self.oif is not None and oif != self.oif):
                    continue
                dst = attrs.get(_RTA_DST, b"\0" * (4 if fam == socket.AF_INET else 16))
                gw = attrs.get(_RTA_GATEWAY)
                out[ipaddress.ip_network((ipaddress.ip_address(dst), dst_len))] = NextHop(
                    via=str(ipaddress.ip_address(gw)) if gw else None, oif=oif)
        return out

    def _batch(self, requests: list[tuple[int, Network, NextHop | None]]) -> dict[Network, int]:
        """Send all requests (acked), return the errno of each failure."""
        failures: dict[Network, int] = {}
        i = 0
        while i < len(requests):
            chunk: list[bytes] = []
            by_seq: dict[int, Network] = {}
            size = 0
            while i < len(requests) and size < _BATCH:
                kind, net, hop = requests[i]
                self.seq += 1
                flags = _F_REQUEST | _F_ACK | (_F_CREATE | _F_REPLACE if kind == _RTM_NEWROUTE else 0)
                msg = route_message(kind, flags, self.seq, net, hop, proto=self.proto, table=self.table)
                chunk.append(msg)
                by_seq[self.seq] = net
                size += len(msg)
                i += 1
            self.sock.send(b"".join(chunk))
            while by_seq:
                for kind, seq, payload in _messages(self.sock.recv(1 << 20)):
                    if kind == _NLMSG_ERROR and seq in by_seq:
                        net = by_seq.pop(seq)
                        (err,) = struct.unpack_from("=i", payload)
                        if err:
                            failures[net] = -err
        return failures

    def apply(self, p: Plan) -> None:
        """Adds first (new routes before old ones go), then removes; RouteError lists the failures."""
        failures = self._batch([(_RTM_NEWROUTE, n, h) for n, h in p.add])
        on_oif = NextHop(None, self.oif) if self.oif is not None else None
        failures.update({n: e for n, e in self._batch([(_RTM_DELROUTE, n, on_oif) for n in p.remove])
                         .items() if e != errno.ESRCH})  # already gone is what we wanted
        if failures:
            shown = ", ".join(f"{n}: {os.strerror(e)}"
                              for n, e in sorted(failures.items(), key=lambda x: key(x[0]))[:5])
            raise RouteError(f"{len(failures)} of {len(p.add) + len(p.remove)} route changes failed ({shown})")

    def local_networks(self) -> list[Network]:
        """The networks of this namespace's own interface addresses (``ip addr``)."""
        if self._ipr is None:
            from pyroute2 import IPRoute

            self._ipr = IPRoute()
        out: list[Network] = []
        for msg in self._ipr.get_addr():
            addr = msg.get_attr("IFA_ADDRESS")
            if addr is not None:
                out.append(ipaddress.ip_network(f"{addr}/{msg['prefixlen']}", strict=False))
        return out

    def lookup(self, addr: Address) -> dict[str, Any]:
        """``ip route get addr``: {"oif": index, "gateway": address or None}, {} if unreachable."""
        from pyroute2 import IPRoute, NetlinkError

        if self._ipr is None:
            self._ipr = IPRoute()
        try:
            msgs = list(self._ipr.route("get", dst=str(addr)))
        except NetlinkError:  # e.g. "Network is unreachable": no next hop yet
            return {}
        if not msgs:
            return {}
        return {"oif": msgs[0].get("RTA_OIF"), "gateway": msgs[0].get("RTA_GATEWAY")}


# ------------------------------------------------------------ the gateway's calls


def _in(netns: str | None, fn: Callable[[], _T]) -> _T:
    if netns is None:
        return fn()
    try:
        return in_netns(netns, fn)
    except NftError as e:  # NetnsError
        raise RouteError(str(e)) from None


def _device_table(interface: str) -> RouteTable | None:
    try:
        idx = socket.if_nametoindex(interface)
    except OSError:
        return None
    return RouteTable(ROUTE_PROTO, MAIN_TABLE, oif=idx)


def sync_routes(interface: str, cidrs: Iterable[str], *, netns: str | None = None) -> Plan:
    """Exactly ``cidrs`` routed into ``interface`` with our proto; our stale ones removed."""
    desired = parse_cidrs(cidrs)
    where = f" in netns {netns}" if netns else ""

    def work() -> Plan:
        rt = _device_table(interface)
        if rt is None:
            raise RouteError(f"interface {interface!r} does not exist{where}")
        try:
            hop = NextHop(None, rt.oif or 0)
            p = plan(dict.fromkeys(desired, hop), rt.present())
            try:
                rt.apply(p)
            except RouteError as e:
                raise RouteError(f"via {interface}{where}: {e}") from None
            return p
        finally:
            rt.close()

    return _in(netns, work)


def list_routes(interface: str, *, netns: str | None = None) -> set[Network]:
    """Our routes into ``interface`` (empty if the interface is gone)."""

    def work() -> set[Network]:
        rt = _device_table(interface)
        if rt is None:
            return set()
        try:
            return set(rt.present())
        finally:
            rt.close()

    return _in(netns, work)


def remove_routes(interface: str, *, netns: str | None = None) -> None:
    """Remove all our routes into ``interface``; nothing to do if it is gone."""
    if list_routes(interface, netns=netns):
        sync_routes(interface, (), netns=netns)
