"""Peer health: UDP probes through the tunnel to each peer gateway's pod IP.

Choice: every gateway runs a tiny UDP echo responder on ``health.port``
(default 51830) on all its addresses; probes go from the gateway's own pod IP to
the peer's ``probe_ip`` (the peer gateway's pod IP as *we* address it), so they
take exactly the path pod traffic takes: route into WireGuard, SNAT to the
peer's view of us, DNAT on the far side, and back through conntrack.

``HealthTracker`` is sans-IO: ``due(now)`` says which probes to send,
``on_reply(data, now)`` takes answers, ``report(now)`` gives per peer
RTT, loss and a state:

- ``connecting``: no answer yet, for less than ``2 * timeout`` since the peer appeared;
- ``connected``: the last answer is younger than ``timeout`` and no probe sent
  since has gone unanswered for ``FAIL_AFTER`` (0.5 s);
- ``impaired``: answers came within ``timeout``, but a probe since is not
  answered after ``FAIL_AFTER``: the peer is failing right now (never
  "connected" while it is). With the default 0.5 s interval a peer reads
  ``impaired`` at most ~1 s into an outage (the next probe, then 0.5 s);
- ``error``: silent for ``timeout`` (default 5 s, so within 10 s of the peer
  going quiet) — and back to ``connected`` with the next answer.

Probes scale with a budget, not with the number of peers: ``max_rate`` probes
a second for the whole gateway (``health.max_probe_rate``, 200), so each peer is
probed every ``interval`` or every ``peers / max_rate`` seconds, whichever is
longer (``effective_interval``): 0.5 s up to 100 peers, 5 s at 1,000. The
verdict after a lost probe stays FAIL_AFTER; ``error`` counts its timeout from
when the next probe's answer was due, so a longer interval never reads as
silence. A heap of deadlines makes each wake-up cost only the probes due.

Probe format: ``b"CWP1" + 8-byte session + 8-byte sequence`` (20 bytes); the
responder echoes only datagrams of exactly that shape, others are dropped and
counted.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import logging
import secrets
import socket
import struct
from collections import deque
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger("crosswire.health")

MAGIC = b"CWP1"
PROBE_LEN = 20
LOSS_WINDOW = 20
# A probe unanswered this long is failing. Far above any RTT between clusters, yet
# short enough that an outage shows within 0.5 s of its first lost probe; a reply
# arriving later still counts (for RTT and the next state), only the verdict is early.
FAIL_AFTER = 0.5
MAX_RATE = 200.0  # probes per second for the whole gateway (health.max_probe_rate)


@dataclass
class _Peer:
    ip: str
    added: float
    next_probe: float
    sent: deque[tuple[int, float, bool]] = field(default_factory=lambda: deque(maxlen=LOSS_WINDOW))
    last_reply: float | None = None
    rtt: float | None = None


class HealthTracker:
    def __init__(self, interval: float = 0.5, timeout: float = 5.0, max_rate: float = MAX_RATE) -> None:
        self.interval = interval
        self.timeout = timeout
        self.max_rate = max_rate
        self.session = secrets.token_bytes(8)
        self._seq = 0
        self._peers: dict[str, _Peer] = {}
        self._by_seq: dict[int, str] = {}
        # (next_probe, cluster_id, peer): entries of removed or replaced peers are skipped lazily.
        self._heap: list[tuple[float, str, _Peer]] = []

    @property
    def effective_interval(self) -> float:
        """Seconds between two probes of one peer: the budget spread over every peer."""
        return max(self.interval, len(self._peers) / self.max_rate)

    def set_peers(self, targets: dict[str, str], now: float) -> None:
        """{cluster_id: probe_ip}; a changed probe IP restarts that peer's history."""
        for cid in list(self._peers):
            if cid not in targets or self._peers[cid].ip != targets[cid]:
                del self._peers[cid]
        for cid, ip in targets.items():
            if cid not in self._peers:
                p = self._peers[cid] = _Peer(ip=ip, added=now, next_probe=now)
                heapq.heappush(self._heap, (now, cid, p))

    def due(self, now: float) -> list[tuple[str, str, bytes]]:
        """Probes to send now: (cluster_id, ip, payload)."""
        out = []
        heap = self._heap
        step = self.effective_interval
        while heap and heap[0][0] <= now:
            _, cid, p = heapq.heappop(heap)
            if self._peers.get(cid) is not p:
                continue  # removed, or its probe IP changed (a new entry exists)
            self._seq += 1
            p.sent.append((self._seq, now, False))
            self._by_seq[self._seq] = cid
            p.next_probe = now + step
            heapq.heappush(heap, (p.next_probe, cid, p))
            out.append((cid, p.ip, MAGIC + self.session + struct.pack("!Q", self._seq)))
        if len(heap) > 2 * len(self._peers) + 64:
            self._heap = [e for e in heap if self._peers.get(e[1]) is e[2]]
            heapq.heapify(self._heap)
        # Forget sequence numbers that fell out of every window.
        if len(self._by_seq) > 4 * LOSS_WINDOW * max(1, len(self._peers)):
            live = {s for p in self._peers.values() for s, _, _ in p.sent}
            self._by_seq = {s: c for s, c in self._by_seq.items() if s in live}
        return out

    def next_deadline(self) -> float | None:
        heap = self._heap
        while heap and self._peers.get(heap[0][1]) is not heap[0][2]:
            heapq.heappop(heap)
        return heap[0][0] if heap else None

    def on_reply(self, data: bytes, now: float) -> bool:
        if len(data) != PROBE_LEN or not data.startswith(MAGIC) or data[4:12] != self.session:
            return False
        (seq,) = struct.unpack("!Q", data[12:])
        cid = self._by_seq.pop(seq, None)
        p = self._peers.get(cid) if cid is not None else None
        if p is None:
            return False
        for i, (s, t, answered) in enumerate(p.sent):
            if s == seq and not answered:
                p.sent[i] = (s, t, True)
                p.rtt = now - t
                p.last_reply = now
                return True
        return False

    def _quiet(self) -> float:
        # Silence is counted from when the next probe's answer was due: with probes further
        # apart than ``interval`` (many peers) a healthy peer never reads as silent.
        return self.timeout + self.effective_interval - self.interval

    def _state(self, p: _Peer, now: float, quiet: float) -> str:
        last = p.last_reply
        if last is not None and now - last < quiet and (not p.sent or p.sent[-1][1] <= last):
            # the common case, decided at once (1,000 peers each poll): answered recently,
            # and the newest probe was sent before that answer, so none is outstanding
            return "connected"
        # Failing: a probe sent since the last reply and unanswered for FAIL_AFTER. ``sent``
        # is in sending order, so only the probes after the last reply are looked at.
        settle = min(self.timeout, FAIL_AFTER)
        failing = False
        for _, t, answered in reversed(p.sent):
            if p.last_reply is not None and t <= p.last_reply:
                break
            if not answered and now - t >= settle:
                failing = True
                break
        if p.last_reply is not None and now - p.last_reply < quiet:
            return "impaired" if failing else "connected"
        if p.last_reply is None and now - p.added < 2 * self.timeout:
            return "connecting"
        return "error"

    def states(self, now: float) -> dict[str, str]:
        """Every peer's state alone (status and summaries count them): no loss or RTT."""
        quiet = self._quiet()
        return {cid: self._state(p, now, quiet) for cid, p in self._peers.items()}

    def report(self, now: float, only: Collection[str] | None = None) -> dict[str, dict[str, Any]]:
        """Per peer (``only``: just these) its state, probe target, RTT, loss and last reply's age."""
        out: dict[str, dict[str, Any]] = {}
        quiet = self._quiet()
        settle = min(self.timeout, FAIL_AFTER)
        peers = self._peers if only is None else {c: self._peers[c] for c in only if c in self._peers}
        for cid, p in peers.items():
            # A probe counts for loss once it had a fair chance to come back.
            settled = [a for _, t, a in p.sent if a or now - t >= settle]
            loss = (settled.count(False) / len(settled)) if settled else None
            out[cid] = {"state": self._state(p, now, quiet), "probe_ip": p.ip,
                        "rtt_ms": None if p.rtt is None else round(p.rtt * 1000, 3),
                        "loss": loss,
                        "last_reply_age_s": None if p.last_reply is None else round(now - p.last_reply, 3)}
        return out


def is_probe(data: bytes) -> bool:
    return len(data) == PROBE_LEN and data.startswith(MAGIC)


# --- asyncio adapters ----------------------------------------------------------------------


class _Echo(asyncio.DatagramProtocol):
    def __init__(self, owner: EchoResponder) -> None:
        self.owner = owner
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: tuple[Any, ...]) -> None:
        if is_probe(data) and self.transport is not None:
            self.owner.echoed += 1
            self.transport.sendto(data, addr)
        else:
            self.owner.dropped += 1


class EchoResponder:
    """Answers probes on every address of this namespace (v4 and, if possible, v6)."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.echoed = 0
        self.dropped = 0
        self._transports: list[asyncio.BaseTransport] = []

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        t, _ = await loop.create_datagram_endpoint(lambda: _Echo(self), local_addr=("0.0.0.0", self.port))
        self._transports.append(t)
        with contextlib.suppress(OSError):
            s = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
            s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            s.bind(("::", self.port))
            t6, _ = await loop.create_datagram_endpoint(lambda: _Echo(self), sock=s)
            self._transports.append(t6)

    def close(self) -> None:
        for t in self._transports:
            t.close()
        self._transports.clear()


class _Probe(asyncio.DatagramProtocol):
    def __init__(self, on_data: Callable[[bytes], object]) -> None:
        self.on_data = on_data

    def datagram_received(self, data: bytes, addr: tuple[Any, ...]) -> None:
        self.on_data(data)


class Prober:
    """Drives a HealthTracker: one socket per family, bound to the gateway pod IP if it is ours."""

    def __init__(self, tracker: HealthTracker, port: int, source_ip: str | None,
                 clock: Callable[[], float]) -> None:
        self.tracker = tracker
        self.port = port
        self.source_ip = source_ip
        self.clock = clock
        self._socks: dict[int, asyncio.DatagramTransport] = {}
        self.send_errors = 0

    async def _sock(self, family: int) -> asyncio.DatagramTransport:
        if family not in self._socks:
            s = socket.socket(family, socket.SOCK_DGRAM)
            s.setblocking(False)
            src = self.source_ip
            if src is not None and (":" in src) == (family == socket.AF_INET6):
                with contextlib.suppress(OSError):
                    s.bind((src, 0))  # the pod IP, so SNAT maps it like pod traffic
            loop = asyncio.get_running_loop()
            t, _ = await loop.create_datagram_endpoint(
                lambda: _Probe(lambda d: self.tracker.on_reply(d, self.clock())), sock=s)
            self._socks[family] = t
        return self._socks[family]

    async def tick(self) -> None:
        for _, ip, payload in self.tracker.due(self.clock()):
            fam = socket.AF_INET6 if ":" in ip else socket.AF_INET
            try:
                (await self._sock(fam)).sendto(payload, (ip, self.port))
            except OSError:
                self.send_errors += 1

    async def run(self) -> None:
        while True:
            await self.tick()
            # Wake for the next probe on time (a late probe delays the verdict), but at
            # least every 0.25 s so that peers added meanwhile are probed soon. At most
            # every 20 ms: with many peers the probes due go out together, not one per wake.
            nxt = self.tracker.next_deadline()
            wait = 0.25 if nxt is None else nxt - self.clock()
            await asyncio.sleep(min(max(wait, 0.02), 0.25))

    def close(self) -> None:
        for t in self._socks.values():
            t.close()
        self._socks.clear()
