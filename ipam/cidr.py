"""CIDRs as integer intervals: strict parsing, formatting, special-purpose ranges.

A ``Net`` is a plain tuple (version, first, plen, last) so that loading and
comparing tens of thousands of views stays cheap. Parsing is cached: peers
tend to claim the same few ranges (10.244.0.0/16 everywhere).
"""

from __future__ import annotations

import functools
import ipaddress
import socket
from typing import NamedTuple

from .errors import IpamError


class Net(NamedTuple):
    version: int  # 4 or 6
    first: int  # first address as an integer
    plen: int  # prefix length
    last: int  # last address as an integer

    @property
    def bits(self) -> int:
        return 32 if self.version == 4 else 128

    @property
    def size(self) -> int:
        return self.last - self.first + 1

    def overlaps(self, other: Net) -> bool:
        return self.version == other.version and self.first <= other.last and other.first <= self.last

    def to_bytes(self) -> bytes:
        return self.first.to_bytes(4 if self.version == 4 else 16, "big")

    def __str__(self) -> str:
        return format_net(self.version, self.first, self.plen)


def make_net(version: int, first: int, plen: int) -> Net:
    return Net(version, first, plen, first + (1 << ((32 if version == 4 else 128) - plen)) - 1)


def format_net(version: int, first: int, plen: int) -> str:
    """Canonical text (what ``ipaddress`` prints), via the C formatter when safe."""
    if version == 4:
        return f"{socket.inet_ntoa(first.to_bytes(4, 'big'))}/{plen}"
    text = socket.inet_ntop(socket.AF_INET6, first.to_bytes(16, "big"))
    if "." in text:  # libc prints embedded IPv4 forms; ipaddress does not
        text = str(ipaddress.IPv6Address(first))
    return f"{text}/{plen}"


_new_tuple = tuple.__new__


def net_from_bytes(blob: bytes, plen: int) -> Net:
    # tuple.__new__ skips NamedTuple's Python-level __new__: this runs once per
    # stored view on every reopen.
    first = int.from_bytes(blob, "big")
    if len(blob) == 4:
        return _new_tuple(Net, (4, first, plen, first + (1 << (32 - plen)) - 1))
    return _new_tuple(Net, (6, first, plen, first + (1 << (128 - plen)) - 1))


@functools.lru_cache(maxsize=4096)
def canonical(net: Net) -> str:
    """``str(net)``, cached for the few real ranges peers claim over and over."""
    return str(net)


@functools.lru_cache(maxsize=4096)
def _parse(text: str) -> Net | str:
    """The network, or the reason ``text`` is not one (errors are formatted by the caller)."""
    if "/" not in text:
        return "missing prefix length (write it as a CIDR, e.g. 10.244.0.0/16)"
    if "%" in text:
        return "scoped (zone) addresses are not ranges"
    try:
        loose = ipaddress.ip_network(text, strict=False)
    except ValueError as e:
        return f"not a valid CIDR ({e})"
    net = make_net(loose.version, int(loose.network_address), loose.prefixlen)
    if int(ipaddress.ip_address(text.split("/", 1)[0])) != net.first:
        return f"host bits set (the network is {net})"
    return net


def parse_cidr(text: object, what: str) -> Net:
    """Parse ``text`` as a network in CIDR notation; ``what`` names it in errors.

    Strict: a prefix length is required and host bits must be zero, because a
    range written as 10.244.1.0/16 is almost always a typo for something else.
    """
    if not isinstance(text, str):
        raise IpamError(f"{what} {text!r}: not a string")
    got = _parse(text)
    if isinstance(got, str):
        raise IpamError(f"{what} {text!r}: {got}")
    return got


# Ranges a peer may not claim and no view may use: addresses that are not
# routable unicast, or that mix the address families.
SPECIAL: tuple[tuple[Net, str], ...] = tuple(
    (parse_cidr(c, "special range"), why)
    for c, why in (
        ("0.0.0.0/8", "'this network'"),
        ("127.0.0.0/8", "loopback"),
        ("169.254.0.0/16", "link-local"),
        ("224.0.0.0/4", "multicast"),
        ("240.0.0.0/4", "reserved/broadcast"),
        ("::/127", "unspecified/loopback"),
        ("::ffff:0:0/96", "IPv4-mapped IPv6 (mixes address families)"),
        ("fe80::/10", "link-local"),
        ("ff00::/8", "multicast"),
    )
)


@functools.lru_cache(maxsize=4096)
def special_overlap(net: Net) -> str | None:
    """A description of the special-purpose range ``net`` overlaps, if any."""
    for s, why in SPECIAL:
        if s.overlaps(net):
            return f"{s} ({why})"
    return None
