"""Cryptokey routing table: longest-prefix match of IPv4/IPv6 addresses to peers.

Instead of a bit-by-bit trie walk, each family keeps one dict per prefix
length in use, keyed by the masked integer network, and tries the lengths
longest first: a lookup is a handful of dict probes, cheap in Python.
An allowed IP belongs to exactly one peer; inserting it for another peer
moves it (as WireGuard does).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Hashable, Iterator
from typing import Generic, TypeVar

P = TypeVar("P", bound=Hashable)

_MASKS = {
    4: [((1 << 32) - 1) ^ ((1 << (32 - n)) - 1) for n in range(33)],
    6: [((1 << 128) - 1) ^ ((1 << (128 - n)) - 1) for n in range(129)],
}
_MASKS_V4 = _MASKS[4]
CACHE_MAX = 16384


def parse_cidr(text: str) -> tuple[int, int, int]:
    """"10.0.0.1/24" -> (4, network int, 24). Host bits are cleared, as `wg` shows them.

    A bare address means a host route. Raises ValueError on bad input.
    """
    text = text.strip()
    addr, sep, plen_s = text.partition("/")
    ip = ipaddress.ip_address(addr)
    bits = 32 if ip.version == 4 else 128
    if sep:
        if not (plen_s.isascii() and plen_s.isdigit()):
            raise ValueError(f"invalid prefix length in {text!r}")
        plen = int(plen_s)
        if plen > bits:
            raise ValueError(f"prefix length out of range in {text!r}")
    else:
        plen = bits
    return ip.version, int(ip) & _MASKS[ip.version][plen], plen


def format_cidr(family: int, net: int, plen: int) -> str:
    ip = ipaddress.IPv4Address(net) if family == 4 else ipaddress.IPv6Address(net)
    return f"{ip}/{plen}"


class AllowedIPs(Generic[P]):
    def __init__(self) -> None:
        self._tables: dict[int, dict[int, dict[int, P]]] = {4: {}, 6: {}}
        self._lengths: dict[int, list[int]] = {4: [], 6: []}  # longest first
        self._by_peer: dict[P, set[tuple[int, int, int]]] = {}
        # Packed address (4 or 16 bytes, straight from the IP header) -> owner.
        # Cleared on every change; callers hold on to this dict object.
        self.cache: dict[bytes, P | None] = {}

    def insert(self, family: int, net: int, plen: int, peer: P) -> None:
        self.cache.clear()
        table = self._tables[family].get(plen)
        if table is None:
            table = self._tables[family][plen] = {}
            self._lengths[family] = sorted(self._tables[family], reverse=True)
        net &= _MASKS[family][plen]
        old = table.get(net)
        if old is not None and old != peer:
            self._by_peer[old].discard((family, net, plen))
        table[net] = peer
        self._by_peer.setdefault(peer, set()).add((family, net, plen))

    def remove(self, family: int, net: int, plen: int, peer: P) -> bool:
        """Remove one allowed IP if it belongs to ``peer``."""
        self.cache.clear()
        table = self._tables[family].get(plen)
        net &= _MASKS[family][plen]
        if table is None or table.get(net) != peer:
            return False
        del table[net]
        self._by_peer[peer].discard((family, net, plen))
        if not table:
            del self._tables[family][plen]
            self._lengths[family] = sorted(self._tables[family], reverse=True)
        return True

    def remove_peer(self, peer: P) -> None:
        self.cache.clear()
        for family, net, plen in list(self._by_peer.pop(peer, ())):
            table = self._tables[family][plen]
            if table.get(net) == peer:
                del table[net]
                if not table:
                    del self._tables[family][plen]
                    self._lengths[family] = sorted(self._tables[family], reverse=True)

    def entries(self, peer: P) -> list[tuple[int, int, int]]:
        """(family, net, plen) of a peer, v4 before v6, in address order."""
        return sorted(self._by_peer.get(peer, ()))

    def lookup(self, family: int, addr: int) -> P | None:
        tables = self._tables[family]
        masks = _MASKS[family]
        for plen in self._lengths[family]:
            peer = tables[plen].get(addr & masks[plen])
            if peer is not None:
                return peer
        return None

    def lookup_packed(self, packed: bytes) -> P | None:
        """Owner of a 4- or 16-byte address as found in an IP header, cached."""
        cache = self.cache
        try:
            return cache[packed]
        except KeyError:
            pass
        if len(cache) >= CACHE_MAX:
            cache.clear()
        peer = self.lookup(4 if len(packed) == 4 else 6, int.from_bytes(packed, "big"))
        cache[packed] = peer
        return peer

    def lookup_v4(self, addr: int) -> P | None:
        tables = self._tables[4]
        masks = _MASKS_V4
        for plen in self._lengths[4]:
            peer = tables[plen].get(addr & masks[plen])
            if peer is not None:
                return peer
        return None

    def __iter__(self) -> Iterator[tuple[int, int, int, P]]:
        for family, by_len in self._tables.items():
            for plen, table in by_len.items():
                for net, peer in table.items():
                    yield family, net, plen, peer
