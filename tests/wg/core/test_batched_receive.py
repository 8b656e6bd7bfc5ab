"""Device.on_datagrams (a UDP GRO read handed over whole) leaves exactly the state that
on_datagram on each datagram in turn leaves: inbox, every counter, peer bytes,
endpoint and timers. Two independent pairs get the same traffic and the same damage,
one fed datagram by datagram, the other batched."""

from __future__ import annotations

from wg.core.wgsim import Pair, ipv4_packet, ipv6_packet

SRC = ("192.0.2.1", 51820)


def _capture_first_flight(p: Pair, payloads: list[bytes]) -> list[bytes]:
    """A's transport datagrams for ``payloads`` sent before any session exists: they
    wait in A's staged queue and leave with the handshake response, so B receives
    them on its "next" keypair (the rotation case). Held back from B."""
    held: list[bytes] = []

    def hold(src: tuple[str, int], _dst: tuple[str, int], data: bytes) -> bytes | None:
        if src == p.A_EP and data[0] == 4:
            held.append(data)
            return None
        return data

    p.net.filter = hold
    for pl in payloads:
        p.a.on_packet(ipv4_packet("10.0.0.1", "10.0.0.2", pl), p.clock.now)
    p.net.flush()
    p.net.filter = None
    return held


def _odd_inner() -> list[bytes]:
    """Inner packets of the bulk's size (1020 bytes) that the receiver checks: IPv4
    claiming more than it has or less than a header (dropped), IPv4 with padding
    after its total length (cut), IPv6."""
    out = []
    for total in (1100, 19, 500):
        pkt = bytearray(ipv4_packet("10.0.0.1", "10.0.0.2", b"i" * 1000))
        pkt[2:4] = total.to_bytes(2, "big")
        out.append(bytes(pkt))
    out.append(ipv6_packet("fd00::1", "fd00::2", b"6" * 980))
    return out


def _bulk(p: Pair, payloads: list[tuple[str, bytes]]) -> list[bytes]:
    for src, pl in payloads:
        p.a.on_packet(ipv4_packet(src, "10.0.0.2", pl), p.clock.now)
    for pkt in _odd_inner():
        p.a.on_packet(pkt, p.clock.now)
    out = [d for d, _ in p.a.outbox]
    p.a.outbox.clear()
    return out


def _damage(dgrams: list[bytes]) -> list[bytes]:
    d = list(dgrams)
    bad = bytearray(d[2])
    bad[40] ^= 1  # fails authentication
    d[2] = bytes(bad)
    d.insert(6, d[4])  # a replay
    unknown = bytearray(d[8])
    unknown[4:8] = b"\xff\xff\xff\x7f"  # unknown receiver index: breaks the run
    d[8] = bytes(unknown)
    return d


def _state(p: Pair) -> tuple[object, ...]:
    peer = p.peer_a
    return (list(p.b.inbox), dict(p.b.counters), peer.rx_bytes, peer.endpoint,
            peer.t_send_keepalive, peer.need_another_keepalive, peer.t_new_handshake,
            peer.current is not None and peer.current.replay.counter, peer.next)


def _run(batched: bool) -> tuple[object, ...]:
    p = Pair()
    first = _capture_first_flight(p, [b"x" * 100, b"y" * 100])
    payloads = [("10.0.0.1", bytes([i]) * 1000) for i in range(12)]
    payloads[9] = ("10.0.0.9", b"z" * 1000)  # not an allowed source of A
    bulk = _damage(_bulk(p, payloads))
    p.a.send_keepalive(p.peer_b, p.clock.now)  # shorter: a GRO read's last datagram
    keepalive = [d for d, _ in p.a.outbox]
    p.a.outbox.clear()
    reads = [first, bulk + keepalive]
    runs: list[int] = []
    if batched:
        inner = p.b._transport_run

        def spy(*args: object) -> int:
            runs.append(1)
            return inner(*args)  # type: ignore[arg-type]

        p.b._transport_run = spy  # type: ignore[method-assign]
    for read in reads:
        if batched:
            size = len(read[0])
            assert all(len(x) == size for x in read[:-1])
            p.b.on_datagrams(b"".join(read), size, SRC, p.clock.now)
        else:
            for dg in read:
                p.b.on_datagram(dg, SRC, p.clock.now)
    if batched:
        assert len(runs) >= 3, "the batched path was not taken"
    return _state(p)


def test_batched_receive_equals_one_by_one() -> None:
    one, batch = _run(False), _run(True)
    inbox = one[0]
    # lost: bad, unknown, not allowed; and of the odd inner packets two
    assert isinstance(inbox, list) and len(inbox) == 2 + 12 - 1 - 1 - 1 + 2
    assert len(inbox[-2]) == 500 and inbox[-1][0] >> 4 == 6
    counters = one[1]
    assert isinstance(counters, dict)
    assert counters["drop_bad_inner"] == 2
    for key in ("drop_bad_auth", "drop_replay", "drop_unknown_index", "drop_not_allowed_src",
                "rx_keepalive"):
        assert counters[key] == 1, key
    assert one[8] is None  # the responder's keypair was rotated in
    assert one == batch


def _reads_of_a_session(batched: bool) -> tuple[tuple[object, ...], list[bytes]]:
    """A session's datagrams in GRO reads that take the word-at-a-time replay check
    (consecutive fresh counters) and every way out of it: the same read again (all
    replays), a failed decryption mid-read, a counter seen before the read, IPv6 and
    padded inner packets, a short last datagram."""
    p = Pair()
    p.a.on_packet(ipv4_packet("10.0.0.1", "10.0.0.2", b"hello"), p.clock.now)
    p.net.flush()
    p.b.inbox.clear()
    sent = []
    for i in range(40):
        if i % 7 == 3:
            sent.append(ipv6_packet("fd00::1", "fd00::2", bytes([i]) * 980))
        else:
            sent.append(ipv4_packet("10.0.0.1", "10.0.0.2", bytes([i]) * 992))
    sent[19] = ipv4_packet("10.0.0.1", "10.0.0.2", b"p" * 305)  # padded, shorter: ends a read
    for pkt in sent:
        p.a.on_packet(pkt, p.clock.now)
    d = [x for x, _ in p.a.outbox]
    p.a.outbox.clear()
    bad = bytearray(d[25])
    bad[-1] ^= 1  # its tag fails
    d[25] = bytes(bad)
    reads = [d[0:20], d[0:20], d[20:30], [d[35]], d[30:40]]
    for read in reads:
        if batched and len(read) > 1:
            p.b.on_datagrams(b"".join(read), len(read[0]), SRC, p.clock.now)
        else:
            for dg in read:
                p.b.on_datagram(dg, SRC, p.clock.now)
    return _state(p), sent


def test_batched_receive_runs_and_their_replay_checks() -> None:
    one, sent = _reads_of_a_session(False)
    batch, _ = _reads_of_a_session(True)
    inbox = batch[0]
    # everything once in the order read, but the packet whose tag failed; padding cut off
    order = [*range(25), *range(26, 30), 35, *range(30, 35), *range(36, 40)]
    assert inbox == [sent[i] for i in order]
    counters = batch[1]
    assert isinstance(counters, dict)
    assert counters["drop_replay"] == 20 + 1 and counters["drop_bad_auth"] == 1
    assert one == batch


def _tails(batched: bool) -> tuple[object, ...]:
    """GRO reads whose shorter last datagram is the only one, fails authentication, or
    belongs to an unknown keypair (the run ends before it; the per-datagram path
    counts it), and whose full datagrams all fail."""
    p = Pair()
    p.a.on_packet(ipv4_packet("10.0.0.1", "10.0.0.2", b"hello"), p.clock.now)
    p.net.flush()
    p.b.inbox.clear()
    for i in range(9):
        p.a.on_packet(ipv4_packet("10.0.0.1", "10.0.0.2", bytes([i]) * 1000), p.clock.now)
    d = [x for x, _ in p.a.outbox]
    p.a.outbox.clear()
    keepalives = []
    for _ in range(3):
        p.a.send_keepalive(p.peer_b, p.clock.now)
        keepalives += [x for x, _ in p.a.outbox]
        p.a.outbox.clear()
    size = len(d[0])
    unknown = bytearray(keepalives[1])
    unknown[4:8] = b"\xff\xff\xff\x7f"
    bad_tag = bytearray(keepalives[2])
    bad_tag[-1] ^= 1
    spoilt = [bytearray(x) for x in d[6:9]]
    for x in spoilt:
        x[-1] ^= 1
    reads = [[keepalives[0]], [*d[0:3], bytes(unknown)], [*d[3:6], bytes(bad_tag)],
             [bytes(x) for x in spoilt]]
    for read in reads:
        if batched:
            p.b.on_datagrams(b"".join(read), size, SRC, p.clock.now)
        else:
            for dg in read:
                p.b.on_datagram(dg, SRC, p.clock.now)
    return _state(p)


def test_batched_receive_tails() -> None:
    one, batch = _tails(False), _tails(True)
    counters = batch[1]
    assert isinstance(counters, dict)
    assert counters["drop_unknown_index"] == 1 and counters["drop_bad_auth"] == 4
    assert counters["rx_keepalive"] == 1 and len(batch[0]) == 6  # type: ignore[arg-type]
    assert one == batch
