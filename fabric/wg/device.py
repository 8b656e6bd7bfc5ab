"""The sans-IO WireGuard device: bytes and `now` in, datagrams/packets/deadlines out.

The I/O layer feeds UDP payloads (``on_datagram``), plaintext IP packets read
from the TUN (``on_packet``) and timer ticks (``on_timer`` at
``next_deadline()``), then drains ``outbox`` (datagrams to send) and ``inbox``
(packets to write to the TUN). Configuration is plain methods and attributes
(``set_private_key``, ``add_peer``, ...); the wg(8) text protocol sits on top
in fabric/wg/uapi.py. ``now`` is time.monotonic() everywhere; ``wallclock`` is
only used for TAI64N stamps and last-handshake times.

This module drives the session: it classifies datagrams, checks mac1/mac2 and
the load rules, installs keypairs and runs both packet paths. The handshake's
message steps are in handshake.py, the index table in indextable.py, timer
hooks and constants in timers.py, per-peer data in peer.py.

Behaviour follows wireguard-go's send/receive/timers (see DESIGN.md):
the responder keeps its new keypair as "next" until the first transport
packet arrives on it; packets wait in a per-peer staged queue while there is
no usable session; the endpoint follows the source of every authenticated
packet.
"""

from __future__ import annotations

import collections
import os
import random
import struct
import time
from collections.abc import Callable
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from fabric.wg import handshake, timers
from fabric.wg import messages as m
from fabric.wg.allowedips import AllowedIPs
from fabric.wg.cookie import CookieChecker, LoadMeter, RateLimiter
from fabric.wg.crypto import clamp, dh, private_bytes, public_key
from fabric.wg.indextable import IndexTable
from fabric.wg.messages import Endpoint
from fabric.wg.peer import Peer
from fabric.wg.timers import (
    KEEPALIVE_TIMEOUT,
    MAX_STAGED_PACKETS,
    REJECT_AFTER_MESSAGES,
    REJECT_AFTER_TIME,
    REKEY_AFTER_MESSAGES,
    REKEY_AFTER_TIME,
    REKEY_TIMEOUT,
    REKEY_TIMEOUT_JITTER_MAX,
)

COUNTER_NAMES = (
    "rx_datagrams",
    "rx_bytes",
    "tx_datagrams",
    "tx_bytes",
    "rx_packets",
    "tx_packets",
    "rx_handshake_initiation",
    "rx_handshake_response",
    "rx_cookie_reply",
    "tx_handshake_initiation",
    "tx_handshake_response",
    "tx_cookie_reply",
    "tx_keepalive",
    "rx_keepalive",
    "handshake_complete",
    # drops
    "drop_bad_type",
    "drop_bad_size",
    "drop_bad_mac1",
    "drop_under_load",  # answered with a cookie reply instead
    "drop_rate_limited",
    "drop_no_private_key",
    "drop_bad_handshake",  # initiation/response failed to decrypt
    "drop_unknown_peer",  # initiation from a static key we do not know
    "drop_replay_timestamp",
    "drop_handshake_flood",
    "drop_unknown_index",
    "drop_bad_cookie",
    "drop_bad_auth",  # transport packet failed authentication
    "drop_replay",
    "drop_expired_keypair",
    "drop_bad_inner",  # decrypted packet not IPv4/IPv6 or truncated
    "drop_not_allowed_src",  # inner source not in the sending peer's allowed IPs
    "drop_no_peer",  # TUN packet whose destination has no peer
    "drop_bad_packet",  # TUN packet not IPv4/IPv6 or truncated
    "drop_no_endpoint",
    "drop_staged_overflow",
    "drop_send_exhausted",  # staged packets dropped after handshake give-up
)

_ZERO4 = b"\x00\x00\x00\x00"
_T_TRANSPORT = m.TYPE_TRANSPORT
_T_INIT = m.TYPE_INITIATION
_T_RESP = m.TYPE_RESPONSE
_T_COOKIE = m.TYPE_COOKIE_REPLY
_HDR = m.TRANSPORT_HEADER
_HDR_PACK = _HDR.pack
_HDR_UNPACK_FROM = _HDR.unpack_from
_PAD = bytes(16)
_JOIN = b"".join
_REJECT_MSGS = REJECT_AFTER_MESSAGES
_MISS: Any = object()  # "not cached" (None is a cached "no peer")
_INF = float("inf")


class Device:
    def __init__(
        self,
        *,
        rng: Callable[[int], bytes] = os.urandom,
        wallclock: Callable[[], float] = time.time,
    ) -> None:
        self.rng = rng
        self.wallclock = wallclock
        self.private_key: bytes | None = None
        self.public_key: bytes | None = None
        self.listen_port = 0
        self.fwmark = 0
        self.config_generation = 0
        self.bound_port = 0
        self.mtu = 1420

        self.peers: dict[bytes, Peer] = {}
        self.allowed_ips: AllowedIPs[Peer] = AllowedIPs()
        self.index = IndexTable(rng)
        self._keypairs = self.index.keypairs  # the receive path's one lookup, unbound once

        self._prng = random.Random(rng(16))
        self._route = self.allowed_ips.cache  # same dict object, cleared on changes
        self.cookie_checker = CookieChecker(rng)
        self.load = LoadMeter()
        self.rate_limiter = RateLimiter()

        self.outbox: collections.deque[tuple[bytes, Endpoint]] = collections.deque()
        self.inbox: collections.deque[bytes] = collections.deque()
        self.counters: dict[str, int] = dict.fromkeys(COUNTER_NAMES, 0)
        # A lower bound on every peer's timer deadlines (inf: none set), so that
        # next_deadline() is O(1) however many peers there are. Every place that
        # sets a peer timer to a time lowers it (``arm``); clearing a timer or
        # moving it later leaves it early, which costs at most one on_timer call
        # that finds nothing due, and on_timer recomputes it exactly.
        self._deadline = _INF

    def __repr__(self) -> str:
        return f"Device(peers={len(self.peers)}, listen_port={self.listen_port})"

    # ------------------------------------------------------------------ config

    def set_bound_port(self, port: int) -> None:
        self.bound_port = port

    def set_listen_port(self, port: int) -> None:
        if port != self.listen_port:
            self.listen_port = port
            self.config_generation += 1

    def set_fwmark(self, mark: int) -> None:
        if mark != self.fwmark:
            self.fwmark = mark
            self.config_generation += 1

    def set_private_key(self, private: bytes | None, now: float) -> None:
        """None or all-zero removes the key. Peers keep their config; sessions
        are expired so the next packet starts a handshake with the new identity."""
        if private is not None and private == bytes(32):
            private = None
        if private is not None:
            # Stored clamped, as wireguard-go does (so `wg showconf` matches it);
            # the public key is the same either way.
            private = clamp(private)
        if private == self.private_key:
            return
        self.private_key = private
        self.public_key = public_key(private) if private is not None else None
        self.cookie_checker.set_public_key(self.public_key)
        if self.public_key is not None and self.public_key in self.peers:
            self.remove_peer(self.public_key)
        for peer in self.peers.values():
            self._precompute(peer)
            self._expire_current_keypairs(peer, now)

    def _precompute(self, peer: Peer) -> None:
        peer.static_static = None
        if self.private_key is not None:
            try:
                peer.static_static = dh(self.private_key, peer.public_key)
            except ValueError:
                peer.static_static = None  # low-order key: handshakes with it fail

    def add_peer(self, public: bytes) -> Peer:
        peer = self.peers.get(public)
        if peer is None:
            peer = Peer(public)
            self._precompute(peer)
            self.peers[public] = peer
        return peer

    def remove_peer(self, public: bytes) -> None:
        peer = self.peers.pop(public, None)
        if peer is None:
            return
        self.allowed_ips.remove_peer(peer)
        self.zero_keys(peer)
        peer.staged.clear()

    def set_persistent_keepalive(self, peer: Peer, interval: int) -> None:
        peer.persistent_keepalive = interval
        if interval == 0:
            peer.t_persistent_keepalive = None

    # ------------------------------------------------------------------ helpers

    def jitter(self) -> float:
        """0..REKEY_TIMEOUT_JITTER_MAX s. From a PRNG seeded by ``rng``: this
        runs per data packet after each received one, too often for a syscall."""
        return self._prng.random() * REKEY_TIMEOUT_JITTER_MAX

    def arm(self, t: float) -> None:
        """A peer timer was set to ``t``: keep ``_deadline`` a lower bound."""
        if t < self._deadline:
            self._deadline = t

    def _send(self, data: bytes, peer: Peer) -> bool:
        ep = peer.endpoint
        if ep is None:
            self.counters["drop_no_endpoint"] += 1
            return False
        self.outbox.append((data, ep))
        self.counters["tx_datagrams"] += 1
        self.counters["tx_bytes"] += len(data)
        peer.tx_bytes += len(data)
        return True

    def _clear_handshake(self, peer: Peer) -> None:
        if peer.handshake is not None:
            self.index.remove_handshake(peer.handshake.local_index)
            peer.handshake = None

    def _expire_current_keypairs(self, peer: Peer, now: float) -> None:
        self._clear_handshake(peer)
        peer.last_sent_handshake = now - REKEY_TIMEOUT - 1.0
        if peer.current is not None:
            peer.current.send_counter = REJECT_AFTER_MESSAGES
        if peer.next is not None:
            peer.next.send_counter = REJECT_AFTER_MESSAGES

    def _ephemeral(self) -> bytes:
        return private_bytes(X25519PrivateKey.from_private_bytes(self.rng(32)))

    # ------------------------------------------------------------------ handshake out

    def send_initiation(self, peer: Peer, now: float, is_retry: bool) -> None:
        """Start (or retry) a handshake, at most once per REKEY_TIMEOUT."""
        if not is_retry:
            peer.handshake_attempts = 0
        if now - peer.last_sent_handshake < REKEY_TIMEOUT:
            return
        if self.private_key is None or self.public_key is None or peer.static_static is None:
            return
        peer.last_sent_handshake = now
        self._clear_handshake(peer)
        idx = self.index.new_index()
        msg, peer.handshake = handshake.create_initiation(
            static_priv=self.private_key,
            static_pub=self.public_key,
            peer=peer,
            local_index=idx,
            ephemeral_priv=self._ephemeral(),
            wall=self.wallclock(),
            now=now,
        )
        self.index.add_handshake(idx, peer)
        self._send(msg, peer)
        self.counters["tx_handshake_initiation"] += 1
        timers.any_authenticated_packet_traversal(self, peer, now)
        timers.any_authenticated_packet_sent(peer)
        timers.handshake_initiated(self, peer, now)

    def _handshake_complete(self, peer: Peer) -> None:
        timers.handshake_complete(peer, self.wallclock())
        self.counters["handshake_complete"] += 1

    # ------------------------------------------------------------------ timers

    def next_deadline(self) -> float | None:
        """When to call on_timer next (None: no timer set). O(1): it may be earlier
        than the earliest timer (see ``_deadline``), never later."""
        t = self._deadline
        return None if t == _INF else t

    def on_timer(self, now: float) -> None:
        for peer in list(self.peers.values()):
            timers.fire(self, peer, now)
        # Timers set while firing were armed; this also drops a stale early bound.
        best = _INF
        for peer in self.peers.values():
            t = peer.next_deadline()
            if t is not None and t < best:
                best = t
        self._deadline = best

    def give_up_handshake(self, peer: Peer) -> None:
        """Retransmits exhausted: what waited for the session is dropped."""
        self.counters["drop_send_exhausted"] += len(peer.staged)
        peer.staged.clear()
        self._clear_handshake(peer)

    def zero_keys(self, peer: Peer) -> None:
        for kp in (peer.previous, peer.current, peer.next):
            self.index.remove_keypair(kp)
        peer.previous = peer.current = peer.next = None
        self._clear_handshake(peer)

    # ------------------------------------------------------------------ send path

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
                mtu = self.mtu
                last = n % mtu if n > mtu else n
                padded = (last + 15) & ~15
                if padded > mtu:
                    padded = mtu
                if padded != last:
                    packet = packet + _PAD[: padded - last]
                cb = counter.to_bytes(8, "little")
                data = _JOIN((kp.hdr_prefix, cb, kp.send.encrypt(_ZERO4 + cb, packet, None)))
                self.outbox.append((data, ep))
                dn = len(data)
                c = self.counters
                c["tx_datagrams"] += 1
                c["tx_bytes"] += dn
                c["tx_packets"] += 1
                peer.tx_bytes += dn
                if peer.persistent_keepalive:
                    peer.t_persistent_keepalive = t = now + peer.persistent_keepalive
                    if t < self._deadline:
                        self._deadline = t
                peer.t_send_keepalive = None
                if peer.t_new_handshake is None:
                    peer.t_new_handshake = t = (
                        now + KEEPALIVE_TIMEOUT + REKEY_TIMEOUT + self.jitter()
                    )
                    if t < self._deadline:
                        self._deadline = t
                return
        staged = peer.staged
        if len(staged) >= MAX_STAGED_PACKETS:
            staged.popleft()
            self.counters["drop_staged_overflow"] += 1
        staged.append(packet)
        self.send_staged(peer, now)

    def send_keepalive(self, peer: Peer, now: float) -> None:
        if not peer.staged:
            peer.staged.append(b"")
        self.send_staged(peer, now)

    def send_staged(self, peer: Peer, now: float) -> None:
        kp = peer.current
        if (
            kp is None
            or kp.send_counter >= REJECT_AFTER_MESSAGES
            or now - kp.created >= REJECT_AFTER_TIME
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
            plen = len(pkt)
            if plen:
                sent_data = True
                # Pad to 16, never beyond the MTU (the remainder for super-packets).
                last = plen % mtu if plen > mtu else plen
                padded = (last + 15) & ~15
                if padded > mtu:
                    padded = mtu
                pad = padded - last
                if pad:
                    pkt = pkt + _PAD[:pad]
            else:
                self.counters["tx_keepalive"] += 1
            cb = counter.to_bytes(8, "little")
            data = _JOIN((prefix, cb, send(_ZERO4 + cb, pkt, None)))
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

    # ------------------------------------------------------------------ receive path

    def on_datagram(self, data: bytes, src: Endpoint, now: float) -> None:
        n = len(data)
        c = self.counters
        c["rx_datagrams"] += 1
        c["rx_bytes"] += n
        if n >= 32:
            typ, receiver, counter = _HDR_UNPACK_FROM(data)
            if typ == 4:
                self._on_transport(data, receiver, counter, src, now)
                return
        elif n < 4:
            c["drop_bad_size"] += 1
            return
        t = data[:4]
        if t == _T_TRANSPORT:
            c["drop_bad_size"] += 1  # shorter than header + tag
        elif t == _T_INIT:
            if n != m.INITIATION_SIZE:
                c["drop_bad_size"] += 1
                return
            self._on_handshake(data, src, now)
        elif t == _T_RESP:
            if n != m.RESPONSE_SIZE:
                c["drop_bad_size"] += 1
                return
            self._on_handshake(data, src, now)
        elif t == _T_COOKIE:
            if n != m.COOKIE_REPLY_SIZE:
                c["drop_bad_size"] += 1
                return
            c["rx_cookie_reply"] += 1
            drop = handshake.consume_cookie_reply(self.index, data, now)
            if drop is not None:
                c[drop] += 1
        else:
            c["drop_bad_type"] += 1

    def _on_handshake(self, data: bytes, src: Endpoint, now: float) -> None:
        c = self.counters
        if self.private_key is None or not self.cookie_checker.ready:
            c["drop_no_private_key"] += 1
            return
        if not self.cookie_checker.check_mac1(data):
            c["drop_bad_mac1"] += 1
            return
        self.load.record(now)
        if self.load.under_load(now):
            if not self.cookie_checker.check_mac2(data, src, now):
                sender = struct.unpack_from("<I", data, 4)[0]
                self.outbox.append((self.cookie_checker.create_reply(data, sender, src, now), src))
                c["tx_cookie_reply"] += 1
                c["tx_datagrams"] += 1
                c["drop_under_load"] += 1
                return
            if not self.rate_limiter.allow(src, now):
                c["drop_rate_limited"] += 1
                return
        if data[0] == m.INITIATION:
            self._on_initiation(data, src, now)
        else:
            self._on_response(data, src, now)

    def _on_initiation(self, data: bytes, src: Endpoint, now: float) -> None:
        c = self.counters
        c["rx_handshake_initiation"] += 1
        assert self.private_key is not None and self.public_key is not None
        init = handshake.consume_initiation(
            static_priv=self.private_key,
            static_pub=self.public_key,
            peers=self.peers,
            data=data,
            now=now,
        )
        if isinstance(init, str):
            c[init] += 1
            return
        peer = init.peer
        peer.last_timestamp = init.noise.payload
        peer.last_initiation_consumed = now
        # Authenticated: roam, then answer.
        peer.endpoint = src
        self._clear_handshake(peer)
        idx = self.index.new_index()
        made = handshake.create_response(
            init, local_index=idx, ephemeral_priv=self._ephemeral(), now=now
        )
        if isinstance(made, str):
            c[made] += 1
            return
        msg, kp = made
        # Responder: the new keypair waits as "next" until the initiator uses it.
        self.index.remove_keypair(peer.next)
        self.index.remove_keypair(peer.previous)
        peer.next = kp
        peer.previous = None
        self.index.add_keypair(kp)
        timers.session_derived(self, peer, now)
        timers.any_authenticated_packet_traversal(self, peer, now)
        timers.any_authenticated_packet_received(peer)
        peer.last_sent_handshake = now
        self._send(msg, peer)
        c["tx_handshake_response"] += 1
        timers.any_authenticated_packet_sent(peer)

    def _on_response(self, data: bytes, src: Endpoint, now: float) -> None:
        c = self.counters
        c["rx_handshake_response"] += 1
        assert self.private_key is not None
        kp = handshake.consume_response(
            static_priv=self.private_key, handshakes=self.index.handshakes, data=data, now=now
        )
        if isinstance(kp, str):
            c[kp] += 1
            return
        peer = kp.peer
        self._clear_handshake(peer)  # also frees the handshake index for the keypair
        # Initiator: the new keypair is current at once; the old current (or an
        # unconfirmed next) becomes previous.
        if peer.next is not None:
            # An unconfirmed responder keypair outranks the old current (as
            # wireguard-go): it becomes previous, the old current goes.
            self.index.remove_keypair(peer.previous)
            self.index.remove_keypair(peer.current)
            peer.previous = peer.next
            peer.next = None
        else:
            self.index.remove_keypair(peer.previous)
            peer.previous = peer.current
        peer.current = kp
        self.index.add_keypair(kp)
        peer.endpoint = src
        timers.session_derived(self, peer, now)
        self._handshake_complete(peer)
        timers.any_authenticated_packet_traversal(self, peer, now)
        timers.any_authenticated_packet_received(peer)
        # Confirm the session: send what waited, or a keepalive.
        self.send_keepalive(peer, now)

    def _on_transport(
        self, data: bytes, receiver: int, counter: int, src: Endpoint, now: float
    ) -> None:
        kp = self._keypairs.get(receiver)
        if kp is None:
            self.counters["drop_unknown_index"] += 1
            return
        if now >= kp.reject_at:
            self.counters["drop_expired_keypair"] += 1
            return
        try:
            # Nonce: 4 zero bytes + the LE counter, i.e. counter << 32 as 12 LE bytes.
            pt = kp.recv.decrypt((counter << 32).to_bytes(12, "little"), data[16:], None)
        except InvalidTag:
            self.counters["drop_bad_auth"] += 1
            return
        # Replay window (after authentication). Inline fast path: strictly newer
        # than anything seen and in the newest word, whose higher bits are clear.
        rw = kp.replay
        newest = rw.counter
        if counter >= newest and (counter + 1) >> 6 == newest >> 6 and counter < _REJECT_MSGS:
            rw.backtrack[((counter + 1) >> 6) & 127] |= 1 << ((counter + 1) & 63)
            rw.counter = counter + 1
        elif not rw.check(counter):
            self.counters["drop_replay"] += 1
            return
        c = self.counters
        peer = kp.peer
        peer.rx_bytes += len(data)
        if peer.endpoint != src:
            peer.endpoint = src
        if peer.next is kp:
            # First packet on the responder's new keypair: rotate it in.
            self.index.remove_keypair(peer.previous)
            peer.previous = peer.current
            peer.current = kp
            peer.next = None
            self._handshake_complete(peer)
            if peer.staged:
                self.send_staged(peer, now)
        # keep key fresh (receiving side)
        if now > kp.last_minute_at and not peer.sent_last_minute_handshake:
            peer.sent_last_minute_handshake = True
            self.send_initiation(peer, now, is_retry=False)
        if peer.persistent_keepalive:
            peer.t_persistent_keepalive = t = now + peer.persistent_keepalive
            if t < self._deadline:
                self._deadline = t
        peer.t_new_handshake = None
        plen = len(pt)
        if plen == 0:
            c["rx_keepalive"] += 1
            return
        # Data: make sure the peer hears from us within KEEPALIVE_TIMEOUT.
        if peer.t_send_keepalive is None:
            peer.t_send_keepalive = t = now + KEEPALIVE_TIMEOUT
            if t < self._deadline:
                self._deadline = t
        else:
            peer.need_another_keepalive = True
        v = pt[0] >> 4
        if v == 4:
            if plen < 20:
                c["drop_bad_inner"] += 1
                return
            total = (pt[2] << 8) | pt[3]
            if total < 20 or total > plen:
                c["drop_bad_inner"] += 1
                return
            key = pt[12:16]
            owner = self._route.get(key, _MISS)
            if owner is _MISS:
                owner = self.allowed_ips.lookup_packed(key)
        elif v == 6:
            if plen < 40:
                c["drop_bad_inner"] += 1
                return
            total = 40 + ((pt[4] << 8) | pt[5])
            if total > plen:
                c["drop_bad_inner"] += 1
                return
            key = pt[8:24]
            owner = self._route.get(key, _MISS)
            if owner is _MISS:
                owner = self.allowed_ips.lookup_packed(key)
        else:
            c["drop_bad_inner"] += 1
            return
        if owner is not peer:
            c["drop_not_allowed_src"] += 1
            return
        c["rx_packets"] += 1
        self.inbox.append(pt if total == plen else pt[:total])
