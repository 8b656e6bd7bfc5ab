"""--workers 2 as sans-IO (fabric/wg/multicore.py): an OwnerDevice and a WorkerDevice
sharing send counters form side A, a plain Device side B. Datagrams to A are
steered as the kernel would (fabric/wg/steer.py's program), owner -> worker
messages and worker facts are delivered in-process."""

from __future__ import annotations

import struct

from wg.core.wgsim import Clock, fmt, ipv4_packet, make_key, uapi

from fabric.wg import steer
from fabric.wg.crypto import public_key
from fabric.wg.device import Device
from fabric.wg.multicore import TICK, OwnerDevice, SharedCounters, WorkerDevice, use_shared

A_EP = ("192.0.2.1", 51820)
B_EP = ("192.0.2.2", 51821)
PROG = steer.program(2)


class Split:
    def __init__(self, b_initiates: bool = False, a_knows_b: bool = True) -> None:
        self.clock = Clock()
        self.shared = SharedCounters(slots=64)
        use_shared(self.shared)
        self.owner = OwnerDevice(self.shared, wallclock=self.clock.wall)
        self.worker = WorkerDevice(wallclock=self.clock.wall)
        self.b = Device(wallclock=self.clock.wall)
        a_priv, b_priv = make_key(), make_key()
        self.a_pub, self.b_pub = public_key(a_priv), public_key(b_priv)
        ep_b = f"endpoint={fmt(B_EP)}\n" if a_knows_b else ""
        req = (f"set=1\nprivate_key={a_priv.hex()}\nlisten_port=51820\npublic_key={self.b_pub.hex()}\n"
               f"{ep_b}allowed_ip=10.0.0.2/32\n\n")
        old = self.owner.private_key
        assert uapi(self.owner, req, self.now) == "errno=0\n\n"
        self.owner.configured(req, old, self.now)
        ep = "" if not b_initiates else f"endpoint={fmt(A_EP)}\n"
        assert uapi(self.b, f"set=1\nprivate_key={b_priv.hex()}\npublic_key={self.a_pub.hex()}\n"
                    f"{ep}allowed_ip=10.0.0.1/32\n\n", self.now) == "errno=0\n\n"
        self.to_a: list[bytes] = []  # every datagram B sent A, for replays
        self.a_to_b: list[bytes] = []
        self.pump()

    @property
    def now(self) -> float:
        return self.clock.now

    def pump(self) -> None:
        for _ in range(50):
            moved = False
            if self.owner.to_workers:
                msgs, self.owner.to_workers = self.owner.to_workers, []
                for msg in msgs:
                    assert "private_key=" not in str(msg[1])  # never mirrored
                    self.worker.apply(msg, self.now)
                moved = True
            for dev in (self.owner, self.worker):
                while dev.outbox:
                    data, dst = dev.outbox.popleft()
                    assert dst[:2] == B_EP
                    self.a_to_b.append(data)
                    self.b.on_datagram(data, A_EP, self.now)
                    moved = True
            while self.b.outbox:
                data, _ = self.b.outbox.popleft()
                self.to_a.append(data)
                self.deliver(data)
                moved = True
            if not moved:
                return

    def deliver(self, data: bytes) -> None:
        target = (self.owner, self.worker)[steer.run(PROG, data)]
        target.on_datagram(data, B_EP, self.now)

    def tick(self) -> None:
        self.clock.now += TICK
        self.worker.on_timer(self.now)
        for msg in self.worker.to_owner:
            self.owner.apply_facts(msg[1], self.now)
        self.worker.to_owner.clear()
        self.owner.on_timer(self.now)
        self.pump()


def _a_pkt(i: int) -> bytes:
    return ipv4_packet("10.0.0.1", "10.0.0.2", struct.pack("!I", i) * 8)


def _b_pkt(i: int) -> bytes:
    return ipv4_packet("10.0.0.2", "10.0.0.1", struct.pack("!I", i) * 8)


def test_worker_traffic_starts_the_handshake_and_gets_the_keypair() -> None:
    s = Split()
    s.worker.on_packet(_a_pkt(1), s.now)
    assert s.worker.peers[s.b_pub].staged and not s.owner.outbox  # the worker never initiates
    s.tick()  # facts: the worker wants a handshake; the owner initiates; B answers
    assert s.owner.counters["tx_handshake_initiation"] == 1
    assert s.b.inbox and s.b.inbox.popleft() == _a_pkt(1)  # sent by the worker on the new keypair
    assert s.owner.peers[s.b_pub].current is not None
    assert s.worker.peers[s.b_pub].current.local_index == s.owner.peers[s.b_pub].current.local_index


def test_unbalanced_senders_share_one_counter_sequence() -> None:
    """One flow on the worker, a packet now and then on the owner: every counter is
    used once and B, whose window is 8128 wide, accepts every packet (with a stride,
    worker i sending i, i+N, ..., the owner's counters would fall out of B's window)."""
    s = Split()
    s.owner.on_packet(_a_pkt(0), s.now)
    s.pump()
    s.b.inbox.clear()
    sent = 0
    for _burst in range(100):
        s.worker.on_packets([_a_pkt(i) for i in range(100)], s.now)
        s.owner.on_packet(_a_pkt(7), s.now)
        sent += 101
        s.pump()
    assert len(s.b.inbox) == sent
    assert s.b.counters["drop_replay"] == 0
    counters = [struct.unpack_from("<Q", d, 8)[0] for d in s.a_to_b if d[0] == 4]
    assert len(counters) == len(set(counters))


def test_steered_receive_replays_refused_and_counted_once() -> None:
    s = Split(b_initiates=True)
    s.b.on_packet(_b_pkt(0), s.now)  # B initiates; owner answers as responder
    s.pump()
    assert s.owner.peers[s.b_pub].current is not None  # B's first packet (counter 0) confirmed it
    for i in range(1, 200):
        s.b.on_packet(_b_pkt(i), s.now)
    s.pump()
    got = s.owner.counters["rx_packets"] + s.worker.counters["rx_packets"]
    assert got == 200
    assert s.owner.counters["rx_packets"] >= 90 and s.worker.counters["rx_packets"] >= 90
    transport = [d for d in s.to_a if d[0] == 4]
    for d in transport:  # replay everything: each lands on the worker that took it
        s.deliver(d)
    assert s.owner.counters["drop_replay"] + s.worker.counters["drop_replay"] == len(transport)
    assert s.owner.counters["rx_packets"] + s.worker.counters["rx_packets"] == 200
    # The worker saw the responder's keypair confirmed and tells the owner.
    s.tick()
    peer = s.owner.peers[s.b_pub]
    assert peer.next is None and peer.current is not None
    # wg show: the owner's byte counters include the worker's.
    b_peer = s.b.peers[s.a_pub]
    assert peer.rx_bytes == b_peer.tx_bytes and peer.tx_bytes == b_peer.rx_bytes


def test_roam_seen_by_worker_reaches_owner_and_back() -> None:
    s = Split()
    s.owner.on_packet(_a_pkt(0), s.now)
    s.pump()
    pkt = None
    for i in range(4):  # find a datagram from B that steers to the worker
        s.b.on_packet(_b_pkt(i), s.now)
        data, _ = s.b.outbox.popleft()
        if steer.run(PROG, data) == 1:
            pkt = data
            break
        s.owner.on_datagram(data, B_EP, s.now)
    assert pkt is not None
    s.worker.on_datagram(pkt, ("192.0.2.9", 4000), s.now)
    s.tick()
    assert s.owner.peers[s.b_pub].endpoint == ("192.0.2.9", 4000)


def test_removing_the_peer_zeroes_worker_keys() -> None:
    s = Split()
    s.owner.on_packet(_a_pkt(0), s.now)
    s.pump()
    assert s.worker.peers[s.b_pub].current is not None
    req = f"set=1\npublic_key={s.b_pub.hex()}\nremove=true\n\n"
    assert uapi(s.owner, req, s.now) == "errno=0\n\n"
    s.owner.configured(req, s.owner.private_key, s.now)
    s.pump()
    assert not s.worker.peers and not s.worker._keypairs


def test_shared_counters_take_and_raise() -> None:
    sc = SharedCounters(slots=4)
    a = sc.allocate(0.0)
    assert sc.take(a, 3) == 0 and sc.take(a, 1) == 3
    sc.raise_to(a, 2)
    assert sc.take(a, 1) == 4
    sc.raise_to(a, 100)
    assert sc.take(a, 1) == 100
    slots = {sc.allocate(0.0) for _ in range(3)}
    assert a not in slots and len(slots) == 3


def test_any_worker_may_get_any_counter_and_each_is_accepted_once() -> None:
    """The kernel steers a GSO/GRO super-datagram whole by its first segment, so a
    counter may reach either worker: the shared window accepts it once."""
    s = Split()
    s.owner.on_packet(_a_pkt(0), s.now)
    s.pump()
    s.b.on_packet(_b_pkt(1), s.now)
    data, _ = s.b.outbox.popleft()
    s.owner.on_datagram(data, B_EP, s.now)
    s.worker.on_datagram(data, B_EP, s.now)
    s.owner.on_datagram(data, B_EP, s.now)
    assert s.owner.counters["rx_packets"] + s.worker.counters["rx_packets"] == 1
    assert s.owner.counters["drop_replay"] + s.worker.counters["drop_replay"] == 2


def test_shared_window_matches_the_private_one() -> None:
    import random

    from fabric.wg.replay import ReplayWindow

    sc = SharedCounters(slots=2)
    slot = sc.allocate(0.0)
    rw = ReplayWindow()
    rnd = random.Random(5)
    top = 0
    for _ in range(20000):
        top += rnd.choice((0, 1, 1, 2, 70, 9000))
        c = max(0, top - rnd.randrange(0, 9000))
        assert sc.check(slot, c) == rw.check(c), c
    assert not sc.check(slot, (1 << 64) - 1)


def test_reply_from_worker_on_a_keypair_the_owner_confirmed() -> None:
    """B initiates; its first packet reaches the owner (counter 0); the answer leaves
    through the worker, which must know the keypair is confirmed, and B's endpoint
    (A learnt it from the initiation)."""
    s = Split(b_initiates=True, a_knows_b=False)
    s.b.on_packet(_b_pkt(0), s.now)
    s.pump()
    assert s.owner.inbox
    s.worker.on_packet(_a_pkt(0), s.now)
    s.pump()
    assert s.b.inbox and s.b.inbox.popleft() == _a_pkt(0)
    assert s.owner.counters["tx_handshake_initiation"] == 0


def test_batched_receive_run_checks_the_shared_window() -> None:
    """A GRO read (equal-sized datagrams back to back) takes the batched run; its
    replay checks go to the shared window: the same read again, on the other
    worker, delivers nothing."""
    s = Split()
    s.owner.on_packet(_a_pkt(0), s.now)
    s.pump()
    for i in range(40):
        s.b.on_packet(_b_pkt(i), s.now)
    dgrams = [d for d, _ in s.b.outbox]
    s.b.outbox.clear()
    assert len({len(d) for d in dgrams}) == 1
    size = len(dgrams[0])
    rx0 = s.owner.peers[s.b_pub].rx_bytes
    s.owner.on_datagrams(b"".join(dgrams), size, B_EP, s.now)
    assert [p for p in s.owner.inbox] == [_b_pkt(i) for i in range(40)]
    s.worker.on_datagrams(b"".join(dgrams), size, B_EP, s.now)
    s.worker.on_datagrams(b"".join(dgrams[5:10]), size, B_EP, s.now)
    assert not s.worker.inbox and s.worker.counters["drop_replay"] == 45
    assert s.owner.peers[s.b_pub].rx_bytes - rx0 == sum(len(d) for d in dgrams)


def test_facts_arm_the_owners_timers_as_traffic_here_would() -> None:
    """The worker sends and hears the answer within one report: the owner neither
    expects an answer (new-handshake timer) nor owes a keepalive beyond the one the
    received data calls for; sent and not answered: the new-handshake timer runs."""
    s = Split()
    s.owner.on_packet(_a_pkt(0), s.now)
    s.pump()
    s.b.inbox.clear()
    s.tick()
    peer = s.owner.peers[s.b_pub]
    peer.t_new_handshake = peer.t_send_keepalive = None
    s.worker.on_packet(_a_pkt(1), s.now)
    s.pump()
    # B's answer, steered: whichever worker gets it, the report says "answered".
    s.b.on_packet(_b_pkt(1), s.now)
    s.pump()
    s.tick()
    assert peer.t_new_handshake is None
    s.worker.on_packet(_a_pkt(2), s.now)
    s.pump()
    s.tick()
    assert peer.t_new_handshake is not None
    assert s.owner.peers[s.b_pub].tx_bytes == s.b.peers[s.a_pub].rx_bytes


def test_fuzzed_input_never_raises() -> None:
    """Random and mutated datagrams to both devices, random packets on both: dropped
    and counted, never an exception, never a delivery of a forged packet."""
    import random

    s = Split()
    s.owner.on_packet(_a_pkt(0), s.now)
    s.pump()
    s.b.on_packet(_b_pkt(0), s.now)
    good, _ = s.b.outbox.popleft()
    s.owner.on_datagram(good, B_EP, s.now)  # accepted once; an unmutated copy is a replay
    s.owner.inbox.clear()
    rnd = random.Random(19)
    for i in range(3000):
        dev = (s.owner, s.worker)[i % 2]
        kind = rnd.randrange(3)
        if kind == 0:
            data = rnd.randbytes(rnd.randrange(0, 200))
        else:
            mutated = bytearray(good)
            for _ in range(rnd.randrange(1, 4)):
                mutated[rnd.randrange(len(mutated))] ^= 1 << rnd.randrange(8)
            data = bytes(mutated)
        if kind == 2:
            dev.on_datagrams(data * 3, len(data), B_EP, s.now)
        else:
            dev.on_datagram(data, B_EP, s.now)
        dev.on_packet(rnd.randbytes(rnd.randrange(0, 80)), s.now)
    assert not s.owner.inbox and not s.worker.inbox


def test_workers_run_the_single_process_batched_paths() -> None:
    """One implementation of the batched runs: whatever speeds up receive.py's and
    send.py's runs serves --workers N too (the differences live in the keypair's
    take_run/end_run and the replay window's check_run)."""
    for cls in (OwnerDevice, WorkerDevice):
        assert cls._send_run is Device._send_run
        assert cls._transport_run is Device._transport_run
