"""The route watch: versions, the long-poll's decisions, and GET /api/v1/routes?after=&wait=
in-process (gateway.routewatch, gateway.routesapi); through the real HTTP server with slow
and many watchers in test_routewatch_http.py, against a real gateway in tests/lab."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from test_two_gateways import peer

from gateway.routewatch import (
    DEFAULT_WAIT,
    RouteWatch,
    WatchError,
    WatchersFull,
    parse_after,
    parse_wait,
    version,
)

ROUTES = {"gateway_ip": "10.244.0.10", "cidrs": ["100.64.0.0/16"]}


def test_version_is_the_route_sets_and_only_its() -> None:
    v = version(ROUTES)
    assert len(v) == 16 and int(v, 16) >= 0
    assert version({"cidrs": ["100.64.0.0/16"], "gateway_ip": "10.244.0.10"}) == v  # key order
    assert version({**ROUTES, "version": "whatever"}) == v  # its own field does not count
    assert version({**ROUTES, "cidrs": ["100.65.0.0/16"]}) != v
    assert version({**ROUTES, "gateway_ip6": "fd00::10"}) != v


@pytest.mark.parametrize(("raw", "want"), [(None, DEFAULT_WAIT), ("0", 0.0), ("300", 300.0), ("2.5", 2.5)])
def test_wait_parses(raw: str | None, want: float) -> None:
    assert parse_wait(raw) == want


@pytest.mark.parametrize("raw", ["-1", "300.5", "x", "nan", "inf", ""])
def test_wait_refused_naming_it(raw: str) -> None:
    with pytest.raises(WatchError, match=r"^wait: "):
        parse_wait(raw)


def test_after_is_any_string_and_empty_is_none() -> None:
    assert parse_after("0123abcd") == "0123abcd" and parse_after("ab/cd") == "ab/cd"
    assert parse_after(None) is None and parse_after("") is None


def test_watchers_wait_for_a_change_and_all_wake_on_one() -> None:
    async def go() -> None:
        w = RouteWatch(max_watchers=1000)
        assert w.publish(ROUTES) and not w.publish(dict(ROUTES))  # same set: no change
        v = w.version
        t0 = asyncio.get_running_loop().time()
        await w.wait("other", 5)  # not current: at once
        await w.wait(v, 0)  # wait=0: at once
        assert asyncio.get_running_loop().time() - t0 < 0.5
        waiters = [asyncio.ensure_future(w.wait(v, 30)) for _ in range(1000)]
        await asyncio.sleep(0.05)
        assert w.watchers == 1000 and not any(t.done() for t in waiters)
        with pytest.raises(WatchersFull, match=r"api\.max_watchers"):
            w.hold(v, 30)
        assert w.refused == 1
        w.publish({**ROUTES, "cidrs": []})
        await asyncio.wait_for(asyncio.gather(*waiters), 2)
        assert w.watchers == 0 and w.version != v and w.changes == 2
        await asyncio.wait_for(w.wait(w.version, 0.1), 2)  # the deadline answers too
        assert w.watchers == 0
        held = asyncio.ensure_future(w.wait(w.version, 30))
        await asyncio.sleep(0.01)
        w.close()  # shutting down: held ones answer, new ones do not wait
        await asyncio.wait_for(held, 2)
        assert w.hold(w.version, 30) is None

    asyncio.run(go())


def test_long_poll_through_the_api(clusters: Any) -> None:
    """A held GET answers the moment a peering changes the route set; limits and bad input."""
    gpu, lab = clusters("gpu"), clusters("lab", api={"listen": "127.0.0.1:8080", "advertise": "http://lab:8080",
                                                      "max_watchers": 1})

    async def go() -> None:
        async with lab.client(auth=False) as c:
            first = (await c.get("/api/v1/routes")).json()
            assert first["cidrs"] == [] and first["version"] == version(first)
            v = first["version"]
            # not current, or no wait: answered at once with the whole snapshot
            assert (await c.get("/api/v1/routes", params={"after": "0ld", "wait": "30"})).json() == first
            assert (await c.get("/api/v1/routes", params={"after": "", "wait": "30"})).json() == first
            assert (await c.get("/api/v1/routes", params={"after": v, "wait": "0"})).json() == first
            # the deadline passes unchanged: the same snapshot
            assert (await c.get("/api/v1/routes", params={"after": v, "wait": "0.2"})).json() == first
            for bad in ("-1", "301", "soon"):
                r = await c.get("/api/v1/routes", params={"after": v, "wait": bad})
                assert r.status_code == 400 and r.json()["detail"].startswith("wait: ")
            held = asyncio.ensure_future(c.get("/api/v1/routes", params={"after": v, "wait": "30"}))
            await asyncio.sleep(0.2)
            assert not held.done()
            # api.max_watchers 1: the next one would wait too, so 503 + Retry-After
            r = await c.get("/api/v1/routes", params={"after": v, "wait": "30"})
            assert r.status_code == 503 and r.headers["retry-after"] == "5"
            assert "api.max_watchers" in r.json()["detail"]
            t0 = asyncio.get_running_loop().time()
            await peer(lab, gpu)  # the reconciler's pass publishes the new set
            body = (await asyncio.wait_for(held, 5)).json()
            assert asyncio.get_running_loop().time() - t0 < 5
            assert len(body["cidrs"]) == 2 and body["version"] != v and body["version"] == version(body)
            # a plain GET reads the same set, the same version
            assert (await c.get("/api/v1/routes")).json() == body
            m = (await c.get("/metrics")).text
            assert "crosswire_route_watchers 0" in m and "crosswire_route_watchers_max 1" in m
            assert "crosswire_route_watch_refused_total 1" in m and "crosswire_route_set_changes_total 2" in m

    asyncio.run(go())


def test_max_watchers_is_validated_naming_the_key(tmp_path: Any) -> None:
    from gateway.config import ConfigError
    from tests.gateway.conftest import make_config

    for bad in (-1, "many", 70000, True):
        with pytest.raises(ConfigError, match=r"^api\.max_watchers: "):
            make_config("x", tmp_path, api={"listen": "127.0.0.1:8080", "max_watchers": bad})
    assert make_config("x", tmp_path).api.max_watchers == 2048
