"""Peering across releases (issue 23, "Upgrade"): a gateway from before sparse views
takes only pod and service views, and its join carries no ``view_kinds``. A sparse
gateway refuses it before anything is spent, both ways, naming the way out; a full
gateway peers with it as before. (tests/gateway/test_netns_upgrade.py runs the real
previous release; here the old side is emulated by its Side saying what an old body
parses as.)"""

from __future__ import annotations

import asyncio
import dataclasses
from typing import Any

import pytest
from test_exports import peer, token

from gateway.peering import FULL_KINDS, VIEW_KINDS, PeeringError, Side

SPARSE = {"views": "sparse", "pools": ["100.64.0.0/10"]}
KEY = "C" * 43 + "="


def body(**over: Any) -> dict[str, Any]:
    b = Side("old", KEY, None, (("pod", "10.244.0.0/16"),), None, "http://old:8080").to_body()
    b.update(over)
    return b


def test_a_join_without_view_kinds_is_from_a_release_before_sparse_views() -> None:
    assert Side.from_body(body()).view_kinds == VIEW_KINDS  # this release says what it takes
    old = body()
    del old["view_kinds"]
    assert Side.from_body(old).view_kinds == FULL_KINDS
    # a later release's kinds we do not know are ignored; a malformed field is refused
    assert Side.from_body(body(view_kinds=["pod", "service", "hologram"])).view_kinds == FULL_KINDS
    with pytest.raises(PeeringError, match="view_kinds"):
        Side.from_body(body(view_kinds="pod"))


def old_release(c: Any) -> None:
    """``c`` answers and joins as the previous release does (pod and service views only)."""
    side = c.gw.exchange.side
    c.gw.exchange.side = lambda: dataclasses.replace(side(), view_kinds=FULL_KINDS)


async def nothing_of(c: Any, other: str) -> None:
    assert (await c.call("GET", "/api/v1/peers")).json() == []
    ipam = (await c.call("GET", "/api/v1/ipam")).json()
    assert [a for a in ipam["allocations"] if a["peer"] == other] == []


def test_an_old_peer_joining_a_sparse_gateway_is_told_to_upgrade_and_the_token_stays_valid(clusters: Any) -> None:
    hub = clusters("hub", ipam=SPARSE)
    spoke = clusters("spoke")
    old_release(spoke)

    async def go() -> None:
        tok = await token(hub)
        r = await spoke.call("POST", "/api/v1/peers", json={"token": tok})
        assert r.status_code == 422, r.text
        detail = r.json()["detail"]
        assert "spoke runs a crosswire release from before sparse views" in detail
        assert "hub views new peers sparsely (ipam.views: sparse)" in detail and "token stays valid" in detail
        await nothing_of(hub, "spoke")
        await nothing_of(spoke, "hub")
        assert [t["state"] for t in (await hub.call("GET", "/api/v1/tokens")).json()] == ["active"]
        # the spoke upgraded: the same token peers it, sparsely
        del spoke.gw.exchange.side
        await peer(spoke, tok)
        (p,) = (await hub.call("GET", "/api/v1/peers")).json()
        assert p["views_mode"] == "sparse"

    asyncio.run(go())


def test_a_sparse_gateway_redeeming_an_old_peers_token_refuses_and_leaves_nothing(clusters: Any) -> None:
    hub = clusters("hub", ipam=SPARSE)
    spoke = clusters("spoke")
    old_release(spoke)

    async def go() -> None:
        r = await hub.call("POST", "/api/v1/peers", json={"token": await token(spoke)})
        assert r.status_code == 422, r.text
        assert "upgrade spoke, then peer again with a new token" in r.json()["detail"]
        await nothing_of(hub, "spoke")
        await nothing_of(spoke, "hub")  # its pending entry for the hub was dropped

    asyncio.run(go())


def test_a_full_gateway_peers_with_an_old_release_as_before(clusters: Any) -> None:
    a, b, c = clusters("a"), clusters("b"), clusters("c")
    old_release(b)
    old_release(c)

    async def go() -> None:
        await peer(a, await token(b))  # a redeems the old one's token
        await peer(c, await token(a))  # the old one redeems a's token
        for p in (await a.call("GET", "/api/v1/peers")).json():
            assert p["views_mode"] == "full" and p["their_views_mode"] == "full", p

    asyncio.run(go())
