"""/readyz tells the truth: a peer the data plane carries without views is not ready."""

from __future__ import annotations

import asyncio
from typing import Any


def test_peer_without_views_is_not_ready(clusters: Any) -> None:
    gpu, lab = clusters("gpu"), clusters("lab")

    async def go() -> None:
        tok = (await gpu.call("POST", "/api/v1/tokens", json={})).json()["token"]
        assert (await lab.call("POST", "/api/v1/peers", json={"token": tok})).status_code == 201
        lab.fabric.up = True
        assert (await lab.call("GET", "/readyz")).status_code == 200
        # Our views of gpu vanish (an emptied ipam.db): the peer would carry nothing.
        lab.views.release("gpu")
        await lab.gw.reconciler.reconcile()
        r = await lab.call("GET", "/readyz")
        assert r.status_code == 503 and "peers without views: gpu" in r.text, r.text

    asyncio.run(go())
