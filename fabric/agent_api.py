"""What the node agent reads from the gateway: ``GET {URL}/api/v1/routes``.

The answer is ``{"gateway_ip": "...", "cidrs": [...]}``, optionally with
``"gateway_ip6"`` (the IPv6 address of a dual-stack gateway pod).
``parse_routes`` validates it (pure); ``fetch_routes`` is the thin httpx
adapter. Either raises ``RoutesError`` and then nothing may be changed.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Any

from fabric.routes import Address, Network, key


class RoutesError(ValueError):
    """The gateway's /api/v1/routes answer is unusable (or absent); nothing is changed."""


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
