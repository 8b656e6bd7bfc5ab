"""The node agent's watch loop, decided without I/O: what to ask the gateway next, and when.

The agent holds one long-poll at a time (``GET /api/v1/routes?after=V&wait=S``,
gateway.routesapi) and re-asks at once after each answer, so a change of the
gateway's route set reaches it within one round trip and an idle agent costs
nothing. ``Watch`` is what it knows between requests; ``next_request`` turns it
into the next request, and ``answered``/``failed``/``refused`` into the next
``Watch``:

- ``version`` is the route set the agent applied; None means "ask for a full
  snapshot now" (a plain GET): at start, and after any failure, so a restarted
  gateway or a dropped connection is always re-synced from a whole snapshot,
  never from what the agent believed before;
- a failure (gateway unreachable, a bad answer, routes not applied) backs off
  0.2 s, doubling to 5 s; the agent's routes stay as they are meanwhile;
- a gateway that publishes no version (it predates the watch) is polled every
  ``interval`` seconds, as before; so is every gateway with ``--wait 0``;
- a gateway at its watcher limit (503) is polled every Retry-After seconds
  until it holds our long-poll again.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

BACKOFF = (0.2, 5.0)  # first delay after a failure, cap
MAX_RETRY_AFTER = 60.0


@dataclass(frozen=True)
class Watch:
    version: str | None = None  # the version of the route set applied; None: need a full snapshot
    failures: int = 0  # in a row
    polling: bool = False  # the gateway publishes no version (it predates the watch)
    busy: float | None = None  # the gateway refused our long-poll (503): poll this often


@dataclass(frozen=True)
class Request:
    after: str | None  # None: a plain GET, answered at once with the full snapshot
    wait: float | None  # seconds the gateway may hold it
    delay: float  # seconds to wait before sending it


def backoff(failures: int) -> float:
    return float(min(BACKOFF[0] * 2 ** max(0, failures - 1), BACKOFF[1]))


def next_request(w: Watch, wait: float, interval: float) -> Request:
    if w.failures:
        return Request(None, None, backoff(w.failures))
    if w.busy is not None:
        return Request(None, None, w.busy)
    if w.polling:
        return Request(None, None, interval)
    if w.version is None:
        return Request(None, None, 0.0)
    if wait <= 0:
        return Request(None, None, interval)
    return Request(w.version, wait, 0.0)


def answered(w: Watch, version: str | None, applied: bool) -> Watch:
    """A full snapshot arrived (``version`` None: an old gateway) and was applied or not."""
    if not applied:
        return Watch(failures=w.failures + 1, polling=w.polling)
    return Watch(version=version, polling=version is None)  # and try to watch again


def failed(w: Watch) -> Watch:
    """No usable answer: keep the routes, back off, and start again from a full snapshot."""
    return Watch(failures=w.failures + 1, polling=w.polling)


def refused(w: Watch, retry_after: float) -> Watch:
    """503: the gateway holds its maximum of watchers; poll every ``retry_after`` meanwhile."""
    return replace(w, failures=0, busy=min(max(retry_after, BACKOFF[0]), MAX_RETRY_AFTER))
