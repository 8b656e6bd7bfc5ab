"""The route set node agents watch: one snapshot, its version, and the held long-polls.

``GET /api/v1/routes?after=V&wait=S`` (gateway.api) answers at once when the
current version differs from ``V``; otherwise it waits here until the route
set changes or ``S`` seconds pass, then answers the current full snapshot.
Waiting costs nothing per watcher: every waiter awaits the same
``asyncio.Event``, which ``publish`` sets (and replaces) when the version
changes; the only per-watcher timer is its own ``wait`` deadline, which fires
once. The snapshot is serialised once per version and shared by every answer.

``publish`` is called from one place, the reconciler's pass (every change of
the desired state, so of the route set, goes through one), and by a plain
``GET /api/v1/routes`` (which reads the store as it always did), so a watcher
never lags what a plain GET says. ``version`` is pure: the same route set gives
the same version, also across a gateway restart.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger("crosswire.api")

DEFAULT_WAIT = 55.0  # below the 60 s idle timeouts of common proxies and load balancers
MAX_WAIT = 300.0
RETRY_AFTER = 5  # seconds a refused watcher waits (it polls meanwhile: fabric.agent)


class WatchError(ValueError):
    """A bad ``after``/``wait``; the message names the parameter (answered 400)."""


class WatchersFull(RuntimeError):
    """``api.max_watchers`` long-polls are held already (answered 503 with Retry-After)."""


def version(body: dict[str, Any]) -> str:
    """A short hex digest of the canonical route set (``body`` without a version)."""
    canon = json.dumps({k: v for k, v in body.items() if k != "version"}, sort_keys=True,
                       separators=(",", ":"))
    return hashlib.sha256(canon.encode()).hexdigest()[:16]


def parse_wait(value: str | None) -> float:
    """The ``wait`` query parameter: seconds, 0..MAX_WAIT (default DEFAULT_WAIT)."""
    if value is None:
        return DEFAULT_WAIT
    try:
        seconds = float(value)
    except ValueError:
        raise WatchError(f"wait: {value[:40]!r} is not a number of seconds") from None
    if not 0 <= seconds <= MAX_WAIT:  # also refuses nan
        raise WatchError(f"wait: {value[:40]!r} is out of range 0-{MAX_WAIT:g} seconds")
    return seconds


def parse_after(value: str | None) -> str | None:
    if value is not None and (len(value) > 64 or not value.isascii() or not value.isalnum()):
        raise WatchError("after: not a version (the hex \"version\" of an earlier answer)")
    return value


@dataclass
class RouteWatch:
    """The current snapshot and the watchers waiting for the next one."""

    max_watchers: int = 2048
    body: dict[str, Any] | None = None  # the current snapshot, "version" included
    encoded: bytes = b""  # the same, serialised once per version
    watchers: int = 0  # long-polls held now
    refused: int = 0  # 503s for the limit, since start
    changes: int = 0  # versions published since start
    closed: bool = False
    _changed: asyncio.Event | None = field(default=None, repr=False)

    @property
    def version(self) -> str | None:
        return None if self.body is None else str(self.body["version"])

    def publish(self, routes: dict[str, Any]) -> bool:
        """Make ``routes`` the current snapshot; True (and every watcher woken) if it changed."""
        v = version(routes)
        if v == self.version:
            return False
        self.body = {**routes, "version": v}
        self.encoded = json.dumps(self.body, separators=(",", ":")).encode()
        self.changes += 1
        self._wake()
        return True

    def close(self) -> None:
        """Shutting down: every held long-poll answers now, new ones do not wait."""
        self.closed = True
        self._wake()

    def _wake(self) -> None:
        if self._changed is not None:
            self._changed.set()
            self._changed = None  # the next waiter makes a fresh one

    def hold(self, after: str | None, seconds: float) -> asyncio.Event | None:
        """The event a long-poll for ``after`` waits on, its slot taken (``release`` it), or
        None when it is answered at once. Raises WatchersFull beyond ``max_watchers``."""
        if after is None or after != self.version or seconds <= 0 or self.closed:
            return None
        if self.watchers >= self.max_watchers:
            self.refused += 1
            raise WatchersFull(f"this gateway holds {self.watchers} route watchers already "
                               f"(api.max_watchers); retry in {RETRY_AFTER}s")
        if self._changed is None:
            self._changed = asyncio.Event()
        self.watchers += 1
        return self._changed

    def release(self) -> None:
        self.watchers -= 1

    async def wait(self, after: str | None, seconds: float) -> None:
        """Return once the version differs from ``after`` or ``seconds`` passed."""
        changed = self.hold(after, seconds)
        if changed is None:
            return
        try:
            await asyncio.wait_for(changed.wait(), seconds)
        except TimeoutError:
            pass
        finally:
            self.release()
