"""``GET /api/v1/routes``: the node agents' route set, plainly or as a long-poll.

Without ``after`` the answer is immediate and reads the store, as it always
did. With ``after=<version>`` (and ``wait``, default 55 s, 0..300) it is held
until the version differs from ``after`` (gateway.routewatch), then answers
the full snapshot; every answer is a whole snapshot, never a delta. A held
request tells its connection so (``crosswire.hold``, gateway.httpserver): the
server's wait is not the client's slowness, so it is neither timed out nor
evicted as a slow client, and it counts against ``api.max_watchers`` instead
of ``api.max_connections``. A client that goes away while held frees its slot
at once.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from fastapi import Request
from fastapi.responses import JSONResponse, Response

from gateway.errors import GatewayError
from gateway.routewatch import (
    RETRY_AFTER,
    RouteWatch,
    WatchError,
    WatchersFull,
    parse_after,
    parse_wait,
)

if TYPE_CHECKING:
    from gateway.controlplane import ControlPlane


AFTER = ("the version of the route set the caller has: the answer waits until the route set differs "
         "(at most `wait` seconds), then is the whole current snapshot")
WAIT = "seconds to hold the request when `after` is current, 0..300 (default 55)"


def watch_of(cp: ControlPlane) -> RouteWatch:
    if cp.routewatch is None:  # a ControlPlane built by hand (tests)
        cp.routewatch = RouteWatch(cp.config.api.max_watchers)
    return cp.routewatch


async def _disconnected(request: Request) -> None:
    while (await request.receive())["type"] != "http.disconnect":
        pass


async def answer(cp: ControlPlane, request: Request, after: str | None, wait: str | None) -> Response:
    try:
        seconds, since = parse_wait(wait), parse_after(after)
    except WatchError as e:
        raise GatewayError(str(e), 400) from None
    watch = watch_of(cp)
    if since is None or watch.body is None:
        watch.publish(cp.read.routes())
    try:
        changed = watch.hold(since, seconds)
    except WatchersFull as e:
        return JSONResponse({"detail": str(e)}, status_code=503, headers={"Retry-After": str(RETRY_AFTER)})
    if changed is not None:
        try:
            await _held(changed, request, seconds)
        finally:
            watch.release()
    return Response(watch.encoded, media_type="application/json")


async def _held(changed: asyncio.Event, request: Request, seconds: float) -> None:
    """Wait for a change, the deadline or the client's going away, whichever comes first."""
    hold: Callable[[bool], Any] | None = request.scope.get("extensions", {}).get("crosswire.hold")
    waits = (asyncio.ensure_future(changed.wait()), asyncio.ensure_future(_disconnected(request)))
    if hold is not None:
        hold(True)
    try:
        await asyncio.wait(waits, timeout=seconds, return_when=asyncio.FIRST_COMPLETED)
    finally:
        if hold is not None:
            hold(False)
        for t in waits:
            t.cancel()
