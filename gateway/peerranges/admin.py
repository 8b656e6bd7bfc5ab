"""The operator's side of peer ranges: what a peer has, what it asked for, approval.

``show`` is ``GET /api/v1/peers/{id}/ranges``; ``decide`` is the POST that
approves or rejects a pending change (``approval: manual``). An approved change
passes the policy again (the config may have changed since), is allocated like
an automatic one, and the peer is told our new views of it in a ``views``
message, so both sides are programmed when the command returns.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from gateway.errors import GatewayError
from gateway.ipam_adapter import ViewsError, ordered
from gateway.peering import views_body

if TYPE_CHECKING:
    from gateway.exchange import Exchange

log = logging.getLogger("crosswire.gateway")


def _ranges(pairs: Any) -> list[dict[str, str]]:
    return [{"kind": k, "cidr": c} for k, c in pairs]


def show(ex: Exchange, cluster_id: str) -> dict[str, Any]:
    peer = ex.store.peer(cluster_id)
    if peer is None:
        raise GatewayError(f"no peer {cluster_id!r}", 404)
    gate = ex.ranges_gate
    views: dict[tuple[str, str], str] = {(m.kind, m.real): m.view for m in ex.views.views(cluster_id)}
    pending = gate.pending(cluster_id)
    out: dict[str, Any] = {
        "cluster_id": cluster_id, "approval": gate.policy.approval,
        "ranges": [{"kind": k, "cidr": c, "view": views.get((k, c))} for k, c in peer.ranges],
        "token_ranges": None if (g := gate.grant(cluster_id)) is None else list(g),
        "policy": gate.policy.to_dict(), "pending": None,
        "outside_policy": None if (v := gate.verdict(peer.ranges, gate.grant(cluster_id))).ok else v.message()}
    if pending is not None:
        now, new = set(peer.ranges), set(pending.ranges)
        verdict = gate.verdict(pending.ranges, gate.grant(cluster_id))
        out["pending"] = {"ranges": _ranges(pending.ranges), "gateway_ip": pending.gateway_ip,
                          "received": pending.received,
                          "added": _ranges(r for r in pending.ranges if r not in now),
                          "removed": _ranges(r for r in peer.ranges if r not in new),
                          "problem": None if verdict.ok else verdict.message()}
    return out


def audit(ex: Exchange) -> dict[str, str]:
    """Stored peers whose ranges the current policy would refuse (stored before it, or the
    operator narrowed it since): logged at start; they stay as they are until re-peered."""
    gate = ex.ranges_gate
    out = {}
    for p in ex.store.peers():
        v = gate.verdict(p.ranges, gate.grant(p.cluster_id))
        if not v.ok:
            out[p.cluster_id] = v.message()
            log.warning("peer %s: its stored ranges are outside the peer range policy (remove and re-peer it "
                        "to apply the policy): %s", p.cluster_id, v.message())
    return out


async def decide(ex: Exchange, cluster_id: str, approve: bool) -> dict[str, Any]:
    peer = ex.store.peer(cluster_id)
    if peer is None:
        raise GatewayError(f"no peer {cluster_id!r}", 404)
    gate = ex.ranges_gate
    pending = gate.pending(cluster_id)
    if pending is None:
        raise GatewayError(f"peer {cluster_id} has no pending range change", 409)
    if not approve:
        gate.clear_pending(cluster_id)
        log.info("peer %s: pending range change rejected by the operator", cluster_id)
        return {**show(ex, cluster_id), "applied": False, "peer_notified": None}
    gate.require(cluster_id, pending.ranges, gate.grant(cluster_id), "approved range change")
    try:
        ex.allocate_views(cluster_id, pending.ranges, pending.gateway_ip or peer.gateway_ip, replace=True)
    except ViewsError as e:
        raise GatewayError(f"cannot allocate views of the pending ranges: {e}", 422) from None
    ex.store.update_peer(cluster_id, ranges=pending.ranges, gateway_ip=pending.gateway_ip or peer.gateway_ip)
    gate.clear_pending(cluster_id)
    applied = await ex.reconciler.reconcile()
    log.info("peer %s: range change approved: %s", cluster_id, ", ".join(f"{k} {c}" for k, c in pending.ranges))
    notified: bool | str = True
    stored = ex.store.peer(cluster_id) or peer
    if stored.their_views is not None:  # a pending (half-joined) peer learns them with its views
        try:
            await ex.channel.send(stored, "views", {"views": views_body(ordered(ex.views.views(cluster_id)))})
        except GatewayError as e:
            notified = str(e)  # its next `ranges` retry gets them in the answer
    return {**show(ex, cluster_id), "applied": applied, "peer_notified": notified}
