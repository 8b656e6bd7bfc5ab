"""Timers with a fake clock: rekey, reject-after, retransmit/give-up, keepalives, zeroing."""

from __future__ import annotations

import itertools

from wg.core.wgsim import Pair, ipv4_packet, uapi

from fabric.wg import constants


def _no_drops(pair: Pair) -> None:
    for dev in (pair.a, pair.b):
        drops = {k: v for k, v in dev.counters.items() if k.startswith("drop_") and v}
        assert not drops, drops


def test_rekey_after_120s_without_loss(pair: Pair) -> None:
    pair.a_to_b(b"start")
    first = pair.peer_b.current
    assert first is not None
    sent_ab = sent_ba = 1
    got_ab = len(pair.b.inbox)
    pair.b.inbox.clear()
    for _ in range(400):  # 400 s, a packet each way every second
        pair.a_to_b(b"a")
        pair.b_to_a(b"b")
        sent_ab += 1
        sent_ba += 1
        pair.net.advance(1.0)
    got_ab += len(pair.b.inbox)
    assert got_ab == sent_ab
    assert len(pair.a.inbox) == sent_ba - 1  # the first b_to_a is counted in the loop
    assert pair.peer_b.current is not first
    # one handshake per ~120 s (initiator's REKEY_AFTER_TIME), not more
    assert 3 <= pair.a.counters["handshake_complete"] <= 4
    _no_drops(pair)


def test_nothing_sent_on_a_key_older_than_reject_after_time(pair: Pair) -> None:
    pair.a_to_b(b"x")
    kp = pair.peer_b.current
    assert kp is not None
    pair.net.filter = lambda s, d, data: None  # the network goes dark
    pair.net.advance(constants.REJECT_AFTER_TIME + 1)
    before = len(pair.net.log)
    pair.a.on_packet(ipv4_packet("10.0.0.1", "10.0.0.2", b"late"), pair.clock.now)
    pair.b.on_packet(ipv4_packet("10.0.0.2", "10.0.0.1", b"late"), pair.clock.now)
    pair.net.flush()
    assert 4 not in pair.kinds(before)
    # ...and across the whole dark period, no transport datagram used an expired key
    for _, _, data, t in pair.net.log:
        if data[0] == 4:
            assert t - kp.created < constants.REJECT_AFTER_TIME


def test_receiver_rejects_transport_on_expired_keypair(pair: Pair) -> None:
    pair.a_to_b(b"x")
    kp = pair.peer_b.current
    assert kp is not None
    # craft a valid transport packet on the old keypair and deliver it late
    pair.net.filter = lambda s, d, data: None
    pkt = ipv4_packet("10.0.0.1", "10.0.0.2", b"old")
    pair.a.on_packet(pkt, pair.clock.now)
    data = next(d for d, _ in pair.a.outbox if d[0] == 4)
    pair.a.outbox.clear()
    pair.b.on_datagram(data, pair.A_EP, pair.clock.now + constants.REJECT_AFTER_TIME)
    assert pair.b.counters["drop_expired_keypair"] == 1
    pair.b.on_datagram(data, pair.A_EP, pair.clock.now + 1)
    assert pair.b.inbox[-1] == pkt


def test_retransmit_with_jitter_then_give_up() -> None:
    pair = Pair()
    pair.net.filter = lambda s, d, data: None  # B never answers
    pair.a.on_packet(ipv4_packet("10.0.0.1", "10.0.0.2", b"lost"), pair.clock.now)
    pair.net.flush()
    pair.net.advance(200)
    inits = [t for s, _, d, t in pair.net.log if d[0] == 1 and s == pair.A_EP]
    # first + retries while attempts <= MAX_TIMER_HANDSHAKES (18), as wireguard-go/kernel
    assert len(inits) == 1 + constants.MAX_TIMER_HANDSHAKES + 1
    gaps = [b - a for a, b in itertools.pairwise(inits)]
    assert all(constants.REKEY_TIMEOUT <= g <= constants.REKEY_TIMEOUT + 0.334 for g in gaps), gaps
    assert len({round(g, 3) for g in gaps}) > 1  # jittered
    assert inits[-1] - inits[0] <= constants.REKEY_ATTEMPT_TIME + 20 * 0.334 + 5
    assert pair.a.counters["drop_send_exhausted"] == 1
    assert not pair.peer_b.staged
    # after giving up nothing more is sent until new traffic arrives
    n = len(pair.net.log)
    pair.net.advance(100)
    assert pair.kinds(n, pair.A_EP) == []
    pair.a.on_packet(ipv4_packet("10.0.0.1", "10.0.0.2", b"again"), pair.clock.now)
    pair.net.flush()
    assert pair.kinds(n, pair.A_EP) == [1]


def test_retransmit_then_success_delivers_staged_packet() -> None:
    pair = Pair()
    drop = {"n": 2}

    def lossy(s: object, d: object, data: bytes) -> bytes | None:
        if data[0] == 1 and drop["n"]:
            drop["n"] -= 1
            return None
        return data

    pair.net.filter = lossy
    pkt = pair.a_to_b(b"eventually")
    assert not pair.b.inbox
    pair.net.advance(12)
    assert list(pair.b.inbox) == [pkt]


def test_passive_keepalive_after_data_received(pair: Pair) -> None:
    pair.a_to_b(b"x")
    n = len(pair.net.log)
    pair.net.advance(constants.KEEPALIVE_TIMEOUT + 0.5)
    # B got data and had nothing to say: it sends one keepalive (empty transport, 32 bytes)
    from_b = [d for s, _, d, _ in pair.net.log[n:] if s == pair.B_EP]
    assert [len(d) for d in from_b] == [32]
    assert pair.a.counters["rx_keepalive"] == 1
    # no keepalive storms: nothing more while idle
    n = len(pair.net.log)
    pair.net.advance(60)
    assert [d for s, _, d, _ in pair.net.log[n:] if d[0] == 4] == []


def test_persistent_keepalive() -> None:
    pair = Pair()
    r = uapi(
        pair.a,
        f"set=1\npublic_key={pair.b_pub.hex()}\npersistent_keepalive_interval=25\n\n",
        pair.clock.now,
    )
    assert r == "errno=0\n\n"
    pair.net.flush()  # turning it on sends a keepalive at once (-> handshake first)
    assert pair.peer_b.current is not None
    n = len(pair.net.log)
    pair.net.advance(100)
    times = [t for s, _, d, t in pair.net.log[n:] if s == pair.A_EP and d[0] == 4 and len(d) == 32]
    assert len(times) == 4
    assert all(abs((b - a) - 25) < 0.01 for a, b in itertools.pairwise(times))


def test_new_handshake_when_data_sent_but_nothing_heard(pair: Pair) -> None:
    pair.a_to_b(b"x")
    pair.net.filter = lambda s, d, data: None if s == pair.B_EP else data
    n = len(pair.net.log)
    pair.a_to_b(b"y")
    pair.net.advance(constants.KEEPALIVE_TIMEOUT + constants.REKEY_TIMEOUT + 0.5)
    assert 1 in pair.kinds(n, pair.A_EP)


def test_key_material_zeroed_after_three_reject_times(pair: Pair) -> None:
    pair.a_to_b(b"x")
    pair.net.filter = lambda s, d, data: None
    pair.net.advance(constants.REJECT_AFTER_TIME * 3 + 200)
    for peer in (pair.peer_a, pair.peer_b):
        assert peer.current is None and peer.previous is None and peer.next is None
    assert not pair.a._keypairs and not pair.b._keypairs


def test_initiator_rekeys_on_receive_before_reject(pair: Pair) -> None:
    # One-way traffic B -> A: A (initiator) must still renew before 180 s.
    pair.a_to_b(b"x")
    for _ in range(170):
        pair.b_to_a(b"one-way")
        pair.net.advance(1.0)
    assert pair.a.counters["handshake_complete"] >= 2
    assert len(pair.a.inbox) == 170


def test_rekey_after_messages(pair: Pair) -> None:
    pair.a_to_b(b"x")
    kp = pair.peer_b.current
    assert kp is not None
    kp.send_counter = constants.REKEY_AFTER_MESSAGES + 1
    pair.clock.now += 6  # past the one-initiation-per-REKEY_TIMEOUT limit
    n = len(pair.net.log)
    pair.a_to_b(b"y")  # still sent on the old key, and a new handshake starts
    assert pair.kinds(n)[:2] == [4, 1]
    assert pair.peer_b.current is not kp


def test_reject_after_messages(pair: Pair) -> None:
    pair.a_to_b(b"x")
    kp = pair.peer_b.current
    assert kp is not None
    pair.net.filter = lambda s, d, data: None  # keep the old session in place
    kp.send_counter = constants.REJECT_AFTER_MESSAGES - 1
    pair.a.on_packet(ipv4_packet("10.0.0.1", "10.0.0.2", b"last"), pair.clock.now)
    assert [d[0] for d, _ in pair.a.outbox] == [4]  # the very last counter
    pair.a.outbox.clear()
    pair.clock.now += 6
    pair.a.on_packet(ipv4_packet("10.0.0.1", "10.0.0.2", b"over"), pair.clock.now)
    assert [d[0] for d, _ in pair.a.outbox] == [1]  # only a handshake, no transport
    assert kp.send_counter == constants.REJECT_AFTER_MESSAGES


def test_staged_queue_bounded(pair: Pair) -> None:
    pair.net.filter = lambda s, d, data: None
    for i in range(constants.MAX_STAGED_PACKETS + 10):
        pair.a.on_packet(ipv4_packet("10.0.0.1", "10.0.0.2", bytes([i % 256])), pair.clock.now)
    assert len(pair.peer_b.staged) == constants.MAX_STAGED_PACKETS
    assert pair.a.counters["drop_staged_overflow"] == 10
    pair.net.flush()  # the first initiation is lost
    pair.net.filter = None
    pair.net.advance(6)
    assert len(pair.b.inbox) == constants.MAX_STAGED_PACKETS
    assert pair.b.inbox[0][-1] == 10  # oldest were dropped, order kept


def _exact_deadline(dev) -> float | None:  # type: ignore[no-untyped-def]
    ts = [t for t in (p.next_deadline() for p in dev.peers.values()) if t is not None]
    return min(ts) if ts else None


def test_next_deadline_is_a_cached_lower_bound_made_exact_by_on_timer(pair: Pair) -> None:
    """next_deadline() is O(1) (no per-peer scan) and never later than the earliest
    peer timer, whatever traffic and timers did; on_timer makes it exact again."""
    import random

    from fabric.wg.peer import Peer

    assert uapi(
        pair.a,
        f"set=1\npublic_key={pair.b_pub.hex()}\npersistent_keepalive_interval=7\n\n",
        pair.clock.now,
    ) == "errno=0\n\n"
    rnd = random.Random(7)
    scans = 0
    orig = Peer.next_deadline

    def counting(self: Peer) -> float | None:
        nonlocal scans
        scans += 1
        return orig(self)

    for _ in range(300):
        op = rnd.randrange(4)
        if op == 0:
            pair.a_to_b(b"a")
        elif op == 1:
            pair.b_to_a(b"b")
        else:
            pair.net.advance(rnd.uniform(0.0, 12.0), step=0.5)
        for dev in (pair.a, pair.b):
            exact = _exact_deadline(dev)
            Peer.next_deadline = counting  # type: ignore[method-assign]
            try:
                scans = 0
                bound = dev.next_deadline()
                assert scans == 0
            finally:
                Peer.next_deadline = orig  # type: ignore[method-assign]
            if exact is not None:
                assert bound is not None and bound <= exact
            dev.on_timer(pair.clock.now)
            assert dev.next_deadline() == _exact_deadline(dev)
        pair.net.flush()
    assert pair.a.counters["tx_keepalive"] > 0  # the persistent keepalive timer did fire
