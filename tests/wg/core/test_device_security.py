"""Cookies under load, replays, flood guard, roaming, keypair rotation,
allowed-IPs source check, and every malformed-input class dropped and counted."""

from __future__ import annotations

import struct

import pytest
from wg.core.wgsim import Pair, ipv4_packet, uapi

from fabric.wg import messages as m
from fabric.wg.cookie import LoadMeter, RateLimiter
from fabric.wg.peer import Keypair


def _drops(dev: object) -> dict[str, int]:
    return {k: v for k, v in dev.counters.items() if k.startswith("drop_") and v}  # type: ignore[attr-defined]


def test_psk_handshake() -> None:
    pair = Pair(psk=bytes(range(32)))
    pkt = pair.a_to_b(b"with psk")
    assert list(pair.b.inbox) == [pkt]


def test_psk_mismatch_fails_handshake() -> None:
    pair = Pair(psk=bytes(range(32)))
    uapi(pair.b, f"set=1\npublic_key={pair.a_pub.hex()}\npreshared_key={'11' * 32}\n\n", 0)
    pair.a_to_b(b"x")
    assert not pair.b.inbox
    assert pair.a.counters["drop_bad_handshake"] == 1  # response fails to authenticate


def test_cookie_reply_under_load_then_mac2_retry_succeeds(pair: Pair) -> None:
    pair.b.load.force = True
    pkt = pair.a_to_b(b"loaded")
    assert pair.kinds() == [1, 3]  # initiation answered by a cookie reply only
    assert len(pair.net.log[1][2]) == m.COOKIE_REPLY_SIZE
    assert pair.b.counters["drop_under_load"] == 1
    assert pair.a.counters["rx_cookie_reply"] == 1 and pair.a.counters["drop_bad_cookie"] == 0
    assert not pair.b.inbox
    pair.net.advance(6)  # retransmit carries mac2 now
    assert pair.kinds()[:5] == [1, 3, 1, 2, 4]
    init2 = pair.net.log[2][2]
    assert init2[-16:] != bytes(16)  # mac2 present
    assert list(pair.b.inbox) == [pkt]


def test_cookie_bound_to_source_address(pair: Pair) -> None:
    pair.b.load.force = True
    pair.a_to_b(b"x")
    pair.net.advance(5.4)  # A retransmits with mac2 valid for its own address
    # the same initiation replayed from another address fails mac2 -> cookie reply
    init = next(d for s, _, d, _ in reversed(pair.net.log) if d[0] == 1)
    before = pair.b.counters["drop_under_load"]
    pair.b.on_datagram(init, ("203.0.113.9", 1234), pair.clock.now)
    assert pair.b.counters["drop_under_load"] == before + 1


def test_cookie_reply_with_wrong_mac1_binding_is_dropped(pair: Pair) -> None:
    pair.b.load.force = True
    pair.a_to_b(b"x")
    reply = bytearray(pair.net.log[1][2])
    reply[-1] ^= 1
    pair.a.on_datagram(bytes(reply), pair.B_EP, pair.clock.now)
    assert pair.a.counters["drop_bad_cookie"] == 1


def test_load_meter_threshold_and_hold() -> None:
    lm = LoadMeter(threshold=8)
    for i in range(7):
        lm.record(10 + i * 0.1)
    assert not lm.under_load(10.7)
    lm.record(10.75)
    assert lm.under_load(10.75)
    assert lm.under_load(11.7)  # kept for 1 s
    assert not lm.under_load(11.8)


def test_rate_limiter_per_source_bucket() -> None:
    rl = RateLimiter()
    src = ("198.51.100.1", 1000)
    assert all(rl.allow(src, 5.0) for _ in range(5))  # burst 5
    assert not rl.allow(src, 5.0)
    assert rl.allow(("198.51.100.2", 1000), 5.0)  # other sources unaffected
    assert rl.allow(src, 5.051)  # 20/s: one token per 50 ms
    assert not rl.allow(src, 5.06)
    assert rl.allow(("198.51.100.1", 9999), 5.2)  # keyed by address, not port
    rl.allow(("198.51.100.3", 1), 100.0)
    assert len(rl) == 1  # idle buckets are collected


def test_under_load_rate_limit_applies_after_mac2(pair: Pair) -> None:
    pair.b.load.force = True
    pair.b.rate_limiter.burst = 1
    pair.a_to_b(b"x")
    pair.net.advance(5.4)
    assert pair.peer_b.current is not None
    init = next(d for s, _, d, _ in reversed(pair.net.log) if d[0] == 1)
    pair.b.on_datagram(init, pair.A_EP, pair.clock.now)  # takes the one token
    assert pair.b.counters["drop_replay_timestamp"] == 1
    pair.b.on_datagram(init, pair.A_EP, pair.clock.now)  # bucket empty
    assert pair.b.counters["drop_rate_limited"] == 1
    assert pair.b.counters["drop_replay_timestamp"] == 1


def test_replayed_initiation_refused(pair: Pair) -> None:
    pair.a_to_b(b"x")
    init = pair.net.log[0][2]
    n = len(pair.b.outbox)
    pair.clock.now += 5
    pair.b.on_datagram(init, pair.A_EP, pair.clock.now)
    assert pair.b.counters["drop_replay_timestamp"] == 1
    assert len(pair.b.outbox) == n  # no response
    assert pair.peer_a.current is not None  # session untouched


def test_initiation_flood_guard_20ms(pair: Pair) -> None:
    pair.a_to_b(b"x")
    t0 = pair.clock.now
    # A makes a fresh initiation (later timestamp), delivered 10 ms after the last one
    pair.clock.now += 1
    pair.peer_b.last_sent_handshake = float("-inf")
    pair.a.send_initiation(pair.peer_b, pair.clock.now, is_retry=False)
    init2 = pair.a.outbox.pop()[0]
    pair.b.on_datagram(init2, pair.A_EP, t0 + 0.010)
    assert pair.b.counters["drop_handshake_flood"] == 1
    pair.b.on_datagram(init2, pair.A_EP, t0 + 0.030)
    assert pair.b.counters["rx_handshake_initiation"] == 3
    assert pair.b.counters["tx_handshake_response"] == 2


def test_replayed_transport_refused(pair: Pair) -> None:
    pair.a_to_b(b"x")
    data = pair.net.log[2][2]
    assert data[0] == 4
    pair.b.on_datagram(data, pair.A_EP, pair.clock.now)
    assert pair.b.counters["drop_replay"] == 1
    assert len(pair.b.inbox) == 1


def test_roaming_follows_authenticated_source(pair: Pair) -> None:
    pair.a_to_b(b"x")
    new_ep = ("198.51.100.77", 40000)
    pair.net.add(pair.a, new_ep)  # A now also reachable (and sending) from here
    pair.a.on_packet(ipv4_packet("10.0.0.1", "10.0.0.2", b"moved"), pair.clock.now)
    data, _ = pair.a.outbox.popleft()
    pair.b.on_datagram(data, new_ep, pair.clock.now)
    assert pair.peer_a.endpoint == new_ep
    n = len(pair.net.log)
    pair.b_to_a(b"reply")
    assert pair.net.log[n][1] == new_ep
    assert pair.a.inbox[-1][-5:] == b"reply"


def test_unauthenticated_packet_does_not_roam(pair: Pair) -> None:
    pair.a_to_b(b"x")
    kp = pair.peer_a.current
    assert kp is not None
    forged = struct.pack("<IIQ", 4, kp.local_index, 99) + bytes(48)
    pair.b.on_datagram(forged, ("203.0.113.66", 666), pair.clock.now)
    assert pair.b.counters["drop_bad_auth"] == 1
    assert pair.peer_a.endpoint == pair.A_EP


def test_responder_learns_endpoint_from_initiation() -> None:
    pair = Pair(a_endpoint_known=False)
    assert pair.peer_a.endpoint is None
    pkt = pair.a_to_b(b"x")
    assert pair.peer_a.endpoint == pair.A_EP
    assert list(pair.b.inbox) == [pkt]
    back = pair.b_to_a(b"y")
    assert pair.a.inbox[-1] == back


def _force_rehandshake(pair: Pair, initiator: str) -> None:
    dev, peer = (pair.a, pair.peer_b) if initiator == "a" else (pair.b, pair.peer_a)
    pair.clock.now += 6
    peer.last_sent_handshake = float("-inf")
    dev.send_initiation(peer, pair.clock.now, is_retry=False)
    pair.net.flush()


def test_keypair_rotation_order(pair: Pair) -> None:
    pair.a_to_b(b"1")
    k1a = pair.peer_b.current
    k1b = pair.peer_a.current
    assert isinstance(k1a, Keypair) and isinstance(k1b, Keypair)
    assert k1a.is_initiator and not k1b.is_initiator
    assert k1a.local_index == k1b.remote_index and k1b.local_index == k1a.remote_index

    # second handshake, A initiates; the response leaves B with the new keypair as "next"
    _force_rehandshake(pair, "a")
    k2a = pair.peer_b.current
    assert k2a is not k1a and pair.peer_b.previous is k1a
    # A confirmed with a keepalive, so B rotated next -> current, current -> previous
    assert pair.peer_a.next is None
    k2b = pair.peer_a.current
    assert k2b is not None and pair.peer_a.previous is k1b
    assert k2b.local_index == k2a.remote_index

    # B holds "next" until the first transport packet: intercept A's confirmation
    pair.net.filter = lambda s, d, data: None if data[0] == 4 else data
    _force_rehandshake(pair, "a")
    k3b = pair.peer_a.next
    assert k3b is not None and pair.peer_a.current is k2b
    assert pair.peer_a.previous is None  # responder drops previous when it stages next
    # B keeps sending on current (k2) meanwhile
    pair.net.filter = None
    pair.b_to_a(b"still on k2")
    assert pair.peer_a.current is k2b
    pair.a_to_b(b"on k3")
    assert pair.peer_a.current is k3b and pair.peer_a.previous is k2b and pair.peer_a.next is None
    # A: k3 current, k2 previous, k1 gone from the index table
    assert pair.peer_b.previous is k2a
    assert k1a.local_index not in pair.a._keypairs
    assert not _drops(pair.a) and not _drops(pair.b)


def test_inner_source_not_allowed_dropped(pair: Pair) -> None:
    pair.a_to_b(b"x")
    pair.a.on_packet(ipv4_packet("10.9.9.9", "10.0.0.2", b"spoof"), pair.clock.now)
    pair.net.flush()
    assert pair.b.counters["drop_not_allowed_src"] == 1
    assert len(pair.b.inbox) == 1


def _seal(pair: Pair, plaintext: bytes) -> bytes:
    """Encrypt arbitrary plaintext on A's current keypair (bypassing A's TUN checks)."""
    kp = pair.peer_b.current
    assert kp is not None
    ctr = kp.send_counter
    kp.send_counter += 1
    hdr = struct.pack("<IIQ", 4, kp.remote_index, ctr)
    return hdr + kp.send.encrypt(b"\0\0\0\0" + hdr[8:], plaintext, None)


@pytest.mark.parametrize(
    ("plaintext", "counter"),
    [
        (b"\x55" * 40, "drop_bad_inner"),  # IP version 5
        (b"\x45" + bytes(10), "drop_bad_inner"),  # IPv4 shorter than its header
        (ipv4_packet("10.0.0.1", "10.0.0.2", b"abc")[:-2] , "drop_bad_inner"),  # truncated
        (b"\x60" + bytes(30), "drop_bad_inner"),  # IPv6 shorter than its header
        (b"\x60\0\0\0\x01\x00" + bytes(34), "drop_bad_inner"),  # IPv6 payload length lies
    ],
)
def test_bad_inner_packets(pair: Pair, plaintext: bytes, counter: str) -> None:
    pair.a_to_b(b"x")
    pair.b.on_datagram(_seal(pair, plaintext), pair.A_EP, pair.clock.now)
    assert pair.b.counters[counter] == 1
    assert len(pair.b.inbox) == 1


def test_malformed_datagrams_each_dropped_and_counted(pair: Pair) -> None:
    pair.a_to_b(b"x")
    init = pair.net.log[0][2]
    resp = pair.net.log[1][2]
    kp = pair.peer_a.current
    assert kp is not None
    cases: list[tuple[bytes, str]] = [
        (b"", "drop_bad_size"),
        (b"\x01\x00\x00", "drop_bad_size"),
        (b"\x05\x00\x00\x00" + bytes(60), "drop_bad_type"),
        (b"\x01\x00\x00\x01" + init[4:], "drop_bad_type"),  # upper type bytes not zero
        (b"\x00\x00\x00\x00" + bytes(100), "drop_bad_type"),
        (init[:-1], "drop_bad_size"),
        (init + b"\0", "drop_bad_size"),
        (resp[:-1], "drop_bad_size"),
        (b"\x03\x00\x00\x00" + bytes(59), "drop_bad_size"),
        (b"\x04\x00\x00\x00" + bytes(27), "drop_bad_size"),
        (init[:-32] + bytes(32), "drop_bad_mac1"),
        (resp[:-32] + bytes(32), "drop_bad_mac1"),
        (b"\x03\x00\x00\x00" + bytes(60), "drop_unknown_index"),
        (struct.pack("<IIQ", 4, 0xDEAD, 0) + bytes(16), "drop_unknown_index"),
        (struct.pack("<IIQ", 4, kp.local_index, 5) + bytes(16), "drop_bad_auth"),
    ]
    for data, counter in cases:
        before = dict(pair.b.counters)
        pair.b.on_datagram(data, pair.A_EP, pair.clock.now)
        changed = {k for k, v in pair.b.counters.items() if v != before[k] and k.startswith("drop_")}
        assert changed == {counter}, (data[:8].hex(), changed)
    assert not pair.b.outbox  # nothing answered


def test_initiation_with_valid_mac1_but_garbage_body(pair: Pair) -> None:
    from fabric.wg.cookie import CookieGenerator

    body = bytearray(b"\x01\x00\x00\x00" + bytes(range(140)) + bytes(4))
    CookieGenerator(pair.b_pub).add_macs(body, 0)  # mac1 right, contents garbage
    pair.b.on_datagram(bytes(body), pair.A_EP, pair.clock.now)
    assert pair.b.counters["drop_bad_handshake"] == 1


def test_initiation_from_unknown_peer(pair: Pair) -> None:
    from wg.core.wgsim import make_key

    from fabric.wg.crypto import public_key
    from fabric.wg.device import Device

    stranger = Device(wallclock=pair.clock.wall)
    priv = make_key()
    uapi(
        stranger,
        f"set=1\nprivate_key={priv.hex()}\npublic_key={pair.b_pub.hex()}\n"
        "endpoint=192.0.2.2:51821\nallowed_ip=10.0.0.2/32\n\n",
        0,
    )
    assert public_key(priv) not in pair.b.peers
    stranger.on_packet(ipv4_packet("10.0.0.3", "10.0.0.2"), pair.clock.now)
    data, _ = stranger.outbox.popleft()
    pair.b.on_datagram(data, ("192.0.2.3", 1), pair.clock.now)
    assert pair.b.counters["drop_unknown_peer"] == 1
    assert not pair.b.outbox


def test_tun_side_malformed(pair: Pair) -> None:
    a = pair.a
    for pkt, counter in [
        (b"", "drop_bad_packet"),
        (b"\x45" + bytes(5), "drop_bad_packet"),
        (b"\x60" + bytes(20), "drop_bad_packet"),
        (b"\x75" + bytes(40), "drop_bad_packet"),
        (ipv4_packet("10.0.0.1", "10.99.0.1"), "drop_no_peer"),
    ]:
        before = a.counters[counter]
        a.on_packet(pkt, pair.clock.now)
        assert a.counters[counter] == before + 1
    assert not a.outbox


def test_no_private_key_drops_handshakes(pair: Pair) -> None:
    pair.a.on_packet(ipv4_packet("10.0.0.1", "10.0.0.2"), pair.clock.now)
    init, _ = pair.a.outbox.popleft()
    uapi(pair.b, f"set=1\nprivate_key={'00' * 32}\n\n", pair.clock.now)
    pair.b.on_datagram(init, pair.A_EP, pair.clock.now)
    assert pair.b.counters["drop_no_private_key"] == 1


def test_load_meter_trips_on_handshake_rate(pair: Pair) -> None:
    from fabric.wg.cookie import CookieGenerator

    pair.b.load.threshold = 3
    gen = CookieGenerator(pair.b_pub)
    for i in range(3):
        body = bytearray(b"\x01\x00\x00\x00" + bytes([i]) * 140 + bytes(4))
        gen.add_macs(body, 0)
        pair.b.on_datagram(bytes(body), ("198.51.100.5", 1), pair.clock.now + i * 0.1)
    assert pair.b.counters["drop_bad_handshake"] == 2
    assert pair.b.counters["drop_under_load"] == 1  # third one met the threshold
    assert pair.b.outbox[-1][0][0] == m.COOKIE_REPLY


def test_reprs_carry_no_secrets(pair: Pair) -> None:
    pair.a_to_b(b"x")
    kp = pair.peer_b.current
    text = " ".join(
        repr(o) for o in (pair.a, pair.b, pair.peer_a, pair.peer_b, kp, pair.a.counters)
    )
    for secret in (pair.a_priv, pair.b_priv, pair.peer_b.preshared_key):
        assert secret.hex() not in text
    assert "ChaCha" not in text


def test_responder_waits_for_confirmation_before_sending(pair: Pair) -> None:
    # A's first transport packet (the confirmation) is lost.
    lost: list[bytes] = []

    def drop_first_transport(s: object, d: object, data: bytes) -> bytes | None:
        if data[0] == 4 and not lost:
            lost.append(data)
            return None
        return data

    pair.net.filter = drop_first_transport
    pair.a_to_b(b"lost")
    assert pair.peer_a.next is not None and pair.peer_a.current is None
    n = len(pair.net.log)
    pkt = ipv4_packet("10.0.0.2", "10.0.0.1", b"from responder")
    pair.b.on_packet(pkt, pair.clock.now)
    pair.net.flush()
    # B sends nothing on the unconfirmed keypair (and no competing initiation yet)
    assert pair.kinds(n, pair.B_EP) == []
    assert list(pair.peer_a.staged) == [pkt]
    pair.a_to_b(b"confirm")
    assert pair.peer_a.current is not None and pair.peer_a.next is None
    assert pair.a.inbox[-1] == pkt  # released by the confirmation


def _seal_at(pair: Pair, counter: int, plaintext: bytes = b"") -> bytes:
    kp = pair.peer_b.current
    assert kp is not None
    hdr = struct.pack("<IIQ", 4, kp.remote_index, counter)
    return hdr + kp.send.encrypt(b"\0\0\0\0" + hdr[8:], plaintext, None)


def test_device_replay_path_matches_kernel_counter_cases() -> None:
    # The device checks counters with an inline fast path; it must decide exactly
    # like the reference window on the kernel's self-test sequences.
    from fabric.wg.replay import REJECT_AFTER_MESSAGES, WINDOW_SIZE, ReplayWindow

    lim = WINDOW_SIZE + 1
    r = REJECT_AFTER_MESSAGES
    sequences = [
        [0, 1, 1, 9, 8, 7, 7, lim, lim - 1, lim - 1, lim - 2, 2, 2, lim + 16, 3, lim + 16,
         lim * 4, lim * 4 - (lim - 1), 10, lim * 4 - lim, lim * 4 - (lim + 1),
         lim * 4 - (lim - 2), lim * 4 + 1 - lim, 0, r, r - 1, r, r - 1, r - 2, r + 1,
         r - 2, r - 3, 0],
        [*range(1, 200), 0, 0, 63, 64, 65, 127, 128, 129, 1000, 999, 64],
    ]  # fmt: skip
    rnd = __import__("random").Random(5)
    seq = []
    base = 0
    for _ in range(400):
        base += rnd.choice([1, 1, 1, 2, 63, 64, 65, 300])
        seq.append(max(0, base - rnd.choice([0, 0, 0, 1, 5, 70, 8127, 8128, 9000])))
    sequences.append(seq)
    for seq in sequences:
        pair = Pair()
        pair.a_to_b(b"x")  # uses counter 0 of the new keypair
        ref = ReplayWindow()
        ref.check(0)
        kp_b = pair.peer_a.current
        assert kp_b is not None
        for ctr in seq:
            before = pair.b.counters["drop_replay"]
            pair.b.on_datagram(_seal_at(pair, ctr), pair.A_EP, pair.clock.now)
            accepted = pair.b.counters["drop_replay"] == before
            assert accepted == ref.check(ctr), ctr
        assert kp_b.replay.counter == ref.counter
        assert kp_b.replay.backtrack == ref.backtrack


def test_initiator_with_unconfirmed_next_rotation(pair: Pair) -> None:
    # B (responder to A) holds "next"; before it is confirmed, B itself initiates and
    # completes: next becomes previous, the old current is dropped from the index.
    pair.a_to_b(b"1")
    k1 = pair.peer_a.current
    assert k1 is not None
    pair.net.filter = lambda s, d, data: None if data[0] == 4 else data
    pair.clock.now += 6
    pair.peer_b.last_sent_handshake = float("-inf")
    pair.a.send_initiation(pair.peer_b, pair.clock.now, is_retry=False)
    pair.net.flush()
    k2 = pair.peer_a.next
    assert k2 is not None and pair.peer_a.current is k1
    pair.clock.now += 6
    pair.peer_a.last_sent_handshake = float("-inf")
    pair.b.send_initiation(pair.peer_a, pair.clock.now, is_retry=False)
    pair.net.flush()
    k3 = pair.peer_a.current
    assert k3 is not None and k3.is_initiator
    assert pair.peer_a.previous is k2 and pair.peer_a.next is None
    assert k1.local_index not in pair.b._keypairs
    assert set(pair.b._keypairs) == {k2.local_index, k3.local_index}


def test_ipv6_outer_endpoints_with_cookies_and_roaming() -> None:
    pair = Pair(outer6=True)
    pair.b.load.force = True
    pkt = pair.a_to_b(b"over v6")
    pair.net.advance(6)  # cookie reply, then the mac2 retry
    assert list(pair.b.inbox) == [pkt]
    assert pair.peer_a.endpoint == ("2001:db8::1", 51820)
    out = uapi(pair.a, "get=1\n\n", pair.clock.now)
    assert "endpoint=[2001:db8::2]:51821\n" in out
    new_ep = ("2001:db8::99", 1234)
    pair.net.add(pair.a, new_ep)
    pair.a.on_packet(ipv4_packet("10.0.0.1", "10.0.0.2", b"moved"), pair.clock.now)
    data, _ = pair.a.outbox.popleft()
    pair.b.on_datagram(data, new_ep, pair.clock.now)
    assert pair.peer_a.endpoint == new_ep
