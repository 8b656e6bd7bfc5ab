"""What a gateway tells every peer on its own initiative: a new WireGuard key
(``crosswire key rotate``), and, after a restart, its changed ranges or
endpoint/peering URL. Each takes the :class:`gateway.exchange.Exchange` whose
store and channel it uses (gateway/DESIGN.md, "Peering protocol").
"""

from __future__ import annotations

import logging
from typing import Any, Protocol

from fabric.model import RangeMap
from gateway import peering
from gateway.channel import PeerChannel
from gateway.config import Config
from gateway.errors import GatewayError
from gateway.peering import PeeringError
from gateway.reconciler import Reconciler
from gateway.sparse import mode_of
from gateway.state import StateStore, wg_keypair


class Exchange(Protocol):
    """What these need of :class:`gateway.exchange.Exchange` (which calls them)."""

    config: Config
    store: StateStore
    reconciler: Reconciler
    channel: PeerChannel

    def our_ranges(self) -> list[tuple[str, str]]: ...
    def check_views_of_us(self, views: list[RangeMap], status: int = 502) -> None: ...

log = logging.getLogger("crosswire.gateway")


async def rotate_key(ex: Exchange) -> dict[str, Any]:
    """New WireGuard key: announce it to every peer first, then switch to it."""
    priv, pub = wg_keypair()
    endpoint = ex.config.wireguard_endpoint()
    told, failed, pending = [], {}, {}
    for p in ex.store.peers():
        try:
            answer = await ex.channel.send(p, "key", {"public_key": pub, "endpoint": endpoint})
            told.append(p.cluster_id)
            if answer.get("applied") is False:
                pending[p.cluster_id] = str(answer.get("pending") or "not applied yet")
        except GatewayError as e:
            failed[p.cluster_id] = str(e)
    if failed:
        # Peers that did not learn the new key would lose us: roll the others back.
        for cid in told:
            p2 = ex.store.peer(cid)
            if p2 is not None:
                try:
                    await ex.channel.send(p2, "key", {"public_key": ex.store.public_key(),
                                                        "endpoint": endpoint})
                except GatewayError as e:
                    log.error("could not roll back the key announcement to %s: %s", cid, e)
        raise GatewayError("key rotation aborted, unreachable peers: " +
                           "; ".join(f"{k}: {v}" for k, v in failed.items()), 502)
    ex.store.set_private_key(priv)
    await ex.reconciler.reconcile()
    log.info("WireGuard key rotated; %d peers informed, %d with the change pending", len(told), len(pending))
    return {"public_key": pub, "peers_informed": told, "peers_pending": pending}

async def announce_ranges(ex: Exchange) -> dict[str, str]:
    """Tell peers our full range set when it differs from what they have views of.

    The message carries the whole set, not a delta: the receiver allocates
    views of added ranges and releases those of dropped ones.
    """
    result = {}
    mine = ex.our_ranges()
    for p in ex.store.peers():
        if p.their_views is None:
            continue
        if mode_of(p.their_views) == "sparse" or {(m.kind, m.real) for m in p.their_views} == set(mine):
            continue  # a sparse peer views our exports, told by ExportSync
        try:
            body = await ex.channel.send(p, "ranges", {
                "ranges": [{"kind": k, "cidr": c} for k, c in mine],
                "gateway_ip": ex.reconciler.gateway_ip})
            if body.get("pending_approval"):  # it told us its views once approved ("views")
                result[p.cluster_id] = f"pending: {body['pending_approval']}"
                continue
            views = peering.parse_views(body.get("views_of_you"), "views_of_you")
            ex.check_views_of_us(views)
            ex.store.update_peer(p.cluster_id, their_views=tuple(views))
            result[p.cluster_id] = "ok"
        except (GatewayError, PeeringError) as e:
            result[p.cluster_id] = str(e)
    await ex.reconciler.reconcile()
    return result

async def announce_endpoint(ex: Exchange) -> dict[str, str]:
    """Tell every peer our WireGuard endpoint and peering URL if they changed.

    The last values every peer acknowledged are kept in state.db; they are
    updated only when all peers acknowledged, so a peer that was unreachable
    is told on the next attempt (resending to the others is harmless).
    """
    endpoint, url = ex.config.wireguard_endpoint(), ex.config.advertise_url()
    last = ex.store.announced()
    if last == {"endpoint": endpoint, "url": url}:
        return {}
    live = [p for p in ex.store.peers() if p.their_views is not None]
    if last is None and not live:
        # First start: peers that join later learn both in the join itself.
        ex.store.set_announced(endpoint, url)
        return {}
    result = {}
    for p in live:
        try:
            # A peer that never told us a pin may predate TLS: it keeps plain HTTP (which
            # our listener serves its channel messages) until it is upgraded and pins us.
            told = url if ex.store.peer_pins(p.cluster_id) else "http://" + url.split("://", 1)[1]
            await ex.channel.send(p, "endpoint", {"endpoint": endpoint, "url": told})
            result[p.cluster_id] = "ok"
        except GatewayError as e:
            result[p.cluster_id] = str(e)
    if all(v == "ok" for v in result.values()):
        ex.store.set_announced(endpoint, url)
    return result
