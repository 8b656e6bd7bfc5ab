"""Route long-polls through the daemon's own HTTP server (gateway.httpserver) on loopback:
held requests are neither timed out nor evicted, hundreds of them wake at once, and a
watcher that does not read its answer is dropped without slowing the others."""

from __future__ import annotations

import contextlib
import socket
import time
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import httpx
from fastapi import FastAPI, Request
from fastapi.responses import Response
from gwharness import serving

from gateway import routesapi
from gateway.limits import BodyLimit
from gateway.routewatch import RouteWatch


def _stub(watchers: int) -> tuple[FastAPI, list[dict[str, Any]], RouteWatch]:
    """The routes endpoint over a route set the test sets (``current[0]``; a plain GET publishes it)."""
    current = [{"gateway_ip": "10.244.0.10", "cidrs": ["100.64.0.0/16"]}]
    watch = RouteWatch(watchers)
    cp = SimpleNamespace(routewatch=watch, config=SimpleNamespace(api=SimpleNamespace(max_watchers=watchers)),
                         read=SimpleNamespace(routes=lambda: current[0]))
    app = FastAPI()
    app.add_middleware(BodyLimit, timeout=1.0)

    @app.get("/api/v1/routes")
    async def routes(request: Request, after: str | None = None, wait: str | None = None) -> Response:
        return await routesapi.answer(cp, request, after, wait)  # type: ignore[arg-type]

    return app, current, watch


def _connect(url: str, rcvbuf: int | None = None) -> socket.socket:
    host, port = url.removeprefix("http://").split(":")
    s = socket.socket()
    if rcvbuf is not None:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    s.settimeout(10)
    s.connect((host, int(port)))
    return s


def _poll(s: socket.socket, after: str, wait: int = 60) -> None:
    s.sendall(f"GET /api/v1/routes?after={after}&wait={wait} HTTP/1.1\r\nHost: gw\r\n\r\n".encode())


def _answer(s: socket.socket, timeout: float) -> bytes:
    s.settimeout(timeout)
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = s.recv(65536)
        assert chunk, "closed before an answer"
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = int(next(h.split(b":")[1] for h in head.split(b"\r\n") if h.lower().startswith(b"content-length")))
    while len(body) < length:
        chunk = s.recv(65536)
        assert chunk, "closed mid-answer"
        body += chunk
    return body


def _wait_for(cond: Any, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.02)


@contextlib.contextmanager
def _sockets() -> Iterator[list[socket.socket]]:
    socks: list[socket.socket] = []
    try:
        yield socks
    finally:
        for s in socks:
            s.close()


def test_held_watchers_outlive_request_timeout_and_evictions_and_wake_together() -> None:
    app, current, watch = _stub(watchers=400)
    with serving(app, max_connections=16, request_timeout=1.0, per_source=16 + 400, watchers=400) as (server, url), \
            _sockets() as socks:
        v = httpx.get(url + "/api/v1/routes").json()["version"]
        for _ in range(300):
            s = _connect(url)
            _poll(s, v)
            socks.append(s)
        _wait_for(lambda: watch.watchers == 300, 20)
        # Idle connections beyond max_connections: they are evicted or time out, never a held one.
        idle = [_connect(url) for _ in range(40)]
        socks.extend(idle)
        time.sleep(2.5)  # 2.5 request timeouts
        assert watch.watchers == 300
        assert server.limits.evicted + server.limits.timed_out >= 24
        assert httpx.get(url + "/api/v1/routes").status_code == 200  # others are still served
        # One change wakes every held watcher, each with the whole new snapshot.
        current[0] = {"gateway_ip": "10.244.0.10", "cidrs": ["100.64.0.0/16", "100.65.0.0/16"]}
        t0 = time.monotonic()
        new = httpx.get(url + "/api/v1/routes").json()
        bodies = {_answer(s, 5) for s in socks[:300]}
        took = time.monotonic() - t0
        assert len(bodies) == 1 and b'"100.65.0.0/16"' in bodies.pop() and new["version"] != v
        assert took < 5, took
        assert watch.watchers == 0


def test_a_watcher_that_does_not_read_is_dropped_and_slows_no_one() -> None:
    app, current, watch = _stub(watchers=100)
    big = [f"100.{64 + i // 256}.{i % 256}.0/24" for i in range(12000)]  # ~250 KB per answer
    current[0] = {"gateway_ip": "10.244.0.10", "cidrs": big}
    with serving(app, max_connections=64, request_timeout=1.0, per_source=200, watchers=100) as (server, url), \
            _sockets() as socks:
        v = httpx.get(url + "/api/v1/routes", timeout=10).json()["version"]
        slow = _connect(url, rcvbuf=4096)
        # Pipelined: it reads none of the answers, and 40 x 250 KB outgrow the kernel's buffers.
        for _ in range(40):
            _poll(slow, v)
        socks.append(slow)
        readers = []
        for _ in range(20):
            s = _connect(url)
            _poll(s, v)
            readers.append(s)
        socks.extend(readers)
        _wait_for(lambda: watch.watchers == 21, 10)
        current[0] = {"gateway_ip": "10.244.0.10", "cidrs": big[1:]}
        t0 = time.monotonic()
        httpx.get(url + "/api/v1/routes", timeout=10)
        for s in readers:
            assert b'"100.64.0.0/24"' not in _answer(s, 5)
        assert time.monotonic() - t0 < 2.0  # the slow one held no one up
        _wait_for(lambda: server.limits.slow_readers >= 1, 10)  # dropped within ~2 request timeouts
        assert watch.watchers == 0
