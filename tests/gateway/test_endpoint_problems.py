"""A peer whose endpoint could not be programmed: shown with the reason, retried when due,
and it changes nothing for the other peers' state (the fake data plane reports problems
the way fabric.dataplane.Dataplane does)."""

from __future__ import annotations

import asyncio
import time
from typing import Any


def test_endpoint_problem_is_shown_and_retried(clusters: Any) -> None:
    gpu, lab = clusters("gpu"), clusters("lab")

    async def go() -> None:
        tok = (await gpu.call("POST", "/api/v1/tokens", json={})).json()["token"]
        assert (await lab.call("POST", "/api/v1/peers", json={"token": tok})).status_code == 201
        rec = lab.gw.reconciler
        applied = len(lab.fabric.applied)
        why = "endpoint 'gpu.example:51820': cannot resolve 'gpu.example' (...); retrying in 2s"
        lab.fabric.endpoint_errors = {"gpu": why}
        lab.fabric.retry_at = time.monotonic() + 60  # not due: nothing re-applied
        await rec.check(verify=False)
        assert len(lab.fabric.applied) == applied
        peers = (await lab.call("GET", "/api/v1/peers")).json()
        assert peers[0]["endpoint_error"] == why
        lab.fabric.retry_at = time.monotonic() - 0.1  # due: the sync runs again
        await rec.check(verify=False)
        assert len(lab.fabric.applied) == applied + 1
        lab.fabric.endpoint_errors, lab.fabric.retry_at = {}, None
        peers = (await lab.call("GET", "/api/v1/peers")).json()
        assert peers[0]["endpoint_error"] is None

    asyncio.run(go())
