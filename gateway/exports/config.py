"""Exports: what this gateway shares with its peers (config, resolution, per-peer policy).

Config (``exports:`` in the gateway config; absent = share the whole pod and
service ranges, as without this feature)::

    exports:
      - name: web.default            # <service>.<namespace>; also its DNS name
        ports: [80/tcp, 443/tcp]     # omitted: every port and protocol
        # addresses omitted: resolved as web.default.svc.<cluster_domain>
      - name: trainer.ml
        addresses: [10.244.5.17, 10.244.6.0/24]
        ports: [29500/tcp]

``parse_exports`` validates it (``ConfigError`` naming the key). ``Resolver``
is the seam for exports without addresses: a function from a DNS name to its
addresses, called again every ``interval`` seconds; the last good answer is
kept when a lookup fails. ``policy`` (pure) turns exports, each peer's share
and the resolved addresses into the data plane's ``ExportPolicy``.
"""

from __future__ import annotations

import ipaddress
import logging
import re
import socket
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from fabric.exports.model import PROTOCOLS, Allowed, ExportPolicy, PeerExports

log = logging.getLogger("crosswire.exports")

_LABEL = r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?"
_NAME = re.compile(rf"^{_LABEL}\.{_LABEL}$")
_PORT = re.compile(r"^(\d{1,5})/([a-z]+)$")
DEFAULT_CLUSTER_DOMAIN = "cluster.local"


class ExportsError(ValueError):
    """Invalid exports (the message names the key)."""


@dataclass(frozen=True)
class Port:
    port: int
    proto: str

    def __str__(self) -> str:
        return f"{self.port}/{self.proto}"


@dataclass(frozen=True)
class Export:
    name: str  # "<service>.<namespace>"
    ports: tuple[Port, ...] | None = None  # None: every port and protocol
    addresses: tuple[str, ...] | None = None  # CIDRs; None: resolved through the cluster's DNS

    def dns_name(self, cluster_domain: str = DEFAULT_CLUSTER_DOMAIN) -> str:
        return f"{self.name}.svc.{cluster_domain}"

    def to_body(self, addresses: Sequence[str]) -> dict[str, Any]:
        """As the peering channel carries it and the API shows it."""
        return {"name": self.name, "ports": None if self.ports is None else [str(p) for p in self.ports],
                "addresses": list(addresses)}


def parse_port(value: object, key: str) -> Port:
    m = _PORT.match(value) if isinstance(value, str) else None
    if m is None:
        raise ExportsError(f"{key}: {value!r} is not PORT/PROTOCOL (e.g. 80/tcp)")
    port, proto = int(m.group(1)), m.group(2)
    if not 1 <= port <= 65535:
        raise ExportsError(f"{key}: port {port} is out of range 1-65535")
    if proto not in PROTOCOLS:
        raise ExportsError(f"{key}: protocol {proto!r} is not one of {', '.join(PROTOCOLS)}")
    return Port(port, proto)


def parse_name(value: object, key: str) -> str:
    if not isinstance(value, str) or not _NAME.match(value):
        raise ExportsError(f"{key}: {value!r} is not <service>.<namespace> (two DNS labels)")
    return value


def _address(value: object, key: str) -> str:
    if not isinstance(value, str):
        raise ExportsError(f"{key}: {value!r} is not an IP address or CIDR")
    try:
        return str(ipaddress.ip_network(value, strict=True))
    except ValueError as e:
        why = "has host bits set" if "host bits" in str(e) else "is not an IP address or CIDR"
        raise ExportsError(f"{key}: {value!r} {why}") from None


def parse_exports(value: object, local_cidrs: Sequence[str], key: str = "exports") -> tuple[Export, ...]:
    """The ``exports`` list; addresses must lie inside this cluster's own ranges."""
    if not isinstance(value, list):
        raise ExportsError(f"{key}: expected a list of {{name, ports, addresses}}, got {type(value).__name__}")
    own = [ipaddress.ip_network(c) for c in local_cidrs]
    out: list[Export] = []
    seen: set[str] = set()
    for i, item in enumerate(value):
        k = f"{key}[{i}]"
        if not isinstance(item, dict):
            raise ExportsError(f"{k}: expected a mapping with name, ports, addresses")
        for unknown in sorted(set(item) - {"name", "ports", "addresses"}):
            raise ExportsError(f"{k}.{unknown}: unknown key")
        if "name" not in item:
            raise ExportsError(f"{k}.name: required")
        name = parse_name(item["name"], f"{k}.name")
        if name in seen:
            raise ExportsError(f"{k}.name: {name} is exported twice")
        seen.add(name)
        ports: tuple[Port, ...] | None = None
        if item.get("ports") is not None:
            raw = item["ports"]
            if not isinstance(raw, list) or not raw:
                raise ExportsError(f"{k}.ports: expected a non-empty list like [80/tcp] (omit it for every port)")
            ports = tuple(dict.fromkeys(parse_port(p, f"{k}.ports[{j}]") for j, p in enumerate(raw)))
        addresses: tuple[str, ...] | None = None
        if item.get("addresses") is not None:
            raw = item["addresses"]
            if not isinstance(raw, list) or not raw:
                raise ExportsError(f"{k}.addresses: expected a non-empty list of IPs/CIDRs "
                                   "(omit it to resolve the name through the cluster's DNS)")
            addresses = tuple(dict.fromkeys(_address(a, f"{k}.addresses[{j}]") for j, a in enumerate(raw)))
            for j, a in enumerate(addresses):
                if not any(ipaddress.ip_network(a).subnet_of(o) for o in own  # type: ignore[arg-type]
                           if o.version == ipaddress.ip_network(a).version):
                    raise ExportsError(f"{k}.addresses[{j}]: {a} is not inside this cluster's pod or service ranges")
        out.append(Export(name=name, ports=ports, addresses=addresses))
    return tuple(out)


def parse_names(value: object, exports: Iterable[Export], key: str = "exports") -> tuple[str, ...]:
    """A list of export names (a token's or a peer's share): each must be configured."""
    if isinstance(value, str):
        value = [v.strip() for v in value.split(",") if v.strip()]
    if not isinstance(value, list):
        raise ExportsError(f"{key}: expected a list of export names")
    known = {e.name for e in exports}
    out = []
    for i, v in enumerate(value):
        name = parse_name(v, f"{key}[{i}]")
        if name not in known:
            raise ExportsError(f"{key}[{i}]: {name} is not an export of this gateway "
                               f"(configured: {', '.join(sorted(known)) or 'none'})")
        out.append(name)
    return tuple(dict.fromkeys(out))


# --- resolution ------------------------------------------------------------------------------

Lookup = Callable[[str], Sequence[str]]


def system_lookup(name: str) -> list[str]:
    """The addresses of ``name`` through this host's resolver (the cluster's DNS in a pod)."""
    infos = socket.getaddrinfo(name, None, proto=socket.IPPROTO_TCP)
    return sorted({str(i[4][0]) for i in infos})


class Resolver:
    """Addresses of the exports without ``addresses``, looked up again every ``interval``.

    ``lookup`` is the seam (name -> addresses); ``cluster_domain`` makes the name
    (``web.default`` -> ``web.default.svc.cluster.local``). A failed lookup keeps
    the previous answer (logged once per change); none yet: no addresses (nothing
    is allowed for that export until it resolves).
    """

    def __init__(self, lookup: Lookup = system_lookup, cluster_domain: str = DEFAULT_CLUSTER_DOMAIN,
                 interval: float = 1.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.lookup = lookup
        self.cluster_domain = cluster_domain
        self.interval = interval
        self.clock = clock
        self._cache: dict[str, tuple[float, tuple[str, ...]]] = {}
        self._errors: dict[str, str] = {}
        self.generation = 0  # counts address changes: what was built from them is stale

    def refresh(self, exports: Iterable[Export], force: bool = False) -> bool:
        """Look up what is due (blocking); True when some export's addresses changed."""
        changed = False
        now = self.clock()
        for e in exports:
            if e.addresses is not None:
                continue
            at, old = self._cache.get(e.name, (-1e18, ()))
            if not force and now - at < self.interval:
                continue
            name = e.dns_name(self.cluster_domain)
            try:
                found = tuple(sorted({str(ipaddress.ip_network(a)) for a in self.lookup(name)}))
                self._errors.pop(e.name, None)
            except (OSError, ValueError) as err:
                if self._errors.get(e.name) != str(err):
                    log.warning("export %s: cannot resolve %s: %s (keeping %s)", e.name, name, err,
                                ", ".join(old) or "no addresses")
                self._errors[e.name] = str(err)
                found = old
            self._cache[e.name] = (now, found)
            changed |= found != old
        if changed:
            self.generation += 1
        return changed

    def addresses(self, e: Export) -> tuple[str, ...]:
        if e.addresses is not None:
            return e.addresses
        return self._cache.get(e.name, (0.0, ()))[1]

    def error(self, e: Export) -> str | None:
        return self._errors.get(e.name)


# --- the policy ------------------------------------------------------------------------------


def shared(exports: Sequence[Export], grant: tuple[str, ...] | None) -> list[Export]:
    """The exports one peer may reach: ``grant`` names them, None = all."""
    if grant is None:
        return list(exports)
    names = set(grant)
    return [e for e in exports if e.name in names]


def allowed(exports: Iterable[Export], addresses: Callable[[Export], Sequence[str]]) -> tuple[Allowed, ...]:
    out: list[Allowed] = []
    for e in exports:
        for a in addresses(e):
            if e.ports is None:
                out.append(Allowed(a))
            else:
                out += [Allowed(a, p.proto, p.port) for p in e.ports]
    return tuple(sorted(set(out)))


def policy(interface: str, table: str, exports: Sequence[Export], peers: Sequence[tuple[str, tuple[str, ...]]],
           grants: Mapping[str, tuple[str, ...] | None],
           addresses: Callable[[Export], Sequence[str]]) -> ExportPolicy:
    """The data plane's policy: ``peers`` are (cluster_id, our pod views of it)."""
    return ExportPolicy(interface=interface, table=table, peers=tuple(
        PeerExports(cluster_id=cid, sources=sources,
                    allowed=allowed(shared(exports, grants.get(cid)), addresses))
        for cid, sources in peers))
