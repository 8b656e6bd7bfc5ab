"""The send path: plaintext packets from the TUN -> transport datagrams in ``outbox``.

A mixin of ``Device`` (device.py), split off as wireguard-go splits send.go:
``on_packet`` is profiled hot code. It inlines the allowed-IPs lookup, padding,
encryption and the timer hooks it needs (timers.data_sent and
timers.any_authenticated_packet_*), and takes a fast path past the staged
queue while a fresh session exists and nothing waits. Padding is to a
multiple of 16, never beyond ``mtu`` (the remainder rule for super-packets,
as wireguard-go).
"""

from __future__ import annotations

import collections
from typing import TYPE_CHECKING, Any

from fabric.wg import timers
from fabric.wg.allowedips import AllowedIPs
from fabric.wg.constants import (
    KEEPALIVE_TIMEOUT,
    MAX_STAGED_PACKETS,
    REJECT_AFTER_MESSAGES,
    REKEY_AFTER_MESSAGES,
    REKEY_AFTER_TIME,
    REKEY_TIMEOUT,
)
from fabric.wg.messages import Endpoint
from fabric.wg.peer import Peer

_ZERO4 = b"\x00\x00\x00\x00"
_PAD = bytes(16)
_JOIN = b"".join
_MISS: Any = object()  # "not cached" (None is a cached "no peer")


class SendPath:
    # Device state this path uses (set in Device.__init__).
    mtu: int
    counters: dict[str, int]
    allowed_ips: AllowedIPs[Peer]
    _route: dict[bytes, Peer | None]
    outbox: collections.deque[tuple[bytes, Endpoint]]
    _deadline: float

    if TYPE_CHECKING:

        def jitter(self) -> float: ...
        def arm(self, t: float) -> None: ...
        def send_initiation(self, peer: Peer, now: float, is_retry: bool) -> None: ...

    def on_packet(self, packet: bytes, now: float) -> None:
        """A plaintext IP packet from the TUN."""
        n = len(packet)
        if n >= 20:
            v = packet[0] >> 4
            if v == 4:
                key = packet[16:20]
            elif v == 6 and n >= 40:
                key = packet[24:40]
            else:
                self.counters["drop_bad_packet"] += 1
                return
        else:
            self.counters["drop_bad_packet"] += 1
            return
        peer = self._route.get(key, _MISS)
        if peer is _MISS:
            peer = self.allowed_ips.lookup_packed(key)
        if peer is None:
            self.counters["drop_no_peer"] += 1
            return
        kp = peer.current
        ep = peer.endpoint
        # Fast path: a fresh session, nothing queued before this packet.
        if kp is not None and ep is not None and not peer.staged and now < kp.fast_until:
            counter = kp.send_counter
            if counter < REKEY_AFTER_MESSAGES:
                kp.send_counter = counter + 1
                data = seal(kp.hdr_prefix, kp.send.encrypt, counter, packet, self.mtu)
                self.outbox.append((data, ep))
                self._sent(peer, len(data), 1, now)
                return
        staged = peer.staged
        if len(staged) >= MAX_STAGED_PACKETS:
            staged.popleft()
            self.counters["drop_staged_overflow"] += 1
        staged.append(packet)
        self.send_staged(peer, now)

    def on_packets(self, packets: list[bytes], now: float) -> None:
        """Plaintext packets read from the TUN in one go: the same as ``on_packet`` on
        each in order. A run of packets to one peer with a fresh session (a bulk
        transfer) takes a batched path: per packet only the route key, padding and
        encryption; counters and timer hooks once per run (``now`` is one instant,
        so once at the end leaves the state that once per packet would)."""
        on_packet = self.on_packet
        route = self._route
        i, count = 0, len(packets)
        while i < count:
            pkt = packets[i]
            n = len(pkt)
            v = pkt[0] >> 4 if n >= 40 else 0
            key = pkt[16:20] if v == 4 else pkt[24:40] if v == 6 else b""
            peer = route.get(key, _MISS)
            if peer is None or peer is _MISS or peer.staged or peer.current is None \
                    or peer.endpoint is None or now >= peer.current.fast_until:
                on_packet(pkt, now)  # the general path (and it fills the route cache)
                i += 1
                continue
            i = self._send_run(packets, i, key, peer, now)

    def _send_run(self, packets: list[bytes], i: int, key: bytes, peer: Peer,
                  now: float) -> int:
        """Encrypt packets from ``i`` on while they go to ``peer`` (fast path only);
        returns the index of the first one it did not take."""
        kp = peer.current
        assert kp is not None
        ep = peer.endpoint
        assert ep is not None
        encrypt = kp.send.encrypt
        prefix = kp.hdr_prefix
        route = self._route
        append = self.outbox.append
        mtu = self.mtu
        count = len(packets)
        counter = kp.take_run(count - i)
        nbytes = npkts = 0
        to_bytes, join, zero4 = int.to_bytes, _JOIN, _ZERO4
        while i < count:
            pkt = packets[i]
            n = len(pkt)
            if n < 40:
                break
            v = pkt[0] >> 4
            k = pkt[16:20] if v == 4 else pkt[24:40] if v == 6 else None
            if k != key and (k is None or route.get(k, _MISS) is not peer):
                break
            if counter >= REKEY_AFTER_MESSAGES:
                break
            if n == mtu or (n < mtu and not n & 15):
                # seal() inlined for a packet that needs no padding (a full-sized one):
                # a call and its checks per packet cost a quarter of the encryption.
                cb = to_bytes(counter, 8, "little")
                append((join((prefix, cb, encrypt(zero4 + cb, pkt, None))), ep))
                nbytes += n + 32
            else:
                data = seal(prefix, encrypt, counter, pkt, mtu)
                append((data, ep))
                nbytes += len(data)
            counter += 1
            npkts += 1
            i += 1
        if not npkts:  # the first packet needs the general path (e.g. rekey due)
            self.on_packet(packets[i], now)
            return i + 1
        kp.end_run(counter)
        self._sent(peer, nbytes, npkts, now)
        return i

    def _sent(self, peer: Peer, nbytes: int, npkts: int, now: float) -> None:
        """Counters and the inlined timers any_authenticated_packet_traversal, _sent
        and data_sent, once for ``npkts`` data packets of ``nbytes`` sent to ``peer``."""
        c = self.counters
        c["tx_datagrams"] += npkts
        c["tx_bytes"] += nbytes
        c["tx_packets"] += npkts
        peer.tx_bytes += nbytes
        if peer.persistent_keepalive:
            peer.t_persistent_keepalive = t = now + peer.persistent_keepalive
            if t < self._deadline:
                self._deadline = t
        peer.t_send_keepalive = None
        if peer.t_new_handshake is None:
            peer.t_new_handshake = t = now + KEEPALIVE_TIMEOUT + REKEY_TIMEOUT + self.jitter()
            if t < self._deadline:
                self._deadline = t

    def send_keepalive(self, peer: Peer, now: float) -> None:
        if not peer.staged:
            peer.staged.append(b"")
        self.send_staged(peer, now)

    def send_staged(self, peer: Peer, now: float) -> None:
        kp = peer.current
        if (
            kp is None
            or kp.send_counter >= REJECT_AFTER_MESSAGES
            or now >= kp.reject_at  # created + REJECT_AFTER_TIME, or earlier (key change)
        ):
            self.send_initiation(peer, now, is_retry=False)
            return
        ep = peer.endpoint
        if ep is None:
            self.counters["drop_no_endpoint"] += len(peer.staged)
            peer.staged.clear()
            return
        staged = peer.staged
        send = kp.send.encrypt
        prefix = kp.hdr_prefix
        mtu = self.mtu
        out = self.outbox
        sent_data = False
        nbytes = 0
        npkts = 0
        while staged:
            counter = kp.send_counter
            if counter >= REJECT_AFTER_MESSAGES:
                self.send_initiation(peer, now, is_retry=False)
                break
            kp.send_counter = counter + 1
            pkt = staged.popleft()
            if pkt:
                sent_data = True
            else:
                self.counters["tx_keepalive"] += 1
            data = seal(prefix, send, counter, pkt, mtu)
            out.append((data, ep))
            nbytes += len(data)
            npkts += 1
        c = self.counters
        c["tx_datagrams"] += npkts
        c["tx_bytes"] += nbytes
        c["tx_packets"] += npkts
        peer.tx_bytes += nbytes
        if npkts:
            timers.any_authenticated_packet_traversal(self, peer, now)
            timers.any_authenticated_packet_sent(peer)
            if sent_data:
                timers.data_sent(self, peer, now)
            # keep key fresh (sending side)
            if kp.send_counter > REKEY_AFTER_MESSAGES or (
                kp.is_initiator and now - kp.created > REKEY_AFTER_TIME
            ):
                self.send_initiation(peer, now, is_retry=False)


def seal(prefix: bytes, encrypt: Any, counter: int, packet: bytes, mtu: int) -> bytes:
    """One transport message: ``packet`` padded to a multiple of 16 (never beyond the
    MTU: the remainder for super-packets; a keepalive stays empty) and encrypted
    under ``counter`` behind the keypair's header ``prefix``."""
    n = len(packet)
    if n:
        last = n % mtu if n > mtu else n
        padded = min((last + 15) & ~15, mtu)
        if padded != last:
            packet = packet + _PAD[: padded - last]
    cb = counter.to_bytes(8, "little")
    return _JOIN((prefix, cb, encrypt(_ZERO4 + cb, packet, None)))
