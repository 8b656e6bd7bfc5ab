"""Desired data-plane state, reconcile, readiness: the one judge of the data plane.

``desired()`` is a pure function of config + state.db + ipam.db. ``reconcile()``
(one at a time, under a lock; the blocking data-plane calls in a worker
thread) brings the data plane up if it is missing or died, then applies the
desired state if it changed. ``run()`` is the daemon's loop: every
``CHECK_INTERVAL`` it asks whether the data plane is alive, every
``VERIFY_INTERVAL`` whether the kernel drifted from the applied state, and
reconciles when either says so or the desired state changed. A data plane is
restarted only on a death confirmed by two checks (the data plane's own
``alive`` already counts "cannot tell": EMFILE, EAGAIN, timeouts, as alive). It deliberately
does not re-apply blindly on a timer: replacing the nft table resets the
counters /api/v1/nat reports. Liveness and drift are decided here only.

The reconciler depends on the small ``DataplaneDriver`` protocol below;
:class:`fabric.dataplane.Dataplane` is the real one, tests pass a fake.
"""

from __future__ import annotations

import asyncio
import functools
import ipaddress
import logging
import threading
import time
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from fabric.model import FabricState, LocalFabric, PeerFabric, RangeMap, map_into
from gateway import forwarding as forwarding_mod
from gateway.config import Config
from gateway.exitwatch import ExitWatch
from gateway.health import HealthTracker
from gateway.ipam_adapter import Views, ordered
from gateway.state import StateStore

if TYPE_CHECKING:
    from gateway.exports.state import ExportState

log = logging.getLogger("crosswire.gateway")

CHECK_INTERVAL = 1.0
CONFIRM_DELAY = 0.2
VERIFY_INTERVAL = 10.0
VERIFY_SHARE = 200.0  # at most 1/VERIFY_SHARE of the time verifying (a large table: less often)


class DataplaneDriver(Protocol):
    """What the reconciler and the read models need from the data plane (all blocking)."""

    def ensure_up(self) -> None: ...
    def alive(self) -> bool: ...
    def apply(self, state: FabricState, previous: FabricState | None) -> None: ...
    def stop(self) -> None: ...
    def peer_stats(self) -> Mapping[str, dict[str, Any]]: ...
    def nat(self, state: FabricState, only: Collection[str] | None = None, *,
            denied: dict[str, dict[str, int]] | None = None) -> list[dict[str, Any]]: ...
    def export_denied(self, state: FabricState, only: Collection[str] | None = None
                      ) -> dict[str, dict[str, int]] | None: ...
    def denied_total(self, state: FabricState) -> dict[str, int] | None: ...
    def nat_totals(self, state: FabricState, *, denied: dict[str, dict[str, int]] | None = None
                   ) -> tuple[list[tuple[str, str, int, int, int]], dict[str, int]]: ...
    def nat_drops(self) -> list[dict[str, Any]]: ...
    def verify(self, state: FabricState) -> list[str]: ...
    def endpoint_problems(self) -> tuple[dict[str, str], float | None]: ...
    def process_pid(self) -> int | None: ...


@dataclass
class ReconcileStats:
    runs: int = 0
    errors: int = 0
    restarts: int = 0
    last_error: str | None = None
    last_ok: float | None = None
    ok: bool = False
    # The drift checks: how many, and the CPU they took (the thread's own time). With
    # 1,000 peers one takes 0.3-0.5 s: what an operator (or a bench) subtracts to see the rest.
    verifies: int = 0
    verify_cpu_s: float = 0.0


def translate(ip: str | None, views: Sequence[RangeMap]) -> str | None:
    """An address in the peer's space -> ours, through the view containing it."""
    if ip is None:
        return None
    return _translate(ip, tuple(views))


@functools.lru_cache(maxsize=4096)  # each peer's probe address, for every page of rows
def _translate(ip: str, views: tuple[RangeMap, ...]) -> str | None:
    addr = ipaddress.ip_address(ip)
    for m in views:
        rn, vn = ipaddress.ip_network(m.real), ipaddress.ip_network(m.view)
        if addr.version == rn.version and addr in rn:
            return str(map_into(addr, rn, vn))
    return None


@dataclass
class Reconciler:
    config: Config
    store: StateStore
    views: Views
    dataplane: DataplaneDriver
    clock: Callable[[], float] = time.time
    health: HealthTracker = field(default_factory=HealthTracker)
    gateway_ip: str | None = None
    gateway_ip6: str | None = None  # dual stack: the IPv6 pod address (host-network SNAT for IPv6)
    # Forwarding sysctls /readyz requires to be 1 (the daemon sets them; see gateway.forwarding).
    forwarding: tuple[str, ...] = ()
    sysctl_root: Path = forwarding_mod.PROC_SYS
    stats: ReconcileStats = field(default_factory=ReconcileStats)
    applied: FabricState | None = None
    # What each peer may reach (gateway.exports.state); None, or no ``exports`` configured: everything.
    exports: ExportState | None = None
    # Called after every pass: the one place a changed desired state (so a changed route
    # set) is announced to the node agents' long-polls (gateway.routewatch).
    on_pass: Callable[[], object] | None = None

    def __post_init__(self) -> None:
        self._lock = asyncio.Lock()
        self._counting = threading.Lock()
        # desired() is built again only when what it reads changed (the loop asks every
        # second; with 1,000 peers a build reads every row of both stores).
        self._desired: tuple[tuple[int, ...], FabricState] | None = None
        self.verify_interval = VERIFY_INTERVAL
        # The loop's last verify: (the applied state it checked, its problems, monotonic time).
        self._verified: tuple[FabricState, list[str], float] | None = None
        # After an apply, a costly verify comes within VERIFY_INTERVAL (not verify_interval),
        # so /readyz soon has a verdict on the new state without verifying itself.
        self._verify_due: float | None = None

    def fingerprint(self) -> tuple[int, ...] | None:
        """What desired() depends on, as numbers that change when it does; None: unknown
        (a store without change counts), build every time."""
        store_changes = getattr(self.store, "changes", None)
        views_changes = getattr(self.views, "generation", None)
        if store_changes is None or views_changes is None:
            return None
        resolver = self.exports.resolver if self.exports is not None else None
        return store_changes(), views_changes(), getattr(resolver, "generation", 0)

    # --- desired state ----------------------------------------------------------------------

    def desired(self) -> FabricState:
        key = self.fingerprint()
        if key is not None and self._desired is not None and self._desired[0] == key:
            return self._desired[1]
        state = self._build_desired()
        # Kept only if nothing was written meanwhile (the first build creates the key).
        if key is not None and key == self.fingerprint():
            self._desired = (key, state)
        return state

    def _build_desired(self) -> FabricState:
        c = self.config
        local = LocalFabric(
            cluster_id=c.cluster_id, interface=c.wireguard.interface,
            listen_port=c.wireguard.listen_port, private_key=self.store.private_key(),
            mtu=c.wireguard.mtu, pod_cidrs=c.pod_cidrs, service_cidrs=c.service_cidrs,
            gateway_ip=self.gateway_ip, masquerade=c.masquerade, nft_table=c.nft_table,
            gateway_ip6=self.gateway_ip6, health_port=c.health.port)
        peers = []
        all_views = self.views.all_views()
        for p in self.store.peers():
            if p.their_views is None:
                continue  # pending: the peer has not told us its views of us yet
            ours = ordered(all_views.get(p.cluster_id, []))
            peers.append(PeerFabric(
                cluster_id=p.cluster_id, public_key=p.public_key, endpoint=p.endpoint,
                preshared_key=p.psk_b64, remote=tuple(ours), local=tuple(p.their_views),
                probe_ip=translate(p.gateway_ip, ours)))
        policy = self.exports.policy(peers) if self.exports is not None else None
        return FabricState(local=local, peers=tuple(peers), exports=policy)

    def probe_targets(self, state: FabricState | None = None) -> dict[str, str]:
        st = state or self.desired()
        return {p.cluster_id: p.probe_ip for p in st.peers if p.probe_ip}

    # --- reconcile --------------------------------------------------------------------------

    async def reconcile(self, *, force: bool = False) -> bool:
        """Make the data plane match the desired state; True if it does afterwards."""
        async with self._lock:
            return await self._pass(force, None)

    async def check(self, *, verify: bool, exited: bool = False) -> None:
        """One step of the loop: reconcile only if the data plane died, drifted (when
        ``verify``) or the desired state changed since the last apply. ``exited``: its
        process is known to have exited (a pidfd said so): no confirmation needed."""
        async with self._lock:
            alive = await asyncio.to_thread(self.dataplane.alive)
            if not alive and self.applied is not None and not exited:
                # A restart costs traffic: act on a death seen twice, CONFIRM_DELAY apart.
                await asyncio.sleep(CONFIRM_DELAY)
                alive = await asyncio.to_thread(self.dataplane.alive)
            if alive and exited and self.applied is not None:
                # The process we followed exited, yet a data plane answers: its standby took
                # over already (fabric/wg/standby.py). A restart all the same: count it and
                # program the new process fully (it restored only the saved configuration).
                self.stats.restarts += 1
                log.warning("data plane %s: its process exited and the standby took over",
                            self.config.wireguard.interface)
                await self._pass(True, True)
                return
            drift: list[str] = []
            if alive and verify and self.applied is not None:
                t0 = time.monotonic()
                drift = await asyncio.to_thread(self._verify, self.applied)
                # Reading the whole table and every WireGuard peer grows with the peers:
                # keep it under ~0.5 % of the time (every 10 s up to a 0.05 s verify).
                self.verify_interval = max(VERIFY_INTERVAL, VERIFY_SHARE * (time.monotonic() - t0))
                self._verified = (self.applied, drift, time.monotonic())
                self._verify_due = None
                if drift:
                    log.warning("drift: %s; re-applying", "; ".join(drift))
            # An endpoint that did not resolve is retried (with the resolver's backoff)
            # by syncing again; it concerns only its peer, the others are programmed.
            retry = self.dataplane.endpoint_problems()[1]
            due = retry is not None and time.monotonic() >= retry
            if alive and not drift and not due and self.applied is not None and \
                    self.applied == self.desired():
                return
            await self._pass(bool(drift) or due, alive)

    async def _pass(self, force: bool, alive: bool | None) -> bool:
        try:
            return await self._apply(force, alive)
        finally:
            if self.on_pass is not None:
                try:
                    self.on_pass()
                except Exception as e:  # the watchers are told next time; reconcile goes on
                    log.warning("announcing the route set failed: %s: %s", type(e).__name__, e)

    async def _apply(self, force: bool, alive: bool | None) -> bool:
        want = self.desired()
        self.stats.runs += 1
        try:
            if alive is None:
                alive = await asyncio.to_thread(self.dataplane.alive)
            if not alive:
                if self.applied is not None:
                    self.stats.restarts += 1
                    log.warning("data plane %s is down; restarting it", self.config.wireguard.interface)
                await asyncio.to_thread(self.dataplane.ensure_up)
                force = True
                previous = None
            else:
                previous = self.applied
            if force or want != self.applied:
                t0 = time.monotonic()
                await asyncio.to_thread(self.dataplane.apply, want, previous)
                self._verified = None  # a verdict on what was there before
                if self.verify_interval > VERIFY_INTERVAL and self._verify_due is None:
                    self._verify_due = time.monotonic() + VERIFY_INTERVAL
                log.info("applied %d peers in %.3fs", len(want.peers), time.monotonic() - t0)
            self.applied = want
            self.stats.ok = True
            self.stats.last_ok = self.clock()
            self.stats.last_error = None
        except Exception as e:
            self.stats.errors += 1
            self.stats.ok = False
            self.stats.last_error = f"{type(e).__name__}: {e}"
            log.error("reconcile failed: %s", self.stats.last_error)
            self.applied = None  # unknown: apply from scratch next time
            return False
        self.health.set_peers(self.probe_targets(want), self.clock())
        return True

    async def run(self, stop: asyncio.Event) -> None:
        """The daemon's reconcile loop, until ``stop`` is set: every CHECK_INTERVAL, and
        at once when the data-plane process exits (gateway.exitwatch)."""
        last_verify = time.monotonic()
        watch = ExitWatch(asyncio.get_running_loop())
        try:
            while not stop.is_set():
                if watch.pid is None:
                    watch.follow(await asyncio.to_thread(self.dataplane.process_pid))
                waits = [asyncio.ensure_future(stop.wait()), asyncio.ensure_future(watch.exited.wait())]
                await asyncio.wait(waits, timeout=CHECK_INTERVAL, return_when=asyncio.FIRST_COMPLETED)
                for w in waits:
                    w.cancel()
                if stop.is_set():
                    return
                exited = watch.exited.is_set()
                watch.exited.clear()
                verify = self._verify_now(time.monotonic(), last_verify)
                if verify:
                    last_verify = time.monotonic()
                try:
                    await self.check(verify=verify, exited=exited)
                except Exception as e:  # keep the loop alive whatever happens
                    self.stats.errors += 1
                    self.stats.last_error = f"{type(e).__name__}: {e}"
                    log.error("reconcile loop: %s", self.stats.last_error)
        finally:
            watch.close()

    def _verify_now(self, now: float, last_verify: float) -> bool:
        """Whether the loop verifies in this pass: ``verify_interval`` after the last check
        of the applied state, the loop's or one /readyz or status made (which the loop
        would otherwise repeat: a costly one is 0.3-0.5 s at 1,000 peers), or when due
        after an apply."""
        seen = self._verified[2] if self._verified is not None and self._verified[0] is self.applied else 0.0
        return now - max(last_verify, seen) >= self.verify_interval or \
            (self._verify_due is not None and now >= self._verify_due)

    def _verify(self, state: FabricState) -> list[str]:
        t0 = time.thread_time()
        try:
            return self.dataplane.verify(state)
        finally:
            spent = time.thread_time() - t0
            with self._counting:  # the loop's thread and request threads both verify
                self.stats.verifies += 1
                self.stats.verify_cpu_s += spent

    # --- readiness --------------------------------------------------------------------------

    def ready(self) -> tuple[bool, str]:
        if not self.stats.ok or self.applied is None:
            return False, self.stats.last_error or "data plane not programmed yet"
        if self.applied != self.desired():
            return False, "state changed since the last apply"
        if not self.dataplane.alive():
            return False, "data plane is not running"
        # A peer without views is programmed as nothing (no allowed IPs, no routes, no
        # NAT): never ready like that (a lost or emptied ipam.db once looked "connected").
        blind = [p.cluster_id for p in self.applied.peers if not p.remote or not p.local]
        if blind:
            return False, "peers without views: " + ", ".join(blind) + " (IPAM store or peer state lost?)"
        off = forwarding_mod.check(self.forwarding, self.sysctl_root)
        if off:
            return False, "; ".join(off)
        cached = self._verified
        if self.verify_interval > VERIFY_INTERVAL and cached is not None and cached[0] is self.applied \
                and time.monotonic() - cached[2] < self.verify_interval:
            # A table so large that verifying costs (the loop spaced it out): /readyz and
            # status use the loop's verdict on this very state, as fresh as the loop's.
            problems = cached[1]
        else:
            try:
                problems = self._verify(self.applied)
                if self.verify_interval > VERIFY_INTERVAL:
                    # for the next asker, and the loop's: its check of this state is done
                    self._verified = (self.applied, problems, time.monotonic())
                    self._verify_due = None
            except Exception as e:
                problems = [f"cannot verify the data plane: {type(e).__name__}: {e}"]
        if problems:
            return False, "; ".join(problems)
        return True, "ok"
