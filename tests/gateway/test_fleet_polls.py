"""What an open page, a scrape and the reconcile loop cost with many peers (issue 18):
the route set is published only when it may have changed, the counters a page and a
scrape read are one gateway-side snapshot per interval, and the page's combined poll
answers exactly what its separate requests do. Behaviour, not timing: bench/fleet.py
measures the CPU."""

from __future__ import annotations

import asyncio
from typing import Any


def test_a_pass_with_nothing_new_does_not_rebuild_the_route_set(clusters: Any, monkeypatch: Any) -> None:
    lab, gpu = clusters("lab"), clusters("gpu")

    async def go() -> None:
        rec, read, watch = lab.gw.reconciler, lab.gw.read, lab.gw.routewatch
        built = 0
        real = read.routes

        def counting() -> Any:
            nonlocal built
            built += 1
            return real()
        monkeypatch.setattr(read, "routes", counting)
        await rec.reconcile(force=True)
        assert built == 1 and watch.version is not None
        first, changes = watch.version, watch.changes
        for _ in range(5):  # forced passes (drift, endpoint retries) with nothing written
            await rec.reconcile(force=True)
            await rec.check(verify=True)
        assert built == 1 and watch.changes == changes and watch.version == first
        r = await gpu.call("POST", "/api/v1/tokens", json={"ttl": "1h"})
        r = await lab.call("POST", "/api/v1/peers", json={"token": r.json()["token"]})
        assert r.status_code == 201, r.text
        await rec.reconcile()
        assert built >= 2 and watch.version != first and watch.changes > changes
        assert watch.body is not None and watch.body["cidrs"] == real()["cidrs"] != []
        # A changed next hop is a changed route set, though no store was written.
        rec.gateway_ip = "10.244.0.11"
        v = watch.version
        await rec.reconcile()
        assert watch.version != v and watch.body is not None and watch.body["gateway_ip"] == "10.244.0.11"

    asyncio.run(go())
