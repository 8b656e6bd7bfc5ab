"""WireGuard's timers (whitepaper section 6, wireguard-go timers.go), sans-IO; the
protocol constants they use are in ``fabric.wg.constants``.

A timer is a deadline field on the Peer (monotonic seconds, ``None`` = idle):
``t_retransmit`` (handshake retransmit), ``t_send_keepalive`` (passive
keepalive), ``t_new_handshake`` (data sent, nothing heard), ``t_zero_keys``
and ``t_persistent_keepalive``. The device keeps a lower bound of all of them
(``TimerOwner.arm``) so its next deadline is O(1), and calls ``fire`` when it
is due.

The hooks below are named after the events that set or clear timers, as in
wireguard-go. The per-packet paths (send.py, receive.py) inline the hooks they
need rather than call them: they run for every packet and a Python call costs
more than the hook does. "Data received" (arm the passive keepalive, or ask
for another) only ever runs there, so it exists only inlined in receive.py.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

from fabric.wg.constants import (
    KEEPALIVE_TIMEOUT,
    MAX_TIMER_HANDSHAKES,
    REKEY_TIMEOUT,
    ZERO_KEYS_AFTER,
)

if TYPE_CHECKING:
    from fabric.wg.peer import Peer


class TimerOwner(Protocol):
    """What the hooks need from the device: the deadline bound and the jitter."""

    def arm(self, t: float) -> None: ...
    def jitter(self) -> float: ...


class TimerActions(TimerOwner, Protocol):
    """What expired timers do to the device."""

    def send_initiation(self, peer: Peer, now: float, is_retry: bool) -> None: ...
    def send_keepalive(self, peer: Peer, now: float) -> None: ...
    def zero_keys(self, peer: Peer) -> None: ...
    def give_up_handshake(self, peer: Peer) -> None: ...


# ---------------------------------------------------------------- event hooks


def any_authenticated_packet_traversal(dev: TimerOwner, peer: Peer, now: float) -> None:
    if peer.persistent_keepalive:
        peer.t_persistent_keepalive = t = now + peer.persistent_keepalive
        dev.arm(t)


def any_authenticated_packet_sent(peer: Peer) -> None:
    # Whatever we sent tells the peer we are alive.
    peer.t_send_keepalive = None


def any_authenticated_packet_received(peer: Peer) -> None:
    # The session is alive: no need to re-handshake for lack of replies.
    peer.t_new_handshake = None


def data_sent(dev: TimerOwner, peer: Peer, now: float) -> None:
    if peer.t_new_handshake is None:
        peer.t_new_handshake = t = now + KEEPALIVE_TIMEOUT + REKEY_TIMEOUT + dev.jitter()
        dev.arm(t)


def handshake_initiated(dev: TimerOwner, peer: Peer, now: float) -> None:
    peer.t_retransmit = t = now + REKEY_TIMEOUT + dev.jitter()
    dev.arm(t)


def handshake_complete(peer: Peer, wall: float) -> None:
    peer.t_retransmit = None
    peer.handshake_attempts = 0
    peer.sent_last_minute_handshake = False
    peer.last_handshake_ns = int(wall * 1e9)


def session_derived(dev: TimerOwner, peer: Peer, now: float) -> None:
    peer.t_zero_keys = t = now + ZERO_KEYS_AFTER
    dev.arm(t)


# ---------------------------------------------------------------- expiry


def fire(dev: TimerActions, peer: Peer, now: float) -> None:
    """Run the peer's timers that are due at ``now``."""
    t = peer.t_retransmit
    if t is not None and t <= now:
        peer.t_retransmit = None
        if peer.handshake_attempts > MAX_TIMER_HANDSHAKES:
            # Give up (REKEY_ATTEMPT_TIME): drop what waited, zero keys later.
            dev.give_up_handshake(peer)
            peer.t_send_keepalive = None
            if peer.t_zero_keys is None:
                session_derived(dev, peer, now)
        else:
            peer.handshake_attempts += 1
            dev.send_initiation(peer, now, is_retry=True)
    t = peer.t_send_keepalive
    if t is not None and t <= now:
        peer.t_send_keepalive = None
        dev.send_keepalive(peer, now)
        if peer.need_another_keepalive:
            peer.need_another_keepalive = False
            peer.t_send_keepalive = t = now + KEEPALIVE_TIMEOUT
            dev.arm(t)
    t = peer.t_new_handshake
    if t is not None and t <= now:
        peer.t_new_handshake = None
        # We sent data and heard nothing back: the session may be dead.
        dev.send_initiation(peer, now, is_retry=False)
    t = peer.t_zero_keys
    if t is not None and t <= now:
        peer.t_zero_keys = None
        dev.zero_keys(peer)
    t = peer.t_persistent_keepalive
    if t is not None and t <= now:
        peer.t_persistent_keepalive = None
        if peer.persistent_keepalive:
            dev.send_keepalive(peer, now)
