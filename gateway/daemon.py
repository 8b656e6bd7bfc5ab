"""``crosswire gateway run``: wires config, state, IPAM, fabric, health and the API together.

One asyncio loop (uvicorn with ``loop="asyncio"``: pyroute2 breaks under uvloop)
runs: the two HTTP servers (the peering listener, TLS, ``api.listen``; the
operator listener, ``api.operator_listen``; each with its own connection limits,
so a flood of the published port never reaches health probes or operators), the reconcile loop (``Reconciler.run``: data-plane
liveness and drift are judged there), the peer announcements, the health
prober and the UDP echo responder. Blocking data-plane calls run in worker
threads.

On exit (SIGTERM/SIGINT) the data plane is left running, so a restart or an
upgrade of the daemon does not interrupt traffic; the next start adopts it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sqlite3
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

from fabric.dataplane import Dataplane, OwnershipError
from gateway import forwarding, memory, statedir
from gateway.api import create_app, create_peering_app
from gateway.config import Config, detect_gateway_ip
from gateway.controlplane import ControlPlane
from gateway.dns.records import ImportsSnapshot
from gateway.dns.server import bind_from_config as bind_dns
from gateway.exchange import Exchange
from gateway.health import EchoResponder, HealthTracker, Prober
from gateway.httpserver import connection_caps, listen, make_server, raise_fd_limit, watcher_cap
from gateway.ipam_adapter import IpamViews, ViewsError
from gateway.peerranges import admin as ranges_admin
from gateway.peersources import PeerSources
from gateway.state import StateStore
from gateway.statedir import StateDirError

log = logging.getLogger("crosswire.daemon")

class StartupError(RuntimeError):
    """State or IPAM could not be opened; the message says which and why."""


ANNOUNCE_RETRY = (5.0, 300.0)  # first delay, cap: peers that were unreachable are retried


async def announce(exchange: Exchange, stop: asyncio.Event) -> None:
    """Tell peers what changed in our config across the restart (endpoint/URL, ranges).

    Retried with backoff until every peer acknowledged: a peer that is down when
    we start must still learn our new endpoint, or it keeps sending to the old one.
    """
    delay = ANNOUNCE_RETRY[0]
    while not stop.is_set():
        failed: dict[str, str] = {}
        for what, step in (("endpoint/URL", exchange.announce_endpoint), ("ranges", exchange.announce_ranges)):
            try:
                result = await step()
            except Exception as e:  # keep trying whatever happens
                failed[what] = f"{type(e).__name__}: {e}"
                continue
            if result:
                log.info("announced %s to peers: %s", what, result)
            failed.update({f"{what} to {k}": v for k, v in result.items() if v != "ok"})
        if not failed:
            return
        log.warning("announcement incomplete, retrying in %.0fs: %s", delay, "; ".join(
            f"{k}: {v}" for k, v in failed.items()))
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(stop.wait(), delay)
        delay = min(delay * 2, ANNOUNCE_RETRY[1])


def find_gateway_ip(config: Config) -> str | None:
    """config/env, else the first address of ours inside pod_cidrs.

    Blocking (sync pyroute2 runs its own event loop): call it outside the
    daemon's loop or through asyncio.to_thread.
    """
    if config.gateway_ip is not None:
        return config.gateway_ip
    try:
        # Dual stack: the IPv4 address is gateway_ip, the IPv6 one gateway_ip6.
        return detect_gateway_ip(config.pod_cidrs, 4) or detect_gateway_ip(config.pod_cidrs)
    except Exception as e:
        log.warning("cannot detect the gateway pod IP: %s", e)
        return None


def find_gateway_ip6(config: Config, gateway_ip: str | None) -> str | None:
    """Dual stack: config/env, else our first IPv6 address inside the IPv6 pod_cidrs.

    None when gateway_ip is itself IPv6 (single-stack IPv6) or there is no IPv6
    pod range. Blocking, like find_gateway_ip.
    """
    if config.gateway_ip6 is not None:
        return config.gateway_ip6
    if gateway_ip is not None and ":" in gateway_ip:
        return None
    if not any(":" in c for c in config.pod_cidrs):
        return None
    try:
        return detect_gateway_ip(config.pod_cidrs, 6)
    except Exception as e:
        log.warning("cannot detect the gateway pod IPv6 address: %s", e)
        return None


def build(config: Config, gateway_ip: str | None, gateway_ip6: str | None = None) -> ControlPlane:
    logging.getLogger("httpx").setLevel(logging.WARNING)  # it logs every request at INFO
    try:
        statedir.check(config.state_dir)
    except StateDirError as e:
        raise StartupError(str(e)) from None
    dataplane = Dataplane(config.wireguard.interface, config.wireguard.implementation,
                          config.wireguard.mtu, config.nft_table,
                          log_path=os.path.join(config.state_dir, "dataplane.log"),
                          standby=config.wireguard.standby, supervise=config.wireguard.supervise)
    # Never touch what crosswire did not create: refuse a foreign link or table
    # before anything (the stores included) is created. In a worker thread:
    # sync pyroute2 cannot run inside the daemon's event loop.
    had_state = statedir.has_state(config.state_dir)
    with ThreadPoolExecutor(1, thread_name_prefix="claim") as pool:
        try:
            pool.submit(dataplane.claim, had_state).result()
        except OwnershipError as e:
            raise StartupError(str(e)) from None
    try:
        store = StateStore(config.state_dir)
        store.admin_token()  # make sure the CLI beside us can authenticate
    except (OSError, sqlite3.Error) as e:
        raise StartupError(f"state_dir {config.state_dir}: {e}") from None
    if gateway_ip is None:
        log.warning("no address of ours inside pod_cidrs: host-network SNAT and health probes are off "
                    "(set gateway_ip or CROSSWIRE_POD_IP)")
    try:
        views = IpamViews(os.path.join(config.state_dir, "ipam.db"), config.pod_cidrs,
                          config.service_cidrs, config.reserved_cidrs, config.ipam_pools)
    except (ViewsError, OSError) as e:
        store.close()
        raise StartupError(f"IPAM: {e}") from None
    return ControlPlane.build(config, store, views, dataplane, gateway_ip=gateway_ip,
                              gateway_ip6=gateway_ip6, forwarding=forwarding.wanted(config),
                              health=HealthTracker(config.health.interval, config.health.timeout,
                                                                  config.health.max_probe_rate))


async def serve(config: Config, on_built: Callable[[], None] | None = None) -> int:
    gw_ip = await asyncio.to_thread(find_gateway_ip, config)
    # build() refuses damaged state before anything on the host is changed.
    cp = build(config, gw_ip, await asyncio.to_thread(find_gateway_ip6, config, gw_ip))
    if on_built is not None:
        on_built()
    ranges_admin.audit(cp.exchange)  # peers stored before the policy (or a narrower one): a warning each
    host, port = config.listen_host_port
    op_host, op_port = config.operator_host_port
    fds = raise_fd_limit()
    try:
        # Bound before anything on the host changes: a port in use stops us cleanly.
        listener = listen(host, port)
    except OSError as e:
        cp.store.close()
        raise StartupError(f"api.listen: cannot listen on {config.api.listen}: {e.strerror or e}") from None
    try:
        op_listener = listen(op_host, op_port)
    except OSError as e:
        listener.close()
        cp.store.close()
        raise StartupError(f"api.operator_listen: cannot listen on {config.api.operator_listen}: "
                           f"{e.strerror or e}") from None
    try:  # DNS for imported services (dns.listen; "" disables): bound here for the same reason
        dns = bind_dns(config.dns.listen_host_port, config.dns.zone, ImportsSnapshot(cp.read.imported_services),
                       PeerSources(cp.views.all_views, generation=cp.views.generation).is_peer)  # a peer: no answers
    except OSError as e:
        listener.close()
        op_listener.close()
        cp.store.close()
        raise StartupError(f"dns.listen: cannot listen on {config.dns.listen}: {e.strerror or e}") from None
    # Before anything routes: a gateway that cannot forward drops every packet.
    forwarding.enable(forwarding.wanted(config))
    rec = cp.reconciler
    assert cp.tls is not None
    watchers = watcher_cap(config.api.max_watchers, fds)
    if watchers < config.api.max_watchers:
        log.warning("api.max_watchers lowered to %d: the file descriptor limit is %d", watchers, fds)
    routewatch = cp.routewatch
    assert routewatch is not None
    routewatch.max_watchers = watchers
    cap, op_cap = connection_caps(config.api.max_connections, fds - watchers)
    server = make_server(create_peering_app(cp), host, port, max_connections=cap,
                         request_timeout=config.api.request_timeout, ssl_context=cp.tls.server_context())
    # Inside the cluster, a few sources (kubelet, Prometheus, node agents, the CLI) may each
    # open many connections: no per-source share there, only the total cap.
    # Node agents' long-polls (up to api.max_watchers) come on top, bounded by gateway.routewatch.
    operator = make_server(create_app(cp), op_host, op_port, max_connections=op_cap,
                           request_timeout=config.api.request_timeout, per_source=op_cap + watchers,
                           watchers=watchers)
    log.debug("file descriptor limit %d, connection caps: peering %d, operator %d + %d watchers",
              fds, cap, op_cap, watchers)
    echo = EchoResponder(config.health.port)
    try:
        await echo.start()
    except OSError as e:
        log.warning("health echo responder on UDP %d: %s", config.health.port, e)
    if dns is not None:
        await dns.start()
    loop = asyncio.get_running_loop()
    prober = Prober(rec.health, config.health.port, rec.gateway_ip, time.time)
    stop = asyncio.Event()

    def on_signal() -> None:
        log.info("signal received, shutting down")
        routewatch.close()  # held long-polls answer now: shutdown waits for no one
        server.should_exit = True
        operator.should_exit = True
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_signal)
    log.info("crosswire gateway %s (key %s) starting: peering %s (TLS pin %s), operator http://%s, "
             "wireguard %s (%s) port %d", config.cluster_id, cp.store.public_key(), config.advertise_url(),
             cp.tls.pin, config.api.operator_listen, config.wireguard.interface,
             config.wireguard.implementation, config.wireguard.listen_port)
    cp.exchange.channel.client()  # build the peer HTTP client now, not on the first `peer add`
    if not await rec.reconcile(force=True):
        log.error("initial reconcile failed (will retry): %s", rec.stats.last_error)
    tasks = [loop.create_task(rec.run(stop)), loop.create_task(prober.run()),
             loop.create_task(announce(cp.exchange, stop)), loop.create_task(memory.trim_every())]
    if cp.export_sync is not None and config.exports is not None:
        tasks.append(loop.create_task(cp.export_sync.run(stop)))  # peers learn what we export to them
    try:
        # Either server ending (a signal, or a failure to start) ends both.
        serving = [loop.create_task(server.serve(sockets=[listener])),
                   loop.create_task(operator.serve(sockets=[op_listener]))]
        await asyncio.wait(serving, return_when=asyncio.FIRST_COMPLETED)
        server.should_exit = operator.should_exit = True
        for what, result in zip(("peering", "operator"), await asyncio.gather(*serving, return_exceptions=True),
                                strict=True):
            if isinstance(result, BaseException):
                log.error("%s listener failed: %s: %s", what, type(result).__name__, result)
    finally:
        stop.set()
        for t in tasks:
            t.cancel()
        for t in tasks:
            with contextlib.suppress(BaseException):
                await t
        with contextlib.suppress(Exception):
            await cp.exchange.channel.aclose()
        prober.close()
        echo.close()
        if dns is not None:
            await dns.aclose()
        if isinstance(cp.views, IpamViews):
            cp.views.close()
        cp.store.close()
        log.info("stopped (data plane left running)")
    return 0 if server.started and operator.started else 1


def _log_unraisable(u: sys.UnraisableHookArgs) -> None:
    # Errors Python can only report from __del__ (a library's object half-built when
    # descriptors ran out, say) get one log line, not a traceback on stderr.
    log.warning("ignored in %r: %s: %s", getattr(u.object, "__qualname__", u.object),
                getattr(u.exc_type, "__name__", u.exc_type), u.exc_value)


def run(config: Config, on_built: Callable[[], None] | None = None) -> int:
    """Serve until stopped. ``on_built``: called once the state was accepted and opened."""
    sys.unraisablehook = _log_unraisable
    # Before any thread: arenas are made as threads first allocate (gateway.memory).
    arenas = memory.limit_arenas()
    if arenas is not None:
        log.debug("malloc arenas capped at %d", arenas)
    log.debug("gc thresholds %s", memory.tune_gc())
    return asyncio.run(serve(config, on_built))
