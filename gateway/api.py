"""The HTTP API (FastAPI): two apps on two listeners.

``create_peering_app`` is what the peering listener (``api.listen``, TLS,
published to other clusters) serves: ``POST /api/v1/peering/join`` and
``POST /api/v1/peering/message`` and nothing else (no OpenAPI document, no
health): every other path is 404, so nobody on the internet reads anything.

``create_app`` is the operator surface (``api.operator_listen``, plain HTTP,
loopback by default, never published). OpenAPI at ``/openapi.json``.
Unauthenticated, read-only: ``/`` (the operator page, gateway.page), ``/healthz``, ``/readyz``, ``/metrics``, ``/api/v1/status``,
``/api/v1/peers``, ``/api/v1/nat`` (both also ``?peer=``, ``?limit=&offset=``,
``?summary=true``, with ETags: gateway.readviews), ``/api/v1/ipam``, ``/api/v1/routes`` (the
node agents watch it: gateway.routesapi), ``/api/v1/trace?src=&dst=&proto=&dport=``; ``/api/v1/exports``, ``/api/v1/imports`` and the admin
``PUT /api/v1/peers/{cluster_id}/exports`` are in gateway.exports.api, the admin
``GET|POST /api/v1/peers/{cluster_id}/ranges`` in gateway.peerranges.api.
Admin (``Authorization: Bearer <state_dir/admin-token>``, 401 otherwise):
``POST /api/v1/tokens``, ``GET /api/v1/tokens``, ``DELETE /api/v1/tokens/{id}``,
``POST /api/v1/peers`` (peer add), ``DELETE
/api/v1/peers/{cluster_id}``, ``POST /api/v1/key/rotate``, ``POST /api/v1/ranges/announce``.

Errors are ``{"detail": "<reason>"}``. Validation errors are rewritten so they
never echo the request body back (it may hold a token). The published schema
says so: every operation lists every status it answers with (gateway.apimodels;
tests/gateway/test_api_schema.py holds a live daemon to it).
"""

from __future__ import annotations

import contextlib
import hmac
import logging
from collections.abc import Callable
from typing import Any

from fastapi import Depends, FastAPI, Request
from fastapi import Query as FastQuery
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Route

from fabric.nat import NatError
from fabric.nat.trace import TraceError, parse_query
from gateway import apimodels as m
from gateway import audit, peering, routesapi
from gateway.apimodels import errors, ok
from gateway.audit import audited
from gateway.controlplane import ControlPlane
from gateway.errors import GatewayError
from gateway.exports import api as exportsapi
from gateway.limits import BodyLimit
from gateway.metrics import render_metrics
from gateway.page import add_route as add_page_route
from gateway.peering import PeeringError
from gateway.peerranges import api as rangesapi
from gateway.peersources import PeerSources
from gateway.readviews import MAX_LIMIT, Query, etag, not_modified
from gateway.tokens import TokenError, decode, parse_duration

log = logging.getLogger("crosswire.api")


class TokenCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    ttl: str | float = Field(default="1h", description="lifetime: seconds or 90s/15m/1h/7d")
    reusable: bool = False
    exports: list[str] | None = Field(default=None, description="export names the redeeming peer may reach "
                                                                  "(default: every export)")
    ranges: list[str] | None = Field(default=None, description="CIDRs the redeeming peer may announce, inside "
                                                                 "peer_ranges.allow (default: the policy only)")


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


def _base(**kw: Any) -> FastAPI:
    app = FastAPI(version="0.1.0", **kw)
    app.add_middleware(BodyLimit)  # before anything reads a body: 413 past 64 KiB

    @app.exception_handler(GatewayError)
    async def _gw_error(_: Request, e: GatewayError) -> JSONResponse:
        return _error(e.status, str(e))

    @app.exception_handler(PeeringError)
    async def _peering_error(_: Request, e: PeeringError) -> JSONResponse:
        return _error(e.status, str(e))

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, e: StarletteHTTPException) -> JSONResponse:
        # Starlette's own answer, except that a 405 names every method of the path
        # (RFC 9110 15.5.6): Starlette lists only those of the first route it matched,
        # so OPTIONS /api/v1/tokens said "Allow: POST" while GET works too.
        headers = dict(e.headers or {})
        if e.status_code == 405:
            path = request.url.path
            headers["Allow"] = ", ".join(sorted({
                method for r in app.routes if isinstance(r, Route) and r.path_regex.match(path)
                for method in r.methods or ()}))
        return JSONResponse({"detail": e.detail}, status_code=e.status_code, headers=headers or None)

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, e: RequestValidationError) -> JSONResponse:
        # Never echo "input": it can be a token.
        parts = []
        for err in e.errors():
            loc = ".".join(str(x) for x in err.get("loc", ()) if x != "body") or "body"
            parts.append(f"{loc}: {err.get('msg', 'invalid')}")
        return _error(422, "invalid request: " + "; ".join(parts))

    return app


def create_peering_app(cp: ControlPlane) -> FastAPI:
    """The peering listener's app: the two peering endpoints (authenticated by the token
    and channel keys inside the body, see gateway.peering) and nothing else."""
    app = _base(title="crosswire peering", openapi_url=None, docs_url=None, redoc_url=None)
    _publish_error_schema(app)  # app.openapi() documents it (tests); never served
    _peering_routes(app, cp)
    return app


UPGRADE = ("this gateway's peering listener speaks TLS, pinned by the token: upgrade crosswire on the "
           "calling gateway, then peer again (the token stays valid)")


def _peering_routes(app: FastAPI, cp: ControlPlane) -> None:
    # Plain HTTP reaches these routes only from a client that did not start with TLS:
    # a gateway from before TLS peering. It may still send channel messages for a
    # peering made then (no pin stored for it: authenticated by the channel MAC as
    # before); joins, and peers that told us their pin, need TLS.
    @app.post("/api/v1/peering/join", tags=["peering"], response_model=None, responses={
        **ok(m.SignedEnvelope, description="join-ok, sealed with the token's response key"),
        **errors(400, 401, 403, 409, 422, 426)})
    async def join(env: Envelope, request: Request) -> dict[str, Any]:
        if request.url.scheme != "https":
            raise GatewayError(UPGRADE, 426)
        return cp.exchange.handle_join(env.model_dump())

    @app.post("/api/v1/peering/message", tags=["peering"], response_model=None, responses={
        **ok(m.SignedEnvelope, description="ack, sealed with the channel key"),
        **errors(400, 401, 403, 409, 422, 426)})
    async def message(env: Envelope, request: Request) -> dict[str, Any]:
        body = env.model_dump()
        if request.url.scheme != "https":
            with contextlib.suppress(PeeringError):
                sender = peering.peek_sender(body)
                known = cp.store.peer(sender)
                if known is not None and cp.store.peer_pins(sender):
                    # Only a sender that proves it is that peer learns it must use TLS: a bad
                    # MAC is answered like any other (401 below), not with who is peered here.
                    peering.open_envelope(known.channel_key, body)
                    raise GatewayError(UPGRADE + " (this peer uses TLS already)", 426)
        return await cp.exchange.handle_message(body)


class RefusePeers:
    """ASGI middleware of the operator surface: a request whose source lies in one of our
    views of a peer came through the tunnel (the peer reaches the gateway pod's own
    address through its view of our pods) and is refused: the operator surface is this
    cluster's, never a peer's."""

    def __init__(self, app: Any, views: Callable[[], dict[str, list[Any]]],
                 generation: Callable[[], object] | None = None) -> None:
        self.app = app
        # ttl 0: a peer added a moment ago must be refused too; the IPAM's generation says
        # when the views changed, so a request reads them only then (1000 peers: ~3 ms)
        self.peer_of = PeerSources(views, ttl=0.0, generation=generation).peer_of

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        client = scope.get("client") if scope["type"] == "http" else None
        host = str(client[0]) if client else ""
        peer = self.peer_of(host) if host else None
        if peer is None:
            await self.app(scope, receive, send)
            return
        log.warning("operator API: refused %s %s from %s (peer %s, through the tunnel)",
                    scope.get("method"), scope.get("path"), host, peer)
        await JSONResponse({"detail": "not served to peers"}, status_code=403)(scope, receive, send)


def create_app(cp: ControlPlane) -> FastAPI:
    """The operator surface: everything but peering."""
    app = _base(title="crosswire gateway",
                description="Per-cluster WireGuard gateway for clusters with overlapping ranges.")
    app.add_middleware(RefusePeers, views=cp.views.all_views, generation=cp.views.generation)
    _publish_error_schema(app)
    bearer = HTTPBearer(auto_error=False)

    def admin(request: Request, creds: HTTPAuthorizationCredentials | None = Depends(bearer)) -> None:  # noqa: B008
        want = cp.store.admin_token()
        if creds is None or creds.scheme.lower() != "bearer" or \
                not hmac.compare_digest(creds.credentials.encode(), want.encode()):
            if request.method != "GET":  # a refused change is part of the audit trail
                audit.refused(request, f"{request.method} {request.url.path}",
                              "no admin credential" if creds is None else "wrong admin credential")
            raise GatewayError("admin credential required (Bearer token from state_dir/admin-token)", 401)

    # --- health ----------------------------------------------------------------------------

    @app.get("/healthz", tags=["health"], response_model=None, responses={**ok(m.Health), **errors()})
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz", tags=["health"], response_model=None, responses={
        **ok(m.Readiness, description="Ready: the data plane is what the state says"),
        **ok(m.Readiness, 503, "Not ready (reason says why)"), **errors()})
    def readyz() -> JSONResponse:
        ready, why = cp.reconciler.ready()
        return JSONResponse({"ready": ready, "reason": why}, status_code=200 if ready else 503)

    @app.get("/metrics", tags=["health"], response_class=PlainTextResponse, responses={
        200: {"description": "Prometheus text format 0.0.4"}, **errors()})
    def metrics() -> PlainTextResponse:
        return PlainTextResponse(render_metrics(cp.read), media_type="text/plain; version=0.0.4")

    # --- read-only API ---------------------------------------------------------------------

    add_page_route(app)  # GET /: the operator page over the GETs below (gateway.page)

    @app.get("/api/v1/status", tags=["read"], response_model=None, responses={**ok(m.Status), **errors()})
    def status() -> dict[str, Any]:
        return {**cp.read.status(), "tls_pins": list(cp.tls.pins()) if cp.tls is not None else []}

    # Without parameters, peers and NAT answer as they always did; ?peer=, ?limit=&offset=
    # and ?summary=true keep the work to what is asked (gateway.readviews). Every answer
    # carries an ETag; If-None-Match naming it gets 304.
    @app.get("/api/v1/peers", tags=["read"], response_model=None, responses={
        **ok(list[m.PeerSummary] | m.PeerPage | m.PeersSummary, headers=m.ETAG,
             description="no parameters: every peer (a list); peer/limit/offset: a page; summary: counts"),
        **errors(304, 404, 422)})
    def peers(request: Request, peer: str | None = PEER, limit: int | None = LIMIT, offset: int | None = OFFSET,
              summary: bool = SUMMARY) -> Response:
        q = Query(peer, limit, offset, summary).check()
        return _tagged(request, cp.read.peers_view(q))

    @app.get("/api/v1/nat", tags=["read"], response_model=None, responses={
        **ok(m.Nat | m.NatPage | m.NatSummary, headers=m.ETAG,
             description="no parameters: every peer; peer/limit/offset: a page of peers; summary: counts"),
        **errors(304, 404, 422)})
    def nat(request: Request, peer: str | None = PEER, limit: int | None = LIMIT, offset: int | None = OFFSET,
            summary: bool = SUMMARY) -> Response:
        q = Query(peer, limit, offset, summary).check()
        return _tagged(request, cp.read.nat_view(q))

    # The operator page's poll in one request: both summaries, a page of peers, the selected
    # peer's row (when not on the page) and NAT; each part as its own request answers it.
    @app.get("/api/v1/page", tags=["read"], response_model=None, responses={
        **ok(m.PagePoll, headers=m.ETAG, description="what the operator page shows, in one answer"),
        **errors(304, 422)})
    def page(request: Request, limit: int | None = LIMIT, offset: int | None = OFFSET,
             peer: str | None = FastQuery(None, description="the selected peer (its row and NAT)")) -> Response:
        return _tagged(request, cp.read.page_view(limit, offset, peer))

    @app.get("/api/v1/ipam", tags=["read"], response_model=None, responses={**ok(m.Ipam), **errors()})
    def ipam() -> dict[str, Any]:
        return cp.read.ipam()

    @app.get("/api/v1/routes", tags=["read"], response_model=None,
             responses={**ok(m.Routes), **errors(400), **m.watchers_full()})
    async def routes(request: Request, after: str | None = FastQuery(None, description=routesapi.AFTER),
                     wait: str | None = FastQuery(None, description=routesapi.WAIT)) -> Response:
        """The node agents' route set; with ``after``, a long-poll for the next one (gateway.routesapi)."""
        return await routesapi.answer(cp, request, after, wait)

    @app.get("/api/v1/trace", tags=["read"], response_model=None,
             responses={**ok(m.Trace), **errors(409, 422)})
    def trace(src: str | None = None, dst: str | None = None, proto: str | None = None,
              dport: str | None = None) -> dict[str, Any]:
        """Every step a packet from src to dst takes through this gateway and the peer's (issue 14)."""
        try:
            query = parse_query(src, dst, proto, dport)
        except TraceError as e:
            raise GatewayError(str(e), 422) from None
        try:
            return cp.read.trace(query)
        except NatError as e:
            raise GatewayError(f"the desired state cannot be traced: {e}", 409) from None


    # --- admin -----------------------------------------------------------------------------

    @app.post("/api/v1/tokens", tags=["admin"], dependencies=[Depends(admin)], status_code=201,
               response_model=None, responses={**ok(m.TokenCreated, 201, "Created"),
                                               **errors(400, 401, 409, 422)})
    def token_create(req: TokenCreate, request: Request) -> dict[str, Any]:
        with audited(request, "token.create", reusable=req.reusable, exports=req.exports,
                     ranges=req.ranges) as a:
            try:
                ttl = parse_duration(str(req.ttl))
            except ValueError as e:
                raise GatewayError(f"ttl: {e}", 422) from None
            out = cp.exchange.create_token(ttl, req.reusable, req.exports, req.ranges)
            a.update(token_id=out["token_id"], ttl_s=ttl)
            return out

    @app.get("/api/v1/tokens", tags=["admin"], dependencies=[Depends(admin)], response_model=None,
              responses={**ok(list[m.TokenInfo]), **errors(401)})
    def token_list() -> list[dict[str, Any]]:
        return cp.exchange.list_tokens()

    @app.delete("/api/v1/tokens/{token_id}", tags=["admin"], dependencies=[Depends(admin)],
                 response_model=None, responses={**ok(m.TokenRevoked), **errors(401, 404)})
    def token_revoke(token_id: str, request: Request) -> dict[str, Any]:
        with audited(request, "token.revoke", token_id=token_id):
            return cp.exchange.revoke_token(token_id)

    @app.post("/api/v1/peers", tags=["admin"], dependencies=[Depends(admin)], status_code=201,
               response_model=None, responses={
                   **ok(m.PeerSummary, 201, "Peered"),
                   # the peer's own refusal (< 500) is passed on with its status
                   **errors(400, 401, 403, 404, 409, 422, 502)})
    async def peer_add(req: PeerAdd, request: Request) -> dict[str, Any]:
        with audited(request, "peer.add") as a:
            with contextlib.suppress(TokenError):  # who the token claims to be; never the token
                a["peer"] = decode(req.token).cluster_id
            out = await cp.exchange.peer_add(req.token)
            a["peer"] = out["cluster_id"]
            return out

    @app.delete("/api/v1/peers/{cluster_id}", tags=["admin"], dependencies=[Depends(admin)],
                 response_model=None, responses={**ok(m.PeerRemoved), **errors(401, 404)})
    async def peer_remove(cluster_id: str, request: Request) -> dict[str, Any]:
        with audited(request, "peer.remove", peer=cluster_id):
            return await cp.exchange.remove_peer(cluster_id)

    @app.post("/api/v1/key/rotate", tags=["admin"], dependencies=[Depends(admin)], response_model=None,
               responses={**ok(m.KeyRotated), **errors(401, 502)})
    async def key_rotate(request: Request) -> dict[str, Any]:
        with audited(request, "key.rotate") as a:
            out = await cp.exchange.rotate_key()
            a.update(public_key=out["public_key"], peers=out["peers_informed"])
            return out

    @app.post("/api/v1/tls/rotate", tags=["admin"], dependencies=[Depends(admin)], response_model=None,
               responses={**ok(m.TlsRotated), **errors(401, 409, 502)})
    async def tls_rotate(request: Request) -> dict[str, Any]:
        """A new peering certificate; every peer learns its pin before the listener switches."""
        from gateway.tlsrotate import rotate

        with audited(request, "tls.rotate") as a:
            if cp.tls is None:
                raise GatewayError("this gateway has no TLS identity", 409)
            out = await rotate(cp.exchange, cp.tls)
            a.update(tls_pins=[out["tls_pin"]], peers=out["peers_informed"])
            return out

    @app.post("/api/v1/ranges/announce", tags=["admin"], dependencies=[Depends(admin)], response_model=None,
               responses={**ok(dict[str, str], description="per peer told: ok or why not"),
                          **errors(401)})
    async def ranges_announce(request: Request) -> dict[str, str]:
        with audited(request, "ranges.announce") as a:
            out = await cp.exchange.announce_ranges()
            a["peers"] = out
            return out

    exportsapi.register(app, cp, admin, lambda: cp.export_sync)
    rangesapi.register(app, cp, admin)
    return app


PEER = FastQuery(None, description="only this peer (cluster ID; 404 if unknown)")
LIMIT = FastQuery(None, ge=1, le=MAX_LIMIT, description="page size (the answer carries total)")
OFFSET = FastQuery(None, ge=0, description="rows to skip (sorted by cluster ID)")
SUMMARY = FastQuery(False, description="counts, totals and a version instead of rows")


def _tagged(request: Request, body: Any) -> Response:
    """``body`` as JSON with its ETag, or 304 when the client holds that one already."""
    r = JSONResponse(body)
    tag = etag(bytes(r.body))
    if not_modified(request.headers.get("if-none-match"), tag):
        return Response(status_code=304, headers={"ETag": tag})
    r.headers["ETag"] = tag
    return r


def _publish_error_schema(app: FastAPI) -> None:
    """The OpenAPI document with the ``Error`` schema every error response refers to.

    FastAPI adds its own 422 (``HTTPValidationError``, a list of objects) to
    operations with path parameters; crosswire's 422 is ``Error`` like the rest.
    """
    build = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            spec = build()
            schemas = spec.setdefault("components", {}).setdefault("schemas", {})
            for ops in spec.get("paths", {}).values():
                for op in ops.values():
                    responses = op.get("responses", {})
                    if "HTTPValidationError" in str(responses.get("422")):
                        responses["422"] = errors(422)[422]
            schemas.pop("HTTPValidationError", None)
            schemas.pop("ValidationError", None)
            schemas["Error"] = m.Error.model_json_schema()
            app.openapi_schema = spec
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
