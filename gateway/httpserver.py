"""The API's HTTP server: uvicorn, bounded against whoever can reach the port.

uvicorn on its own keeps a connection that never completes a request open
forever, accepts connections until the process runs out of file descriptors
and then logs a traceback per failed accept. Measured against the gateway:
2,000 slow-loris connections held for 60 s were never closed, and 1,100 idle
connections starved the data-plane supervision of descriptors. Here:

- at most ``per_source`` connections from one source address: a new one
  evicts that source's slowest (the one waiting longest for its request, or
  idle longest), so one host flooding the port competes only with itself;
- at most ``max_connections`` connections at once: a new one evicts the
  connection idle the longest; none idle, the slowest of the source holding
  the most connections (a distributed flood of slow bodies cannot lock the
  port: the newest legitimate request still gets a slot);
- with TLS, a handshake must finish within ``request_timeout``;
- a connection must start a request within ``request_timeout`` of opening or
  of its previous response, or it is closed (slow or idle clients); the body
  of a started request is bounded by :mod:`gateway.limits`;
- RLIMIT_NOFILE is raised to its hard limit at start, so the connection cap,
  not the descriptor limit, is what a flood meets;
- accept errors (EMFILE and the like) are logged at most once per
  ``LOG_EVERY`` seconds with a count, never as a traceback per attempt.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import resource
import socket
import ssl
import time
from collections.abc import Iterator
from typing import Any

import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

log = logging.getLogger("crosswire.http")

MAX_CONNECTIONS = 256
REQUEST_TIMEOUT = 10.0
LOG_EVERY = 10.0
BACKLOG = 512


class _Limits:
    """Shared by every connection of one server (uvicorn makes one protocol per connection)."""

    def __init__(self, max_connections: int, request_timeout: float, per_source: int | None = None) -> None:
        self.max_connections = max_connections
        self.per_source = per_source or max(4, max_connections // 8)
        self.request_timeout = request_timeout
        self.refused = 0
        self.evicted = 0
        self.timed_out = 0
        self._last_log = 0.0

    def note_refused(self) -> None:
        self.refused += 1
        now = time.monotonic()
        if now - self._last_log >= LOG_EVERY:
            self._last_log = now
            log.warning("API: %d connections refused so far (more than %d open at once)",
                        self.refused, self.max_connections)


def guarded_protocol(limits: _Limits) -> type[H11Protocol]:
    class GuardedH11(H11Protocol):
        """H11Protocol that refuses connections over the cap and closes idle ones."""

        _watchdog: asyncio.TimerHandle | None = None
        _requests_seen = 0

        _since = 0.0  # when this connection opened or last started a request

        _source = ""

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._since = time.monotonic()
            peer = transport.get_extra_info("peername")
            self._source = str(peer[0]) if isinstance(peer, tuple) and peer else ""
            # Aborted connections stay in the set until their connection_lost runs.
            live = [c for c in self.connections
                    if isinstance(c, GuardedH11) and c is not self and not c.transport.is_closing()]
            by_source: dict[str, list[GuardedH11]] = {}
            for c in live:
                by_source.setdefault(c._source, []).append(c)
            mine = by_source.get(self._source, [])
            victim: GuardedH11 | None = None
            if len(mine) >= limits.per_source:
                victim = min(mine, key=lambda c: c._since)  # this source's slowest
            elif len(live) >= limits.max_connections:
                # Make room: the connection idle the longest, else the slowest of the
                # heaviest source, so no flood of idle or slow clients locks the port.
                victim = min((c for c in live if c.idle()), key=lambda c: c._since, default=None)
                if victim is None:
                    heavy = max(by_source.values(), key=len)
                    victim = min(heavy, key=lambda c: c._since)
            if victim is not None:
                limits.evicted += 1
                victim.transport.abort()
            self._arm(self._requests_seen)

        def idle(self) -> bool:
            return self.cycle is None or self.cycle.response_complete

        def _arm(self, seen: int) -> None:
            self._watchdog = self.loop.call_later(limits.request_timeout, self._check, seen)

        def _check(self, seen_then: int) -> None:
            # Closed unless a request started since the timer was armed or one is running.
            if self._requests_seen == seen_then and self.idle():
                limits.timed_out += 1
                self.transport.close()
                return
            self._arm(self._requests_seen)

        def handle_events(self) -> None:
            before = self.cycle
            super().handle_events()
            if self.cycle is not before:
                self._requests_seen += 1
                self._since = time.monotonic()

        def connection_lost(self, exc: Exception | None) -> None:
            if self._watchdog is not None:
                self._watchdog.cancel()
                self._watchdog = None
            super().connection_lost(exc)

    return GuardedH11


class _AcceptErrorFilter(logging.Filter):
    """asyncio logs every failed accept() with a traceback; keep one line per LOG_EVERY."""

    def __init__(self) -> None:
        super().__init__()
        self.suppressed = 0
        self._last = 0.0

    def filter(self, record: logging.LogRecord) -> bool:
        if "accept" not in record.getMessage():
            return True
        now = time.monotonic()
        if now - self._last < LOG_EVERY:
            self.suppressed += 1
            return False
        self._last = now
        record.msg = f"API: accept() failing ({record.getMessage()}); {self.suppressed} similar suppressed"
        record.args = ()
        record.exc_info = None
        record.exc_text = None
        self.suppressed = 0
        return True


def raise_fd_limit() -> int:
    """Raise the soft RLIMIT_NOFILE to the hard limit; returns the soft limit in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
    return soft


class Server(uvicorn.Server):
    """uvicorn without its signal handling: it re-raises SIGTERM after shutdown, which
    would kill us before our own cleanup runs; the daemon installs handlers instead.
    With TLS, the handshake is bounded by the request timeout (asyncio's default: 60 s)."""

    handshake_timeout = REQUEST_TIMEOUT

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        loop = asyncio.get_running_loop()
        if self.config.ssl is None:
            await super().startup(sockets)
            return
        # uvicorn passes no ssl_handshake_timeout to create_server: add it for this call.
        create = loop.create_server

        async def bounded(*args: Any, **kw: Any) -> Any:
            if kw.get("ssl") is not None:  # another server may start meanwhile, without TLS
                kw.setdefault("ssl_handshake_timeout", self.handshake_timeout)
            return await create(*args, **kw)

        loop.create_server = bounded  # type: ignore[method-assign]
        try:
            await super().startup(sockets)
        finally:
            del loop.create_server


def listen(host: str, port: int) -> socket.socket:
    """The API's listening socket (IPv4 or IPv6 by the host's form), bound now."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        sock.bind((host or "0.0.0.0", port))
        sock.listen(BACKLOG)
    except OSError:
        sock.close()
        raise
    sock.set_inheritable(False)
    return sock


def make_server(app: Any, host: str, port: int, *, max_connections: int = MAX_CONNECTIONS,
                request_timeout: float = REQUEST_TIMEOUT, per_source: int | None = None,
                ssl_context: ssl.SSLContext | None = None) -> Server:
    limits = _Limits(max_connections, request_timeout, per_source)
    logging.getLogger("asyncio").addFilter(_AcceptErrorFilter())
    config = uvicorn.Config(app, host=host, port=port, loop="asyncio", lifespan="off",
                            access_log=False, log_level="warning", http=guarded_protocol(limits),
                            timeout_keep_alive=5, backlog=BACKLOG)
    if ssl_context is not None:
        config.load()
        config.ssl = ssl_context  # ours: certificate rotation reloads it in place
    server = Server(config)
    server.handshake_timeout = request_timeout
    server.limits = limits  # type: ignore[attr-defined]
    return server
