"""Fixtures for gateway tests: a fake data plane and in-process gateways wired by ASGI."""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

# The two-gateway harness (gwharness.py) beside the tests that use it.
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from fabric import nat
from fabric.model import FabricState
from gateway.api import create_app, create_peering_app
from gateway.config import Config, parse
from gateway.controlplane import ControlPlane
from gateway.ipam_adapter import IpamViews
from gateway.state import StateStore


class FakeFabric:
    """Records what the reconciler asks of the data plane; renders NAT with the real renderer."""

    def __init__(self) -> None:
        self.up = False
        self.applied: list[FabricState] = []
        self.fail_next: Exception | None = None
        self.ensure_calls = 0
        self.handshake = 0.0  # what peer_stats reports as last_handshake
        self.endpoint_errors: dict[str, str] = {}  # what endpoint_problems reports
        self.pid: int | None = None  # what process_pid reports
        self.retry_at: float | None = None
        self.nat_calls: list[list[str] | None] = []  # the peers each nat() asked for (None: all)

    def ensure_up(self) -> None:
        self.ensure_calls += 1
        self.up = True

    def alive(self) -> bool:
        return self.up

    def apply(self, state: FabricState, previous: FabricState | None) -> None:
        if self.fail_next is not None:
            e, self.fail_next = self.fail_next, None
            raise e
        nat.render_text(state)  # the real renderer must accept what we build
        self.applied.append(state)

    def stop(self) -> None:
        self.up = False

    def peer_stats(self) -> dict[str, dict[str, Any]]:
        last = self.applied[-1] if self.applied else None
        return {p.public_key: {"endpoint": p.endpoint, "last_handshake": self.handshake, "rx_bytes": 7,
                               "tx_bytes": 9} for p in (last.peers if last else ())}

    def nat(self, state: FabricState, only: Any = None, *, denied: Any = None) -> list[dict[str, Any]]:
        self.nat_calls.append(None if only is None else sorted(only))
        # As the real one: every peer has a drop counter (the guard), with or without exports.
        return [{**m, "export_denied": {"packets": 0, "bytes": 0}}
                for m in nat.with_counters(nat.mappings(state, only), {})]

    def export_denied(self, state: FabricState, only: Any = None) -> dict[str, dict[str, int]]:
        return {}

    def denied_total(self, state: FabricState) -> dict[str, int]:
        return {"packets": 0, "bytes": 0}

    def nat_totals(self, state: FabricState, *, denied: Any = None
                   ) -> tuple[list[tuple[str, str, int, int, int]], dict[str, int]]:
        """What this double's ``nat`` rows sum to (the real one sums the kernel's dumps)."""
        per: list[tuple[str, str, int, int, int]] = []
        dropped: dict[str, int] = {}
        for m in self.nat(state, denied=denied):
            sums: dict[str, list[int]] = {}
            for r in m["rules"]:
                c = sums.setdefault(str(r.get("chain", "")), [0, 0, 0])
                c[0] += int(r.get("packets") or 0)
                c[1] += int(r.get("bytes") or 0)
                c[2] += int(r.get("connections") or 0)
            per += [(m["cluster_id"], chain, pk, by, cn) for chain, (pk, by, cn) in sorted(sums.items())]
            dropped[m["cluster_id"]] = int(m["export_denied"].get("packets", 0))
        return per, dropped

    def nat_drops(self) -> list[dict[str, Any]]:
        return []

    def process_pid(self) -> int | None:
        return self.pid

    def endpoint_problems(self) -> tuple[dict[str, str], float | None]:
        return dict(self.endpoint_errors), self.retry_at

    def verify(self, state: FabricState) -> list[str]:
        return [] if self.applied and self.applied[-1] == state else ["not applied"]

    @property
    def last(self) -> FabricState:
        return self.applied[-1]


def make_config(name: str, state_dir: Path, **over: Any) -> Config:
    raw: dict[str, Any] = {
        "cluster_id": name,
        "pod_cidrs": ["10.244.0.0/16"],
        "service_cidrs": ["10.96.0.0/12"],
        "ipam": {"pools": ["100.64.0.0/10"]},
        "wireguard": {"interface": f"cw-{name}"[:15], "listen_port": 51820,
                      "endpoint": f"{name}.example:51820", "implementation": "wireguard-go"},
        "api": {"listen": "127.0.0.1:8080", "advertise": f"http://{name}:8080"},
        "state_dir": str(state_dir),
        "gateway_ip": "10.244.0.10",
    }
    raw.update(over)
    return parse(raw, env={})


class RouterTransport(httpx.AsyncBaseTransport):
    """Sends each request to the ASGI app registered for its origin *now* (tests unplug peers)."""

    def __init__(self, router: dict[str, Any]) -> None:
        self.router = router

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        # keyed "http://host:port" whatever the scheme: the peering listener is https, in-process it has no TLS
        origin = f"http://{request.url.host}:{request.url.port}"
        app = self.router.get(origin)
        if app is None:
            raise httpx.ConnectError(f"connection refused: {origin}", request=request)
        return await httpx.ASGITransport(app=app).handle_async_request(request)


class Cluster:
    """One in-process gateway: config, store, IPAM, fake fabric, FastAPI app."""

    def __init__(self, name: str, root: Path, router: dict[str, Any], clock: Callable[[], float],
                 **over: Any) -> None:
        self.name = name
        self.dir = root / name
        self.router = router
        self.clock = clock
        self.over = over
        self.fabric = FakeFabric()
        self.open()

    def open(self) -> None:
        self.config = make_config(self.name, self.dir, **self.over)
        self.store = StateStore(self.dir)
        c = self.config
        self.views = IpamViews(self.dir / "ipam.db", c.pod_cidrs, c.service_cidrs, c.reserved_cidrs,
                               c.ipam_pools)
        # tls_post=None: peers talk through the ASGI router below, https URLs too (no TLS in-process)
        self.gw = ControlPlane.build(c, self.store, self.views, self.fabric, clock=self.clock,
                                     http=self._http, tls_post=None)
        # The fake data plane's counters change between two calls of a test, at once:
        # no caching of its dump here (tests/gateway/test_fleet_idle.py tests the cache).
        self.gw.read.stats_ttl = 0.0
        self.app = create_app(self.gw)
        self.peering_app = create_peering_app(self.gw)
        self.router[f"http://{self.name}:8080"] = self.peering_app  # the peering listener
        self.admin = self.store.admin_token()

    def close(self) -> None:
        self.views.close()
        self.store.close()

    def _http(self) -> httpx.AsyncClient:
        return httpx.AsyncClient(transport=RouterTransport(self.router), timeout=5)

    def client(self, auth: bool = True, peering: bool = False) -> httpx.AsyncClient:
        """The operator listener's app (``peering``: the peering listener's)."""
        headers = {"Authorization": f"Bearer {self.admin}"} if auth else {}
        return httpx.AsyncClient(transport=httpx.ASGITransport(app=self.peering_app if peering else self.app),
                                 base_url=f"https://{self.name}:8080" if peering else f"http://{self.name}:8081",
                                 headers=headers)

    async def call(self, method: str, path: str, auth: bool = True, **kw: Any) -> httpx.Response:
        async with self.client(auth, peering=path.startswith("/api/v1/peering/")) as c:
            return await c.request(method, path, **kw)


class Clock:
    def __init__(self, t: float = 1_800_000_000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def clusters(tmp_path: Path, clock: Clock) -> Iterator[Callable[..., Cluster]]:
    router: dict[str, Any] = {}
    made: list[Cluster] = []

    def make(name: str, **over: Any) -> Cluster:
        c = Cluster(name, tmp_path, router, clock, **over)
        made.append(c)
        return c

    yield make
    for c in made:
        c.close()


def run(coro: Any) -> Any:
    return asyncio.run(coro)

