"""Two (three) gateways peering in-process: real controller, API, IPAM and NAT renderer; fake data plane."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from gateway.errors import GatewayError
from gateway.tokens import b64e, decode


async def token_of(c: Any, **kw: Any) -> str:
    r = await c.call("POST", "/api/v1/tokens", json=kw or {"ttl": "1h"})
    assert r.status_code == 201, r.text
    return str(r.json()["token"])


async def peer(a: Any, b: Any) -> dict[str, Any]:
    tok = await token_of(b)
    r = await a.call("POST", "/api/v1/peers", json={"token": tok})
    assert r.status_code == 201, r.text
    return dict(r.json())


def test_peering_programs_both_sides_with_both_views(clusters: Any) -> None:
    gpu, lab = clusters("gpu"), clusters("lab")

    async def go() -> None:
        res = await peer(lab, gpu)  # lab holds gpu's token
        assert res["cluster_id"] == "gpu"
        # Both sides programmed before peer add returned.
        for me, other in ((lab, gpu), (gpu, lab)):
            st = me.fabric.last
            assert [p.cluster_id for p in st.peers] == [other.name]
            p = st.peers[0]
            assert p.public_key == other.store.public_key()
            # identical ranges -> remapped views from the pool, same prefix lengths
            assert {(m.kind, m.real) for m in p.remote} == {("pod", "10.244.0.0/16"), ("service", "10.96.0.0/12")}
            assert all(m.view.startswith("100.") for m in p.remote)
            assert {(m.kind, m.real) for m in p.local} == {("pod", "10.244.0.0/16"), ("service", "10.96.0.0/12")}
            assert p.endpoint == f"{other.name}.example:51820"
        # Each side's "local" views are exactly the other side's "remote" views.
        a, g = lab.fabric.last.peers[0], gpu.fabric.last.peers[0]
        assert {(m.real, m.view) for m in a.local} == {(m.real, m.view) for m in g.remote}
        assert {(m.real, m.view) for m in g.local} == {(m.real, m.view) for m in a.remote}
        # Same derived PSK on both sides, never typed.
        assert a.preshared_key and a.preshared_key == g.preshared_key
        # probe IP: the peer gateway's pod IP as we address it.
        pod_view = next(m.view for m in a.remote if m.kind == "pod")
        assert a.probe_ip == pod_view.split("/")[0].rsplit(".", 2)[0] + ".0.10"
        # routes for the node agents
        r = await lab.call("GET", "/api/v1/routes", auth=False)
        assert r.status_code == 200
        assert sorted(r.json()["cidrs"]) == sorted(m.view for m in a.remote)
        assert r.json()["gateway_ip"] == "10.244.0.10"
        for c in (lab, gpu):
            r = await c.call("GET", "/readyz")
            assert r.status_code == 200, r.text

    asyncio.run(go())


def test_three_cluster_mesh_on_same_ranges(clusters: Any) -> None:
    a, b, c = clusters("a"), clusters("b"), clusters("c")

    async def go() -> None:
        await peer(a, b)
        await peer(a, c)
        await peer(b, c)
        for x in (a, b, c):
            st = x.fabric.last
            assert len(st.peers) == 2
            views = [m.view for p in st.peers for m in p.remote]
            assert len(set(views)) == 4  # unique inside each cluster

    asyncio.run(go())


def test_single_use_token_refused_second_time_without_change(clusters: Any) -> None:
    gpu, lab, third = clusters("gpu"), clusters("lab"), clusters("third")

    async def go() -> None:
        tok = await token_of(gpu)
        r = await lab.call("POST", "/api/v1/peers", json={"token": tok})
        assert r.status_code == 201
        before = (gpu.store.peers(), gpu.views.snapshot())
        r = await third.call("POST", "/api/v1/peers", json={"token": tok})
        assert r.status_code == 403 and "already used" in r.json()["detail"]
        assert (gpu.store.peers(), gpu.views.snapshot()) == before
        assert third.store.peers() == [] and third.views.snapshot()["allocations"] == []

    asyncio.run(go())


def test_reusable_token(clusters: Any) -> None:
    gpu, lab, third = clusters("gpu"), clusters("lab"), clusters("third")

    async def go() -> None:
        tok = await token_of(gpu, ttl="10m", reusable=True)
        for c in (lab, third):
            r = await c.call("POST", "/api/v1/peers", json={"token": tok})
            assert r.status_code == 201, r.text
        assert [p.cluster_id for p in gpu.store.peers()] == ["lab", "third"]

    asyncio.run(go())


def test_expired_token_refused(clusters: Any, clock: Any) -> None:
    gpu, lab = clusters("gpu"), clusters("lab")

    async def go() -> None:
        tok = await token_of(gpu, ttl=60)
        clock.t += 61
        r = await lab.call("POST", "/api/v1/peers", json={"token": tok})
        assert r.status_code == 400 and "expired" in r.json()["detail"]
        assert lab.store.peers() == [] and gpu.store.peers() == []

    asyncio.run(go())


def test_tampered_and_foreign_tokens_refused(clusters: Any) -> None:
    gpu, lab, other = clusters("gpu"), clusters("lab"), clusters("other")

    async def go() -> None:
        tok = await token_of(gpu)
        # flip a character in the middle: integrity check
        mid = len(tok) // 2
        bad = tok[:mid] + ("A" if tok[mid] != "A" else "B") + tok[mid + 1:]
        r = await lab.call("POST", "/api/v1/peers", json={"token": bad})
        assert r.status_code == 400, r.text
        # foreign: other's token, re-signed to point at gpu -> gpu doesn't know it
        from gateway.tokens import Token
        otok = decode(await token_of(other))
        forged = Token(url="http://gpu:8080", cluster_id=otok.cluster_id, public_key=otok.public_key,
                       token_id=otok.token_id, expires=otok.expires, secret=otok.secret,
                       tls_pin=otok.tls_pin).encode()
        r = await lab.call("POST", "/api/v1/peers", json={"token": forged})
        assert r.status_code == 403 and "unknown token" in r.json()["detail"]
        # a token with gpu's id but a different secret -> MAC fails at gpu
        g = decode(tok)
        wrong = Token(url=g.url, cluster_id=g.cluster_id, public_key=g.public_key, token_id=g.token_id,
                      expires=g.expires, secret=b"\x01" * 32, tls_pin=g.tls_pin).encode()
        r = await lab.call("POST", "/api/v1/peers", json={"token": wrong})
        assert r.status_code == 401 and "authentication failed" in r.json()["detail"]
        # pinned key: token claims another key for gpu -> gpu refuses (issued for another gateway)
        pinned = Token(url=g.url, cluster_id=g.cluster_id, public_key=other.store.public_key(),
                       token_id=g.token_id, expires=g.expires, secret=g.secret, tls_pin=g.tls_pin).encode()
        r = await lab.call("POST", "/api/v1/peers", json={"token": pinned})
        assert r.status_code == 403, r.text
        assert lab.store.peers() == [] and gpu.store.peers() == []
        assert gpu.store.token(g.token_id).uses == 0  # type: ignore[union-attr]
        # the genuine token still works afterwards
        r = await lab.call("POST", "/api/v1/peers", json={"token": tok})
        assert r.status_code == 201, r.text

    asyncio.run(go())


def test_refuses_self_and_duplicate_cluster_id(clusters: Any, tmp_path: Any) -> None:
    gpu, lab = clusters("gpu"), clusters("lab")

    async def go() -> None:
        r = await gpu.call("POST", "/api/v1/peers", json={"token": await token_of(gpu)})
        assert r.status_code == 409 and "myself" in r.json()["detail"]
        await peer(lab, gpu)
        # another gateway also calling itself "lab" (different key) -> refused by gpu
        impostor = clusters("lab2")
        impostor.config = impostor.config.__class__(**{**impostor.config.__dict__, "cluster_id": "lab"})
        impostor.gw.exchange.config = impostor.config
        tok = await token_of(gpu)
        r = await impostor.call("POST", "/api/v1/peers", json={"token": tok})
        assert r.status_code == 409 and "another key" in r.json()["detail"]
        assert [p.public_key for p in gpu.store.peers()] == [lab.store.public_key()]

    asyncio.run(go())


def test_malformed_claimed_ranges_and_exhaustion_refused(clusters: Any) -> None:
    # gpu's pool only fits one /16 remap: lab's 10.244/16 fits, its 10.96/12 does not.
    gpu = clusters("gpu", ipam={"pools": ["100.64.0.0/16"]})
    lab = clusters("lab")

    async def go() -> None:
        tok = await token_of(gpu)
        r = await lab.call("POST", "/api/v1/peers", json={"token": tok})
        assert r.status_code == 422 and "cannot allocate" in r.json()["detail"], r.text
        assert gpu.store.peers() == [] and gpu.views.snapshot()["allocations"] == []
        assert lab.store.peers() == []
        # token not consumed by the refused attempt
        assert gpu.store.tokens()[0].uses == 0

    asyncio.run(go())


def test_peer_remove_cleans_both_sides(clusters: Any) -> None:
    gpu, lab = clusters("gpu"), clusters("lab")

    async def go() -> None:
        await peer(lab, gpu)
        r = await lab.call("DELETE", "/api/v1/peers/gpu")
        assert r.status_code == 200 and r.json()["peer_notified"] is True
        for c in (lab, gpu):
            assert c.store.peers() == []
            assert c.views.snapshot()["allocations"] == []
            assert c.fabric.last.peers == ()
        r = await lab.call("DELETE", "/api/v1/peers/gpu")
        assert r.status_code == 404
        # and they can peer again afterwards
        await peer(gpu, lab)

    asyncio.run(go())


def test_key_rotation_announced_before_switch(clusters: Any) -> None:
    gpu, lab = clusters("gpu"), clusters("lab")

    async def go() -> None:
        await peer(lab, gpu)
        old = lab.store.public_key()
        r = await lab.call("POST", "/api/v1/key/rotate")
        assert r.status_code == 200, r.text
        new = r.json()["public_key"]
        assert new != old and lab.store.public_key() == new
        assert gpu.store.peer("lab").public_key == new  # type: ignore[union-attr]
        assert gpu.fabric.last.peers[0].public_key == new
        assert lab.fabric.last.local.private_key == lab.store.private_key()
        # channel still works after rotation
        r = await gpu.call("DELETE", "/api/v1/peers/lab")
        assert r.json()["peer_notified"] is True

    asyncio.run(go())


def test_key_rotation_aborts_when_a_peer_is_unreachable(clusters: Any) -> None:
    gpu, lab = clusters("gpu"), clusters("lab")

    async def go() -> None:
        await peer(lab, gpu)
        old = lab.store.public_key()
        del lab.router["http://gpu:8080"]
        r = await lab.call("POST", "/api/v1/key/rotate")
        assert r.status_code == 502 and "aborted" in r.json()["detail"]
        assert lab.store.public_key() == old and lab.store.private_key() == lab.fabric.last.local.private_key

    asyncio.run(go())


def test_restart_keeps_keys_views_and_rules(clusters: Any) -> None:
    gpu, lab = clusters("gpu"), clusters("lab")

    async def go() -> None:
        await peer(lab, gpu)
        before = lab.fabric.last
        key = lab.store.public_key()
        lab.close()
        lab.fabric = type(lab.fabric)()  # fresh process: data plane state unknown
        lab.open()
        assert lab.store.public_key() == key
        assert await lab.gw.reconciler.reconcile()
        assert lab.fabric.last == before  # same keys, views, PSK -> identical rules
        assert len(lab.store.peers()) == 1 and len(lab.views.snapshot()["allocations"]) == 2

    asyncio.run(go())


def test_no_secret_in_any_response(clusters: Any) -> None:
    gpu, lab = clusters("gpu"), clusters("lab")

    async def go() -> None:
        tok_text = await token_of(gpu)
        tok = decode(tok_text)
        r = await lab.call("POST", "/api/v1/peers", json={"token": tok_text})
        assert r.status_code == 201
        secrets_ = [lab.store.private_key(), gpu.store.private_key(), lab.store.peers()[0].psk_b64,
                    b64e(tok.secret), lab.admin, gpu.admin]
        bodies = []
        for c in (lab, gpu):
            for path in ("/api/v1/status", "/api/v1/peers", "/api/v1/nat", "/api/v1/ipam",
                         "/api/v1/routes", "/metrics", "/readyz", "/healthz", "/openapi.json"):
                rr = await c.call("GET", path)
                assert rr.status_code == 200, (path, rr.text)
                bodies.append(rr.text)
            # error paths too, with the token echoed in a bad body
            rr = await c.call("POST", "/api/v1/peers", json={"token": tok_text, "extra": tok_text})
            assert rr.status_code == 422
            bodies.append(rr.text)
            rr = await c.call("POST", "/api/v1/peers", json={"token": tok_text})
            bodies.append(rr.text)
        blob = "\n".join(bodies)
        for s in secrets_:
            assert s not in blob
        for p in lab.store.peers():
            assert p.psk_b64 not in repr(p) and p.channel_key.hex() not in repr(p)
        assert lab.store.private_key() not in repr(lab.fabric.last)

    asyncio.run(go())


def test_reconcile_error_counted_and_recovered(clusters: Any) -> None:
    gpu = clusters("gpu")

    async def go() -> None:
        gpu.fabric.fail_next = RuntimeError("boom")
        assert not await gpu.gw.reconciler.reconcile()
        assert gpu.gw.reconciler.stats.errors == 1
        r = await gpu.call("GET", "/readyz")
        assert r.status_code == 503 and "boom" in r.json()["reason"]
        m = (await gpu.call("GET", "/metrics")).text
        assert "crosswire_reconcile_errors_total 1" in m
        assert await gpu.gw.reconciler.reconcile()
        assert (await gpu.call("GET", "/readyz")).status_code == 200
        # the data plane died: reconcile restarts it and re-applies
        gpu.fabric.up = False
        assert await gpu.gw.reconciler.reconcile()
        assert gpu.fabric.up and gpu.gw.reconciler.stats.restarts == 1

    asyncio.run(go())


def test_added_ranges_travel_over_the_channel(clusters: Any) -> None:
    gpu, lab = clusters("gpu"), clusters("lab")

    async def go() -> None:
        await peer(lab, gpu)
        # lab's config grows a pod range and an IPv6 pod range; restart and announce.
        lab.close()
        lab.over = {"pod_cidrs": ["10.244.0.0/16", "10.245.0.0/16", "fd00::/48"],
                    "ipam": {"pools": ["100.64.0.0/10", "fd10::/32"]}}
        lab.open()
        r = await lab.call("POST", "/api/v1/ranges/announce")
        assert r.status_code == 200 and r.json() == {"gpu": "ok"}, r.text
        g = gpu.fabric.last.peers[0]
        assert {m.real for m in g.remote} == {"10.244.0.0/16", "10.245.0.0/16", "fd00::/48", "10.96.0.0/12"}
        l_ = lab.fabric.last.peers[0]
        assert {(m.real, m.view) for m in l_.local} == {(m.real, m.view) for m in g.remote}
        # nothing left to announce the second time
        r = await lab.call("POST", "/api/v1/ranges/announce")
        assert r.json() == {}

    asyncio.run(go())


def test_failed_last_step_rolls_back_and_pending_rejoin_works(clusters: Any) -> None:
    from gateway.errors import GatewayError

    gpu, lab = clusters("gpu"), clusters("lab")
    original = gpu.gw.exchange.handle_message

    async def broken(envelope: Any) -> Any:
        raise GatewayError("disk full", 500)

    async def go() -> None:
        gpu.gw.exchange.handle_message = broken  # type: ignore[method-assign]
        r = await lab.call("POST", "/api/v1/peers", json={"token": await token_of(gpu)})
        assert r.status_code == 502 and "rolled back" in r.json()["detail"], r.text
        assert lab.store.peers() == [] and lab.views.snapshot()["allocations"] == []
        assert lab.fabric.last.peers == ()
        # gpu could not be told: it still holds lab as pending (not programmed)
        assert [p.their_views for p in gpu.store.peers()] == [None]
        assert gpu.gw.reconciler.desired().peers == ()
        gpu.gw.exchange.handle_message = original  # type: ignore[method-assign]
        # lab retries with a fresh token: the pending entry (same key) is replaced
        await peer(lab, gpu)
        assert [p.cluster_id for p in gpu.fabric.last.peers] == ["lab"]
        assert len(gpu.views.snapshot()["allocations"]) == 2

    asyncio.run(go())


def test_metrics_are_valid_prometheus_text(clusters: Any) -> None:
    import re

    gpu, lab = clusters("gpu"), clusters("lab")

    async def go() -> None:
        await peer(lab, gpu)
        text = (await lab.call("GET", "/metrics", auth=False)).text
        seen_families: list[str] = []
        current = None
        samples: dict[str, float] = {}
        for line in text.splitlines():
            if line.startswith("# TYPE "):
                current = line.split()[2]
                assert current not in seen_families, f"family {current} declared twice"
                seen_families.append(current)
            elif line.startswith("# HELP ") or not line:
                continue
            else:
                m = re.fullmatch(r'([a-z_]+)(\{[^}]*\})? (-?[0-9.e+-]+)', line)
                assert m, line
                assert m.group(1) == current, f"{m.group(1)} sample outside its family block"
                samples[m.group(1) + (m.group(2) or "")] = float(m.group(3))
        assert samples['crosswire_peers{state="connecting"}'] == 1
        assert samples['crosswire_peer_rx_bytes_total{peer="gpu"}'] == 7
        assert samples['crosswire_nat_packets_total{peer="gpu",chain="to-gpu"}'] == 0
        assert samples["crosswire_reconcile_errors_total"] == 0 and samples["crosswire_ready"] == 1

    asyncio.run(go())


def test_state_from_handshake_when_peer_gateway_ip_unknown(clusters: Any, clock: Any) -> None:
    gpu, lab = clusters("gpu", gateway_ip=None), clusters("lab")

    async def go() -> None:
        await peer(lab, gpu)
        assert lab.fabric.last.peers[0].probe_ip is None  # gpu did not tell its pod IP
        assert (await lab.call("GET", "/api/v1/peers")).json()[0]["state"] == "connecting"
        lab.fabric.handshake = clock.t - 5
        p = (await lab.call("GET", "/api/v1/peers")).json()[0]
        assert p["state"] == "connected" and p["handshake_age_s"] == 5
        lab.fabric.handshake = clock.t - 200
        assert (await lab.call("GET", "/api/v1/peers")).json()[0]["state"] == "error"

    asyncio.run(go())


def test_removed_ranges_travel_over_the_channel_and_release_views(clusters: Any) -> None:
    gpu = clusters("gpu")
    lab = clusters("lab", pod_cidrs=["10.244.0.0/16", "10.245.0.0/16"])

    async def go() -> None:
        await peer(lab, gpu)
        g = gpu.fabric.last.peers[0]
        dropped_view = next(m.view for m in g.remote if m.real == "10.245.0.0/16")
        # lab's config loses a pod range and gains another; restart and announce the full set.
        lab.close()
        lab.over = {"pod_cidrs": ["10.244.0.0/16", "10.246.0.0/16"]}
        lab.open()
        r = await lab.call("POST", "/api/v1/ranges/announce")
        assert r.status_code == 200 and r.json() == {"gpu": "ok"}, r.text
        g = gpu.fabric.last.peers[0]
        assert {m.real for m in g.remote} == {"10.244.0.0/16", "10.246.0.0/16", "10.96.0.0/12"}
        # gpu's IPAM released the dropped range's view; routes and NAT no longer carry it
        allocs = gpu.views.snapshot()["allocations"]
        assert {a["real"] for a in allocs} == {"10.244.0.0/16", "10.246.0.0/16", "10.96.0.0/12"}
        assert dropped_view not in [a["view"] for a in allocs]
        routes = (await gpu.call("GET", "/api/v1/routes", auth=False)).json()["cidrs"]
        assert dropped_view not in routes and len(routes) == 3
        nat_text = (await gpu.call("GET", "/api/v1/nat")).text
        assert "10.245.0.0/16" not in nat_text and dropped_view not in nat_text
        assert [dict(k=k, c=c) for k, c in gpu.store.peer("lab").ranges] == \
            [dict(k="pod", c="10.244.0.0/16"), dict(k="pod", c="10.246.0.0/16"), dict(k="service", c="10.96.0.0/12")]
        # lab's side: its local views (gpu's views of lab) follow, and both sides are ready
        l_ = lab.fabric.last.peers[0]
        assert {(m.real, m.view) for m in l_.local} == {(m.real, m.view) for m in g.remote}
        for c in (lab, gpu):
            assert (await c.call("GET", "/readyz")).status_code == 200
        # nothing left to announce
        assert (await lab.call("POST", "/api/v1/ranges/announce")).json() == {}

    asyncio.run(go())


def test_changed_endpoint_and_url_announced_after_restart(clusters: Any) -> None:
    gpu, lab = clusters("gpu"), clusters("lab")

    async def go() -> None:
        assert await lab.gw.exchange.announce_endpoint() == {}  # first start, no peers: recorded only
        assert lab.store.announced() == {"endpoint": "lab.example:51820", "url": "https://lab:8080"}
        await peer(lab, gpu)
        assert await lab.gw.exchange.announce_endpoint() == {}  # unchanged: nothing sent
        # lab restarts with a new WireGuard endpoint and a new peering URL
        lab.close()
        lab.over = {"wireguard": {"interface": "cw-lab", "listen_port": 51999, "endpoint": "lab2.example:51999",
                                  "implementation": "wireguard-go"},
                    "api": {"listen": "127.0.0.1:8080", "advertise": "http://lab-new:8080"}}
        lab.open()
        del lab.router["http://lab:8080"]
        lab.router["http://lab-new:8080"] = lab.peering_app
        # gpu is down at first: nothing recorded, so the next attempt tells it
        gpu_app = lab.router.pop("http://gpu:8080")
        res = await lab.gw.exchange.announce_endpoint()
        assert res["gpu"] != "ok" and "cannot reach" in res["gpu"]
        assert lab.store.announced() == {"endpoint": "lab.example:51820", "url": "https://lab:8080"}
        assert gpu.store.peer("lab").endpoint == "lab.example:51820"
        lab.router["http://gpu:8080"] = gpu_app
        assert await lab.gw.exchange.announce_endpoint() == {"gpu": "ok"}
        p = gpu.store.peer("lab")
        assert (p.endpoint, p.url) == ("lab2.example:51999", "https://lab-new:8080")
        assert gpu.fabric.last.peers[0].endpoint == "lab2.example:51999"  # WireGuard re-programmed
        assert lab.store.announced() == {"endpoint": "lab2.example:51999", "url": "https://lab-new:8080"}
        assert await lab.gw.exchange.announce_endpoint() == {}
        # gpu reaches lab at the new URL: a key rotation is acknowledged through it
        r = await gpu.call("POST", "/api/v1/key/rotate")
        assert r.status_code == 200 and r.json()["peers_informed"] == ["lab"], r.text
        assert (await gpu.call("GET", "/readyz")).status_code == 200

    asyncio.run(go())


def test_endpoint_message_validated(clusters: Any) -> None:
    gpu, lab = clusters("gpu"), clusters("lab")

    async def go() -> None:
        await peer(lab, gpu)
        p = lab.store.peer("gpu")
        for body in ({"endpoint": "x", "url": "http://n:1"}, {"endpoint": "h:1", "url": "ftp://n"},
                     {"endpoint": "h:1"}):
            with pytest.raises(GatewayError):
                await lab.gw.exchange.channel.send(p, "endpoint", body)
        assert gpu.store.peer("lab").url == "https://lab:8080"

    asyncio.run(go())


def test_daemon_announce_retries_until_every_peer_acknowledged(clusters: Any, monkeypatch: Any) -> None:
    from gateway import daemon
    monkeypatch.setattr(daemon, "ANNOUNCE_RETRY", (0.05, 0.1))
    gpu, lab = clusters("gpu"), clusters("lab")

    async def go() -> None:
        await peer(lab, gpu)
        lab.close()
        lab.over = {"wireguard": {"interface": "cw-lab", "listen_port": 51820, "endpoint": "lab3.example:51820",
                                  "implementation": "wireguard-go"}}
        lab.open()
        gpu_app = lab.router.pop("http://gpu:8080")
        stop = asyncio.Event()
        task = asyncio.create_task(daemon.announce(lab.gw.exchange, stop))
        await asyncio.sleep(0.2)
        assert not task.done()  # still retrying
        lab.router["http://gpu:8080"] = gpu_app
        await asyncio.wait_for(task, 2)
        assert gpu.store.peer("lab").endpoint == "lab3.example:51820"

    asyncio.run(go())
