"""Sans-IO test kit: a fake network for sans-IO tests: Devices wired to each other in-process,
a fake monotonic clock and wallclock, deterministic-or-random rng."""

from __future__ import annotations

import os
import struct
from collections.abc import Callable

from fabric.wg.crypto import public_key
from fabric.wg.device import Device
from fabric.wg.uapi import handle

Endpoint = tuple[str, int]


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0
        self.wall_base = 1_700_000_000.0

    def wall(self) -> float:
        return self.wall_base + self.now


def ipv4_packet(src: str, dst: str, payload: bytes = b"hello", proto: int = 17) -> bytes:
    total = 20 + len(payload)
    s = bytes(int(x) for x in src.split("."))
    d = bytes(int(x) for x in dst.split("."))
    return struct.pack("!BBHHHBBH4s4s", 0x45, 0, total, 0, 0, 64, proto, 0, s, d) + payload


def ipv6_packet(src: str, dst: str, payload: bytes = b"hello6") -> bytes:
    import ipaddress

    s = ipaddress.IPv6Address(src).packed
    d = ipaddress.IPv6Address(dst).packed
    return struct.pack("!IHBB16s16s", 6 << 28, len(payload), 17, 64, s, d) + payload


def check_index_table(dev: Device) -> None:
    """Every receiver index maps to a keypair some peer still holds, and back."""
    held = {
        id(k) for p in dev.peers.values() for k in (p.previous, p.current, p.next) if k is not None
    }
    assert {id(k) for k in dev._keypairs.values()} == held
    for idx, kp in dev._keypairs.items():
        assert kp.local_index == idx


def uapi(dev: Device, request: str, now: float) -> str:
    """The reply text `wg` would read for ``request``."""
    return handle(dev, request, now).wire()


class Net:
    """Delivers each device's outbox to the device bound at the destination."""

    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self.devices: dict[Endpoint, Device] = {}
        self.addr_of: dict[int, Endpoint] = {}
        self.log: list[tuple[Endpoint, Endpoint, bytes, float]] = []  # src, dst, data, time
        # A filter that may drop/alter datagrams: (src, dst, data) -> data | None
        self.filter: Callable[[Endpoint, Endpoint, bytes], bytes | None] | None = None

    def add(self, dev: Device, ep: Endpoint) -> None:
        self.devices[ep] = dev
        self.addr_of[id(dev)] = ep

    def flush(self, rounds: int = 50) -> None:
        for _ in range(rounds):
            moved = False
            for dev in list(self.devices.values()):
                while dev.outbox:
                    data, dst = dev.outbox.popleft()
                    moved = True
                    src = self.addr_of[id(dev)]
                    self.log.append((src, dst, data, self.clock.now))
                    if self.filter is not None:
                        d2 = self.filter(src, dst, data)
                        if d2 is None:
                            continue
                        data = d2
                    target = self.devices.get(dst)
                    if target is not None:
                        target.on_datagram(data, src, self.clock.now)
            if not moved:
                for dev in self.devices.values():
                    check_index_table(dev)
                return

    def advance(self, seconds: float, step: float = 1.0) -> None:
        """Advance time, firing timers as they fall due, delivering everything."""
        end = self.clock.now + seconds
        while True:
            nxt = min(
                (d for d in (dev.next_deadline() for dev in self.devices.values()) if d is not None),
                default=None,
            )
            if nxt is None or nxt > end:
                break
            self.clock.now = max(self.clock.now, nxt)
            for dev in self.devices.values():
                dev.on_timer(self.clock.now)
                # Invariant the I/O loop relies on: after on_timer(now) nothing is
                # still due (else it would spin).
                d = dev.next_deadline()
                assert d is None or d > self.clock.now, (d, self.clock.now)
            self.flush()
        self.clock.now = end
        for dev in self.devices.values():
            dev.on_timer(self.clock.now)
        self.flush()


def make_key(rng: Callable[[int], bytes] = os.urandom) -> bytes:
    k = bytearray(rng(32))
    k[0] &= 248
    k[31] = (k[31] & 127) | 64
    return bytes(k)


def fmt(ep: Endpoint) -> str:
    return f"[{ep[0]}]:{ep[1]}" if ":" in ep[0] else f"{ep[0]}:{ep[1]}"


class Pair:
    """Two devices A (10.0.0.1, fd00::1) and B (10.0.0.2, fd00::2), configured via UAPI."""

    A_EP: Endpoint = ("192.0.2.1", 51820)
    B_EP: Endpoint = ("192.0.2.2", 51821)

    def __init__(
        self, *, psk: bytes | None = None, a_endpoint_known: bool = True, outer6: bool = False
    ) -> None:
        if outer6:
            self.A_EP = ("2001:db8::1", 51820)
            self.B_EP = ("2001:db8::2", 51821)
        self.clock = Clock()
        self.net = Net(self.clock)
        self.a_priv, self.b_priv = make_key(), make_key()
        self.a_pub, self.b_pub = public_key(self.a_priv), public_key(self.b_priv)
        self.a = Device(wallclock=self.clock.wall)
        self.b = Device(wallclock=self.clock.wall)
        self.net.add(self.a, self.A_EP)
        self.net.add(self.b, self.B_EP)
        psk_line = f"preshared_key={psk.hex()}\n" if psk else ""
        ra = uapi(
            self.a,
            f"set=1\nprivate_key={self.a_priv.hex()}\nlisten_port=51820\n"
            f"public_key={self.b_pub.hex()}\n{psk_line}endpoint={fmt(self.B_EP)}\n"
            "allowed_ip=10.0.0.2/32\nallowed_ip=fd00::2/128\n\n",
            self.clock.now,
        )
        ep_line = f"endpoint={fmt(self.A_EP)}\n" if a_endpoint_known else ""
        rb = uapi(
            self.b,
            f"set=1\nprivate_key={self.b_priv.hex()}\nlisten_port=51821\n"
            f"public_key={self.a_pub.hex()}\n{psk_line}{ep_line}"
            "allowed_ip=10.0.0.1/32\nallowed_ip=fd00::1/128\n\n",
            self.clock.now,
        )
        assert ra == rb == "errno=0\n\n"

    @property
    def peer_b(self):  # A's view of B
        return self.a.peers[self.b_pub]

    @property
    def peer_a(self):  # B's view of A
        return self.b.peers[self.a_pub]

    def kinds(self, since: int = 0, src: Endpoint | None = None) -> list[int]:
        return [d[0] for s, _, d, _ in self.net.log[since:] if src is None or s == src]

    def a_to_b(self, payload: bytes = b"ping") -> bytes:
        pkt = ipv4_packet("10.0.0.1", "10.0.0.2", payload)
        self.a.on_packet(pkt, self.clock.now)
        self.net.flush()
        return pkt

    def b_to_a(self, payload: bytes = b"pong") -> bytes:
        pkt = ipv4_packet("10.0.0.2", "10.0.0.1", payload)
        self.b.on_packet(pkt, self.clock.now)
        self.net.flush()
        return pkt
