"""Device.on_packets (the packets of one TUN read burst handed over as a list) leaves
exactly the state that on_packet on each in turn leaves. Two independent pairs get
the same packets, one fed packet by packet, the other batched; B decrypts both."""

from __future__ import annotations

from wg.core.wgsim import Pair, ipv4_packet, ipv6_packet

from fabric.wg.constants import REKEY_AFTER_MESSAGES


def _packets() -> list[bytes]:
    pk = [ipv4_packet("10.0.0.1", "10.0.0.2", bytes([i]) * 1000) for i in range(6)]
    pk.insert(2, ipv4_packet("10.0.0.1", "10.0.0.99", b"nobody"))  # no peer: drop
    pk.insert(4, b"\x45" * 10)  # too short: drop
    pk.append(ipv6_packet("fd00::1", "fd00::2", b"six" * 100))  # same peer, other key
    pk.append(ipv4_packet("10.0.0.1", "10.0.0.2", b"odd"))  # padded
    # Unpadded (the inlined seal): exactly the MTU (1420), and a multiple of 16.
    pk.append(ipv4_packet("10.0.0.1", "10.0.0.2", b"m" * 1400))
    pk.append(ipv4_packet("10.0.0.1", "10.0.0.2", b"s" * 1004))
    return pk


def _state(p: Pair) -> tuple[object, ...]:
    peer = p.peer_b
    assert peer.current is not None
    return (dict(p.a.counters), peer.tx_bytes, peer.current.send_counter,
            peer.t_new_handshake is None, peer.t_send_keepalive, [len(d) for d, _ in p.a.outbox],
            [ep for _, ep in p.a.outbox])


def _run(batched: bool) -> tuple[object, ...]:
    p = Pair()
    p.a_to_b(b"session")  # a fresh session: the fast path applies
    p.b.inbox.clear()
    runs: list[int] = []
    if batched:
        inner = p.a._send_run

        def spy(*args: object) -> int:
            runs.append(1)
            return inner(*args)  # type: ignore[arg-type]

        p.a._send_run = spy  # type: ignore[method-assign]

    def feed(packets: list[bytes]) -> None:
        if batched:
            p.a.on_packets(packets, p.clock.now)
        else:
            for pkt in packets:
                p.a.on_packet(pkt, p.clock.now)

    feed(_packets())
    first = _state(p)
    # The rekey boundary inside a batch: two packets left before REKEY_AFTER_MESSAGES.
    assert p.peer_b.current is not None
    p.peer_b.current.send_counter = REKEY_AFTER_MESSAGES - 2
    feed(_packets()[:4])
    second = _state(p)
    p.net.flush()
    if batched:
        assert len(runs) >= 2, "the batched path was not taken"
    return first, second, list(p.b.inbox), dict(p.b.counters)


def test_batched_send_equals_one_by_one() -> None:
    one, batch = _run(False), _run(True)
    counters = one[0][0]  # type: ignore[index]
    assert counters["drop_no_peer"] == 1 and counters["drop_bad_packet"] == 1
    assert len(one[2]) >= 8  # B got the packets (those sent before the rekey, at least)
    # The third packet to B crossed REKEY_AFTER_MESSAGES: it took the general path.
    assert one[1][2] == REKEY_AFTER_MESSAGES + 1  # type: ignore[index]
    assert one == batch
