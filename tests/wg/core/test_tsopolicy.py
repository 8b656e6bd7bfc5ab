"""fabric.wg.tsopolicy: TSO reads go off when partial checksums dominate, and come back."""

from __future__ import annotations

from fabric.wg.tsopolicy import MIN_PARTIAL, OFF_RATIO, RETRY_AFTER, TsoPolicy


def test_tcp_bulk_keeps_tso_on() -> None:
    p = TsoPolicy()
    for t in range(5):
        # ACKs and handshakes come partial too; the super-packets still pay.
        assert p.update(supers=2000, partials=3000, now=float(t)) is None
    assert p.on


def test_few_partials_change_nothing() -> None:
    p = TsoPolicy()
    assert p.update(supers=0, partials=MIN_PARTIAL - 1, now=0.0) is None and p.on


def test_udp_bulk_turns_it_off_then_it_is_retried() -> None:
    p = TsoPolicy()
    assert p.update(supers=10, partials=OFF_RATIO * 10 + MIN_PARTIAL, now=100.0) is False
    assert not p.on
    # Off: nothing is learnt from the counts until the retry.
    assert p.update(supers=0, partials=50_000, now=100.0 + RETRY_AFTER - 0.1) is None
    assert p.update(supers=0, partials=0, now=100.0 + RETRY_AFTER) is True
    assert p.on
    # Still UDP: off again at the next interval.
    assert p.update(supers=0, partials=MIN_PARTIAL, now=101.0 + RETRY_AFTER) is False
