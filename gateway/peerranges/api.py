"""The peer range routes of the HTTP API (registered by ``gateway.api.create_app``).

Admin: ``GET /api/v1/peers/{cluster_id}/ranges`` (its ranges and our views,
its token's ranges, the policy, a pending change) and ``POST`` the same path
with ``{"approve": true}`` or ``{"reject": true}`` (a pending change).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from fastapi import Depends, FastAPI, Request
from pydantic import BaseModel, ConfigDict, Field

from gateway.apimodels import errors, ok
from gateway.audit import audited
from gateway.peerranges import admin as ranges_admin

if TYPE_CHECKING:
    from gateway.controlplane import ControlPlane


class RangeItem(BaseModel):
    kind: str
    cidr: str


class PeerRangeItem(RangeItem):
    view: str | None = Field(description="our view of it (null: none allocated)")


class PendingRanges(BaseModel):
    ranges: list[RangeItem] = Field(description="the peer's full requested set")
    gateway_ip: str | None
    received: float
    added: list[RangeItem]
    removed: list[RangeItem]
    problem: str | None = Field(description="why approving it would be refused now (policy or quota)")


class PeerRanges(BaseModel):
    cluster_id: str
    approval: str = Field(description="auto, or manual: range changes wait for approval")
    ranges: list[PeerRangeItem]
    token_ranges: list[str] | None = Field(description="what its token allows (null: the policy only)")
    policy: dict[str, Any]
    pending: PendingRanges | None
    outside_policy: str | None = Field(description="why the current policy would refuse its stored ranges "
                                                   "(stored before the policy, or the policy was narrowed)")


class PeerRangesDecided(PeerRanges):
    applied: bool
    peer_notified: bool | str | None = Field(description="true, why not, or null (rejected)")


class RangesDecision(BaseModel):
    model_config = ConfigDict(extra="forbid")
    approve: bool = False
    reject: bool = False


def register(app: FastAPI, cp: ControlPlane, admin: Callable[..., None]) -> None:
    from gateway.errors import GatewayError

    @app.get("/api/v1/peers/{cluster_id}/ranges", tags=["admin"], dependencies=[Depends(admin)],
             response_model=None, responses={**ok(PeerRanges), **errors(401, 404)})
    def peer_ranges(cluster_id: str) -> dict[str, Any]:
        return ranges_admin.show(cp.exchange, cluster_id)

    @app.post("/api/v1/peers/{cluster_id}/ranges", tags=["admin"], dependencies=[Depends(admin)],
              response_model=None, responses={**ok(PeerRangesDecided), **errors(400, 401, 403, 404, 409, 422)})
    async def peer_ranges_decide(cluster_id: str, req: RangesDecision, request: Request) -> dict[str, Any]:
        with audited(request, "peer.ranges." + ("approve" if req.approve else "reject"), peer=cluster_id):
            if req.approve == req.reject:
                raise GatewayError("give either approve: true or reject: true", 422)
            return await ranges_admin.decide(cp.exchange, cluster_id, req.approve)
