"""Keeps every peer told what we export to it (message ``exports`` on the peering channel).

Every ``INTERVAL`` (and at once on ``kick()``): the resolver looks up the
exports without addresses that are due; when an address changed, the data
plane is reconciled (the policy follows it); then each peer whose share differs
from what it last acknowledged is sent its share. So an address change, an
export added or removed (config, across a restart) or a peer's share changed
reaches the peer within about one interval. A peer that cannot be told is
retried with backoff. Only a gateway with ``exports`` configured sends; one
without shares everything and has nothing to announce.

A pass reads every peer, so it is skipped while nothing it reads changed: the
state store's write count and the resolver's generation are those of the last
pass that told everyone (and no retry is waiting). With 1,000 idle peers the
loop then costs nothing but its wake-ups.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time

from gateway.errors import GatewayError
from gateway.exchange import Exchange

log = logging.getLogger("crosswire.exports")

INTERVAL = 0.5
RETRY = (2.0, 60.0)


class ExportSync:
    def __init__(self, exchange: Exchange) -> None:
        self.exchange = exchange
        self.acked: dict[str, str] = {}  # peer -> the share it acknowledged (canonical JSON)
        self._retry: dict[str, tuple[float, float]] = {}  # peer -> (not before, delay)
        self._kick = asyncio.Event()
        self._told: tuple[int, int] | None = None  # the fingerprint of the last complete pass
        self.passes = 0  # full passes (tests: a quiet gateway skips them)

    def _fingerprint(self) -> tuple[int, int] | None:
        state = self.exchange.reconciler.exports
        changes = getattr(self.exchange.store, "changes", None)
        if state is None or changes is None:
            return None
        return changes(), state.resolver.generation

    def kick(self) -> None:
        self._kick.set()

    async def step(self) -> dict[str, str]:
        """One pass; returns per peer told: "ok" or why not."""
        ex = self.exchange
        state = ex.reconciler.exports
        if state is None or ex.config.exports is None:
            return {}
        if await asyncio.to_thread(state.resolver.refresh, ex.config.exports):
            await ex.reconciler.reconcile()
        # Taken before the pass: a change made while it awaits a peer shows as a new
        # fingerprint, so the next step passes again (our own writes cost one more pass).
        seen = self._fingerprint()
        if seen is not None and seen == self._told and not self._retry:
            return {}
        self.passes += 1
        result: dict[str, str] = {}
        now = time.monotonic()
        live = set()
        grants = state.grants()
        for p in ex.store.peers():
            if p.their_views is None:
                continue  # pending: told once it is programmed
            live.add(p.cluster_id)
            body = state.body_for(p.cluster_id, grants)
            key = json.dumps(body, sort_keys=True)
            if self.acked.get(p.cluster_id) == key or now < self._retry.get(p.cluster_id, (0.0, 0.0))[0]:
                continue
            try:
                reply = await ex.channel.send(p, "exports", {"exports": body})
                # A sparse peer views us through our exports: its reply holds its new views.
                if "views_of_you" in reply:
                    ex.took_views(p, reply)
                    await ex.reconciler.reconcile()
            except GatewayError as e:
                delay = min(self._retry.get(p.cluster_id, (0.0, RETRY[0] / 2))[1] * 2, RETRY[1])
                self._retry[p.cluster_id] = (now + delay, delay)
                result[p.cluster_id] = str(e)
                log.warning("could not tell %s our exports (retry in %.0fs): %s", p.cluster_id, delay, e)
                continue
            self._retry.pop(p.cluster_id, None)
            self.acked[p.cluster_id] = key
            result[p.cluster_id] = "ok"
        for gone in set(self.acked) - live:
            del self.acked[gone]
        self._told = seen if not self._retry else None
        return result

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            try:
                told = await self.step()
                if told:
                    log.info("exports told to peers: %s", told)
            except Exception as e:  # keep the loop alive whatever happens
                log.error("export sync: %s: %s", type(e).__name__, e)
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._kick.wait(), INTERVAL)
            self._kick.clear()
