"""Every endpoint through FastAPI: auth, bad bodies (4xx + reason, nothing changed), replays."""

from __future__ import annotations

import asyncio
import os
import re
import stat
from typing import Any

import httpx
import pytest

from gateway.routewatch import version

ADMIN = [("POST", "/api/v1/tokens", {"ttl": "1h"}), ("GET", "/api/v1/tokens", None),
         ("DELETE", "/api/v1/tokens/abc", None), ("POST", "/api/v1/peers", {"token": "cw1.xx"}),
         ("DELETE", "/api/v1/peers/gpu", None), ("POST", "/api/v1/key/rotate", None),
         ("POST", "/api/v1/ranges/announce", None), ("POST", "/api/v1/tls/rotate", None)]


def snapshot(c: Any) -> Any:
    return (c.store.peers(), c.store.tokens(), c.views.snapshot(), c.store.private_key(),
            len(c.fabric.applied))


@pytest.mark.parametrize(("method", "path", "body"), ADMIN)
def test_admin_endpoints_need_the_credential(clusters: Any, method: str, path: str, body: Any) -> None:
    gpu = clusters("gpu")

    async def go() -> None:
        before = snapshot(gpu)
        r = await gpu.call(method, path, auth=False, json=body)
        assert r.status_code == 401 and "admin credential" in r.json()["detail"]
        assert r.headers["www-authenticate"] == "Bearer"
        async with gpu.client(auth=False) as c:
            r = await c.request(method, path, json=body, headers={"Authorization": "Bearer nope"})
        assert r.status_code == 401
        assert snapshot(gpu) == before

    asyncio.run(go())


def test_public_endpoints(clusters: Any) -> None:
    gpu = clusters("gpu")

    async def go() -> None:
        assert (await gpu.call("GET", "/healthz", auth=False)).json() == {"status": "ok"}
        r = await gpu.call("GET", "/readyz", auth=False)
        assert r.status_code == 503  # nothing applied yet
        assert await gpu.gw.reconciler.reconcile()
        assert (await gpu.call("GET", "/readyz", auth=False)).status_code == 200
        st = (await gpu.call("GET", "/api/v1/status", auth=False)).json()
        assert st["cluster_id"] == "gpu" and st["ready"] is True and st["peers"] == 0
        assert (await gpu.call("GET", "/api/v1/peers", auth=False)).json() == []
        nat = (await gpu.call("GET", "/api/v1/nat", auth=False)).json()
        assert nat == {"table": "inet crosswire", "peers": [], "drops": []}
        ipam = (await gpu.call("GET", "/api/v1/ipam", auth=False)).json()
        assert ipam["pools"] == ["100.64.0.0/10"] and ipam["allocations"] == []
        routes = {"gateway_ip": "10.244.0.10", "cidrs": []}
        assert (await gpu.call("GET", "/api/v1/routes", auth=False)).json() == {**routes, "version": version(routes)}
        m = await gpu.call("GET", "/metrics", auth=False)
        assert m.headers["content-type"].startswith("text/plain")
        assert 'crosswire_peers{state="connected"} 0' in m.text and "crosswire_ready 1" in m.text
        assert 'crosswire_gc_collections_total{generation="2"} ' in m.text
        assert 'crosswire_gc_seconds_total{generation="0"} ' in m.text
        spec = (await gpu.call("GET", "/openapi.json", auth=False)).json()
        for p in ("/healthz", "/readyz", "/metrics", "/api/v1/status", "/api/v1/peers", "/api/v1/nat",
                  "/api/v1/ipam", "/api/v1/routes", "/api/v1/tokens", "/api/v1/key/rotate"):
            assert p in spec["paths"], p
        # peering is another listener's: not served here, not documented here
        assert not [p for p in spec["paths"] if p.startswith("/api/v1/peering")]
        assert (await gpu.call("POST", "/api/v1/peering/join", auth=False, json={})).status_code != 404

    asyncio.run(go())


BAD = [
    ("POST", "/api/v1/tokens", {"ttl": "forever"}, 422, "ttl"),
    # Infinite TTLs were accepted (expires: null) and then broke `token list`.
    ("POST", "/api/v1/tokens", {"ttl": "inf"}, 422, "ttl"),
    ("POST", "/api/v1/tokens", {"ttl": "1e999"}, 422, "ttl"),
    ("POST", "/api/v1/tokens", {"ttl": "Infinity"}, 422, "ttl"),
    ("POST", "/api/v1/tokens", {"ttl": "1h", "colour": 1}, 422, "colour"),
    ("POST", "/api/v1/tokens", {"reusable": "perhaps"}, 422, "reusable"),
    ("POST", "/api/v1/peers", {}, 422, "token"),
    ("POST", "/api/v1/peers", {"token": "garbage-token"}, 400, "not a crosswire token"),
    ("POST", "/api/v1/peers", {"token": "cw1.bm90anNvbg"}, 400, "malformed"),
    ("POST", "/api/v1/peers", [1, 2], 422, "invalid request"),
    ("DELETE", "/api/v1/peers/nobody", None, 404, "no peer"),
    ("DELETE", "/api/v1/tokens/nope", None, 404, "no token"),
    ("POST", "/api/v1/peering/join", {"body": {}, "mac": "x"}, 400, "token_id"),
    ("POST", "/api/v1/peering/join", {"body": {"token_id": "zz"}, "mac": "x"}, 403, "unknown token"),
    ("POST", "/api/v1/peering/join", {"nope": 1}, 422, "invalid request"),
    # An unknown sender is answered as a bad MAC: the port does not say who is peered here.
    ("POST", "/api/v1/peering/message", {"body": {"from": "ghost"}, "mac": "x"}, 401, "authentication failed"),
    ("POST", "/api/v1/peering/message", {"body": {}, "mac": "x"}, 400, "from"),
]


@pytest.mark.parametrize(("method", "path", "body", "status", "reason"), BAD)
def test_bad_bodies(clusters: Any, method: str, path: str, body: Any, status: int, reason: str) -> None:
    gpu = clusters("gpu")

    async def go() -> None:
        before = snapshot(gpu)
        r = await gpu.call(method, path, json=body)
        assert r.status_code == status, r.text
        assert reason in r.json()["detail"]
        assert snapshot(gpu) == before

    asyncio.run(go())


def test_malformed_json(clusters: Any) -> None:
    gpu = clusters("gpu")

    async def go() -> None:
        r = await gpu.call("POST", "/api/v1/tokens", content=b"{not json", headers={"content-type": "application/json"})
        assert r.status_code == 422 and "invalid request" in r.json()["detail"]

    asyncio.run(go())


def test_oversized_bodies_refused_before_reading(clusters: Any) -> None:
    # A 50 MB body to the unauthenticated join grew the daemon to 700 MB RSS.
    gpu = clusters("gpu")

    async def go() -> None:
        before = snapshot(gpu)
        big = b'{"body": {"token_id": "' + b"a" * (1 << 20) + b'"}, "mac": "x"}'
        for path in ("/api/v1/peering/join", "/api/v1/peering/message", "/api/v1/tokens"):
            r = await gpu.call("POST", path, content=big, headers={"content-type": "application/json"})
            assert r.status_code == 413 and "larger than 65536 bytes" in r.json()["detail"], path

        async def chunks() -> Any:  # no Content-Length: refused while it streams in
            for _ in range(100):
                yield b"a" * 4096

        r = await gpu.call("POST", "/api/v1/peering/join", content=chunks(),
                           headers={"content-type": "application/json"})
        assert r.status_code == 413
        assert snapshot(gpu) == before
        # Just under the limit still reaches the handler (and its own validation).
        ok = b'{"body": {"token_id": "' + b"a" * 60000 + b'"}, "mac": "x"}'
        r = await gpu.call("POST", "/api/v1/peering/join", content=ok, headers={"content-type": "application/json"})
        assert r.status_code == 403 and "unknown token" in r.json()["detail"]

    asyncio.run(go())


def test_replayed_join_and_message_refused(clusters: Any) -> None:
    gpu, lab = clusters("gpu"), clusters("lab")
    seen: list[tuple[str, Any]] = []

    async def go() -> None:

        # Record what lab sends to gpu.
        orig = lab._http

        def recording() -> httpx.AsyncClient:
            client = orig()

            async def hook(req: httpx.Request) -> None:
                seen.append((req.url.path, req.content))
            client.event_hooks["request"].append(hook)
            return client
        lab.gw.exchange.channel.http = recording
        tok = (await gpu.call("POST", "/api/v1/tokens", json={"ttl": "1h", "reusable": True})).json()["token"]
        assert (await lab.call("POST", "/api/v1/peers", json={"token": tok})).status_code == 201
        join = next(c for p, c in seen if p.endswith("/join"))
        msg = next(c for p, c in seen if p.endswith("/message"))
        before = snapshot(gpu)
        # the join replayed (reusable token, so only the nonce/peer checks stop it)
        r = await gpu.call("POST", "/api/v1/peering/join", content=join,
                           headers={"content-type": "application/json"})
        assert r.status_code in (401, 409), r.text
        r = await gpu.call("POST", "/api/v1/peering/message", content=msg,
                           headers={"content-type": "application/json"})
        assert r.status_code == 401 and "replayed" in r.json()["detail"]
        assert snapshot(gpu) == before
        # even once gpu forgot lab, the recorded join cannot be replayed (nonce remembered)
        gpu.gw.exchange.forget("lab")
        before = snapshot(gpu)
        r = await gpu.call("POST", "/api/v1/peering/join", content=join,
                           headers={"content-type": "application/json"})
        assert r.status_code == 401 and "replayed" in r.json()["detail"], r.text
        assert snapshot(gpu) == before

    asyncio.run(go())


def test_state_files_are_private(clusters: Any) -> None:
    gpu = clusters("gpu")
    assert stat.S_IMODE(os.stat(gpu.dir).st_mode) == 0o700
    for name in ("state.db", "admin-token", "ipam.db"):
        assert stat.S_IMODE(os.stat(gpu.dir / name).st_mode) == 0o600, name


def test_bad_channel_messages_change_nothing(clusters: Any) -> None:
    from gateway import peering

    gpu, lab = clusters("gpu"), clusters("lab")

    async def go() -> None:
        tok = (await gpu.call("POST", "/api/v1/tokens", json={})).json()["token"]
        assert (await lab.call("POST", "/api/v1/peers", json={"token": tok})).status_code == 201
        key = lab.store.peer("gpu").channel_key  # type: ignore[union-attr]
        now = gpu.clock()
        cases = [
            ("views", {"views": [{"kind": "pod", "real": "10.1.0.0/16", "view": "100.99.0.0/16"}]}, 400, "not ours"),
            ("views", {"views": [{"kind": "pod", "real": "10.244.0.0/16", "view": "100.99.0.0/17"}]}, 400,
             "same family and length"),
            ("ranges", {"ranges": [{"kind": "pod", "cidr": "10.0.0.0/33"}]}, 400, "not a valid CIDR"),
            ("key", {"public_key": "short"}, 400, "public key"),
            # A peer may announce neither our own key nor malformed endpoints (they used to
            # be accepted and then failed the WireGuard sync of every peer).
            ("key", {"public_key": gpu.store.public_key(), "endpoint": "lab:51820"}, 409,
             "this gateway's own key"),
            ("key", {"public_key": lab.store.public_key(), "endpoint": "1.2.3.4:notaport"}, 400,
             "endpoint '1.2.3.4:notaport'"),
            ("endpoint", {"endpoint": "[::1", "url": "http://lab:8080"}, 400, "unbalanced brackets"),
            ("endpoint", {"endpoint": "1.2.3.4:notaport", "url": "http://lab:8080"}, 400, "port 1-65535"),
            ("endpoint", {"endpoint": 5, "url": "http://lab:8080"}, 400, "expected host:port"),
        ]
        for type_, payload, status, reason in cases:
            before = snapshot(gpu)
            msg = peering.build_message(key, "lab", "gpu", type_, payload, now)
            r = await gpu.call("POST", "/api/v1/peering/message", json=msg)
            assert r.status_code == status and reason in r.json()["detail"], (type_, r.text)
            assert snapshot(gpu) == before
        # a valid message with a wrong key
        msg = peering.build_message(b"\x00" * 32, "lab", "gpu", "remove", {}, now)
        r = await gpu.call("POST", "/api/v1/peering/message", json=msg)
        assert r.status_code == 401
        assert len(gpu.store.peers()) == 1

    asyncio.run(go())


def test_tokens_whose_url_leads_nowhere_are_refused(clusters: Any) -> None:
    from gateway.tokens import new_token

    # listen 0.0.0.0, no api.advertise, no wireguard.endpoint: the URL would be the pod IP.
    gpu = clusters("gpu", api={"listen": "0.0.0.0:8080"},
                   wireguard={"interface": "cw-gpu", "implementation": "wireguard-go"})
    lab = clusters("lab")

    async def go() -> None:
        # Issuing: a URL no peer can reach is refused, naming api.advertise.
        before = snapshot(gpu)
        r = await gpu.call("POST", "/api/v1/tokens", json={})
        assert r.status_code == 409 and r.json()["detail"].startswith(
            "api.advertise: the peering URL https://10.244.0.10:8080 lies inside this cluster's own range"), r.text
        assert snapshot(gpu) == before
        # Redeeming: a token (from an older gateway) whose URL is inside our own pod range
        # leads back to us; say so instead of "unknown token".
        tok = new_token("http://10.244.0.10:8080", "gpu", gpu.store.public_key(), ttl=600, now=lab.clock(),
                        tls_pin=gpu.gw.tls.pin)
        before = snapshot(lab)
        r = await lab.call("POST", "/api/v1/peers", json={"token": tok.encode()})
        assert r.status_code == 400, r.text
        assert "leads back to this cluster, not to gpu" in r.json()["detail"]
        assert snapshot(lab) == before

    asyncio.run(go())


def test_token_from_before_tls_is_refused_saying_what_to_do(clusters: Any) -> None:
    """A token without a certificate pin (issued before the peering listener spoke TLS)
    is refused before anything is sent, naming the fix; nothing changes."""
    from gateway.tokens import decode, new_token

    gpu, lab = clusters("gpu"), clusters("lab")

    async def go() -> None:
        tok = (await gpu.call("POST", "/api/v1/tokens", json={})).json()["token"]
        assert decode(tok).tls_pin == gpu.gw.tls.pin  # what new tokens carry
        old = new_token("http://gpu:8080", "gpu", gpu.store.public_key(), ttl=600, now=lab.clock())
        before, seen = snapshot(lab), snapshot(gpu)
        r = await lab.call("POST", "/api/v1/peers", json={"token": old.encode()})
        assert r.status_code == 400
        assert r.json()["detail"] == (
            "this token carries no TLS certificate pin: gpu's gateway issued it before it spoke TLS on its "
            "peering listener. Upgrade gpu's gateway and run `crosswire token create` there again")
        assert snapshot(lab) == before and snapshot(gpu) == seen

    asyncio.run(go())


def test_join_with_malformed_claimed_ranges_refused(clusters: Any) -> None:
    from gateway import peering
    from gateway.tokens import decode

    gpu, lab = clusters("gpu"), clusters("lab")

    async def go() -> None:
        tok = decode((await gpu.call("POST", "/api/v1/tokens", json={})).json()["token"])
        # a peer claiming overlapping ranges (its own config would refuse them; a rogue one might not)
        side = peering.Side("lab", lab.store.public_key(), "lab:51820",
                            (("pod", "10.244.0.0/16"), ("service", "10.244.128.0/17")), None, "http://lab:8080")
        req = peering.build_join(tok, side, peering.Ephemeral.generate(), gpu.clock())
        before = snapshot(gpu)
        r = await gpu.call("POST", "/api/v1/peering/join", json=req)
        assert r.status_code == 422 and "disjoint" in r.json()["detail"], r.text
        assert snapshot(gpu) == before and gpu.store.token(tok.token_id).uses == 0  # type: ignore[union-attr]

    asyncio.run(go())


def test_token_list_and_revoke(clusters: Any, clock: Any) -> None:
    gpu, lab = clusters("gpu"), clusters("lab")

    async def go() -> None:
        t1 = (await gpu.call("POST", "/api/v1/tokens", json={"ttl": 60})).json()
        t2 = (await gpu.call("POST", "/api/v1/tokens", json={"ttl": "1h", "reusable": True})).json()
        listed = (await gpu.call("GET", "/api/v1/tokens")).json()
        assert [(t["token_id"], t["state"]) for t in listed] == [(t1["token_id"], "active"), (t2["token_id"], "active")]
        assert t1["token"] not in str(listed) and "secret" not in str(listed)
        assert (await gpu.call("DELETE", f"/api/v1/tokens/{t2['token_id']}")).json() == {"revoked": t2["token_id"]}
        r = await lab.call("POST", "/api/v1/peers", json={"token": t2["token"]})
        assert r.status_code == 403 and "unknown token" in r.json()["detail"]
        clock.t += 61
        assert (await gpu.call("GET", "/api/v1/tokens")).json()[0]["state"] == "expired"

    asyncio.run(go())


@pytest.mark.filterwarnings("ignore:Using `httpx` with `starlette.testclient`")
def test_routes_publish_gateway_ip6_for_dual_stack(clusters: Any) -> None:
    """GET /api/v1/routes through TestClient: gateway_ip6 for the IPv6 views, and the agent accepts it."""
    from fastapi.testclient import TestClient

    from fabric.agent_api import parse_routes
    from tests.gateway.test_two_gateways import peer

    dual = {"pod_cidrs": ["10.244.0.0/16", "fd00:244::/48"], "gateway_ip6": "fd00:244::10",
            "ipam": {"pools": ["100.64.0.0/10", "fd10::/32"]}}
    gpu, lab = clusters("gpu", **dual), clusters("lab", **dual)
    asyncio.run(peer(lab, gpu))
    with TestClient(lab.app) as tc:
        body = tc.get("/api/v1/routes").json()
    assert body["gateway_ip"] == "10.244.0.10" and body["gateway_ip6"] == "fd00:244::10"
    pub = parse_routes(body)
    assert str(pub.gateway_ip6) == "fd00:244::10"
    v6 = [c for c in body["cidrs"] if ":" in c]
    assert len(v6) == 1 and v6[0].startswith("fd10:")  # the view of gpu's IPv6 pod range
    # status shows it too; a single-stack gateway publishes no gateway_ip6
    with TestClient(lab.app) as tc:
        assert tc.get("/api/v1/status").json()["gateway_ip6"] == "fd00:244::10"
    plain = clusters("plain")
    with TestClient(plain.app) as tc:
        assert "gateway_ip6" not in tc.get("/api/v1/routes").json()


def test_openapi_documents_what_the_api_answers(clusters: Any) -> None:
    """Every status the cases above produce is published for its operation, with the real
    error schema ({"detail": str}); FastAPI's list-shaped 422 is gone (a schema-driven
    fuzzer flagged both: undocumented 400/401/403/404/409/413 and a 422 ``detail`` that
    is a string, not the documented list)."""
    gpu = clusters("gpu")

    async def go() -> dict[str, Any]:
        return dict((await gpu.call("GET", "/openapi.json", auth=False)).json())

    spec = asyncio.run(go())
    # the peering listener's document (never served there) covers the peering endpoints
    spec["paths"].update(gpu.peering_app.openapi()["paths"])
    assert "HTTPValidationError" not in str(spec) and "ValidationError" not in spec["components"]["schemas"]
    assert spec["components"]["schemas"]["Error"] == {
        "additionalProperties": False, "description": spec["components"]["schemas"]["Error"]["description"],
        "properties": {"detail": {"title": "Detail", "type": "string"}}, "required": ["detail"],
        "title": "Error", "type": "object"}

    def op(method: str, path: str) -> dict[str, Any]:
        for template, ops in spec["paths"].items():
            if re.fullmatch(re.sub(r"\{[^/]+\}", "[^/]+", template), path) and method.lower() in ops:
                return dict(ops[method.lower()]["responses"])
        raise AssertionError(f"{method} {path} not published")

    error = {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}
    answered = [(m, p, s) for m, p, _, s, _ in BAD] + [(m, p, 401) for m, p, _ in ADMIN] + \
        [(m, p, s) for m, p, _ in ADMIN for s in (408, 413)] + [("POST", "/api/v1/peers", 502),
                                                              ("POST", "/api/v1/peering/join", 409),
                                                              ("POST", "/api/v1/tokens", 409),
                                                              ("POST", "/api/v1/tokens", 400)]
    for method, path, status in answered:
        responses = op(method, path)
        assert str(status) in responses, (method, path, status, sorted(responses))
        assert responses[str(status)]["content"] == error, (method, path, status)
    for ops in spec["paths"].values():  # no operation documents an error with another shape
        for o in ops.values():
            for status, r in o["responses"].items():
                if int(status) >= 400 and (o["operationId"], status) != ("readyz_readyz_get", "503"):
                    assert r["content"] == error, (o["operationId"], status)
    assert op("GET", "/api/v1/tokens")["401"]["headers"]["WWW-Authenticate"]
    ready = op("GET", "/readyz")
    assert ready["200"]["content"] == ready["503"]["content"] == {
        "application/json": {"schema": {"$ref": "#/components/schemas/Readiness"}}}
    assert list(op("GET", "/metrics")["200"]["content"]) == ["text/plain"]
    assert op("POST", "/api/v1/tokens")["201"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/TokenCreated"}
    assert spec["components"]["schemas"]["Routes"]["required"] == ["gateway_ip", "cidrs", "version"]
    routes = op("GET", "/api/v1/routes")  # the long-poll: a bad wait, the watcher limit
    assert {"400", "503"} <= set(routes) and routes["503"]["headers"]["Retry-After"]
    assert [p["name"] for p in spec["paths"]["/api/v1/routes"]["get"]["parameters"]] == ["after", "wait"]


def test_method_not_allowed_names_every_method(clusters: Any) -> None:
    """405 lists all methods of the path in Allow (was only the first route's: "Allow: POST"
    for /api/v1/tokens, which GET serves too; found by schemathesis' allow-header check)."""
    gpu = clusters("gpu")

    async def go() -> None:
        for method, path, allow in (("OPTIONS", "/api/v1/tokens", "GET, POST"), ("PUT", "/api/v1/peers", "GET, POST"),
                                    ("POST", "/healthz", "GET"), ("GET", "/api/v1/tokens/x", "DELETE"),
                                    ("POST", "/openapi.json", "GET, HEAD")):
            r = await gpu.call(method, path)
            assert r.status_code == 405 and r.json() == {"detail": "Method Not Allowed"}, (method, path)
            assert r.headers["allow"] == allow, (method, path)
        # other HTTP errors keep their bodies
        r = await gpu.call("GET", "/nowhere")
        assert r.status_code == 404 and r.json() == {"detail": "Not Found"}
        r = await gpu.call("POST", "/api/v1/tokens", content=b"x\x03\xff", headers={"content-type": "application/json"})
        assert r.status_code in (400, 422) and isinstance(r.json()["detail"], str)

    asyncio.run(go())


def test_populated_bodies_match_the_published_schema(clusters: Any) -> None:
    """The live schemathesis run (test_api_schema.py) sees a gateway without peers; here two
    peered in-process gateways answer every operation with populated bodies (peers, NAT
    rules, IPAM allocations, tokens), each checked against the schema /openapi.json
    publishes for its status."""
    from jsonschema import Draft202012Validator
    from referencing import Registry, Resource
    from referencing.jsonschema import DRAFT202012

    from tests.gateway.test_two_gateways import peer

    gpu, lab = clusters("gpu"), clusters("lab")

    async def go() -> None:
        spec = (await gpu.call("GET", "/openapi.json", auth=False)).json()
        spec["paths"].update(gpu.peering_app.openapi()["paths"])  # same components: one registry
        registry: Registry[Any] = Registry().with_resource(
            "urn:spec", Resource.from_contents(spec, default_specification=DRAFT202012))

        def conforms(method: str, template: str, r: Any) -> None:
            doc = spec["paths"][template][method.lower()]["responses"]
            assert str(r.status_code) in doc, (method, template, r.status_code, r.text)
            ptr = "/".join(("urn:spec#/paths", template.replace("/", "~1"), method.lower(), "responses",
                            str(r.status_code), "content", "application~1json", "schema"))
            errs = list(Draft202012Validator({"$ref": ptr}, registry=registry).iter_errors(r.json()))
            assert not errs, (method, template, [e.message for e in errs])

        async def call(c: Any, method: str, template: str, path: str | None = None, **kw: Any) -> Any:
            r = await c.call(method, path or template, **kw)
            conforms(method, template, r)
            return r

        tok = (await call(gpu, "POST", "/api/v1/tokens", json={"ttl": "1h", "reusable": True})).json()
        await call(lab, "POST", "/api/v1/peers", json={"token": tok["token"]})
        await call(lab, "POST", "/api/v1/peers", json={"token": tok["token"]})  # 409: already peered
        await peer(gpu, clusters("cpu"))
        for c in (gpu, lab):
            assert await c.gw.reconciler.reconcile()
            for path in ("/readyz", "/api/v1/status", "/api/v1/peers", "/api/v1/nat", "/api/v1/ipam",
                         "/api/v1/routes", "/api/v1/tokens", "/healthz"):
                await call(c, "GET", path)
        nat = (await gpu.call("GET", "/api/v1/nat")).json()
        assert len(nat["peers"]) == 2 and nat["peers"][0]["rules"]  # populated, not vacuous
        assert len((await gpu.call("GET", "/api/v1/peers")).json()) == 2
        await call(gpu, "POST", "/api/v1/ranges/announce")
        await call(gpu, "POST", "/api/v1/key/rotate")
        await call(gpu, "DELETE", "/api/v1/tokens/{token_id}", f"/api/v1/tokens/{tok['token_id']}")
        await call(gpu, "DELETE", "/api/v1/tokens/{token_id}", f"/api/v1/tokens/{tok['token_id']}")  # 404
        await call(lab, "DELETE", "/api/v1/peers/{cluster_id}", "/api/v1/peers/gpu")
        await call(gpu, "GET", "/api/v1/tokens", auth=False)  # 401
        await call(gpu, "POST", "/api/v1/peering/join", json={"body": {"token_id": "zz"}, "mac": "x"})  # 403
        await call(gpu, "POST", "/api/v1/tokens", json={"ttl": "forever"})  # 422, a string detail

    asyncio.run(go())


def test_peering_listener_serves_only_peering(clusters: Any) -> None:
    """What anyone on the internet reaches (the published port): the two peering
    endpoints, nothing readable; every path of the operator surface is 404 there."""
    gpu = clusters("gpu")

    async def go() -> None:
        assert await gpu.gw.reconciler.reconcile()
        async with gpu.client(auth=True, peering=True) as c:
            for route in gpu.app.routes:
                path = getattr(route, "path", "")
                for method in sorted(getattr(route, "methods", None) or ()):
                    if method == "HEAD":
                        continue
                    url = path.replace("{cluster_id}", "x").replace("{token_id}", "x")
                    r = await c.request(method, url, json={})
                    assert r.status_code == 404, (method, path, r.status_code)
            for path in ("/", "/openapi.json", "/docs", "/redoc", "/metrics", "/healthz", "/api/v1/peers"):
                assert (await c.get(path)).status_code == 404, path
            r = await c.post("/api/v1/peering/join", json={"body": {"token_id": "zz"}, "mac": "x"})
            assert r.status_code == 403 and "unknown token" in r.json()["detail"]

    asyncio.run(go())


def test_admin_changes_are_audited_without_secrets(clusters: Any, caplog: Any) -> None:
    """One structured line per admin change (what, which peer, from where, the result),
    refused attempts included; no token, credential or key material in any of them."""
    import json
    import logging

    gpu, lab = clusters("gpu"), clusters("lab")
    caplog.set_level(logging.INFO, logger="crosswire.audit")

    async def go() -> str:
        tok = (await gpu.call("POST", "/api/v1/tokens", json={"ttl": "10m"})).json()
        assert (await lab.call("POST", "/api/v1/peers", json={"token": tok["token"]})).status_code == 201
        assert (await lab.call("POST", "/api/v1/peers", json={"token": tok["token"]})).status_code == 409
        assert (await lab.call("DELETE", "/api/v1/peers/gpu", auth=False)).status_code == 401
        assert (await lab.call("POST", "/api/v1/key/rotate")).status_code == 200
        assert (await lab.call("DELETE", "/api/v1/peers/gpu")).status_code == 200
        assert (await gpu.call("GET", "/api/v1/tokens")).status_code == 200  # a read: not audited
        return str(tok["token"])

    token = asyncio.run(go())
    lines = [r.getMessage() for r in caplog.records if r.name == "crosswire.audit"]
    entries = [json.loads(line.removeprefix("audit ")) for line in lines]
    assert [(e["action"], e.get("peer"), e["result"].split(":")[0]) for e in entries] == [
        ("token.create", None, "ok"), ("peer.add", "gpu", "ok"), ("peer.add", "gpu", "refused 409"),
        ("DELETE /api/v1/peers/gpu", None, "refused 401"), ("key.rotate", None, "ok"),
        ("peer.remove", "gpu", "ok")]
    assert entries[0]["token_id"] and entries[0]["ttl_s"] == 600
    assert all(e["from"] for e in entries)  # the caller's address
    assert entries[4]["peers"] == ["gpu"] and entries[4]["public_key"] == lab.store.public_key()
    text = "\n".join(lines)
    for secret in (token, token[4:40], gpu.admin, lab.admin, lab.store.private_key()):
        assert secret not in text


def test_operator_surface_refuses_requests_from_a_peer_view(clusters: Any) -> None:
    """A peer reaches the gateway pod's own address through its view of our pods; what
    arrives from an address in our view of a peer is refused, whatever the path."""
    from tests.gateway.test_two_gateways import peer

    gpu, lab = clusters("gpu"), clusters("lab")

    async def go() -> None:
        await peer(lab, gpu)
        view = next(m.view for m in lab.views.views("gpu") if m.kind == "pod")
        inside = str(next(iter(__import__("ipaddress").ip_network(view).hosts())))
        for client in (inside, "10.244.9.9"):  # a peer's pod as we see it; one of our own pods
            transport = httpx.ASGITransport(app=lab.app, client=(client, 40000))
            async with httpx.AsyncClient(transport=transport, base_url="http://lab:8081") as c:
                codes = {p: (await c.get(p)).status_code for p in ("/api/v1/peers", "/metrics", "/healthz", "/")}
            if client == inside:
                assert set(codes.values()) == {403}, codes
            else:
                assert set(codes.values()) == {200}, codes

    asyncio.run(go())
