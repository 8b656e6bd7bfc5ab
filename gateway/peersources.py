"""Which peer a source address belongs to: our views of every peer, as networks.

A packet from a peer arrives with its source in one of our views of that peer
(the peer's side rewrote it there). The operator API and the DNS listener use
this to refuse peers. The views are read at most once per ``ttl`` seconds
(the DNS listener asks on every query), or, given ``version`` (the IPAM store's
write count), whenever it changed: exact at once after a change, and free while
nothing changes (the operator listener asks on every request; with 1,000 peers
reading and parsing every view took tens of ms a request, so a thousand node
agents' long-polls held the event loop for seconds).
"""

from __future__ import annotations

import ipaddress
import time
from collections.abc import Callable
from typing import Any

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


class PeerSources:
    def __init__(self, views: Callable[[], dict[str, list[Any]]], ttl: float = 1.0,
                 clock: Callable[[], float] = time.monotonic,
                 version: Callable[[], int] | None = None) -> None:
        self.views, self.ttl, self.clock, self.version = views, ttl, clock, version
        self._nets: list[tuple[Network, str]] = []
        self._at: float | None = None
        self._seen: int | None = None

    def _networks(self) -> list[tuple[Network, str]]:
        now = self.clock()
        if self.version is not None:
            seen = self.version()
            stale = self._at is None or seen != self._seen
            self._seen = seen
        else:
            stale = self._at is None or now - self._at >= self.ttl
        if stale:
            self._nets = [(ipaddress.ip_network(m.view), peer) for peer, maps in self.views().items() for m in maps]
            self._at = now
        return self._nets

    def peer_of(self, host: str) -> str | None:
        try:
            ip = ipaddress.ip_address(host.split("%", 1)[0])
        except ValueError:
            return None
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        return next((peer for net, peer in self._networks() if ip in net), None)

    def is_peer(self, host: str) -> bool:
        return self.peer_of(host) is not None
