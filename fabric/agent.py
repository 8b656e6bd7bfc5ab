"""The node agent: routes every peer view towards the local gateway pod.

Runs on every node (a DaemonSet in Kubernetes, one process per node namespace
in the lab) as ``crosswire agent run --gateway URL [--wait S] [--interval S] [--once]``.
It watches ``GET {URL}/api/v1/routes`` (``{"gateway_ip": "...", "cidrs": [...],
"version": "..."}``, optionally ``"gateway_ip6"`` for the IPv6 views of a
dual-stack gateway) through one long-poll at a time (``?after=<version>&wait=S``,
``fabric.agentwatch`` decides the loop) and keeps one route per CIDR in the
main table, tagged with ``AGENT_PROTO`` so it never touches routes it did not
make. A gateway that predates the watch (no ``version``) is polled every
``--interval`` seconds.

The next hop comes from a route lookup of the gateway IP: on the gateway's own
node that is the pod's veth (route ``via gateway_ip dev veth``), on other nodes
the underlay next hop towards the gateway's node (``via node1 dev eth0``).

Split (sans-IO): ``fabric.agent_api`` reads and validates the gateway's
answer; ``desired_routes`` and ``resolve_nexthop`` here and ``fabric.routes.plan``
are pure; ``fabric.routes.RouteTable`` is the netlink adapter (the gateway's too).
If the gateway is unreachable or answers garbage, the agent keeps the routes
it has (a gateway restart must not blackhole traffic), says so once, and
retries with backoff from a full snapshot. Every snapshot is applied as a diff
against the routes in the kernel (``fabric.routes.plan``): a route that stays
is never removed and re-added, so a re-sync does not flap, and drift is
repaired at each answer (at least every ``--wait`` seconds).

The gateway's word is not enough for a route (``screen``, pure): a CIDR outside
``--allow`` (default ``fabric.model.PEER_SPACE``: private and shared space, never
public), overlapping one of this node's own networks (its interface addresses)
or a ``--local`` range, or holding the gateway's own address, is not installed,
and a warning names it (once per change). A peer that talked its way into the
gateway's views still cannot steer this node's traffic to public addresses.
"""

from __future__ import annotations

import argparse
import contextlib
import ipaddress
import logging
import signal
import sys
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from fabric import agentwatch
from fabric.agent_api import (
    Published,
    RoutesError,
    Unreachable,
    WatchersBusy,
    client,
    fetch_routes,
    fetch_snapshot,
)
from fabric.model import PEER_SPACE
from fabric.routes import Address, Network, NextHop, Plan, RouteError, RouteTable, plan

log = logging.getLogger("crosswire.agent")

# rtnetlink protocol number marking the agent's routes (unassigned in
# /etc/iproute2/rt_protos; `ip route show proto 246` lists them).
AGENT_PROTO = 246


def desired_routes(published: Published, hops: Mapping[int, NextHop]) -> dict[Network, NextHop]:
    """One route per published CIDR whose family has a next hop (``hops``: IP version -> hop)."""
    return {c: hops[c.version] for c in published.cidrs if c.version in hops}


def screen(cidrs: Sequence[Network], allow: Sequence[Network], local: Sequence[Network],
           gateways: Sequence[Address]) -> tuple[tuple[Network, ...], dict[Network, str]]:
    """The published CIDRs this node may route to the gateway, and why each other one may not."""
    kept: list[Network] = []
    refused: dict[Network, str] = {}
    for c in cidrs:
        hit = next((n for n in local if n.version == c.version and n.overlaps(c)), None)
        if not any(a.version == c.version and c.subnet_of(a) for a in allow):  # type: ignore[arg-type]
            refused[c] = "outside the address space routed to peers (--allow " + \
                ",".join(str(a) for a in allow) + ")"
        elif hit is not None:
            refused[c] = f"overlaps this node's local range {hit}"
        elif any(g in c for g in gateways):
            refused[c] = "holds the gateway's own address"
        else:
            kept.append(c)
    return tuple(kept), refused


def parse_cidr_list(text: str, flag: str) -> tuple[Network, ...]:
    try:
        return tuple(ipaddress.ip_network(c.strip(), strict=True) for c in text.split(",") if c.strip())
    except ValueError as e:
        raise ValueError(f"{flag}: {e}") from None


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


@dataclass
class Agent:
    """One reconcile step at a time; counts what happened for logs and tests."""

    gateway_url: str
    routes: RouteTable
    allow: tuple[Network, ...] = field(default_factory=lambda: parse_cidr_list(",".join(PEER_SPACE), "--allow"))
    local: tuple[Network, ...] = ()  # --local: never routed to the gateway (besides the node's own networks)
    http: Any = None  # an httpx.Client kept across polls (agent_api.client); None: one per poll
    errors: int = 0
    last_error: str | None = None
    refused: dict[Network, str] = field(default_factory=dict)
    snapshots: int = 0  # answers applied (a long-poll's or a poll's)
    partial: bool = False  # the last apply left a family alone (its gateway address did not resolve)
    busy_logged: bool = False

    def _screen(self, published: Published) -> Published:
        local = self.local + tuple(self.routes.local_networks())
        kept, refused = screen(published.cidrs, self.allow, local, published.gateways())
        if refused != self.refused:  # warn once per change, not every poll
            for net, why in sorted(refused.items(), key=lambda x: str(x[0])):
                log.warning("not routing %s to the gateway: %s", net, why)
            self.refused = refused
        return replace(published, cidrs=kept)

    def _failed(self, why: str) -> None:
        self.errors += 1
        if why != self.last_error:  # log a failure once, not every retry
            log.warning("%s (keeping current routes, retrying)" if why.startswith("gateway ")
                        else "keeping current routes: %s", why)
        self.last_error = why

    def step(self) -> Plan | None:
        """Fetch the route set once (a plain GET) and apply it; None: nothing (or not all) applied."""
        try:
            published = fetch_routes(self.gateway_url, http=self.http)
        except RoutesError as e:
            self._failed(str(e))
            return None
        return self.apply(published)

    def apply(self, published: Published) -> Plan | None:
        """Make our routes what ``published`` says (screened); None if nothing was applied
        (``partial``: a family whose gateway address did not resolve was left alone)."""
        hops: dict[int, NextHop] = {}
        unresolved: set[int] = set()
        problems: list[str] = []
        try:
            published = self._screen(published)
        except OSError as e:  # the node's addresses could not be read: change nothing
            self._failed(f"cannot read this node's addresses: {e}")
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
        if not problems and self.last_error is not None:
            log.info("gateway answers again; routes re-synced from a full snapshot")
            self.last_error = None
        try:
            p = plan(desired_routes(published, hops), self.routes.present(), frozenset(unresolved))
            if not p.empty:
                self.routes.apply(p)
                log.info("routes: +%s -%s", [str(n) for n, _ in p.add], [str(n) for n in p.remove])
        except (RouteError, OSError) as e:  # the next poll re-plans from scratch
            self.errors += 1
            log.warning("applying routes failed: %s", e)
            return None
        self.snapshots += 1
        self.partial = bool(problems)
        if problems:
            self._failed("; ".join(problems))  # the other family still gets reconciled
        return p

    def watch(self, stop: threading.Event, wait: float, interval: float,
              requesting: threading.Event | None = None) -> None:
        """Until ``stop``: one long-poll at a time, each answer applied (fabric.agentwatch).
        ``requesting`` is set while a request is in flight (a signal may then interrupt it)."""
        w = agentwatch.Watch()
        while not stop.is_set():
            req = agentwatch.next_request(w, wait, interval)
            if req.delay > 0 and stop.wait(req.delay):
                return
            if requesting is not None:
                requesting.set()
            try:
                snap = fetch_snapshot(self.gateway_url, self.http, after=req.after, wait=req.wait)
            except WatchersBusy as e:
                w = agentwatch.refused(w, e.retry_after)
                if not self.busy_logged:
                    log.warning("gateway holds its maximum of route watchers (%s): polling every %gs until "
                                "it takes ours", e, w.busy)
                    self.busy_logged = True
                continue
            except Unreachable as e:
                self._failed(f"gateway unreachable: {e}")
                w = agentwatch.failed(w)
                continue
            except RoutesError as e:
                self._failed(f"gateway's answer unusable: {e}")
                w = agentwatch.failed(w)
                continue
            finally:
                if requesting is not None:
                    requesting.clear()
            if req.after is not None:
                self.busy_logged = False
            if snap.version is None and not w.polling:
                log.info("gateway publishes no route version (it predates the watch): polling every %gs",
                         interval)
            done = self.apply(snap.published) is not None and not self.partial
            w = agentwatch.answered(w, snap.version, done)  # not done: retried with backoff


class _Stopped(Exception):
    """SIGTERM/SIGINT during a request (raised by the handler; never while routes change)."""


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="crosswire agent run",
                                 description="keep routes to every peer view towards the gateway")
    ap.add_argument("--gateway", required=True,
                    help="the gateway's operator listener (api.operator_listen), e.g. http://10.244.0.2:8081")
    ap.add_argument("--wait", type=float, default=55.0,
                    help="seconds the gateway may hold each watch request (0..300; 0: poll every --interval)")
    ap.add_argument("--interval", type=float, default=5.0,
                    help="poll interval in seconds for a gateway that predates the watch (or --wait 0)")
    ap.add_argument("--once", action="store_true", help="reconcile once and exit (1 on failure)")
    ap.add_argument("--allow", default=",".join(PEER_SPACE),
                    help="CIDRs a published route must lie in, comma separated (default: %(default)s)")
    ap.add_argument("--local", default="", help="CIDRs never routed to the gateway, comma separated "
                                                "(e.g. the cluster's node, pod and service ranges)")
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
    if not 0 <= args.wait <= 300:
        print("crosswire agent: --wait must be 0..300 seconds", file=sys.stderr)
        return 2
    try:
        allow, local = parse_cidr_list(args.allow, "--allow"), parse_cidr_list(args.local, "--local")
    except ValueError as e:
        print(f"crosswire agent: {e}", file=sys.stderr)
        return 2
    logging.basicConfig(level=args.log_level.upper(),
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # a line per long-poll otherwise
    routes = RouteTable(AGENT_PROTO)
    agent = Agent(args.gateway, routes, allow=allow, local=local, http=client())
    stop, requesting = threading.Event(), threading.Event()

    def _stop(signum: int, _frame: object) -> None:
        stop.set()
        if requesting.is_set():  # a held long-poll: end it now, not when the gateway answers
            raise _Stopped

    for s in (signal.SIGTERM, signal.SIGINT):
        signal.signal(s, _stop)
    try:
        if args.once:
            return 0 if agent.step() is not None else 1
        # Routes stay on exit: a restarting agent must not cut traffic.
        with contextlib.suppress(_Stopped):
            agent.watch(stop, args.wait, args.interval, requesting)
        return 0
    finally:
        routes.close()
        agent.http.close()


if __name__ == "__main__":
    sys.exit(main())
