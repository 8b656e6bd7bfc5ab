"""The HTTP API (FastAPI). OpenAPI at ``/openapi.json``.

Public, read-only: ``/healthz``, ``/readyz``, ``/metrics``, ``/api/v1/status``,
``/api/v1/peers``, ``/api/v1/nat``, ``/api/v1/ipam``, ``/api/v1/routes`` (the
node agents poll it).
Peering (authenticated by the token / channel keys inside the body, see
gateway.peering): ``POST /api/v1/peering/join``, ``POST /api/v1/peering/message``.
Admin (``Authorization: Bearer <state_dir/admin-token>``, 401 otherwise):
``POST /api/v1/tokens``, ``GET /api/v1/tokens``, ``DELETE /api/v1/tokens/{id}``,
``POST /api/v1/peers`` (peer add), ``DELETE
/api/v1/peers/{cluster_id}``, ``POST /api/v1/key/rotate``, ``POST /api/v1/ranges/announce``.

Errors are ``{"detail": "<reason>"}``. Validation errors are rewritten so they
never echo the request body back (it may hold a token).
"""

from __future__ import annotations

import hmac
import logging
from typing import Any

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, ConfigDict, Field

from gateway.controlplane import ControlPlane
from gateway.errors import GatewayError
from gateway.limits import BodyLimit
from gateway.metrics import render_metrics
from gateway.peering import PeeringError
from gateway.tokens import parse_duration

log = logging.getLogger("crosswire.api")


class TokenCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    ttl: str | float = Field(default="1h", description="lifetime: seconds or 90s/15m/1h/7d")
    reusable: bool = False


class PeerAdd(BaseModel):
    model_config = ConfigDict(extra="forbid")
    token: str = Field(min_length=4, max_length=4096, description="the line from `crosswire token create`")


class Envelope(BaseModel):
    model_config = ConfigDict(extra="forbid")
    body: dict[str, Any]
    mac: str


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"detail": message}, status_code=status,
                        headers={"WWW-Authenticate": "Bearer"} if status == 401 else None)


def create_app(cp: ControlPlane) -> FastAPI:
    app = FastAPI(title="crosswire gateway", version="0.1.0",
                  description="Per-cluster WireGuard gateway for clusters with overlapping ranges.")
    app.add_middleware(BodyLimit)  # before anything reads a body: 413 past 64 KiB
    bearer = HTTPBearer(auto_error=False)

    @app.exception_handler(GatewayError)
    async def _gw_error(_: Request, e: GatewayError) -> JSONResponse:
        return _error(e.status, str(e))

    @app.exception_handler(PeeringError)
    async def _peering_error(_: Request, e: PeeringError) -> JSONResponse:
        return _error(e.status, str(e))

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, e: RequestValidationError) -> JSONResponse:
        # Never echo "input": it can be a token.
        parts = []
        for err in e.errors():
            loc = ".".join(str(x) for x in err.get("loc", ()) if x != "body") or "body"
            parts.append(f"{loc}: {err.get('msg', 'invalid')}")
        return _error(422, "invalid request: " + "; ".join(parts))

    def admin(creds: HTTPAuthorizationCredentials | None = Depends(bearer)) -> None:  # noqa: B008
        want = cp.store.admin_token()
        if creds is None or creds.scheme.lower() != "bearer" or \
                not hmac.compare_digest(creds.credentials.encode(), want.encode()):
            raise GatewayError("admin credential required (Bearer token from state_dir/admin-token)", 401)

    # --- health ----------------------------------------------------------------------------

    @app.get("/healthz", tags=["health"])
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz", tags=["health"])
    def readyz() -> JSONResponse:
        ok, why = cp.reconciler.ready()
        return JSONResponse({"ready": ok, "reason": why}, status_code=200 if ok else 503)

    @app.get("/metrics", tags=["health"], response_class=PlainTextResponse)
    def metrics() -> PlainTextResponse:
        return PlainTextResponse(render_metrics(cp.read), media_type="text/plain; version=0.0.4")

    # --- read-only API ---------------------------------------------------------------------

    @app.get("/api/v1/status", tags=["read"])
    def status() -> dict[str, Any]:
        return cp.read.status()

    @app.get("/api/v1/peers", tags=["read"])
    def peers() -> list[dict[str, Any]]:
        return cp.read.peers()

    @app.get("/api/v1/nat", tags=["read"])
    def nat() -> dict[str, Any]:
        return {"table": f"inet {cp.config.nft_table}", "peers": cp.read.nat()}

    @app.get("/api/v1/ipam", tags=["read"])
    def ipam() -> dict[str, Any]:
        return cp.read.ipam()

    @app.get("/api/v1/routes", tags=["read"])
    def routes() -> dict[str, Any]:
        return cp.read.routes()

    # --- peering ---------------------------------------------------------------------------

    @app.post("/api/v1/peering/join", tags=["peering"])
    async def join(env: Envelope) -> dict[str, Any]:
        return cp.exchange.handle_join(env.model_dump())

    @app.post("/api/v1/peering/message", tags=["peering"])
    async def message(env: Envelope) -> dict[str, Any]:
        return await cp.exchange.handle_message(env.model_dump())

    # --- admin -----------------------------------------------------------------------------

    @app.post("/api/v1/tokens", tags=["admin"], dependencies=[Depends(admin)], status_code=201)
    def token_create(req: TokenCreate) -> dict[str, Any]:
        try:
            ttl = parse_duration(str(req.ttl))
        except ValueError as e:
            raise GatewayError(f"ttl: {e}", 422) from None
        return cp.exchange.create_token(ttl, req.reusable)

    @app.get("/api/v1/tokens", tags=["admin"], dependencies=[Depends(admin)])
    def token_list() -> list[dict[str, Any]]:
        return cp.exchange.list_tokens()

    @app.delete("/api/v1/tokens/{token_id}", tags=["admin"], dependencies=[Depends(admin)])
    def token_revoke(token_id: str) -> dict[str, Any]:
        return cp.exchange.revoke_token(token_id)

    @app.post("/api/v1/peers", tags=["admin"], dependencies=[Depends(admin)], status_code=201)
    async def peer_add(req: PeerAdd) -> dict[str, Any]:
        return await cp.exchange.peer_add(req.token)

    @app.delete("/api/v1/peers/{cluster_id}", tags=["admin"], dependencies=[Depends(admin)])
    async def peer_remove(cluster_id: str) -> dict[str, Any]:
        return await cp.exchange.remove_peer(cluster_id)

    @app.post("/api/v1/key/rotate", tags=["admin"], dependencies=[Depends(admin)])
    async def key_rotate() -> dict[str, Any]:
        return await cp.exchange.rotate_key()

    @app.post("/api/v1/ranges/announce", tags=["admin"], dependencies=[Depends(admin)])
    async def ranges_announce() -> dict[str, str]:
        return await cp.exchange.announce_ranges()

    return app
