"""The API's HTTP server against abusive clients, on loopback: a real uvicorn with
crosswire's guards (gateway.httpserver, gateway.limits), bounded in time and count."""

from __future__ import annotations

import contextlib
import socket
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from gwharness import serving

from gateway.limits import BodyLimit


def _app() -> FastAPI:
    app = FastAPI()
    app.add_middleware(BodyLimit, timeout=1.0)

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.post("/echo")
    async def echo(body: dict[str, Any]) -> dict[str, Any]:
        return body

    return app


@pytest.fixture
def served() -> Iterator[tuple[Any, str]]:
    with serving(_app(), max_connections=30, request_timeout=1.0) as both:
        yield both


def _open(url: str) -> socket.socket:
    host, port = url.removeprefix("http://").split(":")
    return socket.create_connection((host, int(port)), timeout=5)


def _closed_by_server(s: socket.socket) -> bool:
    s.settimeout(0.01)
    try:
        return s.recv(1) == b""
    except TimeoutError:
        return False
    except OSError:
        return True  # reset


def test_slow_loris_cannot_lock_out_health_checks(served: tuple[Any, str]) -> None:
    server, url = served
    loris: list[socket.socket] = []
    try:
        # 120 connections each sending half a request header, against a cap of 30.
        for _ in range(120):
            s = _open(url)
            s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
            loris.append(s)
        time.sleep(0.2)
        assert len(server.server_state.connections) <= 30
        # Probes still get in: each new connection evicts the longest-idle slow one.
        for _ in range(5):
            r = httpx.get(url + "/healthz", timeout=5)
            assert r.status_code == 200 and r.json() == {"status": "ok"}
        # Within two request timeouts every slow connection has been closed by the server.
        deadline = time.monotonic() + 3
        while time.monotonic() < deadline and not all(_closed_by_server(s) for s in loris):
            time.sleep(0.2)
        assert all(_closed_by_server(s) for s in loris)
        assert server.limits.evicted + server.limits.timed_out >= 100
        assert len(server.server_state.connections) <= 1
    finally:
        for s in loris:
            with contextlib.suppress(OSError):
                s.close()


def test_idle_connections_closed_and_keepalive_still_works(served: tuple[Any, str]) -> None:
    server, url = served
    idle = [_open(url) for _ in range(10)]
    try:
        with httpx.Client(timeout=5) as c:  # keep-alive: several requests on one connection
            for _ in range(3):
                assert c.get(url + "/healthz").status_code == 200
        time.sleep(2.5)
        assert all(_closed_by_server(s) for s in idle)
        # one source: past its share the oldest were evicted, the rest timed out
        assert server.limits.timed_out + server.limits.evicted >= 10 and server.limits.timed_out >= 1
    finally:
        for s in idle:
            s.close()


def test_trickled_body_gets_408(served: tuple[Any, str]) -> None:
    _, url = served
    s = _open(url)
    try:
        s.sendall(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                  b"Content-Length: 1000\r\n\r\n{\"a\": ")
        s.settimeout(5)
        t0 = time.monotonic()
        head = b""
        while b"not received" not in head and time.monotonic() - t0 < 4:
            chunk = s.recv(4096)  # the server closes after its answer
            if not chunk:
                break
            head += chunk
        assert head.startswith(b"HTTP/1.1 408"), head
        assert b"not received within 1s" in head
        assert time.monotonic() - t0 < 4
    finally:
        s.close()
    r = httpx.post(url + "/echo", json={"a": 1}, timeout=5)
    assert r.status_code == 200 and r.json() == {"a": 1}


def test_connection_caps_fit_the_descriptor_limit() -> None:
    from gateway.httpserver import ACCEPT_BATCH, FD_RESERVE, connection_caps

    assert connection_caps(256, 1 << 20) == (256, 256)  # plenty: as configured
    peering, operator = connection_caps(256, 512)
    assert (peering, operator) == (53, 213)
    assert 2 * peering + operator + ACCEPT_BATCH + FD_RESERVE <= 512


def test_watchers_fit_the_descriptor_limit_too() -> None:
    from gateway.httpserver import ACCEPT_BATCH, FD_RESERVE, connection_caps, watcher_cap

    assert watcher_cap(2048, 1 << 20) == 2048  # plenty: as configured
    watchers = watcher_cap(2048, 512)
    assert watchers == (512 - FD_RESERVE - ACCEPT_BATCH) // 4 == 80
    peering, operator = connection_caps(256, 512 - watchers)
    assert 2 * peering + operator + watchers + ACCEPT_BATCH + FD_RESERVE <= 512
    assert watcher_cap(0, 1 << 20) == 0 and watcher_cap(2048, 100) == 0
