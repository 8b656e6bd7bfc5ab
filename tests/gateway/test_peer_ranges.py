"""Issue 22 in the control plane: what a peer announces is bounded by our policy, its
token and quotas, at the join, at peer add and in ``ranges`` messages; refusals change
nothing. In-process gateways with the fake data plane (tests/gateway/conftest.py)."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import pytest

from gateway.errors import GatewayError
from gateway.peerranges import cli as rangescli

LAB = [("pod", "10.244.0.0/16"), ("service", "10.96.0.0/12")]


async def token(c: Any, **kw: Any) -> str:
    r = await c.call("POST", "/api/v1/tokens", json={"ttl": "1h", **kw})
    assert r.status_code == 201, r.text
    return str(r.json()["token"])


async def peer(a: Any, b: Any, **kw: Any) -> Any:
    """``a`` redeems a token of ``b``; returns the answer."""
    return await a.call("POST", "/api/v1/peers", json={"token": await token(b, **kw)})


async def announce(sender: Any, to: str, ranges: list[tuple[str, str]]) -> dict[str, Any]:
    """A channel message ``ranges`` as a hostile peer would send it (authenticated, any content)."""
    rec = sender.store.peer(to)
    body = {"ranges": [{"kind": k, "cidr": c} for k, c in ranges], "gateway_ip": "10.244.0.10"}
    return dict(await sender.gw.exchange.channel.send(rec, "ranges", body))


async def everything(c: Any) -> dict[str, Any]:
    """What a peer's ranges can reach on ``c``: IPAM, stored peers, programmed state, agents' routes."""
    return {"ipam": c.views.snapshot(), "peers": c.store.peers(), "applied": len(c.fabric.applied),
            "state": c.fabric.last, "routes": (await c.call("GET", "/api/v1/routes", auth=False)).json()}


def allowed_ips(c: Any, peer: str) -> set[str]:
    return {m.view for p in c.fabric.last.peers if p.cluster_id == peer for m in p.remote}


def test_public_ranges_in_a_ranges_message_are_refused_and_change_nothing(
        clusters: Any, caplog: pytest.LogCaptureFixture) -> None:
    gpu, lab = clusters("gpu"), clusters("lab")

    async def go() -> None:
        assert (await peer(lab, gpu)).status_code == 201
        before = await everything(gpu)
        caplog.set_level(logging.WARNING, logger="crosswire.gateway")
        with pytest.raises(GatewayError) as e:
            await announce(lab, "gpu", [*LAB, ("pod", "8.8.8.0/24"), ("pod", "1.0.0.0/8")])
        assert e.value.status == 403
        assert "peer refused: range change refused by the peer range policy: pod 8.8.8.0/24: outside the " \
               "address space this gateway accepts from peers" in str(e.value)
        assert "pod 1.0.0.0/8" in str(e.value)
        assert await everything(gpu) == before
        assert not any(v.startswith(("8.", "1.")) for v in allowed_ips(gpu, "lab"))
        assert not any(c.startswith(("8.", "1.")) for c in before["routes"]["cidrs"])
        warn = [r for r in caplog.records if r.levelno == logging.WARNING]
        assert any("peer lab" in r.getMessage() and "pod 8.8.8.0/24" in r.getMessage() for r in warn)
        # The same peer may still change its ranges within the policy.
        assert (await announce(lab, "gpu", [*LAB, ("pod", "10.245.0.0/16")]))["applied"] is True
        assert "10.245.0.0/16" in {r for _, r in gpu.store.peer("lab").ranges}

    asyncio.run(go())


def test_pool_hog_and_range_flood_are_refused_while_other_peers_still_peer(
        clusters: Any, caplog: pytest.LogCaptureFixture) -> None:
    gpu, lab, edge = clusters("gpu", ipam={"pools": ["100.64.0.0/10", "172.16.0.0/12"]}), \
        clusters("lab"), clusters("edge")

    async def go() -> None:
        assert (await peer(lab, gpu)).status_code == 201
        before = await everything(gpu)
        hog = [("pod", "100.64.0.0/10"), ("pod", "172.16.0.0/12"), ("pod", "192.168.0.0/16"),
               *[("pod", f"10.{n}.0.0/16") for n in range(1, 14)]]
        assert len(hog) == 16
        caplog.set_level(logging.WARNING, logger="crosswire.gateway")
        with pytest.raises(GatewayError) as e:
            await announce(lab, "gpu", hog)
        assert e.value.status == 403 and "more than peer_ranges.max_view_addresses.ipv4 (2097152, a /11)" \
            in str(e.value)
        flood = [("pod", f"10.{i // 256}.{i % 256}.0/24") for i in range(1400)]
        with pytest.raises(GatewayError) as e:
            await announce(lab, "gpu", flood)
        assert e.value.status == 403 and "1400 ranges, more than peer_ranges.max_ranges (16)" in str(e.value)
        assert await everything(gpu) == before
        assert sum("peer lab: range change refused" in r.getMessage() for r in caplog.records) == 2
        # The next ordinary peer is not starved, and lab keeps what it had.
        assert (await peer(edge, gpu)).status_code == 201
        assert {p.cluster_id for p in gpu.fabric.last.peers} == {"lab", "edge"}
        assert allowed_ips(gpu, "lab") == {m.view for m in before["state"].peers[0].remote}

    asyncio.run(go())


def test_a_join_at_or_over_its_quota_is_refused_and_stores_nothing(clusters: Any) -> None:
    gpu = clusters("gpu", peer_ranges={"max_ranges": 2})
    hog = clusters("hog", pod_cidrs=["10.128.0.0/9"], gateway_ip="10.128.0.10")
    many = clusters("many", pod_cidrs=["10.244.0.0/16", "10.245.0.0/16"])
    lab = clusters("lab")

    async def go() -> None:
        r = await peer(hog, gpu)
        assert r.status_code == 403, r.text
        assert "join refused by the peer range policy: ranges: " in r.json()["detail"]
        assert "peer_ranges.max_view_addresses.ipv4" in r.json()["detail"]
        r = await peer(many, gpu)
        assert r.status_code == 403 and "3 ranges, more than peer_ranges.max_ranges (2)" in r.json()["detail"]
        assert gpu.store.peers() == [] and gpu.views.snapshot()["allocations"] == []
        assert all(t.uses == 0 for t in gpu.store.tokens())  # refused before the token was counted
        assert hog.store.peers() == [] and many.store.peers() == []
        assert (await peer(lab, gpu)).status_code == 201

    asyncio.run(go())


def test_public_ranges_at_join_and_at_peer_add_are_refused_on_both_sides(clusters: Any) -> None:
    gpu, lab = clusters("gpu"), clusters("lab")
    evil = clusters("evil", pod_cidrs=["8.8.8.0/24"], gateway_ip="8.8.8.10")

    async def go() -> None:
        # evil joins gpu: gpu refuses (B side), nothing stored, the token still unused.
        r = await peer(evil, gpu)
        assert r.status_code == 403 and "pod 8.8.8.0/24: outside the address space" in r.json()["detail"]
        assert gpu.store.peers() == [] and gpu.views.snapshot()["allocations"] == []
        assert gpu.store.tokens()[0].uses == 0 and evil.store.peers() == []
        # lab redeems evil's token: evil (B) answers with its ranges, lab (A) refuses them
        # and tells evil to drop the pending entry it stored.
        r = await peer(lab, evil)
        assert r.status_code == 403, r.text
        assert r.json()["detail"].startswith("evil's ranges refused by the peer range policy: pod 8.8.8.0/24")
        assert lab.store.peers() == [] and lab.views.snapshot()["allocations"] == []
        assert lab.fabric.applied == [] or lab.fabric.last.peers == ()
        assert evil.store.peers() == []

    asyncio.run(go())


def test_token_ranges_bound_the_join_and_every_later_change(clusters: Any) -> None:
    gpu, lab = clusters("gpu"), clusters("lab")

    async def go() -> None:
        r = await gpu.call("POST", "/api/v1/tokens", json={"ranges": ["10.244.0.0/16", "8.8.8.0/24"]})
        assert r.status_code == 400 and r.json()["detail"].startswith(
            "ranges[1]: 8.8.8.0/24 is outside peer_ranges.allow"), r.text
        assert gpu.store.tokens() == []
        # A token that does not cover lab's service range: refused, nothing stored.
        r = await peer(lab, gpu, ranges=["10.244.0.0/16"])
        assert r.status_code == 403 and "service 10.96.0.0/12: outside the ranges this peer's token allows " \
            "(10.244.0.0/16)" in r.json()["detail"], r.text
        assert gpu.store.peers() == [] and gpu.views.snapshot()["allocations"] == []
        # A token covering both: peered, and the grant stays with the peer.
        assert (await peer(lab, gpu, ranges=["10.244.0.0/16", "10.96.0.0/12", "10.250.0.0/16"])).status_code == 201
        r = await gpu.call("GET", "/api/v1/peers/lab/ranges")
        assert r.status_code == 200 and r.json()["token_ranges"] == ["10.244.0.0/16", "10.96.0.0/12", "10.250.0.0/16"]
        before = await everything(gpu)
        with pytest.raises(GatewayError) as e:  # private, within the policy, but not the token's
            await announce(lab, "gpu", [*LAB, ("pod", "10.245.0.0/16")])
        assert e.value.status == 403 and "pod 10.245.0.0/16: outside the ranges this peer's token allows" \
            in str(e.value)
        assert await everything(gpu) == before
        assert (await announce(lab, "gpu", [*LAB, ("pod", "10.250.0.0/16")]))["applied"] is True
        # Removing the peer drops its grant: a later join with an unrestricted token is free.
        assert (await gpu.call("DELETE", "/api/v1/peers/lab")).status_code == 200
        assert gpu.gw.exchange.ranges_gate.grant("lab") is None

    asyncio.run(go())


def test_widened_policy_allows_what_it_lists_and_nothing_more(clusters: Any) -> None:
    gpu = clusters("gpu", peer_ranges={"allow": ["10.0.0.0/8", "198.18.0.0/15"]})
    lab = clusters("lab")

    async def go() -> None:
        assert (await peer(lab, gpu)).status_code == 201
        assert (await announce(lab, "gpu", [*LAB, ("pod", "198.18.5.0/24")]))["applied"] is True
        assert "198.18.5.0/24" in {m.real for m in gpu.fabric.last.peers[0].remote}
        for cidr in ("8.8.8.0/24", "192.168.1.0/24", "198.20.0.0/24", "100.64.0.0/16"):
            with pytest.raises(GatewayError) as e:
                await announce(lab, "gpu", [*LAB, ("pod", cidr)])
            assert e.value.status == 403 and f"pod {cidr}: outside" in str(e.value)
            assert "(peer_ranges.allow: 10.0.0.0/8, 198.18.0.0/15)" in str(e.value)
        r = await gpu.call("POST", "/api/v1/tokens", json={"ranges": ["198.18.0.0/16"]})
        assert r.status_code == 201  # a token may grant what the widened policy allows

    asyncio.run(go())


def test_identity_views_never_take_our_local_or_reserved_ranges(clusters: Any) -> None:
    gpu = clusters("gpu", reserved_cidrs=["10.250.0.0/16"])
    lab = clusters("lab", pod_cidrs=["10.244.0.0/16", "10.250.0.0/16"])

    async def go() -> None:
        assert (await peer(lab, gpu)).status_code == 201
        views = {m.real: m.view for m in gpu.fabric.last.peers[0].remote}
        # Allowed by the policy, but our own pod and reserved ranges: remapped by the IPAM.
        assert views["10.244.0.0/16"] != "10.244.0.0/16" and views["10.250.0.0/16"] != "10.250.0.0/16"
        assert all(v.startswith("100.") for v in views.values())

    asyncio.run(go())


def test_manual_approval_holds_a_change_until_the_operator_approves(clusters: Any) -> None:
    gpu = clusters("gpu", peer_ranges={"approval": "manual"})
    lab = clusters("lab")

    async def go() -> None:
        assert (await peer(lab, gpu)).status_code == 201  # the join itself needs no approval
        r = await gpu.call("GET", "/api/v1/peers/lab/ranges")
        assert r.status_code == 200 and r.json()["pending"] is None and r.json()["approval"] == "manual"
        before = await everything(gpu)
        # lab's config grows a pod range; it announces it as it does after a restart.
        lab.close()
        lab.over = {"pod_cidrs": ["10.244.0.0/16", "10.245.0.0/16"]}
        lab.open()
        r = await lab.call("POST", "/api/v1/ranges/announce")
        assert r.json() == {"gpu": "pending: gpu requires an operator's approval of range changes"}
        assert await everything(gpu) == before
        # Outside the policy is refused outright, not held.
        with pytest.raises(GatewayError) as e:
            await announce(lab, "gpu", [*LAB, ("pod", "8.8.8.0/24")])
        assert e.value.status == 403
        await lab.call("POST", "/api/v1/ranges/announce")  # the pending entry is lab's real set again
        shown = (await gpu.call("GET", "/api/v1/peers/lab/ranges")).json()
        assert shown["pending"]["added"] == [{"kind": "pod", "cidr": "10.245.0.0/16"}]
        assert shown["pending"]["removed"] == [] and shown["pending"]["problem"] is None
        text = "\n".join(rangescli.text(shown))
        assert "+ pod 10.245.0.0/16" in text and "--approve" in text
        # Unauthenticated callers see nothing and approve nothing.
        assert (await gpu.call("GET", "/api/v1/peers/lab/ranges", auth=False)).status_code == 401
        assert (await gpu.call("POST", "/api/v1/peers/lab/ranges", auth=False,
                               json={"approve": True})).status_code == 401
        assert await everything(gpu) == before
        r = await gpu.call("POST", "/api/v1/peers/lab/ranges", json={"approve": True})
        assert r.status_code == 200, r.text
        out = r.json()
        assert out["applied"] is True and out["peer_notified"] is True and out["pending"] is None
        assert {x["cidr"] for x in out["ranges"]} == {"10.244.0.0/16", "10.245.0.0/16", "10.96.0.0/12"}
        g = gpu.fabric.last.peers[0]
        assert "10.245.0.0/16" in {m.real for m in g.remote}
        # lab learnt gpu's new views in the "views" message: both sides agree, nothing left to announce.
        assert {(m.real, m.view) for m in lab.fabric.last.peers[0].local} == {(m.real, m.view) for m in g.remote}
        assert (await lab.call("POST", "/api/v1/ranges/announce")).json() == {}
        r = await gpu.call("POST", "/api/v1/peers/lab/ranges", json={"approve": True})
        assert r.status_code == 409 and "no pending range change" in r.json()["detail"]
        # A change the operator rejects: dropped, nothing applied.
        lab.close()
        lab.over = {"pod_cidrs": ["10.244.0.0/16"]}
        lab.open()
        assert "pending" in (await lab.call("POST", "/api/v1/ranges/announce")).json()["gpu"]
        before = await everything(gpu)
        r = await gpu.call("POST", "/api/v1/peers/lab/ranges", json={"reject": True})
        assert r.status_code == 200 and r.json()["pending"] is None and r.json()["applied"] is False
        assert await everything(gpu) == before
        r = await gpu.call("POST", "/api/v1/peers/lab/ranges", json={"approve": True, "reject": True})
        assert r.status_code == 422
        assert (await gpu.call("GET", "/api/v1/peers/nobody/ranges")).status_code == 404

    asyncio.run(go())


def test_peers_stored_before_a_narrower_policy_are_reported(clusters: Any) -> None:
    from gateway.peerranges import admin

    gpu, lab = clusters("gpu"), clusters("lab")

    async def go() -> None:
        assert (await peer(lab, gpu)).status_code == 201
        assert admin.audit(gpu.gw.exchange) == {}
        gpu.close()
        gpu.over = {"peer_ranges": {"allow": ["10.244.0.0/16"]}}  # the operator narrows the policy
        gpu.open()
        found = admin.audit(gpu.gw.exchange)
        assert found == {"lab": "service 10.96.0.0/12: outside the address space this gateway accepts from "
                                "peers (peer_ranges.allow: 10.244.0.0/16)"}
        shown = (await gpu.call("GET", "/api/v1/peers/lab/ranges")).json()
        assert shown["outside_policy"] == found["lab"]
        # Reported, not torn down: traffic keeps flowing until the operator re-peers it.
        assert [p.cluster_id for p in gpu.gw.reconciler.desired().peers] == ["lab"]

    asyncio.run(go())
