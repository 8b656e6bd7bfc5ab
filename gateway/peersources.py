"""Which peer a source address belongs to: our views of every peer, as networks.

A packet from a peer arrives with its source in one of our views of that peer
(the peer's side rewrote it there). The operator API and the DNS listener use
this to refuse peers. The views are read at most once per ``ttl`` seconds
(the DNS listener asks on every query) and parsed again only when they changed.
"""

from __future__ import annotations

import ipaddress
import time
from collections.abc import Callable
from typing import Any


class PeerSources:
    def __init__(self, views: Callable[[], dict[str, list[Any]]], ttl: float = 1.0,
                 clock: Callable[[], float] = time.monotonic,
                 generation: Callable[[], object] | None = None) -> None:
        # generation: a cheap marker that changes with the views (IpamViews.generation);
        # while it holds still the views are not read at all, whatever the ttl
        self.views, self.ttl, self.clock, self.generation = views, ttl, clock, generation
        self._generation: object = None
        self._seen: tuple[tuple[str, tuple[str, ...]], ...] | None = None
        # (IP version, prefix length) -> network address as int -> peer: one dict lookup per
        # prefix length, whatever the number of peers (a hub's 2000 views scanned one by
        # one cost milliseconds on every operator request).
        self._index: dict[tuple[int, int], dict[int, str]] = {}
        self._at: float | None = None

    def _networks(self) -> dict[tuple[int, int], dict[int, str]]:
        now = self.clock()
        if self._at is None or now - self._at >= self.ttl:
            self._at = now
            if self.generation is not None:
                gen = self.generation()
                if gen == self._generation and self._seen is not None:
                    return self._index
                self._generation = gen
            seen = tuple((peer, tuple(str(m.view) for m in maps)) for peer, maps in self.views().items())
            if seen != self._seen:  # parse only when the views changed
                index: dict[tuple[int, int], dict[int, str]] = {}
                for peer, views in seen:
                    for v in views:
                        net = ipaddress.ip_network(v)
                        index.setdefault((net.version, net.prefixlen), {}).setdefault(
                            int(net.network_address), peer)
                self._index, self._seen = index, seen
        return self._index

    def peer_of(self, host: str) -> str | None:
        try:
            ip = ipaddress.ip_address(host.split("%", 1)[0])
        except ValueError:
            return None
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        value, bits = int(ip), ip.max_prefixlen
        for (version, plen), nets in self._networks().items():
            if version == ip.version:
                peer = nets.get(value >> (bits - plen) << (bits - plen))
                if peer is not None:
                    return peer
        return None

    def is_peer(self, host: str) -> bool:
        return self.peer_of(host) is not None
