"""``--workers N``: the sans-IO part of running one WireGuard device in N processes.

Worker 0 (the *owner*, ``OwnerDevice``) is a full Device: handshakes, timers,
UAPI, stats. Workers 1..N-1 (``WorkerDevice``) only move transport data: they
have the peers (a mirror of the owner's configuration, without the private
key), the keypairs the owner hands them, and their own replay windows. What
goes between them is plain tuples (fabric/wg/workers.py carries them over a
socketpair):

owner -> worker: ``("cfg", set_request)`` (an applied UAPI set, private key lines
removed), ``("kp", public, send_key, recv_key, local_index, remote_index,
is_initiator, created, slot, endpoint)`` (a new keypair, sent before any packet
uses it),
``("confirm", public, local_index)`` (a responder keypair confirmed),
``("zero", public)``, ``("giveup", public)``, ``("ep", public, endpoint)``,
``("cap", now)`` (our private key changed: cap the sessions).

worker -> owner: ``("facts", [(public, rx_bytes, tx_bytes, data_received,
last_data_sent, last_heard, endpoint, wants_handshake, confirmed_index),
...])`` every
``TICK``, ``("counters", counters)`` every second.

Send counters and replay windows are shared (``SharedCounters``: one slot per
keypair in a shared anonymous mapping, changed under process-shared locks):
every worker takes the next counters of the keypair when it sends, so the
counters on the wire stay one increasing sequence whatever the traffic per
worker, and a counter is accepted once by whichever worker gets it. See
DESIGN.md ("More cores") for why a stride (worker i sends i, i+N, ...) and
per-worker windows behind counter steering are not enough.
"""

from __future__ import annotations

from typing import Any

from fabric.wg import timers
from fabric.wg.constants import KEEPALIVE_TIMEOUT
from fabric.wg.device import Device
from fabric.wg.peer import Keypair, Peer
from fabric.wg.shared import SharedCounters, SharedKeypair, use_shared

__all__ = ["TICK", "Message", "OwnerDevice", "SharedCounters", "WorkerDevice", "use_shared"]

TICK = 0.1  # how often workers report traffic facts and the owner sends roams
Message = tuple[Any, ...]


class _Timed(Device):
    """Records per peer when data was last sent and when anything authenticated was
    last heard (once per packet or batched run), so the owner can order events
    from different workers: "sent and not answered" must compare times."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.sent_at: dict[bytes, float] = {}
        self.heard_at: dict[bytes, float] = {}

    def _sent(self, peer: Peer, nbytes: int, npkts: int, now: float) -> None:
        self.sent_at[peer.public_key] = now
        super()._sent(peer, nbytes, npkts, now)

    def _authenticated(self, peer: Peer, kp: Keypair, now: float) -> None:
        self.heard_at[peer.public_key] = now
        super()._authenticated(peer, kp, now)

    def send_staged(self, peer: Peer, now: float) -> None:
        if any(peer.staged):  # data, not only a keepalive
            self.sent_at[peer.public_key] = now
        super().send_staged(peer, now)


def _install(dev: Device, peer: Peer, kp: Keypair) -> None:
    """Put a keypair from the owner into the slot the owner's receive path did."""
    index = dev.index
    if kp.is_initiator:
        if peer.next is not None:
            index.remove_keypair(peer.previous)
            index.remove_keypair(peer.current)
            peer.previous, peer.next = peer.next, None
        else:
            index.remove_keypair(peer.previous)
            peer.previous = peer.current
        peer.current = kp
    else:
        index.remove_keypair(peer.next)
        index.remove_keypair(peer.previous)
        peer.next, peer.previous = kp, None
    index.add_keypair(kp)


def _confirm(dev: Device, peer: Peer) -> None:
    """The responder's next keypair was used by the peer: next -> current (as
    receive.py does on the first packet)."""
    kp = peer.next
    assert kp is not None
    dev.index.remove_keypair(peer.previous)
    peer.previous, peer.current, peer.next = peer.current, kp, None


class OwnerDevice(_Timed):
    """Worker 0: a full Device whose keypairs have shared send counters; it queues
    what the workers must know in ``to_workers`` (the loop sends it before the
    outbox) and applies their facts."""

    def __init__(self, shared: SharedCounters, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.shared = shared
        self.keypair_type = self._make_keypair
        self.to_workers: list[Message] = []
        self.next_tick = 0.0
        self._ep_sent: dict[bytes, object] = {}

    def _make_keypair(self, peer: Peer, send_key: bytes, recv_key: bytes, local_index: int,
                      remote_index: int, is_initiator: bool, created: float) -> Keypair:
        slot = self.shared.allocate(created)
        # With the endpoint: the initiation that made it may come from a new address.
        self.to_workers.append(("kp", peer.public_key, send_key, recv_key, local_index,
                                remote_index, is_initiator, created, slot, peer.endpoint))
        return SharedKeypair(slot, peer, send_key, recv_key, local_index, remote_index,
                             is_initiator, created)

    def zero_keys(self, peer: Peer) -> None:
        super().zero_keys(peer)
        self.to_workers.append(("zero", peer.public_key))

    def _handshake_complete(self, peer: Peer) -> None:
        super()._handshake_complete(peer)
        if peer.current is not None:
            # The responder's keypair confirmed here: workers may send on it too.
            self.to_workers.append(("confirm", peer.public_key, peer.current.local_index))

    def give_up_handshake(self, peer: Peer) -> None:
        super().give_up_handshake(peer)
        self.to_workers.append(("giveup", peer.public_key))

    def configured(self, request: str, old_private: bytes | None, now: float) -> None:
        """An applied set request: mirror it to the workers, without our private key."""
        lines = [ln for ln in request.split("\n") if not ln.startswith("private_key=")]
        self.to_workers.append(("cfg", "\n".join(lines)))
        if self.private_key != old_private and self.private_key is not None:
            self.to_workers.append(("cap", now))

    def next_deadline(self) -> float | None:
        t = super().next_deadline()
        return self.next_tick if t is None or t > self.next_tick else t

    def on_timer(self, now: float) -> None:
        if self._deadline <= now:
            super().on_timer(now)
        if now >= self.next_tick:
            self.next_tick = now + TICK
            sent = self._ep_sent
            for pub, peer in self.peers.items():
                if peer.endpoint is not None and sent.get(pub) != peer.endpoint:
                    sent[pub] = peer.endpoint
                    self.to_workers.append(("ep", pub, peer.endpoint))

    def apply_facts(self, facts: list[Message], now: float) -> None:
        """A worker's traffic since its last report, as if it had happened here: byte
        counters (``wg show``), roaming, timers, handshake requests."""
        for pub, rxd, txd, data_rx, sent_at, heard_at, ep, wants, confirmed in facts:
            peer = self.peers.get(pub)
            if peer is None:
                continue
            peer.rx_bytes += rxd
            peer.tx_bytes += txd
            if ep is not None:
                peer.endpoint = ep
            nxt = peer.next
            if confirmed is not None and nxt is not None and nxt.local_index == confirmed:
                _confirm(self, peer)
                self._handshake_complete(peer)
                if peer.staged:
                    self.send_staged(peer, now)
            heard = self.heard_at.get(pub, float("-inf"))
            if heard_at is not None and heard_at > heard:
                self.heard_at[pub] = heard = heard_at
            if rxd:
                timers.any_authenticated_packet_traversal(self, peer, now)
                timers.any_authenticated_packet_received(peer)
                if data_rx:
                    if peer.t_send_keepalive is None:
                        peer.t_send_keepalive = t = now + KEEPALIVE_TIMEOUT
                        self.arm(t)
                    else:
                        peer.need_another_keepalive = True
            if txd:
                timers.any_authenticated_packet_traversal(self, peer, now)
                timers.any_authenticated_packet_sent(peer)
                if sent_at is not None and sent_at > heard:
                    # Data went out after the last packet any worker heard: expect an answer.
                    timers.data_sent(self, peer, now)
            if wants:
                self.send_initiation(peer, now, is_retry=False)


class WorkerDevice(_Timed):
    """Workers 1..N-1: transport data only. No private key (it never handshakes);
    what would start a handshake is reported to the owner instead; its own timers
    never fire (the owner runs them from the facts)."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.to_owner: list[Message] = []
        self.wants: set[bytes] = set()
        self.next_tick = 0.0
        self._reported: dict[bytes, tuple[Peer, int, int, object, int | None]] = {}

    def send_initiation(self, peer: Peer, now: float, is_retry: bool) -> None:
        self.wants.add(peer.public_key)

    def next_deadline(self) -> float | None:
        return self.next_tick

    def on_timer(self, now: float) -> None:
        if now < self.next_tick:
            return
        self.next_tick = now + TICK
        facts = self.collect()
        if facts:
            self.to_owner.append(("facts", facts))

    def collect(self) -> list[Message]:
        facts: list[Message] = []
        reported = self._reported
        for pub, peer in self.peers.items():
            last = reported.get(pub)
            if last is None or last[0] is not peer:
                last = (peer, 0, 0, None, None)
            cur = peer.current.local_index if peer.current is not None else None
            rxd, txd = peer.rx_bytes - last[1], peer.tx_bytes - last[2]
            ep = peer.endpoint if peer.endpoint != last[3] else None
            data_rx = peer.t_send_keepalive is not None
            peer.t_send_keepalive = None
            sent_at, heard_at = self.sent_at.get(pub), self.heard_at.get(pub)
            wants = pub in self.wants
            confirmed = cur if cur != last[4] else None
            if rxd or txd or ep is not None or wants or confirmed is not None:
                facts.append((pub, rxd, txd, data_rx, sent_at, heard_at, ep, wants, confirmed))
            reported[pub] = (peer, peer.rx_bytes, peer.tx_bytes, peer.endpoint, cur)
        self.wants.clear()
        return facts

    def apply(self, msg: Message, now: float) -> None:
        """One message from the owner."""
        kind = msg[0]
        if kind == "cfg":
            from fabric.wg import uapi

            reply = uapi.handle(self, msg[1], now)
            if reply.errno:
                raise RuntimeError(f"mirrored configuration refused: {reply.error}")
            return
        if kind == "cap":
            for peer in self.peers.values():
                self.cap_sessions(peer, now)
            return
        found = self.peers.get(msg[1])
        if found is None:
            return
        peer = found
        if kind == "kp":
            _, _, send_key, recv_key, local_index, remote_index, is_initiator, created, slot, \
                ep = msg
            if ep is not None:
                peer.endpoint = ep
            kp = SharedKeypair(slot, peer, send_key, recv_key, local_index, remote_index,
                               is_initiator, created)
            _install(self, peer, kp)
            if is_initiator:
                timers.handshake_complete(peer, self.wallclock())
            if peer.staged and peer.current is not None:
                self.send_staged(peer, now)
        elif kind == "confirm":
            nxt = peer.next
            if nxt is not None and nxt.local_index == msg[2]:
                _confirm(self, peer)
                timers.handshake_complete(peer, self.wallclock())
                if peer.staged:
                    self.send_staged(peer, now)
        elif kind == "zero":
            self.zero_keys(peer)
        elif kind == "giveup":
            peer.staged.clear()
        elif kind == "ep":
            peer.endpoint = msg[2]
            last = self._reported.get(msg[1])
            if last is not None and last[0] is peer:
                self._reported[msg[1]] = (peer, last[1], last[2], msg[2], last[4])
