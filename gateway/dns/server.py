"""The DNS listener: a thin asyncio adapter (UDP and TCP) over the sans-IO answer core.

``snapshot`` is a callable returning the current imports (gateway.dns.records);
it is asked on every query, so a change is answered at once. TCP (RFC 7766):
2-byte length-prefixed messages, several per connection, at most
``max_tcp`` connections (more are closed at once and counted), each closed
after ``tcp_idle`` seconds without a complete query.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import socket
import time
from collections.abc import Callable
from typing import cast

from gateway.dns.answer import TTL, Answerer, Outcome
from gateway.dns.limit import SourceLimiter
from gateway.dns.records import Snapshot
from gateway.dns.stats import STATS, DnsStats

log = logging.getLogger("crosswire.dns")

MAX_TCP = 64
TCP_IDLE = 5.0
_WARN_EVERY = 60.0  # seconds between two warnings that the snapshot failed


class _Udp(asyncio.DatagramProtocol):
    def __init__(self, server: DnsServer) -> None:
        self.server = server
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        if not self.server.admit(addr[0]):
            return
        out = self.server.handle(data, "udp")
        if out is not None and self.transport is not None:
            self.transport.sendto(out, addr)

    def error_received(self, exc: Exception) -> None:
        log.debug("dns udp: %s", exc)


class DnsServer:
    def __init__(self, host: str, port: int, zone: str, snapshot: Callable[[], Snapshot], *,
                 stats: DnsStats = STATS, max_tcp: int = MAX_TCP, tcp_idle: float = TCP_IDLE,
                 ttl: int = TTL, limiter: SourceLimiter | None = None) -> None:
        self.host, self.port = host, port
        self.limiter = limiter or SourceLimiter()
        self.answerer = Answerer(zone, ttl)
        self.snapshot = snapshot
        self.stats = stats
        self.max_tcp, self.tcp_idle = max_tcp, tcp_idle
        self._udp_sock: socket.socket | None = None
        self._tcp_sock: socket.socket | None = None
        self._udp: asyncio.DatagramTransport | None = None
        self._tcp: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._warned = -_WARN_EVERY

    def bind(self) -> None:
        """Bind both sockets (OSError when the address is taken); call before start()."""
        family = socket.AF_INET6 if ipaddress.ip_address(self.host).version == 6 else socket.AF_INET
        udp = socket.socket(family, socket.SOCK_DGRAM)
        tcp = socket.socket(family, socket.SOCK_STREAM)
        try:
            udp.bind((self.host, self.port))
            tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            tcp.bind((self.host, self.port))
            tcp.listen(128)
        except OSError:
            udp.close()
            tcp.close()
            raise
        udp.setblocking(False)
        tcp.setblocking(False)
        self._udp_sock, self._tcp_sock = udp, tcp

    @property
    def bound_port(self) -> int:
        """The port actually bound (port 0 in tests picks a free one)."""
        assert self._udp_sock is not None
        return int(self._udp_sock.getsockname()[1])

    async def start(self) -> None:
        if self._udp_sock is None:
            self.bind()
        assert self._udp_sock is not None and self._tcp_sock is not None
        loop = asyncio.get_running_loop()
        self._udp, _ = await loop.create_datagram_endpoint(lambda: _Udp(self), sock=self._udp_sock)
        self._tcp = await asyncio.start_server(self._client, sock=self._tcp_sock)
        log.info("dns: answering %s on %s:%d (udp, tcp)", self.answerer.zone.to_text(), self.host,
                 self.bound_port)

    def admit(self, source: str) -> bool:
        """Whether to answer a query from ``source`` (gateway.dns.limit); counts the drops."""
        verdict = self.limiter.verdict(source, time.monotonic())
        if verdict == "ok":
            return True
        self.stats.dropped[verdict] = self.stats.dropped.get(verdict, 0) + 1
        return False

    def handle(self, wire: bytes, transport: str) -> bytes | None:
        """One query -> the response bytes (None: send nothing). Never raises."""
        try:
            snap: Snapshot | None = self.snapshot()
        except Exception as e:  # the imports are unavailable: SERVFAIL, and say so now and then
            snap = None
            now = time.monotonic()
            if now - self._warned >= _WARN_EVERY:
                self._warned = now
                log.warning("dns: cannot read the imports (answering SERVFAIL): %s: %s", type(e).__name__, e)
        try:
            outcome = self.answerer.answer(wire, snap, tcp=transport == "tcp")
        except Exception as e:  # a bug in the core must not take the listener down
            log.error("dns: answering failed: %s: %s", type(e).__name__, e)
            outcome = Outcome(None)
        self.stats.count(transport, outcome)
        return outcome.response

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if len(self._writers) >= self.max_tcp:
            self.stats.tcp_rejected += 1
            writer.close()
            return
        self._writers.add(writer)
        self.stats.tcp_open = len(self._writers)
        try:
            while True:
                # The whole message, length included, within tcp_idle: a slow sender is closed.
                head = await asyncio.wait_for(reader.readexactly(2), self.tcp_idle)
                size = int.from_bytes(head, "big")
                if size == 0:
                    break
                body = await asyncio.wait_for(reader.readexactly(size), self.tcp_idle)
                peer = writer.get_extra_info("peername")
                if not self.admit(str(peer[0]) if peer else ""):
                    break
                out = self.handle(body, "tcp")
                if out is None:
                    break  # not a query: nothing sensible follows on this stream
                writer.write(len(out).to_bytes(2, "big") + out)
                await asyncio.wait_for(writer.drain(), self.tcp_idle)
        except (TimeoutError, asyncio.IncompleteReadError, ConnectionError, OSError):
            pass
        finally:
            self._writers.discard(writer)
            self.stats.tcp_open = len(self._writers)
            writer.close()

    async def aclose(self) -> None:
        if self._udp is not None:
            self._udp.close()
        elif self._udp_sock is not None:
            self._udp_sock.close()
        if self._tcp is not None:
            self._tcp.close()
        elif self._tcp_sock is not None:
            self._tcp_sock.close()
        for w in list(self._writers):
            w.close()
        if self._tcp is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._tcp.wait_closed(), 2)


def bind_from_config(listen: tuple[str, int] | None, zone: str, snapshot: Callable[[], Snapshot],
                     from_peer: Callable[[str], bool] = lambda source: False) -> DnsServer | None:
    """The daemon's listener, bound (OSError if it cannot be); None when ``dns.listen`` is ""."""
    if listen is None:
        return None
    server = DnsServer(listen[0], listen[1], zone, snapshot, limiter=SourceLimiter(from_peer=from_peer))
    server.bind()
    return server
