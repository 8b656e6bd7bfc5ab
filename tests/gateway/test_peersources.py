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


def test_views_are_read_only_when_their_generation_moves() -> None:
    reads = []
    gen = [1]
    views: dict[str, list[Any]] = {"gpu": [RangeMap("pod", "10.244.0.0/16", "100.64.0.0/16")]}

    def read() -> dict[str, list[Any]]:
        reads.append(gen[0])
        return views

    src = PeerSources(read, ttl=0.0, generation=lambda: gen[0])
    assert [src.peer_of("100.64.0.1") for _ in range(5)] == ["gpu"] * 5
    assert reads == [1]  # ttl 0, yet read once: the generation held still
    views["lab"] = [RangeMap("pod", "10.244.0.0/16", "100.65.0.0/16")]
    gen[0] = 2
    assert src.peer_of("100.65.0.1") == "lab" and reads == [1, 2]


def test_a_peer_added_to_the_ipam_is_refused_at_once(tmp_path: Any) -> None:
    from gateway.ipam_adapter import IpamViews

    views = IpamViews(tmp_path / "ipam.db", ("10.244.0.0/16",), ("10.96.0.0/12",), (), ("100.64.0.0/10",))
    try:
        src = PeerSources(views.all_views, ttl=0.0, generation=views.generation)
        assert src.peer_of("100.64.0.1") is None
        got = views.allocate("gpu", [("pod", "10.244.0.0/16")])
        assert src.peer_of(str(next(iter(got)).view).split("/")[0]) == "gpu"
        views.release("gpu")
        assert src.peer_of(str(next(iter(got)).view).split("/")[0]) is None
    finally:
        views.close()
