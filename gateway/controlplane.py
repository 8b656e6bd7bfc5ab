"""The gateway's control plane: three parts over one config, store, IPAM and data plane.

- ``reconciler`` (:mod:`gateway.reconciler`): desired state, reconcile loop, readiness;
- ``exchange`` (:mod:`gateway.exchange`): tokens, peering, channel messages, announcements;
- ``read`` (:mod:`gateway.readmodel`): what the API serves to read.

The FastAPI app (:mod:`gateway.api`) and the daemon (:mod:`gateway.daemon`)
hold a ``ControlPlane``; tests build two with a fake data plane and wire their
HTTP clients to each other's ASGI apps.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from gateway import forwarding as forwarding_mod
from gateway import pinhttp
from gateway.channel import HttpFactory, PeerChannel, TlsPost, default_http
from gateway.config import Config
from gateway.exchange import Exchange
from gateway.exports.config import Resolver
from gateway.exports.state import ExportState
from gateway.exports.sync import ExportSync
from gateway.health import HealthTracker
from gateway.ipam_adapter import Views
from gateway.readmodel import ReadModel
from gateway.reconciler import DataplaneDriver, Reconciler
from gateway.routewatch import RouteWatch
from gateway.state import StateStore
from gateway.tlsid import TlsIdentity


def route_publisher(reconciler: Reconciler, read: ReadModel, watch: RouteWatch) -> Callable[[], bool]:
    """The reconciler's ``on_pass``: publish the route set only when what it is built from
    moved (the desired-state fingerprint and the next hops). A pass with nothing new (a
    verify, an endpoint retry) would otherwise rebuild and hash 1,000 peers' routes to find
    the version unchanged. An unknown fingerprint (None) publishes every time."""
    last: list[object] = [None]

    def on_pass() -> bool:
        fp = reconciler.fingerprint()
        key = None if fp is None else (fp, reconciler.gateway_ip, read.gateway_ip6)
        if key is not None and key == last[0]:
            return False
        changed = watch.publish(read.routes())
        last[0] = key  # only once published: a failed read is retried on the next pass
        return changed

    return on_pass


@dataclass
class ControlPlane:
    config: Config
    store: StateStore
    views: Views
    reconciler: Reconciler
    exchange: Exchange
    read: ReadModel
    export_sync: ExportSync | None = None  # tells peers our exports (the daemon runs it)
    tls: TlsIdentity | None = None  # the peering listener's certificate (state_dir)
    routewatch: RouteWatch | None = None  # /api/v1/routes' snapshot and its long-polls

    @classmethod
    def build(cls, config: Config, store: StateStore, views: Views, dataplane: DataplaneDriver, *,
              clock: Callable[[], float] = time.time, http: HttpFactory = default_http,
              health: HealthTracker | None = None, gateway_ip: str | None = None,
              gateway_ip6: str | None = None, forwarding: tuple[str, ...] = (),
              sysctl_root: Path = forwarding_mod.PROC_SYS, resolver: Resolver | None = None,
              tls_post: TlsPost | None = pinhttp.post) -> ControlPlane:
        health = health or HealthTracker()
        gateway_ip6 = config.gateway_ip6 if gateway_ip6 is None else gateway_ip6
        exports = ExportState(config, store, resolver or Resolver(cluster_domain=config.dns.cluster_domain))
        reconciler = Reconciler(config=config, store=store, views=views, dataplane=dataplane, clock=clock,
                                health=health, gateway_ip=config.gateway_ip if gateway_ip is None else gateway_ip,
                                gateway_ip6=gateway_ip6, forwarding=forwarding, sysctl_root=sysctl_root,
                                exports=exports)
        read = ReadModel(config=config, store=store, views=views, reconciler=reconciler, health=health,
                         clock=clock, gateway_ip6=gateway_ip6)
        watch = RouteWatch(config.api.max_watchers)
        read.routewatch = watch
        reconciler.on_pass = route_publisher(reconciler, read, watch)  # wakes the node agents' long-polls
        tls = TlsIdentity(Path(config.state_dir), config.cluster_id)
        channel = PeerChannel(config.cluster_id, clock, http, tls_post=tls_post, pins_of=store.peer_pins,
                              learn_pins=store.set_peer_pins, own_pins=tls.pins)
        exchange = Exchange(config=config, store=store, views=views, reconciler=reconciler,
                            channel=channel, clock=clock)
        return cls(config=config, store=store, views=views, reconciler=reconciler, exchange=exchange,
                   read=read, export_sync=ExportSync(exchange), tls=tls, routewatch=watch)
