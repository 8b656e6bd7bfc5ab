"""The export routes of the HTTP API (registered by ``gateway.api.create_app``).

Read-only: ``GET /api/v1/exports`` (ours, per peer), ``GET /api/v1/imports``
(the peers', in our view). Admin: ``PUT /api/v1/peers/{cluster_id}/exports``
(``{"exports": [names]}`` or ``{"all": true}``): what one peer may reach.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from fastapi import Depends, FastAPI, Request
from pydantic import BaseModel, ConfigDict, Field

from gateway.apimodels import errors, ok
from gateway.audit import audited

if TYPE_CHECKING:
    from gateway.controlplane import ControlPlane
    from gateway.exports.sync import ExportSync


class ExportItem(BaseModel):
    name: str
    ports: list[str] | None = Field(description='["80/tcp"], or null: every port and protocol')
    addresses: list[str] = Field(description="real addresses (CIDRs), configured or resolved")
    dns_name: str
    resolved: bool = Field(description="addresses come from the cluster's DNS")
    resolve_error: str | None


class ExportPeer(BaseModel):
    cluster_id: str
    all: bool = Field(description="the peer may reach every export")
    exports: list[str]
    denied: dict[str, int] = Field(description="packets and bytes from this peer the policy refused")


class Exports(BaseModel):
    exposure: str = Field(description="all (no exports configured) or exports")
    exports: list[ExportItem]
    peers: list[ExportPeer]


class ImportItem(BaseModel):
    peer: str
    name: str
    ports: list[str] | None
    addresses: list[str] = Field(description="in our view of the peer: what our pods connect to")
    dns_names: list[str]
    received: float | None


class Imports(BaseModel):
    zone: str
    imports: list[ImportItem]


class PeerExports(BaseModel):
    model_config = ConfigDict(extra="forbid")
    exports: list[str] | None = Field(default=None, description="export names this peer may reach")
    all: bool = Field(default=False, description="every export (instead of a list)")


class PeerExportsSet(BaseModel):
    cluster_id: str
    exports: list[str]
    all: bool
    applied: bool


def register(app: FastAPI, cp: ControlPlane, admin: Callable[..., None],
             sync: Callable[[], ExportSync | None] = lambda: None) -> None:
    from gateway.errors import GatewayError

    @app.get("/api/v1/exports", tags=["read"], response_model=None, responses={**ok(Exports), **errors()})
    def exports() -> dict[str, Any]:
        return cp.read.exports()

    @app.get("/api/v1/imports", tags=["read"], response_model=None, responses={**ok(Imports), **errors()})
    def imports() -> dict[str, Any]:
        return cp.read.imports()

    @app.put("/api/v1/peers/{cluster_id}/exports", tags=["admin"], dependencies=[Depends(admin)],
             response_model=None, responses={**ok(PeerExportsSet), **errors(400, 401, 404, 409, 422)})
    async def peer_exports(cluster_id: str, req: PeerExports, request: Request) -> dict[str, Any]:
        with audited(request, "peer.exports", peer=cluster_id, exports="all" if req.all else req.exports):
            if (req.exports is None) == (not req.all):
                raise GatewayError("give either exports (a list of names) or all: true", 422)
            result = await cp.exchange.set_peer_exports(cluster_id, None if req.all else req.exports)
        s = sync()
        if s is not None:
            s.kick()  # the peer learns its new share now, not at the next interval
        return result
