"""The node agent's watch loop, decided without I/O (fabric.agentwatch), and its HTTP side
(fabric.agent_api.fetch_snapshot) against a mock transport."""

from __future__ import annotations

import httpx
import pytest

from fabric.agent_api import RoutesError, Unreachable, WatchersBusy, fetch_snapshot, parse_version
from fabric.agentwatch import Request, Watch, answered, backoff, failed, next_request, refused

WAIT, INTERVAL = 55.0, 5.0


def test_start_asks_for_a_full_snapshot_then_watches_that_version() -> None:
    w = Watch()
    assert next_request(w, WAIT, INTERVAL) == Request(None, None, 0.0)
    w = answered(w, "v1", applied=True)
    assert next_request(w, WAIT, INTERVAL) == Request("v1", WAIT, 0.0)  # held by the gateway, re-asked at once
    w = answered(w, "v2", applied=True)
    assert next_request(w, WAIT, INTERVAL) == Request("v2", WAIT, 0.0)
    # the deadline passed with no change: the same version again, still at once
    assert next_request(answered(w, "v2", applied=True), WAIT, INTERVAL) == Request("v2", WAIT, 0.0)


def test_failures_back_off_and_resync_from_a_full_snapshot() -> None:
    w = answered(Watch(), "v1", applied=True)
    delays = []
    for _ in range(8):
        w = failed(w)
        r = next_request(w, WAIT, INTERVAL)
        assert r.after is None and r.wait is None  # never "after" a version we may no longer have
        delays.append(r.delay)
    assert delays == [0.2, 0.4, 0.8, 1.6, 3.2, 5.0, 5.0, 5.0]
    assert backoff(100) == 5.0
    w = answered(w, "v1", applied=True)  # the gateway back: the failures are over
    assert w.failures == 0 and next_request(w, WAIT, INTERVAL) == Request("v1", WAIT, 0.0)


def test_a_snapshot_not_applied_is_retried_like_a_failure() -> None:
    w = answered(answered(Watch(), "v1", applied=True), "v2", applied=False)
    assert w.version is None and next_request(w, WAIT, INTERVAL) == Request(None, None, 0.2)


def test_a_gateway_without_versions_is_polled_every_interval() -> None:
    w = answered(Watch(), None, applied=True)
    assert w.polling and next_request(w, WAIT, INTERVAL) == Request(None, None, INTERVAL)
    w = failed(w)  # unreachable meanwhile: backoff, and polling again after
    assert next_request(w, WAIT, INTERVAL).delay == 0.2
    assert next_request(answered(w, None, applied=True), WAIT, INTERVAL) == Request(None, None, INTERVAL)
    # the gateway upgraded under us: the next answer carries a version, and we watch
    assert next_request(answered(w, "v9", applied=True), WAIT, INTERVAL) == Request("v9", WAIT, 0.0)


def test_wait_zero_polls() -> None:
    w = answered(Watch(), "v1", applied=True)
    assert next_request(w, 0, INTERVAL) == Request(None, None, INTERVAL)


def test_the_watcher_limit_turns_into_polling_at_retry_after() -> None:
    w = answered(Watch(), "v1", applied=True)
    w = refused(w, 5.0)
    assert w.version == "v1"  # our routes are still that version: kept
    assert next_request(w, WAIT, INTERVAL) == Request(None, None, 5.0)  # a plain GET, later
    w = answered(w, "v2", applied=True)
    assert next_request(w, WAIT, INTERVAL) == Request("v2", WAIT, 0.0)  # then try to watch again
    assert refused(w, 0).busy == 0.2 and refused(w, 1e9).busy == 60.0  # bounded either way


def _client(handler: object) -> httpx.Client:
    return httpx.Client(transport=httpx.MockTransport(handler))  # type: ignore[arg-type]


def test_fetch_snapshot_asks_after_and_wait_and_reads_the_version() -> None:
    seen: list[httpx.Request] = []
    body = {"gateway_ip": "10.244.0.2", "cidrs": ["100.64.0.0/16"], "version": "abc123"}

    def handler(req: httpx.Request) -> httpx.Response:
        seen.append(req)
        return httpx.Response(200, json=body)

    with _client(handler) as http:
        s = fetch_snapshot("http://gw:8081/", http)
        assert s.version == "abc123" and [str(c) for c in s.published.cidrs] == ["100.64.0.0/16"]
        fetch_snapshot("http://gw:8081", http, after="abc123", wait=55)
    assert str(seen[0].url) == "http://gw:8081/api/v1/routes"
    assert str(seen[1].url) == "http://gw:8081/api/v1/routes?after=abc123&wait=55"
    # the long-poll's read timeout outlasts the gateway's hold
    assert seen[1].extensions["timeout"]["read"] > 55 and seen[0].extensions["timeout"]["read"] == 3.0


def test_fetch_snapshot_errors() -> None:
    answers = [httpx.Response(503, json={"detail": "full"}, headers={"Retry-After": "7"}),
               httpx.Response(500), httpx.Response(200, content=b"nope"),
               httpx.Response(200, json={"gateway_ip": "10.0.0.1", "cidrs": [], "version": ["x"]})]

    def handler(req: httpx.Request) -> httpx.Response:
        return answers.pop(0)

    with _client(handler) as http:
        with pytest.raises(WatchersBusy) as busy:
            fetch_snapshot("http://gw:8081", http, after="v", wait=55)
        assert busy.value.retry_after == 7.0
        with pytest.raises(Unreachable, match="500"):
            fetch_snapshot("http://gw:8081", http)
        with pytest.raises(RoutesError, match="not JSON"):
            fetch_snapshot("http://gw:8081", http)
        with pytest.raises(RoutesError, match="bad version"):
            fetch_snapshot("http://gw:8081", http)

    def refuse(req: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused", request=req)

    with _client(refuse) as http, pytest.raises(Unreachable, match="connection refused"):
        fetch_snapshot("http://gw:8081", http)
    assert parse_version({"version": None}) is None and parse_version({}) is None


class FakeRoutes:
    """RouteTable's surface for the agent: records every change."""

    def __init__(self) -> None:
        from fabric.routes import NextHop

        self.table: dict[object, NextHop] = {}
        self.changes: list[tuple[str, str]] = []
        self.hop = NextHop("10.244.0.2", 3)

    def present(self) -> dict[object, object]:
        return dict(self.table)

    def apply(self, p: object) -> None:
        for n, h in p.add:  # type: ignore[attr-defined]
            self.table[n] = h
            self.changes.append(("add", str(n)))
        for n in p.remove:  # type: ignore[attr-defined]
            del self.table[n]
            self.changes.append(("remove", str(n)))

    def local_networks(self) -> list[object]:
        return []

    def lookup(self, addr: object) -> dict[str, object]:
        return {"oif": 3, "gateway": None}


def test_the_loop_resyncs_without_flapping_and_follows_changes() -> None:
    """Snapshot, a dropped connection, the same snapshot (re-sync), a change, a 503, the deadline:
    routes that stay are never removed and re-added."""
    import threading

    from fabric.agent import Agent

    gw = {"gateway_ip": "10.244.0.2"}
    a = {**gw, "cidrs": ["100.64.0.0/16", "100.80.0.0/12"], "version": "va"}
    b = {**gw, "cidrs": ["100.64.0.0/16", "100.65.0.0/16"], "version": "vb"}
    script: list[object] = [a, "drop", a, b, 503, b, b]
    seen: list[str] = []
    stop = threading.Event()

    def handler(req: httpx.Request) -> httpx.Response:
        seen.append(req.url.query.decode())
        step = script.pop(0)
        if not script:
            stop.set()
        if step == "drop":
            raise httpx.RemoteProtocolError("server disconnected", request=req)
        if step == 503:
            return httpx.Response(503, json={"detail": "full"}, headers={"Retry-After": "0"})
        return httpx.Response(200, json=step)

    routes = FakeRoutes()
    with _client(handler) as http:
        agent = Agent("http://gw:8081", routes, http=http)  # type: ignore[arg-type]
        agent.watch(stop, WAIT, INTERVAL)
    assert seen == ["", "after=va&wait=55", "", "after=va&wait=55", "after=vb&wait=55", "", "after=vb&wait=55"]
    assert routes.changes == [("add", "100.64.0.0/16"), ("add", "100.80.0.0/12"),
                              ("add", "100.65.0.0/16"), ("remove", "100.80.0.0/12")]
    assert sorted(map(str, routes.table)) == ["100.64.0.0/16", "100.65.0.0/16"]
    assert agent.errors == 1 and agent.last_error is None  # the drop, logged once, then over
