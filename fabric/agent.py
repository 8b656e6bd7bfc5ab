"""The node agent: routes every peer view towards the local gateway pod.

Runs on every node (a DaemonSet in Kubernetes, one process per node namespace
in the lab) as ``crosswire agent run --gateway URL [--interval S] [--once]``.
It polls ``GET {URL}/api/v1/routes`` (``{"gateway_ip": "...", "cidrs": [...]}``,
optionally ``"gateway_ip6"`` for the IPv6 views of a dual-stack gateway)
and keeps one route per CIDR in the main table, tagged with ``AGENT_PROTO`` so
it never touches routes it did not make.

The next hop comes from a route lookup of the gateway IP: on the gateway's own
node that is the pod's veth (route ``via gateway_ip dev veth``), on other nodes
the underlay next hop towards the gateway's node (``via node1 dev eth0``).

Split (sans-IO): ``parse_routes`` validates the gateway's answer and ``plan``
diffs desired against present routes into add/remove lists; both are pure.
``NetlinkRoutes`` (pyroute2) and ``fetch_routes`` (httpx) are the thin I/O.
If the gateway is unreachable or answers garbage, the agent keeps the routes
it has (a gateway restart must not blackhole traffic) and retries.
"""

from __future__ import annotations

import argparse
import ipaddress
import logging
import signal
import sys
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

log = logging.getLogger("crosswire.agent")

# rtnetlink protocol number marking the agent's routes (unassigned in
# /etc/iproute2/rt_protos; `ip route show proto 246` lists them).
AGENT_PROTO = 246
MAIN_TABLE = 254
RTNH_F_ONLINK = 4

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Address = ipaddress.IPv4Address | ipaddress.IPv6Address


class RoutesError(ValueError):
    """The gateway's /api/v1/routes answer is unusable; nothing is changed."""


@dataclass(frozen=True)
class NextHop:
    """Where a route points: a gateway address (optional) and an interface index."""

    via: str | None
    oif: int


@dataclass(frozen=True)
class Published:
    """What the gateway publishes, validated."""

    gateway_ip: Address
    cidrs: tuple[Network, ...]
    gateway_ip6: ipaddress.IPv6Address | None = None  # dual stack: the pod's IPv6 address

    def gateways(self) -> tuple[Address, ...]:
        """The gateway's address per family (at most one each)."""
        return (self.gateway_ip,) + ((self.gateway_ip6,) if self.gateway_ip6 else ())


@dataclass(frozen=True)
class Plan:
    add: tuple[tuple[Network, NextHop], ...] = ()  # add or replace
    remove: tuple[Network, ...] = ()

    @property
    def empty(self) -> bool:
        return not self.add and not self.remove


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
    return Published(gateway_ip, tuple(sorted(set(nets), key=_net_key)), gateway_ip6)


def _net_key(n: Network) -> tuple[int, int, int]:
    return (n.version, int(n.network_address), n.prefixlen)


def desired_routes(published: Published, hops: Mapping[int, NextHop]) -> dict[Network, NextHop]:
    """One route per published CIDR whose family has a next hop (``hops``: IP version -> hop)."""
    return {c: hops[c.version] for c in published.cidrs if c.version in hops}


def plan(desired: Mapping[Network, NextHop], present: Mapping[Network, NextHop],
         keep_families: frozenset[int] = frozenset()) -> Plan:
    """Routes to add (or replace, when the next hop moved) and stale ones to remove.

    Present routes of a family in ``keep_families`` (its gateway address did
    not resolve this time) are left alone rather than removed.
    """
    add = tuple((n, h) for n, h in sorted(desired.items(), key=lambda i: _net_key(i[0]))
                if present.get(n) != h)
    remove = tuple(sorted((n for n in present if n not in desired and n.version not in keep_families),
                          key=_net_key))
    return Plan(add=add, remove=remove)


def resolve_nexthop(gateway_ip: Address, lookup: Mapping[str, Any]) -> NextHop:
    """Next hop for the peer views, from a route lookup (``ip route get``) of the gateway IP.

    A directly reachable gateway (its own node) yields ``via gateway_ip``; a
    gateway behind another node yields that node's next hop.
    """
    oif = lookup.get("oif")
    if not isinstance(oif, int):
        raise RoutesError(f"no route to gateway {gateway_ip}")
    via = lookup.get("gateway")
    return NextHop(via=str(via) if via else str(gateway_ip), oif=oif)


# ---------------------------------------------------------------- I/O adapters


class NetlinkRoutes:
    """The node's routing table through pyroute2 (sync IPRoute; the agent has no event loop)."""

    def __init__(self, proto: int = AGENT_PROTO, table: int = MAIN_TABLE) -> None:
        from pyroute2 import IPRoute

        self.proto = proto
        self.table = table
        self._ipr = IPRoute()

    def close(self) -> None:
        self._ipr.close()

    def lookup(self, addr: Address) -> dict[str, Any]:
        from pyroute2 import NetlinkError

        try:
            msgs = list(self._ipr.route("get", dst=str(addr)))
        except NetlinkError:  # e.g. "Network is unreachable": no next hop yet
            return {}
        if not msgs:
            return {}
        m = msgs[0]
        return {"oif": m.get("RTA_OIF"), "gateway": m.get("RTA_GATEWAY")}

    def present(self) -> dict[Network, NextHop]:
        out: dict[Network, NextHop] = {}
        for m in self._ipr.route("dump", proto=self.proto, table=self.table):
            if m["proto"] != self.proto or m.get("RTA_TABLE", m["table"]) != self.table:
                continue
            dst = m.get("RTA_DST")
            if dst is None:
                continue
            net = ipaddress.ip_network(f"{dst}/{m['dst_len']}", strict=False)
            out[net] = NextHop(via=m.get("RTA_GATEWAY"), oif=m.get("RTA_OIF") or 0)
        return out

    def apply(self, p: Plan) -> None:
        for net in p.remove:
            self._ipr.route("del", dst=str(net), proto=self.proto, table=self.table)
        for net, hop in p.add:
            kw: dict[str, Any] = {"oif": hop.oif}
            if hop.via is not None:
                # The looked-up next hop is a neighbour on oif by construction, but not
                # always inside a connected prefix (flannel's vxlan routes are onlink).
                kw["gateway"] = hop.via
                kw["flags"] = RTNH_F_ONLINK
            self._ipr.route("replace", dst=str(net), proto=self.proto, table=self.table, **kw)


def fetch_routes(base_url: str, timeout: float = 3.0) -> Published:
    import httpx

    url = base_url.rstrip("/") + "/api/v1/routes"
    try:
        r = httpx.get(url, timeout=timeout)
        r.raise_for_status()
        body = r.json()
    except (httpx.HTTPError, ValueError) as e:
        raise RoutesError(f"GET {url}: {e}") from e
    return parse_routes(body)


@dataclass
class Agent:
    """One reconcile step at a time; counts what happened for logs and tests."""

    gateway_url: str
    routes: NetlinkRoutes
    errors: int = 0
    last_error: str | None = None

    def _failed(self, why: str) -> None:
        self.errors += 1
        if why != self.last_error:  # log a failure once, not every poll
            log.warning("keeping current routes: %s", why)
        self.last_error = why

    def step(self) -> Plan | None:
        hops: dict[int, NextHop] = {}
        unresolved: set[int] = set()
        problems: list[str] = []
        try:
            published = fetch_routes(self.gateway_url)
        except RoutesError as e:
            self._failed(str(e))
            return None
        for gw in published.gateways():
            try:
                hops[gw.version] = resolve_nexthop(gw, self.routes.lookup(gw))
            except RoutesError as e:
                unresolved.add(gw.version)
                problems.append(str(e))
        if not hops:
            self._failed("; ".join(problems))
            return None
        if problems:
            self._failed("; ".join(problems))  # the other family still gets reconciled
        elif self.last_error is not None:
            log.info("gateway answers again")
            self.last_error = None
        from pyroute2 import NetlinkError

        try:
            p = plan(desired_routes(published, hops), self.routes.present(), frozenset(unresolved))
            if not p.empty:
                self.routes.apply(p)
                log.info("routes: +%s -%s", [str(n) for n, _ in p.add], [str(n) for n in p.remove])
        except (NetlinkError, OSError) as e:  # the next poll re-plans from scratch
            self.errors += 1
            log.warning("applying routes failed: %s", e)
            return None
        return p


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="crosswire agent run",
                                 description="keep routes to every peer view towards the gateway")
    ap.add_argument("--gateway", required=True, help="gateway API base URL, e.g. http://10.244.0.2:8080")
    ap.add_argument("--interval", type=float, default=5.0, help="poll interval in seconds")
    ap.add_argument("--once", action="store_true", help="reconcile once and exit (1 on failure)")
    ap.add_argument("--log-level", default="INFO")
    return ap


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; ``argv`` may start with ``run`` (``python -m fabric.agent run ...``) or not
    (``crosswire agent run`` hands over what follows ``run``)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["run"]:
        argv = argv[1:]
    args = _parser().parse_args(argv)
    if args.interval <= 0:
        print("crosswire agent: --interval must be positive", file=sys.stderr)
        return 2
    logging.basicConfig(level=args.log_level.upper(),
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    routes = NetlinkRoutes()
    agent = Agent(args.gateway, routes)
    stop = threading.Event()

    def _stop(signum: int, _frame: object) -> None:
        stop.set()

    for s in (signal.SIGTERM, signal.SIGINT):
        signal.signal(s, _stop)
    try:
        if args.once:
            return 0 if agent.step() is not None else 1
        # Routes stay on exit: a restarting agent must not cut traffic.
        while not stop.is_set():
            agent.step()
            stop.wait(args.interval)
        return 0
    finally:
        routes.close()


if __name__ == "__main__":
    sys.exit(main())
