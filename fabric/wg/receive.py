"""The receive path: UDP datagrams -> decrypted packets in ``inbox``, handshakes
answered into ``outbox``.

A mixin of ``Device`` (device.py), split off as wireguard-go splits
receive.go. ``on_datagram`` classifies by the first 4 bytes and size; transport
packets take the inlined, profiled hot path (``_on_transport``: index lookup,
decryption, replay window, timer hooks, allowed-IPs check of the inner
source). Handshake messages pass mac1, then the under-load rule (valid mac2 or
a cookie reply; then the per-source token bucket), then handshake.py's checks;
their keypairs are installed here (the responder's as "next", the
initiator's as "current").
"""

from __future__ import annotations

import collections
import functools
import struct
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from cryptography.exceptions import InvalidTag

from fabric.wg import handshake, timers
from fabric.wg import messages as m
from fabric.wg.allowedips import AllowedIPs
from fabric.wg.constants import KEEPALIVE_TIMEOUT, REJECT_AFTER_MESSAGES
from fabric.wg.cookie import CookieChecker, LoadMeter, RateLimiter
from fabric.wg.indextable import IndexTable
from fabric.wg.messages import Endpoint
from fabric.wg.peer import Keypair, Peer

_T_TRANSPORT = m.TYPE_TRANSPORT
_T_INIT = m.TYPE_INITIATION
_T_RESP = m.TYPE_RESPONSE
_T_COOKIE = m.TYPE_COOKIE_REPLY
_HDR_UNPACK_FROM = m.TRANSPORT_HEADER.unpack_from
_REJECT_MSGS = REJECT_AFTER_MESSAGES
_MISS: Any = object()  # "not cached" (None is a cached "no peer")


class ReceivePath:
    # Device state this path uses (set in Device.__init__).
    private_key: bytes | None
    public_key: bytes | None
    peers: dict[bytes, Peer]
    counters: dict[str, int]
    allowed_ips: AllowedIPs[Peer]
    _route: dict[bytes, Peer | None]
    index: IndexTable
    _keypairs: dict[int, Keypair]
    cookie_checker: CookieChecker
    load: LoadMeter
    rate_limiter: RateLimiter
    outbox: collections.deque[tuple[bytes, Endpoint]]
    inbox: collections.deque[bytes]
    _deadline: float
    # What handshakes make (fabric.wg.multicore: keypairs with a shared send counter).
    keypair_type: Callable[..., Keypair] = Keypair

    if TYPE_CHECKING:

        def arm(self, t: float) -> None: ...
        def jitter(self) -> float: ...
        def _send(self, data: bytes, peer: Peer) -> None: ...
        def _clear_handshake(self, peer: Peer) -> None: ...
        def _handshake_complete(self, peer: Peer) -> None: ...
        def _ephemeral(self) -> bytes: ...
        def send_initiation(self, peer: Peer, now: float, is_retry: bool) -> None: ...
        def send_keepalive(self, peer: Peer, now: float) -> None: ...
        def send_staged(self, peer: Peer, now: float) -> None: ...

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

    def on_datagrams(self, data: bytes, size: int, src: Endpoint, now: float) -> None:
        """A UDP GRO read: datagrams of ``size`` bytes back to back (the last may be
        shorter), all from ``src``. The same as ``on_datagram`` on each in order.

        A run of transport messages to one established keypair (the bulk of a
        transfer) takes a batched path: per datagram only decryption, the replay
        window and the inner-packet checks; counters, endpoint, last-minute rekey and
        timer hooks once per run (``now`` is one instant, so doing them once at the
        end leaves the same state as doing them per datagram)."""
        n = len(data)
        off = 0
        on_datagram = self.on_datagram
        keypairs = self._keypairs
        unpack_from = _HDR_UNPACK_FROM
        while off < n:
            end = off + size
            if end > n:
                end = n
            if end - off >= 32:
                typ, receiver, _counter = unpack_from(data, off)
                if typ == 4:
                    kp = keypairs.get(receiver)
                    if kp is not None and kp.peer.next is not kp and now < kp.reject_at:
                        off = self._transport_run(data, off, size, receiver, kp, src, now)
                        continue
            on_datagram(data[off:end], src, now)
            off = end

    def _transport_run(self, data: bytes, off: int, size: int, receiver: int, kp: Keypair,
                       src: Endpoint, now: float) -> int:
        """Transport datagrams from ``off`` on while they go to ``receiver``; returns
        the offset of the first one it did not take. The per-datagram part of
        ``_on_transport``, with its per-peer part once at the end. In three passes:
        decrypt all, check all counters (``check_run``: a run of consecutive counters
        is marked at once; a shared window takes its lock once), deliver the fresh:
        so the same code serves one process and ``--workers N``."""
        n = len(data)
        start = off
        decrypt = kp.recv.decrypt
        peer = kp.peer
        unpack_from = _HDR_UNPACK_FROM
        c = self.counters
        # Per datagram only what differs; the counts are derived at the end from the
        # bytes taken and the (rare) drops: each += costs as much as a line of work.
        nfail = failbytes = nkeepalive = nlost = 0
        counters: list[int] = []
        plain: list[bytes] = []
        add_counter, add_plain = counters.append, plain.append
        full = (n - off) // size if size >= 32 else 0
        if full:
            # The full-sized datagrams' headers and ciphertexts from one C iterator
            # (~70 ns a datagram less than an unpack and a slice each).
            for typ, rcv, counter, ct in _datagrams(size).iter_unpack(
                    memoryview(data)[off:off + full * size]):
                if typ != 4 or rcv != receiver:
                    break
                try:
                    # Nonce: 4 zero bytes + the LE counter: counter << 32 as 12 LE bytes.
                    add_plain(decrypt((counter << 32).to_bytes(12, "little"), ct, None))
                except InvalidTag:
                    nfail += 1
                    continue
                add_counter(counter)
            taken = len(counters) + nfail  # each one taken decrypted or failed
            failbytes = nfail * size
            off += taken * size
        if 32 <= n - off < size:
            # The tail: the read's shorter last datagram (not reached when a full one
            # for another keypair ended the run: then n - off >= size).
            typ, rcv, counter = unpack_from(data, off)
            if typ == 4 and rcv == receiver:
                try:
                    add_plain(decrypt((counter << 32).to_bytes(12, "little"), data[off + 16:],
                                      None))
                except InvalidTag:
                    nfail += 1
                    failbytes += n - off
                else:
                    add_counter(counter)
                off = n
        nbytes = off - start
        ndgrams = (nbytes + size - 1) // size  # all but the last are ``size`` long
        c["rx_datagrams"] += ndgrams
        c["rx_bytes"] += nbytes
        if nfail:
            c["drop_bad_auth"] += nfail
        if not plain:
            return off
        fresh = kp.replay.check_run(counters)
        if fresh is not None:  # replays (rare): keep the fresh ones
            kept = [pt for ok, pt in zip(fresh, plain, strict=True) if ok]
            nreplay = len(plain) - len(kept)
            c["drop_replay"] += nreplay
            nfail += nreplay
            # An authenticated datagram is its plaintext + header + tag.
            failbytes += sum(len(pt) for ok, pt in zip(fresh, plain, strict=True) if not ok) \
                + 32 * nreplay
            plain = kept
            if not plain:
                return off
        route = self._route
        lookup = self.allowed_ips.lookup_packed
        inbox_append = self.inbox.append
        last_key = None
        last_owner: Any = None
        for pt in plain:
            plen = len(pt)
            if plen == 0:
                nkeepalive += 1
                continue
            # inner() inlined for IPv4 (the call costs ~60 ns of ~1.7 us a datagram)
            if pt[0] >> 4 == 4 and plen >= 20:
                total = (pt[2] << 8) | pt[3]
                key = pt[12:16]
                if not 20 <= total <= plen:
                    total = 0
            else:
                total, key = inner(pt, plen)
            if not total:
                c["drop_bad_inner"] += 1
                nlost += 1
                continue
            if key != last_key:
                owner = route.get(key, _MISS)
                if owner is _MISS:
                    owner = lookup(key)
                last_key, last_owner = key, owner
            if last_owner is not peer:
                c["drop_not_allowed_src"] += 1
                nlost += 1
                continue
            inbox_append(pt if total == plen else pt[:total])
        nauth = ndgrams - nfail
        authbytes = nbytes - failbytes
        ndata = nauth - nkeepalive
        c["rx_packets"] += ndata - nlost
        if nkeepalive:
            c["rx_keepalive"] += nkeepalive
        peer.rx_bytes += authbytes
        if peer.endpoint != src:
            peer.endpoint = src
        self._authenticated(peer, kp, now)
        if ndata:
            # Inlined "data received", as often as data packets came.
            if peer.t_send_keepalive is None:
                peer.t_send_keepalive = t = now + KEEPALIVE_TIMEOUT
                if t < self._deadline:
                    self._deadline = t
                if ndata > 1:
                    peer.need_another_keepalive = True
            else:
                peer.need_another_keepalive = True
        return off

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
                reply = self.cookie_checker.create_reply(data, sender, src, now)
                self.outbox.append((reply, src))
                # Device counters only: as in the references, a cookie reply answers
                # an unauthenticated source and counts for no peer.
                c["tx_cookie_reply"] += 1
                c["tx_datagrams"] += 1
                c["tx_bytes"] += len(reply)
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
        # Authenticated: roam, count it (wireguard-go and the kernel count every
        # authenticated message in the peer's rx bytes), then answer.
        peer.endpoint = src
        peer.rx_bytes += len(data)
        self._clear_handshake(peer)
        idx = self.index.new_index()
        made = handshake.create_response(
            init, local_index=idx, ephemeral_priv=self._ephemeral(), now=now,
            make=self.keypair_type,
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
            static_priv=self.private_key, handshakes=self.index.handshakes, data=data, now=now,
            make=self.keypair_type,
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
        peer.rx_bytes += len(data)
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
        self._authenticated(peer, kp, now)
        plen = len(pt)
        if plen == 0:
            c["rx_keepalive"] += 1
            return
        # Inlined timer hook "data received": the peer hears from us within
        # KEEPALIVE_TIMEOUT (a keepalive if nothing else goes out).
        if peer.t_send_keepalive is None:
            peer.t_send_keepalive = t = now + KEEPALIVE_TIMEOUT
            if t < self._deadline:
                self._deadline = t
        else:
            peer.need_another_keepalive = True
        total, key = inner(pt, plen)
        if not total:
            c["drop_bad_inner"] += 1
            return
        owner = self._route.get(key, _MISS)
        if owner is _MISS:
            owner = self.allowed_ips.lookup_packed(key)
        if owner is not peer:
            c["drop_not_allowed_src"] += 1
            return
        c["rx_packets"] += 1
        self.inbox.append(pt if total == plen else pt[:total])


    def _authenticated(self, peer: Peer, kp: Keypair, now: float) -> None:
        """After authenticated transport data from ``peer`` under ``kp``: keep the key
        fresh (receiving side) and the inlined timers any_authenticated_packet_traversal
        and _received, once per packet or per batched run."""
        if now > kp.last_minute_at and not peer.sent_last_minute_handshake:
            peer.sent_last_minute_handshake = True
            self.send_initiation(peer, now, is_retry=False)
        if peer.persistent_keepalive:
            peer.t_persistent_keepalive = t = now + peer.persistent_keepalive
            if t < self._deadline:
                self._deadline = t
        peer.t_new_handshake = None

@functools.lru_cache(maxsize=16)
def _datagrams(size: int) -> struct.Struct:
    """One ``size``-byte transport datagram: type, receiver, counter, ciphertext."""
    return struct.Struct(f"<IIQ{size - 16}s")


def inner(pt: bytes, plen: int) -> tuple[int, bytes]:
    """A decrypted inner packet's IP total length and packed source address
    (the allowed-IPs key), or (0, b"") when it is no well-formed IPv4/IPv6 packet
    of at most ``plen`` bytes (padding after ``total`` is cut by the caller)."""
    v = pt[0] >> 4
    if v == 4:
        if plen < 20:
            return 0, b""
        total = (pt[2] << 8) | pt[3]
        return (total, pt[12:16]) if 20 <= total <= plen else (0, b"")
    if v == 6:
        if plen < 40:
            return 0, b""
        total = 40 + ((pt[4] << 8) | pt[5])
        return (total, pt[8:24]) if total <= plen else (0, b"")
    return 0, b""
