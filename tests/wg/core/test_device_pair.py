"""Two sans-IO Devices talking through a fake network with a fake clock."""

from __future__ import annotations

from wg.core.wgsim import Pair, ipv6_packet

from fabric.wg import messages as m


def test_handshake_and_data_both_ways(pair: Pair) -> None:
    pkt = pair.a_to_b(b"first")
    # initiation, response, then the staged packet on the new session
    kinds = [d[:1] for _, _, d, _ in pair.net.log]
    assert kinds == [b"\x01", b"\x02", b"\x04"]
    assert len(pair.net.log[0][2]) == m.INITIATION_SIZE
    assert len(pair.net.log[1][2]) == m.RESPONSE_SIZE
    assert list(pair.b.inbox) == [pkt]
    pair.b.inbox.clear()
    # B confirmed (its next -> current) by the first transport packet
    assert pair.peer_a.current is not None and pair.peer_a.next is None
    back = pair.b_to_a(b"answer")
    assert list(pair.a.inbox) == [back]
    assert pair.a.counters["handshake_complete"] == 1
    assert pair.b.counters["handshake_complete"] == 1
    for dev in (pair.a, pair.b):
        assert all(v == 0 for k, v in dev.counters.items() if k.startswith("drop_")), dev.counters


def test_ipv6_inner(pair: Pair) -> None:
    pkt = ipv6_packet("fd00::1", "fd00::2", b"six")
    pair.a.on_packet(pkt, pair.clock.now)
    pair.net.flush()
    assert list(pair.b.inbox) == [pkt]


def test_padding_multiple_of_16_and_trimmed(pair: Pair) -> None:
    pair.a_to_b(b"x")  # handshake
    pair.net.log.clear()
    pair.b.inbox.clear()
    for n in (1, 15, 16, 17, 100):
        pkt = pair.a_to_b(b"y" * n)
        data = pair.net.log[-1][2]
        assert (len(data) - 32) % 16 == 0
        assert len(data) - 32 >= len(pkt)
        assert pair.b.inbox.pop() == pkt


def test_padding_never_beyond_mtu(pair: Pair) -> None:
    pair.a.mtu = 1420
    pair.a_to_b(b"x")
    pkt = pair.a_to_b(b"z" * (1419 - 20))  # 1419 bytes: would pad to 1424 > mtu
    data = pair.net.log[-1][2]
    assert len(data) == 32 + 1420
    assert pair.b.inbox[-1] == pkt
