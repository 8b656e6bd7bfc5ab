"""Who the gateway's DNS answers: not a peer, and each source at a bounded rate."""

from __future__ import annotations

from types import SimpleNamespace

from gateway.dns.limit import SourceLimiter
from gateway.dns.stats import DnsStats, metric_lines
from gateway.peersources import PeerSources


def test_peer_sources_map_addresses_to_peers_and_cache() -> None:
    reads = []

    def views() -> dict[str, list[SimpleNamespace]]:
        reads.append(1)
        return {"gpu": [SimpleNamespace(view="100.64.0.0/16"), SimpleNamespace(view="fd10::/48")]}

    t = [0.0]
    ps = PeerSources(views, ttl=1.0, clock=lambda: t[0])
    assert ps.peer_of("100.64.3.4") == "gpu" and ps.peer_of("fd10::7") == "gpu"
    assert ps.peer_of("::ffff:100.64.0.1") == "gpu"  # v4-mapped, as a dual-stack socket reports it
    assert ps.peer_of("10.244.1.5") is None and ps.peer_of("not-an-ip") is None
    assert len(reads) == 1  # cached within the ttl
    t[0] = 1.5
    ps.is_peer("10.244.1.5")
    assert len(reads) == 2


def test_limiter_drops_peers_and_floods_per_source() -> None:
    lim = SourceLimiter(rate=10, burst=20, max_sources=3, from_peer=lambda s: s.startswith("100.64."))
    assert lim.verdict("100.64.0.9", 0.0) == "peer"
    flood = [lim.verdict("10.244.1.5", 0.0) for _ in range(50)]
    assert flood.count("ok") == 20 and flood.count("rate") == 30  # the burst, then nothing
    assert lim.verdict("10.244.2.7", 0.0) == "ok"  # another pod is not affected
    assert lim.verdict("10.244.1.5", 0.5) == "ok"  # refilled at the rate: 5 more after 0.5 s
    assert [lim.verdict("10.244.1.5", 0.5) for _ in range(5)].count("ok") == 4
    for i in range(5):  # the table stays bounded: the least recently seen go first
        lim.verdict(f"10.0.0.{i}", 1.0)
    assert len(lim._buckets) == 3 and "10.244.1.5" not in lim._buckets


def test_drops_are_counted_in_metrics() -> None:
    s = DnsStats()
    s.dropped = {"peer": 3}
    lines = metric_lines(s)
    assert 'crosswire_dns_dropped_total{reason="peer"} 3' in lines
    assert 'crosswire_dns_dropped_total{reason="rate"} 0' in lines
