"""What the API serves to read: status, peers, routes for node agents, NAT and IPAM.

``peer_summary`` and ``routes`` are pure (records, views and ``now`` in, the
JSON out); ``ReadModel`` gathers their inputs from the store, the IPAM, the
reconciler, the data plane's stats and the health prober. Nothing here changes
state.
"""

from __future__ import annotations

import ipaddress
import logging
import time
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from fabric.model import RangeMap, routed_cidrs
from fabric.nat import counts as nat_counts
from fabric.nat.trace import Query
from fabric.nat.trace import trace as nat_trace
from fabric.wgctl import byte_totals
from gateway import readviews
from gateway.config import Config
from gateway.errors import GatewayError
from gateway.exports import read as exportsread
from gateway.exports.imports import ImportedService
from gateway.health import HealthTracker
from gateway.ipam_adapter import Views, ordered
from gateway.peering import views_body
from gateway.reconciler import Reconciler, translate
from gateway.snapshot import Snapshot
from gateway.sparse import mode_of
from gateway.state import PeerRecord, StateStore

log = logging.getLogger("crosswire.gateway")

HANDSHAKE_STALE = 180.0  # WireGuard REJECT_AFTER_TIME: no valid session after this


def reach(ours: Sequence[RangeMap], imported: Sequence[ImportedService]) -> str:
    """What our pods can reach at a peer, and under which addresses, in one line."""
    if mode_of(ours) != "sparse":
        return "full: " + ", ".join(f"{m.kind} {m.real} as {m.view}" for m in ours
                                    if m.kind in ("pod", "service"))
    offered = [f"{s.name} at {', '.join(s.hosts or s.addresses)}" for s in imported if s.addresses]
    if not offered:
        # A peer without `exports` shares whole ranges, which a sparse view does not address.
        return ("sparse: it exports nothing to us, so none of its addresses is reachable from here "
                "(a peer without exports shares whole ranges: only ipam.views: full addresses them)")
    return "sparse: " + "; ".join(offered)


class PeerMetrics(NamedTuple):
    """One peer's row of /metrics (the fields of its peer_summary that are exported)."""
    cluster_id: str
    state: str
    latest_handshake: float | None
    handshake_age_s: float | None
    rx_bytes: int
    tx_bytes: int
    rtt_ms: float | None
    loss: float | None


def peer_state(pending: bool, probed: str | None, handshake: float | None, now: float) -> str:
    """pending, connecting, connected, impaired or error: the prober's verdict (``probed``),
    else the WireGuard handshake's (unix time; None or 0: never)."""
    if pending:
        return "pending"
    if probed:
        return probed
    if handshake:  # no probe target (peer gateway IP unknown): judge by the WireGuard handshake
        return "connected" if now - handshake < HANDSHAKE_STALE else "error"
    return "connecting"


def peer_metrics(cluster_id: str, public_key: str, pending: bool, now: float,
                 stats: Mapping[str, dict[str, Any]] | None = None,
                 health: dict[str, dict[str, Any]] | None = None) -> PeerMetrics:
    """A peer's state, handshake age, bytes, RTT and loss: what /metrics exports of it,
    and the same fields of its peer_summary."""
    s = (stats or {}).get(public_key, {})
    h = (health or {}).get(cluster_id, {})
    hs = s.get("last_handshake")
    return PeerMetrics(cluster_id, peer_state(pending, h.get("state"), hs, now),
                       hs or None, round(now - hs, 3) if hs else None, s.get("rx_bytes", 0),
                       s.get("tx_bytes", 0), h.get("rtt_ms"), h.get("loss"))


def peer_summary(p: PeerRecord, ours: Sequence[RangeMap], now: float,
                 stats: Mapping[str, dict[str, Any]] | None = None,
                 health: dict[str, dict[str, Any]] | None = None,
                 endpoint_error: str | None = None,
                 imported: Sequence[ImportedService] = ()) -> dict[str, Any]:
    """One peer as /api/v1/peers shows it; ``ours`` are our views of it, sorted;
    ``imported`` what it exports to us."""
    m = peer_metrics(p.cluster_id, p.public_key, p.their_views is None, now, stats, health)
    return {
        "cluster_id": p.cluster_id, "public_key": p.public_key,
        "endpoint": (stats or {}).get(p.public_key, {}).get("endpoint") or p.endpoint,
        "url": p.url, "state": m.state,
        # Why WireGuard has no endpoint for this peer (unresolvable, retried with backoff).
        "endpoint_error": endpoint_error,
        "latest_handshake": m.latest_handshake, "handshake_age_s": m.handshake_age_s,
        "rx_bytes": m.rx_bytes, "tx_bytes": m.tx_bytes,
        "rtt_ms": m.rtt_ms, "loss": m.loss, "probe_ip": translate(p.gateway_ip, ours),
        "ranges": [{"kind": k, "cidr": c} for k, c in p.ranges],
        "our_views": views_body(ours),
        "their_views": None if p.their_views is None else views_body(p.their_views),
        # ipam.views of each side for this peering (full | sparse), and what that gives our pods.
        "views_mode": mode_of(ours), "their_views_mode": mode_of(p.their_views or ()),
        "reach": reach(ours, imported),
    }


def routes(peers: Sequence[PeerRecord], all_views: dict[str, list[RangeMap]],
           gateway_ip: str | None, gateway_ip6: str | None) -> dict[str, Any]:
    """/api/v1/routes: our views of every programmed peer and the next hops."""
    cidrs = sorted({c for p in peers if p.their_views is not None
                    for c in routed_cidrs(tuple(all_views.get(p.cluster_id, ())))})
    out: dict[str, Any] = {"gateway_ip": gateway_ip, "cidrs": cidrs}
    # Node agents route IPv6 views via gateway_ip6; only meaningful (and only
    # accepted by fabric.agent) when gateway_ip itself is the IPv4 address.
    if gateway_ip6 is not None and (gateway_ip is None or ipaddress.ip_address(gateway_ip).version == 4):
        out["gateway_ip6"] = gateway_ip6
    return out


STATS_TTL = 1.0  # seconds a WireGuard dump or a read of nft counters answers reads (at most this old)


@dataclass
class ReadModel:
    config: Config
    store: StateStore
    views: Views
    reconciler: Reconciler
    health: HealthTracker
    clock: Callable[[], float] = time.time
    gateway_ip6: str | None = None  # dual stack: the next hop node agents use for IPv6 views
    routewatch: Any = None  # gateway.routewatch.RouteWatch: the watchers /metrics counts
    stats_ttl: float = STATS_TTL
    started: float = field(default=0.0, init=False)
    # the peers summary's digest of our views, by IPAM generation
    _viewed: tuple[int | None, str] = field(default=(None, ""), init=False)
    # the NAT summary's counts and version of the last state asked about
    _counted: tuple[Any, tuple[int, int, int, int], str] = field(default=(None, (0, 0, 0, 0), ""), init=False)
    # The data plane's counters, each read at most once per stats_ttl (gateway.snapshot).
    snapshots: Counters = field(init=False)

    def __post_init__(self) -> None:
        self.started = self.clock()
        self.snapshots = Counters(self)

    def peer_stats(self) -> Mapping[str, dict[str, Any]]:
        """Every peer's WireGuard counters and handshake. One dump serves every read within
        ``stats_ttl``: a page poll's few requests or a scrape ask together, and with 1,000
        peers a dump costs each process a few ms (its peers are parsed as looked up)."""
        return self.snapshots.stats.get()

    def implementation(self) -> dict[str, str]:
        """Which WireGuard implementation serves the interface and why (``auto``'s choice)."""
        configured = self.config.wireguard.implementation
        # Not in DataplaneDriver: a data plane that cannot say (test doubles) reports "unknown".
        ask = getattr(self.reconciler.dataplane, "implementation", None)
        try:
            if ask is not None:
                return dict(ask())
        except Exception as e:
            log.debug("implementation unknown: %s", e)
        return {"configured": configured, "implementation": configured, "name": configured,
                "reason": "unknown"}

    def endpoint_problems(self) -> dict[str, str]:
        try:
            return self.reconciler.dataplane.endpoint_problems()[0]
        except Exception as e:
            log.debug("endpoint problems unavailable: %s", e)
            return {}

    def peers(self, only: Collection[str] | None = None) -> list[dict[str, Any]]:
        """/api/v1/peers; ``only``: just these peers (their views read one by one)."""
        stats = self.peer_stats()
        now = self.clock()
        health = self.health.report(now, only)
        problems = self.endpoint_problems()
        imported: dict[str, list[ImportedService]] = {}
        for s in self.imported_services():
            imported.setdefault(s.peer, []).append(s)
        records = self.store.peers(only)  # a page: its rows alone (all would parse every peer's views)
        return [peer_summary(p, ordered(self.views.views(p.cluster_id)), now, stats, health,
                             problems.get(p.cluster_id), imported.get(p.cluster_id, ()))
                for p in records]

    def peer_metrics(self) -> list[PeerMetrics]:
        """What /metrics exports of each peer, without building the summaries (views,
        ranges, reach: ~0.1 s of every scrape at 1,000 peers)."""
        index, _ = self.store.peer_index()
        stats = self.peer_stats()
        now = self.clock()
        health = self.health.report(now)
        return [peer_metrics(cid, key, pending, now, stats, health) for cid, key, pending in index]

    def peer_states(self, index: Sequence[tuple[str, str, bool]] | None = None,
                    stats: Mapping[str, dict[str, Any]] | None = None) -> dict[str, str]:
        """Every peer's state, without building its summary (status, summaries): the
        prober's verdicts, the WireGuard dump read only for peers the prober has none of."""
        now = self.clock()
        probed = self.health.states(now)
        out: dict[str, str] = {}
        for cid, key, pending in self.store.peer_index()[0] if index is None else index:
            state, handshake = probed.get(cid), None
            if not pending and not state:
                if stats is None:
                    stats = self.peer_stats()
                handshake = stats.get(key, {}).get("last_handshake")
            out[cid] = peer_state(pending, state, handshake, now)
        return out

    def peers_view(self, q: readviews.Query) -> list[dict[str, Any]] | dict[str, Any]:
        """/api/v1/peers with its query: as before, a summary, or a page computed for its peers only."""
        if q.plain:
            return self.peers()
        index, digest = self.store.peer_index()
        if q.summary:
            stats = self.peer_stats()
            keys = {key for _, key, _ in index}
            # the version follows the peers table and our views of them (ipam.db: read and
            # digested again only when the IPAM's generation moved)
            gen = self.views.generation()
            if self._viewed[0] != gen:
                views = sorted((cid, tuple(map(str, ms))) for cid, ms in self.views.all_views().items())
                self._viewed = (gen, readviews.digest(views))
            return readviews.peers_summary(self.peer_states(index, stats), [digest, self._viewed[1]],
                                           byte_totals(stats, keys), len(self.endpoint_problems()))
        page, total = readviews.window([cid for cid, _, _ in index], q)
        return readviews.paged("peers", self.peers(set(page)) if page else [], total, q)

    def nat_view(self, q: readviews.Query) -> dict[str, Any]:
        """/api/v1/nat with its query: as before, a summary, or the NAT of a page of peers
        (the kernel asked for their chains and sets only)."""
        table = f"inet {self.config.nft_table}"
        if q.plain:
            return {"table": table, "peers": self.nat(), "drops": self.nat_drops()}
        # What is programmed (the state the kernel's counters belong to); the plain report
        # renders the desired one, which differs only until the next reconcile.
        state = self.reconciler.applied or self.reconciler.desired()
        if q.summary:
            exports = None if self.config.exports is None else len(self.config.exports)
            if self._counted[0] is not state:  # counts and version: once per programmed state
                mapped = repr([(p.cluster_id, p.remote, p.local) for p in state.peers])
                self._counted = (state, readviews.mapping_totals(nat_counts(state)),
                                 readviews.digest([table, mapped]))
            _, counts, version = self._counted
            return readviews.nat_summary(table, counts, self.nat_drops(),
                                         self.snapshots.denied_total.get(state), exports, version)
        ids = [p.cluster_id for p in state.peers]
        if q.peer is not None and q.peer not in ids and self.store.peer(q.peer) is not None:
            # known but pending: nothing is programmed for it yet
            return readviews.paged("peers", [], 0, q, table=table, drops=self.nat_drops())
        page, total = readviews.window(ids, q)
        # a page's own policy counters (a few are read by name; the summary reads their total)
        rows = self.reconciler.dataplane.nat(state, set(page)) if page else []
        return readviews.paged("peers", rows, total, q, table=table, drops=self.nat_drops())

    def page_view(self, limit: int | None, offset: int | None, peer: str | None) -> dict[str, Any]:
        """/api/v1/page: the operator page's poll in one answer (gateway.apimodels.PagePoll):
        one request instead of four, the counters' snapshots shared by its parts."""
        rows = self.peers_view(readviews.Query(limit=limit, offset=offset or 0).check())
        assert isinstance(rows, dict)  # with an offset: a page, never the plain list
        out: dict[str, Any] = {"peers_summary": self.peers_view(readviews.Query(summary=True)),
                               "nat_summary": self.nat_view(readviews.Query(summary=True)),
                               "peers": rows, "selected": None, "nat": None}
        if peer is None:
            return out
        q = readviews.Query(peer=peer).check()
        try:
            if not any(r["cluster_id"] == peer for r in rows["peers"]):
                out["selected"] = self.peers_view(q)
            out["nat"] = self.nat_view(q)
        except GatewayError as e:
            if e.status != 404:  # removed meanwhile: the page selects another
                raise
        return out

    def status(self) -> dict[str, Any]:
        ready, why = self.reconciler.ready()
        # Counts only: not the whole peers answer (views, stats, reach of 1,000 peers), and
        # no WireGuard dump unless a peer without a probe target is judged by its handshake.
        states = self.peer_states()
        by_state: dict[str, int] = {}
        for state in states.values():
            by_state[state] = by_state.get(state, 0) + 1
        c, st = self.config, self.reconciler.stats
        impl = self.implementation()
        return {
            "cluster_id": c.cluster_id, "public_key": self.store.public_key(),
            "endpoint": c.wireguard_endpoint(), "url": c.advertise_url(),
            "interface": c.wireguard.interface,
            "implementation": impl["name"], "implementation_reason": impl["reason"],
            "gateway_ip": self.reconciler.gateway_ip, "gateway_ip6": self.gateway_ip6,
            "pod_cidrs": list(c.pod_cidrs), "service_cidrs": list(c.service_cidrs),
            "ready": ready, "ready_reason": why, "uptime_s": round(self.clock() - self.started, 3),
            "peers": len(states), "peers_by_state": by_state,
            "exposure": exportsread.exposure(self),  # all: whole ranges; exports: only what is exported
            "reconcile": {"runs": st.runs, "errors": st.errors,
                          "dataplane_restarts": st.restarts, "last_error": st.last_error,
                          "last_ok": st.last_ok, "verifies": st.verifies,
                          "verify_cpu_s": round(st.verify_cpu_s, 6)},
        }

    def nat(self) -> list[dict[str, Any]]:
        return self.reconciler.dataplane.nat(self.reconciler.desired())

    def nat_drops(self) -> list[dict[str, Any]]:
        """The table's drop rules and counters (a snapshot: every reader of a second shares it)."""
        return self.snapshots.drops.get()

    def export_denied(self) -> dict[str, dict[str, int]] | None:
        """Per peer, what the export policy refused (None without exports); a snapshot."""
        return self.snapshots.denied.get(self.reconciler.applied or self.reconciler.desired())

    def nat_totals(self) -> NatTotals:
        """Per peer and chain the NAT counters' sums, and what each peer had dropped: what
        /metrics exports, from a snapshot of the programmed state's counters."""
        return self.snapshots.totals.get(self.reconciler.applied or self.reconciler.desired())

    def exports(self) -> dict[str, Any]:
        return exportsread.exports(self)

    def imports(self) -> dict[str, Any]:
        return exportsread.imports(self)

    def imported_services(self) -> tuple[ImportedService, ...]:
        """What peers export to us, our view addresses: the snapshot DNS answers from."""
        return exportsread.imported_services(self)

    def ipam(self) -> dict[str, Any]:
        return self.views.snapshot()

    def routes(self) -> dict[str, Any]:
        return routes(self.store.peers(), self.views.all_views(), self.reconciler.gateway_ip, self.gateway_ip6)

    def trace(self, query: Query) -> dict[str, Any]:
        """/api/v1/trace: the steps of ``query``'s packet through the desired state (what /api/v1/nat shows)."""
        state = self.reconciler.desired()
        exports = self.reconciler.exports
        check = None if exports is None else exportsread.export_check(
            self.config.cluster_id, self.config.wireguard.interface, state.exports,
            {cid: body for cid, (body, _) in exports.imports().items()})
        return nat_trace(state, query, exports=check).as_json()


# (peer, chain, packets, bytes, connections) sums, and per peer its dropped packets
NatTotals = tuple[list[tuple[str, str, int, int, int]], dict[str, int]]


class Counters:
    """The snapshots a ReadModel serves counters from (one place; see gateway.snapshot):
    the WireGuard dump, the NAT drop rules, the policy's denied counters (and their
    total, what the summary shows) and the NAT totals /metrics exports, each read at
    most once per ``stats_ttl``. The totals are kept, not the report they are summed
    from (5 MB of rows with 1,000 peers)."""

    def __init__(self, read: ReadModel) -> None:
        def ttl() -> float:
            return read.stats_ttl

        def plane() -> Any:  # asked each time: tests swap the data plane
            return read.reconciler.dataplane

        self.stats: Snapshot[Mapping[str, dict[str, Any]]] = Snapshot(
            "peer stats", lambda _: plane().peer_stats(), ttl, {})
        self.drops: Snapshot[list[dict[str, Any]]] = Snapshot(
            "drop counters", lambda _: plane().nat_drops(), ttl, [])
        self.denied: Snapshot[dict[str, dict[str, int]] | None] = Snapshot(
            "policy counters", lambda state: plane().export_denied(state), ttl, {})
        self.denied_total: Snapshot[dict[str, int] | None] = Snapshot(
            "policy total", lambda state: plane().denied_total(state), ttl, None)
        self.totals: Snapshot[NatTotals] = Snapshot(
            "NAT counters", lambda state: plane().nat_totals(state, denied=self.denied.get(state)), ttl, ([], {}))
