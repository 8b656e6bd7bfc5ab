"""What the node agent reads from the gateway: ``GET {URL}/api/v1/routes``.

The answer is ``{"gateway_ip": "...", "cidrs": [...], "version": "..."}``,
optionally with ``"gateway_ip6"`` (the IPv6 address of a dual-stack gateway
pod); a gateway from before the watch sends no ``version``. With
``?after=<version>&wait=<s>`` the gateway holds the request until its route set
differs from that version (gateway.routesapi). ``parse_routes`` and
``parse_version`` validate (pure); ``fetch_routes`` and ``fetch_snapshot`` are
the thin httpx adapters. They raise ``RoutesError`` (``Unreachable`` when no
answer came, ``WatchersBusy`` for a 503 at the gateway's watcher limit) and
then nothing may be changed.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Any

from fabric.routes import Address, Network, key


class RoutesError(ValueError):
    """The gateway's /api/v1/routes answer is unusable (or absent); nothing is changed."""


class Unreachable(RoutesError):
    """No answer from the gateway (connection refused or dropped, timeout, an HTTP error status)."""


class WatchersBusy(RoutesError):
    """503: the gateway holds its maximum of route watchers (``retry_after`` seconds)."""

    def __init__(self, message: str, retry_after: float) -> None:
        super().__init__(message)
        self.retry_after = retry_after


@dataclass(frozen=True)
class Snapshot:
    """One whole answer: the route set and its version (None: a gateway from before the watch)."""

    published: Published
    version: str | None


@dataclass(frozen=True)
class Published:
    """What the gateway publishes, validated."""

    gateway_ip: Address
    cidrs: tuple[Network, ...]
    gateway_ip6: ipaddress.IPv6Address | None = None  # dual stack: the pod's IPv6 address

    def gateways(self) -> tuple[Address, ...]:
        """The gateway's address per family (at most one each)."""
        return (self.gateway_ip,) + ((self.gateway_ip6,) if self.gateway_ip6 else ())


def parse_routes(body: Any) -> Published:
    """Validate the JSON body of ``GET /api/v1/routes``.

    Any malformed field rejects the whole answer: a half-applied route set is
    worse than the old one.
    """
    if not isinstance(body, dict):
        raise RoutesError("routes answer is not a JSON object")
    gw = body.get("gateway_ip")
    cidrs = body.get("cidrs")
    if not isinstance(gw, str):
        raise RoutesError("routes answer lacks a string gateway_ip")
    if not isinstance(cidrs, list) or not all(isinstance(c, str) for c in cidrs):
        raise RoutesError("routes answer lacks a list of CIDR strings")
    try:
        gateway_ip = ipaddress.ip_address(gw)
    except ValueError as e:
        raise RoutesError(f"bad gateway_ip {gw!r}") from e
    gw6 = body.get("gateway_ip6")
    gateway_ip6 = None
    if gw6 is not None:
        try:
            gateway_ip6 = ipaddress.IPv6Address(gw6)
        except ValueError as e:
            raise RoutesError(f"bad gateway_ip6 {gw6!r}") from e
        if gateway_ip.version == 6:
            raise RoutesError("gateway_ip6 given but gateway_ip is IPv6 too")
    nets: list[Network] = []
    for c in cidrs:
        try:
            net = ipaddress.ip_network(c, strict=True)
        except ValueError as e:
            raise RoutesError(f"bad CIDR {c!r}") from e
        if net.prefixlen == 0:
            # A default route towards the gateway would hijack the node.
            raise RoutesError(f"refusing default route {c!r}")
        nets.append(net)
    return Published(gateway_ip, tuple(sorted(set(nets), key=key)), gateway_ip6)


def parse_version(body: Any) -> str | None:
    v = body.get("version") if isinstance(body, dict) else None
    if v is None:
        return None
    if not isinstance(v, str) or not v or len(v) > 64 or not v.isascii() or not v.isalnum():
        raise RoutesError(f"bad version {str(v)[:70]!r}")
    return v


def client(timeout: float = 3.0) -> Any:
    """The agent's one HTTP client for its whole life: ``httpx.get`` builds a client, and with
    it a TLS context, per call (~20 ms of CPU, which 31 agents of a big lab polling every
    second turn into most of a core). No keep-alive: every poll opens a fresh connection,
    so a restarted gateway is simply found again."""
    import httpx

    return httpx.Client(timeout=timeout, limits=httpx.Limits(max_keepalive_connections=0))


def fetch_routes(base_url: str, timeout: float = 3.0, http: Any = None) -> Published:
    """``http``: an ``httpx.Client`` to reuse (the agent's), or None for a one-off request."""
    import httpx

    url = base_url.rstrip("/") + "/api/v1/routes"
    try:
        r = http.get(url, timeout=timeout) if http is not None else httpx.get(url, timeout=timeout)
        r.raise_for_status()
        body = r.json()
    except (httpx.HTTPError, ValueError) as e:
        raise RoutesError(f"GET {url}: {e}") from e
    return parse_routes(body)


WAIT_SLACK = 10.0  # beyond the long-poll's wait before the agent calls the connection dead


def fetch_snapshot(base_url: str, http: Any, after: str | None = None, wait: float | None = None,
                   timeout: float = 3.0) -> Snapshot:
    """One request: a plain GET (``after`` None), or a long-poll the gateway may hold ``wait`` s."""
    import httpx

    url = base_url.rstrip("/") + "/api/v1/routes"
    params: dict[str, str] = {}
    read = timeout
    if after is not None:
        params = {"after": after, "wait": f"{wait if wait is not None else 55:g}"}
        read = (wait or 0) + WAIT_SLACK
    try:
        r = http.get(url, params=params, timeout=httpx.Timeout(timeout, read=read))
        if r.status_code == 503 and after is not None:
            raise WatchersBusy(f"GET {url}: 503 {_detail(r)}", _retry_after(r.headers.get("retry-after")))
        r.raise_for_status()
    except httpx.HTTPError as e:
        raise Unreachable(f"GET {url}: {e}") from e
    try:
        body = r.json()
    except ValueError as e:
        raise RoutesError(f"GET {url}: not JSON ({e})") from e
    return Snapshot(parse_routes(body), parse_version(body))


def _detail(r: Any) -> str:
    try:
        return str(r.json().get("detail", ""))[:200]
    except (ValueError, AttributeError):
        return ""


def _retry_after(value: str | None) -> float:
    try:
        return max(0.0, float(value)) if value is not None else 5.0
    except ValueError:
        return 5.0
