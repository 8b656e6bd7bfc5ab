"""A stand-in gateway API for the page's tests: the real page route and GET answers,
with the query parameters of /api/v1/peers and /api/v1/nat (``peer``, ``limit``,
``offset``, ``summary``; ETags) served by the gateway's own pure helpers
(gateway.readviews) over a fixed list of peers. Run as
``python page_fakeapi.py PORT [PEERS]`` (in the test's namespace).

Without PEERS: the escaping test's answers, full of markup in every string a peer
or the network could influence; ``/api/v1/exports`` answers (with a hostile
name), ``/api/v1/imports`` is 404: the page must show the one section and hide
the other. With PEERS (e.g. 1000): that many ordinary peers, each with NAT rows
whose counters rise by poll, for the scale test; ``/api/v1/served`` says how many
times each path was asked and how many bytes went out.
"""

from __future__ import annotations

import sys
from typing import Any

import uvicorn
from fastapi import FastAPI, Request, Response
from fastapi.responses import JSONResponse

from gateway.errors import GatewayError
from gateway.page import add_route
from gateway.readviews import (
    Query,
    digest,
    etag,
    mapping_totals,
    nat_summary,
    not_modified,
    paged,
    peers_summary,
    window,
)

HOSTILE = '<img src=x onerror="window.pwned=1">'
SCRIPT = '</script><script>window.pwned=2</script>'
SVG = '<svg onload="window.pwned=3"></svg>'
STATES = ("connected", "connected", "connected", "connecting", "impaired", "error")


def hostile_peer(name: str, rtt: float | None) -> dict[str, Any]:
    return {
        "cluster_id": name, "public_key": "k" * 43 + "=", "endpoint": SCRIPT, "url": "http://x/" + SVG,
        "state": HOSTILE, "endpoint_error": HOSTILE, "latest_handshake": 1.0, "handshake_age_s": 12.0,
        "rx_bytes": 1234, "tx_bytes": 5678, "rtt_ms": rtt, "loss": 0.25, "probe_ip": SVG,
        "ranges": [{"kind": "pod", "cidr": HOSTILE}],
        "our_views": [{"kind": HOSTILE, "real": SCRIPT, "view": SVG}],
        "their_views": None,
    }


def plain_peer(i: int, n: int) -> dict[str, Any]:
    """Peer ``i`` as a 1000-peer gateway shows it: full views both ways."""
    a, b = divmod(i, 250)
    return {
        "cluster_id": f"peer{i:04d}", "public_key": f"{i:042d}A=", "endpoint": f"198.18.{a}.{b + 1}:51820",
        "url": f"https://198.18.{a}.{b + 1}:8080", "state": STATES[i % len(STATES)], "endpoint_error": None,
        "latest_handshake": 1.0, "handshake_age_s": float(5 + (n + i) % 120), "rx_bytes": 1000 * n + i,
        "tx_bytes": 700 * n + i, "rtt_ms": 0.4 + (i % 7) / 10 + (n % 3) / 100, "loss": 0.0,
        "probe_ip": f"100.{64 + a}.{b}.1",
        "ranges": [{"kind": "pod", "cidr": "10.244.0.0/16"}, {"kind": "service", "cidr": "10.96.0.0/12"}],
        "our_views": [{"kind": "pod", "real": "10.244.0.0/16", "view": f"100.{64 + a}.{b}.0/24"},
                      {"kind": "service", "real": "10.96.0.0/12", "view": f"100.{80 + a}.{b}.0/24"}],
        "their_views": [{"kind": "pod", "real": "10.244.0.0/16", "view": "100.65.0.0/16"},
                        {"kind": "service", "real": "10.96.0.0/12", "view": "100.66.0.0/16"}],
        "views_mode": "full", "their_views_mode": "full", "reach": "full: pod 10.244.0.0/16 as ...",
    }


def plain_nat(i: int, n: int) -> dict[str, Any]:
    cid = f"peer{i:04d}"
    rules = [{"chain": f"{d}-{cid}", "comment": f"{cid}: {kind} {d}", "direction": "egress" if d == "to" else "ingress",
              "kind": kind, "real": "10.244.0.0/16", "view": "100.65.0.0/16", "packets": (10 + i) * n,
              "bytes": (1000 + i) * n, "connections": n, "handle": 100 + 4 * i + k}
             for k, (d, kind) in enumerate((("to", "pod"), ("to", "service"), ("from", "pod"), ("from", "service")))]
    return {"cluster_id": cid, "egress_chain": f"to-{cid}", "ingress_chain": f"from-{cid}", "remote": [], "local": [],
            "rules": rules, "host_network": []}


def create(many: int = 0) -> FastAPI:
    app = FastAPI()
    add_route(app)

    @app.exception_handler(GatewayError)
    async def _refused(_: Request, e: GatewayError) -> JSONResponse:
        return JSONResponse({"detail": str(e)}, status_code=e.status)
    polls = {"n": 0}
    served: dict[str, list[int]] = {}

    def answer(request: Request, body: Any) -> Response:
        r = JSONResponse(body)
        tag = etag(bytes(r.body))
        count = served.setdefault(request.url.path + ("?summary" if "summary" in request.url.query else ""), [0, 0])
        count[0] += 1
        if not_modified(request.headers.get("if-none-match"), tag):
            return Response(status_code=304, headers={"ETag": tag})
        count[1] += len(r.body)
        r.headers["ETag"] = tag
        return r

    def query(request: Request) -> Query:
        p = request.query_params
        return Query(p.get("peer"), int(p["limit"]) if "limit" in p else None,
                     int(p["offset"]) if "offset" in p else None, p.get("summary") == "true").check()

    def peer_rows() -> list[dict[str, Any]]:
        n = polls["n"]
        if many:
            return [plain_peer(i, n) for i in range(many)]
        return [hostile_peer(HOSTILE, 0.5 + n % 3), hostile_peer("calm", None)]

    drops_of = (lambda n: [{"chain": "prerouting", "comment": "from wg: drop", "packets": n, "bytes": 60 * n,
                            "handle": 3}]) if many else \
        (lambda n: [{"chain": HOSTILE, "comment": SCRIPT, "packets": n, "bytes": 60 * n, "handle": 3}])

    def nat_rows(ids: list[str]) -> list[dict[str, Any]]:
        n = polls["n"]
        if many:
            return [plain_nat(int(cid[4:]), n) for cid in ids]
        rule = {"chain": SCRIPT, "comment": HOSTILE, "packets": 10 * n, "bytes": 1000 * n, "connections": n,
                "handle": 7}
        return [{"cluster_id": HOSTILE, "egress_chain": SVG, "ingress_chain": SCRIPT, "remote": [], "local": [],
                 "rules": [rule], "host_network": [{"map": SVG, "key": HOSTILE, "target": SCRIPT, "packets": 1,
                                                    "bytes": 2}], "denied_" + HOSTILE: 5} for cid in ids]

    @app.get("/api/v1/status")
    def status(request: Request) -> Response:
        if many:
            return answer(request, {
                "cluster_id": "hub", "public_key": "p" * 43 + "=", "endpoint": "192.0.2.1:51820",
                "url": "https://192.0.2.1:8080", "interface": "crosswire0", "implementation": "crosswire-wg",
                "gateway_ip": "10.244.0.1", "gateway_ip6": None, "pod_cidrs": ["10.244.0.0/16"],
                "service_cidrs": ["10.96.0.0/12"], "ready": True, "ready_reason": "ok", "uptime_s": 3725.0,
                "peers": many, "peers_by_state": {}, "reconcile": {"runs": 3, "errors": 0, "dataplane_restarts": 0,
                                                                 "last_error": None, "last_ok": None}})
        return answer(request, {
            "cluster_id": HOSTILE, "public_key": "p" * 43 + "=", "endpoint": SCRIPT, "url": SVG,
            "interface": HOSTILE, "implementation": SCRIPT, "gateway_ip": SVG, "gateway_ip6": None,
            "pod_cidrs": [HOSTILE], "service_cidrs": [SCRIPT], "ready": False, "ready_reason": HOSTILE,
            "uptime_s": 3725.0, "peers": 1, "peers_by_state": {HOSTILE: 1},
            "reconcile": {"runs": 3, "errors": 1, "dataplane_restarts": 0, "last_error": SCRIPT, "last_ok": None}})

    def peers_body(q: Query) -> Any:
        rows = peer_rows()
        if q.plain:
            return rows
        if q.summary:
            return peers_summary({p["cluster_id"]: p["state"] for p in rows},
                                 [(p["cluster_id"], p["our_views"]) for p in rows],
                                 (sum(p["rx_bytes"] for p in rows), sum(p["tx_bytes"] for p in rows)), 0)
        ids = sorted(p["cluster_id"] for p in rows)
        page, total = window(ids, q)
        return paged("peers", [p for p in rows if p["cluster_id"] in set(page)], total, q)

    def nat_body(q: Query) -> Any:
        n = polls["n"]
        ids = sorted(p["cluster_id"] for p in peer_rows())
        if q.summary:
            return nat_summary(HOSTILE if not many else "inet crosswire", mapping_totals((cid, 4, 4, 0) for cid in ids),
                               drops_of(n), None, None, digest(ids))
        table = "inet crosswire" if many else HOSTILE
        if q.plain:
            return {"table": table, "peers": nat_rows(ids if many else [HOSTILE]), "drops": drops_of(n)}
        page, total = window(ids, q)
        rows = nat_rows(page) if many else nat_rows([HOSTILE] if HOSTILE in page else [])
        return paged("peers", rows, total, q, table=table, drops=drops_of(n))

    @app.get("/api/v1/peers")
    def peers(request: Request) -> Response:
        q = query(request)
        if q.summary:
            polls["n"] += 1  # the page asks for the summary once per poll (or for /api/v1/page)
        return answer(request, peers_body(q))

    @app.get("/api/v1/nat")
    def nat(request: Request) -> Response:
        return answer(request, nat_body(query(request)))

    @app.get("/api/v1/page")
    def page(request: Request) -> Response:
        """As gateway.readmodel.ReadModel.page_view: the four answers in one."""
        polls["n"] += 1
        p = request.query_params
        rows = peers_body(Query(None, int(p["limit"]) if "limit" in p else None, int(p.get("offset") or 0)))
        out = {"peers_summary": peers_body(Query(summary=True)), "nat_summary": nat_body(Query(summary=True)),
               "peers": rows, "selected": None, "nat": None}
        peer = p.get("peer")
        if peer is not None:
            try:
                if peer not in {r["cluster_id"] for r in rows["peers"]}:
                    out["selected"] = peers_body(Query(peer=peer))
                out["nat"] = nat_body(Query(peer=peer))
            except GatewayError as e:
                if e.status != 404:
                    raise
        return answer(request, out)

    @app.get("/api/v1/exports")
    def exports(request: Request) -> Response:
        if many:
            return JSONResponse({"detail": "Not Found"}, status_code=404)
        return answer(request, {HOSTILE: [{"name": SCRIPT, "ports": [SVG], "nested": {"deep": HOSTILE}}]})

    @app.get("/api/v1/served")
    def what_was_served() -> dict[str, list[int]]:
        return served

    return app


if __name__ == "__main__":
    uvicorn.run(create(int(sys.argv[2]) if len(sys.argv) > 2 else 0), host="127.0.0.1", port=int(sys.argv[1]),
                log_level="warning")
