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
- with TLS (``ssl_context``, the peering listener), the protocol does the
  handshake itself after the checks above, so handshaking connections count
  too, and it must finish within ``request_timeout``; rotating the
  certificate reloads that one context, new handshakes see it at once. A
  connection whose first byte is not a TLS handshake is served as plain HTTP
  (``scope["scheme"] == "http"``): the peering app answers it only for peers
  that predate TLS peering;
- a connection must start a request within ``request_timeout`` of opening or
  of its previous response, or it is closed (slow or idle clients); the body
  of a started request is bounded by :mod:`gateway.limits`;
- a connection whose unsent answer does not shrink by a byte for
  ``request_timeout`` (a client that does not read) is aborted: each holds at
  most one answer, and a slow one never holds up the others;
- a request the app holds on purpose (a route long-poll, gateway.routesapi,
  through the ``crosswire.hold`` scope extension) is the server's wait, not
  the client's slowness: while held it has no timeout here, is never evicted
  and is not counted against ``max_connections`` or ``per_source``; the app
  bounds those (``api.max_watchers``), and up to ``watchers`` connections
  beyond ``max_connections`` are admitted for them, less those held, so a
  thousand agents reconnecting at once are not evicted as a flood;
- RLIMIT_NOFILE is raised to its hard limit at start, so the connection cap,
  not the descriptor limit, is what a flood meets;
- accept errors (EMFILE and the like) are logged at most once per
  ``LOG_EVERY`` seconds with a count, never as a traceback per attempt.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
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
# asyncio accepts up to this many connections per loop iteration (uvicorn's "backlog"),
# before any eviction closes one: it bounds the descriptors a burst can hold at once
# (asyncio also makes it the kernel's accept queue length).
ACCEPT_BATCH = 64


class _Limits:
    """Shared by every connection of one server (uvicorn makes one protocol per connection)."""

    def __init__(self, max_connections: int, request_timeout: float, per_source: int | None = None,
                 ssl_context: ssl.SSLContext | None = None, watchers: int = 0) -> None:
        self.max_connections = max_connections
        self.watchers = watchers  # room for held long-polls beyond max_connections
        self.per_source = per_source or max(4, max_connections // 8)
        self.request_timeout = request_timeout
        self.ssl_context = ssl_context
        self.conns: set[Any] = set()  # every open connection, TLS handshakes included
        self.evicted = 0
        self.timed_out = 0
        self.slow_readers = 0  # aborted: their answer did not drain for request_timeout


def guarded_protocol(limits: _Limits) -> type[H11Protocol]:
    class GuardedH11(H11Protocol):
        """H11Protocol that bounds connections per source and in all, closes slow ones and,
        with a context, does the TLS handshake itself: a connection counts (and can be
        evicted) from accept on, not only once its handshake is done."""

        _watchdog: asyncio.TimerHandle | None = None
        _requests_seen = 0
        _since = 0.0  # when this connection opened or last started a request
        _source = ""
        _raw: asyncio.Transport | None = None  # the TCP transport (TLS: below the SSL one)
        _ready = False  # handshake done (always, without TLS)
        _fd = -1  # watched for the first byte (TLS listener)
        _early: list[bytes] = []  # replaced per connection in connection_made
        _held = False  # the app holds its request on purpose (a route long-poll)
        _pending = 0  # bytes of answer not yet sent, at the previous watchdog check

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            self._raw = transport
            self._early = []
            self._since = time.monotonic()
            peer = transport.get_extra_info("peername")
            self._source = str(peer[0]) if isinstance(peer, tuple) and peer else ""
            self._admit()
            limits.conns.add(self)
            self._arm(self._requests_seen)
            if limits.ssl_context is None:
                self._ready = True
                super().connection_made(transport)
                return
            # The first byte decides: a TLS handshake (0x16), or plain HTTP from a peer
            # that predates TLS peering (the app serves it only its own channel messages).
            # The transport owns its descriptor: a duplicate is watched (and peeked at).
            transport.pause_reading()
            sock = transport.get_extra_info("socket")
            try:
                self._fd = os.dup(sock.fileno())
            except (OSError, AttributeError):
                transport.abort()
                return
            self.loop.add_reader(self._fd, self._first_byte)

        def _first_byte(self) -> None:
            raw = self._raw
            peek = socket.socket(fileno=self._fd)
            try:
                first = peek.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT)
            except OSError:
                first = b""
            finally:
                peek.detach()  # _unwatch closes the duplicate, once
                self._unwatch()
            if raw is None or raw.is_closing():
                return
            if first == b"\x16" and limits.ssl_context is not None:
                self.loop.create_task(self._handshake(raw, limits.ssl_context))
            elif first:
                self._ready = True
                super().connection_made(raw)
                raw.resume_reading()
            else:
                raw.abort()

        def _unwatch(self) -> None:
            if self._fd >= 0:
                self.loop.remove_reader(self._fd)
                with contextlib.suppress(OSError):
                    os.close(self._fd)
                self._fd = -1

        async def _handshake(self, raw: asyncio.Transport, ctx: ssl.SSLContext) -> None:
            if raw.is_closing():  # evicted before we got here: no TLS state for a dead socket
                self._gone()
                return
            try:
                tls = await self.loop.start_tls(raw, self, ctx, server_side=True,
                                                ssl_handshake_timeout=limits.request_timeout)
            except (OSError, ssl.SSLError, TimeoutError, RuntimeError):
                raw.abort()
                self._gone()
                return
            if tls is None or raw.is_closing():
                self._gone()
                return
            self._ready = True
            super().connection_made(tls)
            early, self._early = self._early, []
            for data in early:
                super().data_received(data)

        def data_received(self, data: bytes) -> None:
            # The TLS layer hands over the first request before start_tls returns.
            if not self._ready:
                self._early.append(data)
                return
            super().data_received(data)

        def _admit(self) -> None:
            # Aborted connections stay in the set until their connection_lost runs; held
            # long-polls are bounded by the app, not here.
            live = [c for c in limits.conns if not c._closing() and not c._held]
            held = sum(1 for c in limits.conns if c._held and not c._closing())
            cap = limits.max_connections + max(0, limits.watchers - held)
            by_source: dict[str, list[GuardedH11]] = {}
            for c in live:
                by_source.setdefault(c._source, []).append(c)
            mine = by_source.get(self._source, [])
            victim: GuardedH11 | None = None
            if len(mine) >= limits.per_source:
                victim = min(mine, key=lambda c: c._since)  # this source's slowest
            elif len(live) >= cap:
                # Make room: the connection idle the longest, else the slowest of the
                # heaviest source, so no flood of idle or slow clients locks the port.
                victim = min((c for c in live if c.idle()), key=lambda c: c._since, default=None)
                if victim is None:
                    heavy = max(by_source.values(), key=lambda cs: len(cs))
                    victim = min(heavy, key=lambda c: c._since)
            if victim is not None:
                limits.evicted += 1
                victim._abort()

        def _closing(self) -> bool:
            return self._raw is None or self._raw.is_closing()

        def _abort(self) -> None:
            self._unwatch()
            if self._ready and self.transport is not None:
                self.transport.abort()
            if self._raw is not None:
                self._raw.abort()

        def idle(self) -> bool:
            return not self._ready or self.cycle is None or self.cycle.response_complete

        def hold(self, held: bool) -> None:
            """The app holds this connection's request (True) or answers it now (False)."""
            self._held = held
            if self._watchdog is not None:
                self._watchdog.cancel()
                self._watchdog = None
            if not held and not self._closing():
                self._arm(self._requests_seen)

        def _unsent(self) -> int:
            t = self.transport if self._ready else self._raw
            try:
                return int(t.get_write_buffer_size()) if t is not None else 0
            except (AttributeError, RuntimeError):
                return 0

        def _arm(self, seen: int) -> None:
            self._watchdog = self.loop.call_later(limits.request_timeout, self._check, seen)

        def _check(self, seen_then: int) -> None:
            unsent = self._unsent()
            if unsent and self._pending and unsent >= self._pending:
                # Not a byte of the answer taken for a whole period: a client that does not read.
                limits.slow_readers += 1
                self._abort()
                return
            self._pending = unsent
            # Closed unless a request started since the timer was armed or one is running.
            if self._requests_seen == seen_then and self.idle():
                limits.timed_out += 1
                if self._ready and not unsent:
                    self.transport.close()
                else:  # close() would wait for a reader that does not read
                    self._abort()
                return
            self._arm(self._requests_seen)

        def handle_events(self) -> None:
            before = self.cycle
            super().handle_events()
            if self.cycle is not before:
                self._requests_seen += 1
                self._since = time.monotonic()
                if self.cycle is not None:  # its app task has not run yet
                    scope: dict[str, Any] = self.cycle.scope  # type: ignore[assignment]
                    scope.setdefault("extensions", {})["crosswire.hold"] = self.hold

        def _gone(self) -> None:
            self._unwatch()
            limits.conns.discard(self)
            if self._watchdog is not None:
                self._watchdog.cancel()
                self._watchdog = None

        def connection_lost(self, exc: Exception | None) -> None:
            self._gone()
            if self._ready:
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


FD_RESERVE = 128  # descriptors kept for everything but the two listeners' connections


def connection_caps(configured: int, fd_limit: int) -> tuple[int, int]:
    """(peering, operator): the configured cap, lowered so that both listeners full (a
    peering connection holds two descriptors until its first byte), plus an accept burst,
    leave FD_RESERVE descriptors (netlink, nftables, SQLite, the data plane). The operator
    listener gets two thirds of what is left: its callers are inside the cluster and each
    of their requests is served (the peering listener evicts instead, per source)."""
    budget = fd_limit - FD_RESERVE - ACCEPT_BATCH
    operator = max(8, min(configured, budget * 2 // 3))
    return max(8, min(configured, (budget - operator) // 2)), operator


def watcher_cap(configured: int, fd_limit: int) -> int:
    """``api.max_watchers``, lowered so held long-polls (a descriptor each) take at most half
    of what the listeners may use; the rest goes to connection_caps."""
    return max(0, min(configured, (fd_limit - FD_RESERVE - ACCEPT_BATCH) // 2))


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
    would kill us before our own cleanup runs; the daemon installs handlers instead."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


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
                ssl_context: ssl.SSLContext | None = None, watchers: int = 0) -> Server:
    limits = _Limits(max_connections, request_timeout, per_source, ssl_context, watchers)
    logging.getLogger("asyncio").addFilter(_AcceptErrorFilter())
    config = uvicorn.Config(app, host=host, port=port, loop="asyncio", lifespan="off",
                            access_log=False, log_level="warning", http=guarded_protocol(limits),
                            timeout_keep_alive=5, backlog=ACCEPT_BATCH)
    server = Server(config)
    server.limits = limits  # type: ignore[attr-defined]
    return server
