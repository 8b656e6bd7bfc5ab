"""PeerSources: which peer an address belongs to, by one lookup per prefix length,
and views re-read (and parsed again only when changed) every ``ttl``."""

from __future__ import annotations

from typing import Any

from fabric.model import RangeMap
from gateway.peersources import PeerSources


def test_addresses_in_a_peers_views_name_that_peer() -> None:
    views: dict[str, list[Any]] = {
        "gpu": [RangeMap("pod", "10.244.0.0/16", "100.64.0.0/16"), RangeMap("service", "10.96.0.0/12", "100.80.0.0/12")],
        "lab": [RangeMap("pod", "10.244.0.0/16", "100.65.0.0/16"), RangeMap("pod", "fd00::/48", "fd00:0:1::/48"),
                RangeMap("export", "10.96.0.10/32", "100.66.0.7/32")],
    }
    src = PeerSources(lambda: views, ttl=0.0)
    assert src.peer_of("100.64.3.4") == "gpu" and src.peer_of("100.95.255.255") == "gpu"
    assert src.peer_of("100.65.0.1") == "lab" and src.peer_of("fd00:0:1::9") == "lab"
    assert src.peer_of("::ffff:100.66.0.7") == "lab" and src.peer_of("100.66.0.8") is None
    assert src.peer_of("127.0.0.1") is None and src.peer_of("fd00:0:2::1") is None
    assert src.peer_of("not an address") is None
    # a peer added a moment ago is known at once (ttl 0), one removed is forgotten
    views["edge"] = [RangeMap("pod", "10.8.0.0/16", "10.8.0.0/16")]
    del views["gpu"]
    assert src.peer_of("10.8.1.1") == "edge" and src.peer_of("100.64.3.4") is None


def test_views_are_read_once_per_ttl() -> None:
    reads = []
    now = [0.0]

    def views() -> dict[str, list[Any]]:
        reads.append(now[0])
        return {"gpu": [RangeMap("pod", "10.244.0.0/16", "100.64.0.0/16")]}

    src = PeerSources(views, ttl=1.0, clock=lambda: now[0])
    assert src.is_peer("100.64.0.1") and src.is_peer("100.64.0.2")
    now[0] = 1.5
    assert src.is_peer("100.64.0.3")
    assert reads == [0.0, 1.5]
