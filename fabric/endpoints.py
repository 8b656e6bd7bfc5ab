"""WireGuard endpoints as peers announce them: strict syntax, resolution with backoff.

An endpoint is ``host:port`` where host is an IPv4 address, a bracketed IPv6
address (``[fd00::1]:51820``) or a DNS name. ``parse`` is the one syntax check
(config, peering messages and the data plane all use it). ``Resolver`` turns
endpoints into the ``ip:port`` the UAPI wants; a name that does not resolve
is that peer's problem only: it is retried with exponential backoff (as
``wg``'s reresolve-dns does, but without blocking every other peer on each
attempt), and the reason is kept for status. Sans-IO apart from the injected
``lookup`` (getaddrinfo by default); callers pass ``now``.
"""

from __future__ import annotations

import ipaddress
import re
import socket
from collections.abc import Callable
from dataclasses import dataclass

# RFC 1123 host names: dot-separated labels of letters, digits and '-', no
# label starting or ending with '-'; at most 253 characters.
_LABEL = r"(?!-)[A-Za-z0-9-]{1,63}(?<!-)"
_HOSTNAME = re.compile(rf"^{_LABEL}(\.{_LABEL})*\.?$")

BACKOFF_MIN = 1.0
BACKOFF_MAX = 60.0


class EndpointError(ValueError):
    """A malformed or unresolvable endpoint; the message names it and why."""


def parse(endpoint: object) -> tuple[str, int]:
    """``host:port`` -> (host without brackets, port); raises EndpointError."""
    if not isinstance(endpoint, str) or not endpoint or len(endpoint) > 261:
        raise EndpointError(f"endpoint {endpoint!r}: expected host:port")
    host, sep, port_s = endpoint.rpartition(":")
    if not sep or not port_s.isdigit() or not 0 < int(port_s) < 65536:
        raise EndpointError(f"endpoint {endpoint!r}: expected host:port with a port 1-65535")
    if host.startswith("["):
        if not host.endswith("]"):
            raise EndpointError(f"endpoint {endpoint!r}: unbalanced brackets")
        try:
            ipaddress.IPv6Address(host[1:-1])
        except ValueError:
            raise EndpointError(f"endpoint {endpoint!r}: {host[1:-1]!r} is not an IPv6 address") from None
        return host[1:-1], int(port_s)
    if ":" in host or "]" in host:
        raise EndpointError(f"endpoint {endpoint!r}: an IPv6 address needs brackets ([addr]:port)")
    try:
        ipaddress.IPv4Address(host)
    except ValueError:
        if not _HOSTNAME.match(host) or len(host) > 253 or host.replace(".", "").isdigit():
            raise EndpointError(f"endpoint {endpoint!r}: {host!r} is neither an IP address nor a host name") \
                from None
    return host, int(port_s)


def _format(ip: ipaddress.IPv4Address | ipaddress.IPv6Address, port: int) -> str:
    return f"[{ip}]:{port}" if ip.version == 6 else f"{ip}:{port}"


def _getaddrinfo(host: str, port: int) -> str:
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_DGRAM)
    return str(infos[0][4][0])


@dataclass
class _Failure:
    reason: str
    retry_at: float
    delay: float


class Resolver:
    """Endpoint -> ``ip:port``, remembering failures so each is retried with backoff."""

    def __init__(self, lookup: Callable[[str, int], str] = _getaddrinfo) -> None:
        self._lookup = lookup
        self._failures: dict[str, _Failure] = {}

    def resolve(self, endpoint: str, now: float) -> str:
        """The UAPI form of ``endpoint``; EndpointError while it does not resolve."""
        host, port = parse(endpoint)
        try:
            return _format(ipaddress.ip_address(host), port)
        except ValueError:
            pass
        failed = self._failures.get(endpoint)
        if failed is not None and now < failed.retry_at:
            raise EndpointError(failed.reason)
        try:
            ip = ipaddress.ip_address(self._lookup(host, port))
        except (OSError, ValueError, IndexError) as e:
            delay = BACKOFF_MIN if failed is None else min(failed.delay * 2, BACKOFF_MAX)
            reason = f"endpoint {endpoint!r}: cannot resolve {host!r} ({e}); retrying in {delay:.0f}s"
            self._failures[endpoint] = _Failure(reason, now + delay, delay)
            raise EndpointError(reason) from None
        self._failures.pop(endpoint, None)
        return _format(ip, port)

    def next_retry(self) -> float | None:
        """When the earliest failed endpoint may be tried again (None: nothing failed)."""
        return min((f.retry_at for f in self._failures.values()), default=None)

    def forget(self, keep: set[str]) -> None:
        """Drop failures of endpoints no peer uses any more."""
        for ep in set(self._failures) - keep:
            del self._failures[ep]
