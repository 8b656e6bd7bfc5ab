"""A stand-in gateway API for the page's escaping test: the real page route and
GET answers full of markup in every string a peer or the network could
influence. Run as ``python page_fakeapi.py PORT`` (in the test's namespace).

``/api/v1/exports`` answers (with a hostile name), ``/api/v1/imports`` is 404:
the page must show the one section and hide the other.
"""

from __future__ import annotations

import sys
from typing import Any

import uvicorn
from fastapi import FastAPI

from gateway.page import add_route

HOSTILE = '<img src=x onerror="window.pwned=1">'
SCRIPT = '</script><script>window.pwned=2</script>'
SVG = '<svg onload="window.pwned=3"></svg>'


def peer(name: str, rtt: float | None) -> dict[str, Any]:
    return {
        "cluster_id": name, "public_key": "k" * 43 + "=", "endpoint": SCRIPT, "url": "http://x/" + SVG,
        "state": HOSTILE, "endpoint_error": HOSTILE, "latest_handshake": 1.0, "handshake_age_s": 12.0,
        "rx_bytes": 1234, "tx_bytes": 5678, "rtt_ms": rtt, "loss": 0.25, "probe_ip": SVG,
        "ranges": [{"kind": "pod", "cidr": HOSTILE}],
        "our_views": [{"kind": HOSTILE, "real": SCRIPT, "view": SVG}],
        "their_views": None,
    }


def create() -> FastAPI:
    app = FastAPI()
    add_route(app)
    polls = {"n": 0}

    @app.get("/api/v1/status")
    def status() -> dict[str, Any]:
        return {"cluster_id": HOSTILE, "public_key": "p" * 43 + "=", "endpoint": SCRIPT, "url": SVG,
                "interface": HOSTILE, "implementation": SCRIPT, "gateway_ip": SVG, "gateway_ip6": None,
                "pod_cidrs": [HOSTILE], "service_cidrs": [SCRIPT], "ready": False, "ready_reason": HOSTILE,
                "uptime_s": 3725.0, "peers": 1, "peers_by_state": {HOSTILE: 1},
                "reconcile": {"runs": 3, "errors": 1, "dataplane_restarts": 0, "last_error": SCRIPT,
                              "last_ok": None}}

    @app.get("/api/v1/peers")
    def peers() -> list[dict[str, Any]]:
        polls["n"] += 1
        return [peer(HOSTILE, 0.5 + polls["n"] % 3), peer("calm", None)]

    @app.get("/api/v1/nat")
    def nat() -> dict[str, Any]:
        n = polls["n"]
        rule = {"chain": SCRIPT, "comment": HOSTILE, "packets": 10 * n, "bytes": 1000 * n, "connections": n,
                "handle": 7}
        return {"table": HOSTILE,
                "peers": [{"cluster_id": HOSTILE, "egress_chain": SVG, "ingress_chain": SCRIPT,
                           "remote": [], "local": [], "rules": [rule], "host_network": [
                               {"map": SVG, "key": HOSTILE, "target": SCRIPT, "packets": 1, "bytes": 2}],
                           "denied_" + HOSTILE: 5}],
                "drops": [{"chain": HOSTILE, "comment": SCRIPT, "packets": n, "bytes": 60 * n, "handle": 3}]}

    @app.get("/api/v1/exports")
    def exports() -> dict[str, Any]:
        return {HOSTILE: [{"name": SCRIPT, "ports": [SVG], "nested": {"deep": HOSTILE}}]}

    return app


if __name__ == "__main__":
    uvicorn.run(create(), host="127.0.0.1", port=int(sys.argv[1]), log_level="warning")
