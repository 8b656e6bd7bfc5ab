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
hooks in timers.py, constants in constants.py, per-peer data in peer.py.

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
import time
from collections.abc import Callable

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from fabric.wg import handshake, timers
from fabric.wg.allowedips import AllowedIPs
from fabric.wg.constants import (
    REJECT_AFTER_MESSAGES,
    REKEY_TIMEOUT,
    REKEY_TIMEOUT_JITTER_MAX,
)
from fabric.wg.cookie import CookieChecker, LoadMeter, RateLimiter
from fabric.wg.crypto import clamp, dh, private_bytes, public_key
from fabric.wg.indextable import IndexTable
from fabric.wg.messages import Endpoint
from fabric.wg.peer import Peer
from fabric.wg.receive import ReceivePath
from fabric.wg.send import SendPath

# How long sessions agreed under a replaced identity (our private key, or the peer's
# public key in a replace) stay usable: three handshake attempts' worth.
KEY_CHANGE_GRACE = 3 * REKEY_TIMEOUT

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

_INF = float("inf")


class Device(SendPath, ReceivePath):
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
        self._keypairs = self.index.keypairs  # the same dict: one attribute load per packet

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
        """None or all-zero removes the key. Peers keep their config. With a new
        key, each peer's sessions stay usable (send and receive) for at most
        KEY_CHANGE_GRACE while a handshake under the new identity starts at once,
        so a key rotation loses no packet; without a key they are expired for
        sending (see DESIGN.md, "Key changes")."""
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
            if private is None:
                self._expire_current_keypairs(peer, now)
            else:
                self._rekey_under_new_identity(peer, now)

    def _rekey_under_new_identity(self, peer: Peer, now: float) -> None:
        self._clear_handshake(peer)
        peer.last_sent_handshake = now - REKEY_TIMEOUT - 1.0
        if peer.current is None and peer.next is None:
            return  # no session: the next packet starts the handshake
        self.cap_sessions(peer, now)
        self.send_initiation(peer, now, is_retry=False)

    def cap_sessions(self, peer: Peer, now: float) -> None:
        """The peer's keypairs end at the latest KEY_CHANGE_GRACE from now (an identity
        change: they were agreed under the other key)."""
        end = now + KEY_CHANGE_GRACE
        for kp in (peer.previous, peer.current, peer.next):
            if kp is not None and kp.reject_at > end:
                kp.reject_at = end
                kp.fast_until = min(kp.fast_until, end)

    def take_over_sessions(self, old: Peer, new: Peer, now: float) -> None:
        """``new`` replaces ``old`` (removed with ``remove_peer(keep_sessions=True)``)
        for the same allowed IPs: ``new`` uses ``old``'s sessions, capped by
        ``cap_sessions``, until its own handshake replaces them."""
        for slot in ("previous", "current", "next"):
            kp = getattr(old, slot)
            if kp is not None:
                kp.peer = new
                setattr(new, slot, kp)
                setattr(old, slot, None)
        if new.endpoint is None:
            new.endpoint = old.endpoint
        new.last_handshake_ns = old.last_handshake_ns
        self._clear_handshake(old)
        self.cap_sessions(new, now)

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

    def remove_peer(self, public: bytes, keep_sessions: bool = False) -> Peer | None:
        """Remove the peer; returns it. ``keep_sessions``: its keypairs stay in the index
        until the caller hands them on (``take_over_sessions``) or zeroes them
        (``zero_keys``) before the next packet is handled."""
        peer = self.peers.pop(public, None)
        if peer is None:
            return None
        self.allowed_ips.remove_peer(peer)
        if not keep_sessions:
            self.zero_keys(peer)
        peer.staged.clear()
        return peer

    def forget_source(self, ep: Endpoint) -> None:
        """The I/O layer could not send from ``ep``'s local address (it is gone):
        peers at ``ep`` go back to the kernel's choice of source, as the kernel
        clears its cached source. Rare, so a scan over the peers."""
        if len(ep) == 2:
            return
        plain = (ep[0], ep[1])
        for peer in self.peers.values():
            if peer.endpoint == ep:
                peer.endpoint = plain

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

    def _send(self, data: bytes, peer: Peer) -> None:
        """A handshake message to the peer's endpoint (dropped if it has none)."""
        ep = peer.endpoint
        if ep is None:
            self.counters["drop_no_endpoint"] += 1
            return
        self.outbox.append((data, ep))
        self.counters["tx_datagrams"] += 1
        self.counters["tx_bytes"] += len(data)
        peer.tx_bytes += len(data)

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
