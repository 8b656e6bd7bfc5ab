"""Sparse views in the control plane (ipam.views: sparse): a hub that views its spokes through
what they export, plus an egress block and their gateway's address. In-process gateways with
the fake data plane (tests/gateway/conftest.py): real config, IPAM, peering protocol and API."""

from __future__ import annotations

import asyncio
import ipaddress
from typing import Any

from test_exports import peer, token

SPARSE = {"views": "sparse", "pools": ["100.64.0.0/10"]}
WEB = [{"name": "web.default", "ports": ["80/tcp"], "addresses": ["10.96.0.10"]}]


def kinds(maps: Any) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for m in maps:
        out.setdefault(m.kind, []).append(m.view)
    return out


def in_pool(view: str) -> bool:
    return ipaddress.ip_network(view).subnet_of(ipaddress.ip_network("100.64.0.0/10"))  # type: ignore[arg-type]


def test_a_full_hub_refuses_its_fourth_kubeadm_peer_and_names_the_way_out(clusters: Any) -> None:
    hub = clusters("hub", exports=WEB)
    spokes = [clusters(f"c{i}") for i in range(4)]

    async def go() -> None:
        for s in spokes[:3]:
            await peer(s, await token(hub))
        r = await spokes[3].call("POST", "/api/v1/peers", json={"token": await token(hub)})
        assert r.status_code == 422
        assert "IPv4 pools exhausted" in r.json()["detail"] and "ipam.views: sparse" in r.json()["detail"]

    asyncio.run(go())


def test_a_sparse_hub_serves_thirty_kubeadm_spokes_from_one_pool(clusters: Any) -> None:
    hub = clusters("hub", exports=WEB, ipam=SPARSE)
    spokes = [clusters(f"c{i:02d}") for i in range(30)]

    async def go() -> None:
        for s in spokes:
            await peer(s, await token(hub))
        assert hub.gw.export_sync is not None
        told = await hub.gw.export_sync.step()
        assert set(told.values()) == {"ok"} and len(told) == 30
        st = hub.fabric.last
        assert len(st.peers) == 30
        blocks = set()
        for p in st.peers:
            k = kinds(p.remote)
            # The hub views a spoke through an egress block and its gateway's address only:
            # the spoke exports nothing, so nothing else of it is addressable.
            assert sorted(k) == ["egress", "gateway"]
            (block,) = k["egress"]
            assert ipaddress.ip_network(block).prefixlen == 28 and in_pool(block)
            blocks.add(block)
            # The export policy's sources for that spoke: its addresses as the hub names them.
            pol = next(x for x in st.exports.peers if x.cluster_id == p.cluster_id)
            assert sorted(pol.sources) == sorted([block, *k["gateway"]])
            # The hub is seen by the spoke in full (its default), remapped.
            assert {m.kind for m in p.local} == {"pod", "service"}
            assert p.probe_ip == k["gateway"][0].split("/")[0]
        assert len(blocks) == 30
        for s in spokes:
            sp = s.fabric.last.peers[0]
            # The spoke translates its clients into the block the hub gave it.
            egress = [m for m in sp.local if m.kind == "egress"]
            assert [m.view for m in egress] == [m.view for m in hub.fabric.last.peers
                                                if m.cluster_id == s.name for m in m.remote
                                                if m.kind == "egress"]
            imports = s.gw.read.imported_services()
            assert [i.name for i in imports] == ["web.default"]
        used = sum(ipaddress.ip_network(v["view"]).num_addresses
                   for v in hub.views.snapshot()["allocations"])
        assert used == 30 * (16 + 1)
        peers = (await hub.call("GET", "/api/v1/peers")).json()
        assert {p["views_mode"] for p in peers} == {"sparse"}
        assert all("exports nothing to us" in p["reach"] for p in peers)

    asyncio.run(go())


def test_exports_drive_the_views_of_a_sparse_peer(clusters: Any) -> None:
    """A spoke that exports to the hub: view addresses follow its exports, as a delta for it."""
    hub = clusters("hub", ipam=SPARSE)
    db = [{"name": "db.prod", "ports": ["5432/tcp"], "addresses": ["10.96.0.20"]}]
    spoke = clusters("spoke", exports=db)
    other = clusters("other")

    async def go() -> None:
        await peer(spoke, await token(hub))
        await peer(other, await token(hub))
        sync = spoke.gw.export_sync
        assert sync is not None
        assert await sync.step() == {"hub": "ok"}
        hp = next(p for p in hub.fabric.last.peers if p.cluster_id == "spoke")
        (view,) = kinds(hp.remote)["export"]
        assert in_pool(view)
        # The spoke learnt the hub's view of its export and DNATs it back.
        sp = spoke.fabric.last.peers[0]
        assert {(m.kind, m.real, m.view) for m in sp.local if m.kind == "export"} == {
            ("export", "10.96.0.20/32", view)}
        # The hub's pods reach it by that address, and by name.
        imp = hub.gw.read.imported_services()
        assert [(i.name, i.addresses) for i in imp] == [("db.prod", (view,))]
        other_before = next(p for p in hub.fabric.last.peers if p.cluster_id == "other")
        # The address changes: a new view address, the old one held in quarantine.
        spoke.over["exports"] = [{"name": "db.prod", "ports": ["5432/tcp"], "addresses": ["10.96.0.21"]}]
        spoke.close()
        spoke.open()
        assert await spoke.gw.export_sync.step() == {"hub": "ok"}  # type: ignore[union-attr]
        hp = next(p for p in hub.fabric.last.peers if p.cluster_id == "spoke")
        (new_view,) = kinds(hp.remote)["export"]
        assert new_view != view
        held = hub.views.snapshot()["quarantined"]
        assert [(h["real"], h["view"]) for h in held] == [("10.96.0.20/32", view)]
        # Other peers untouched.
        assert next(p for p in hub.fabric.last.peers if p.cluster_id == "other") == other_before
        peers = {p["cluster_id"]: p for p in (await hub.call("GET", "/api/v1/peers")).json()}
        assert peers["spoke"]["reach"] == f"sparse: db.prod at {new_view.split('/')[0]}"

    asyncio.run(go())


def test_an_export_too_wide_for_sparse_views_is_refused_and_changes_nothing(clusters: Any) -> None:
    hub = clusters("hub", ipam=SPARSE)
    spoke = clusters("spoke", exports=[{"name": "all.pods", "addresses": ["10.244.0.0/16"]}])

    async def go() -> None:
        await peer(spoke, await token(hub))
        before = hub.views.views("spoke")
        told = await spoke.gw.export_sync.step()  # type: ignore[union-attr]
        assert "export 'all.pods': address 10.244.0.0/16 would need 65536 view addresses" in told["hub"]
        assert hub.views.views("spoke") == before
        assert hub.gw.read.imported_services() == ()

    asyncio.run(go())


def test_mixed_modes_both_ways(clusters: Any) -> None:
    """One side sparse, the other full: each side's local mappings are the other's remote."""

    async def go(a: Any, b: Any, a_is_sparse: bool) -> None:
        await peer(b, await token(a))
        for x in (a, b):
            await x.gw.export_sync.step()
        pa, pb = a.fabric.last.peers[0], b.fabric.last.peers[0]
        assert {(m.kind, m.real, m.view) for m in pa.local} == {(m.kind, m.real, m.view) for m in pb.remote}
        assert {(m.kind, m.real, m.view) for m in pb.local} == {(m.kind, m.real, m.view) for m in pa.remote}
        sparse_side, full_side = (pa, pb) if a_is_sparse else (pb, pa)
        assert sorted(kinds(sparse_side.remote)) == ["egress", "export", "gateway"]
        assert sorted(kinds(full_side.remote)) == ["pod", "service"]

    for a_mode, b_mode in (("sparse", "full"), ("full", "sparse")):
        a = clusters(f"a{a_mode}", exports=WEB, ipam={"views": a_mode})
        b = clusters(f"b{a_mode}", exports=WEB, ipam={"views": b_mode})
        asyncio.run(go(a, b, a_mode == "sparse"))


def test_claims_keep_each_address_its_own_view() -> None:
    """Neighbouring exports are never merged (another export coming or going must not move
    an address); an address inside an exported CIDR, the gateway's included, rides on it."""
    from gateway.config import IpamConfig
    from gateway.sparse import SparseError, claims

    cfg = IpamConfig(views="sparse")
    ranges = (("pod", "10.244.0.0/16"), ("service", "10.96.0.0/12"), ("pod", "fd00::/48"))
    got = claims(cfg, ranges, "10.244.0.2", [
        {"name": "a.b", "addresses": ["10.96.0.10/32", "10.96.0.11/32"]},
        {"name": "c.d", "addresses": ["10.96.0.10/32", "10.244.7.0/28", "10.244.7.3/32"]},
        {"name": "e.f", "addresses": ["fd00::5/128"]}])
    assert got == [("egress", "0.0.0.0/28"), ("egress", "::/124"), ("gateway", "10.244.0.2/32"),
                   ("export", "10.96.0.10/32"), ("export", "10.96.0.11/32"), ("export", "10.244.7.0/28"),
                   ("export", "fd00::5/128")]
    inside = claims(cfg, ranges[:1], "10.244.0.2", [{"name": "gw.x", "addresses": ["10.244.0.0/30"]}])
    assert inside == [("egress", "0.0.0.0/28"), ("export", "10.244.0.0/30")]
    try:
        claims(cfg, ranges, None, [{"name": "big.one", "addresses": ["10.244.0.0/23"]}])
    except SparseError as e:
        assert str(e).startswith("export 'big.one': address 10.244.0.0/23 would need 512 view addresses")
    else:
        raise AssertionError("a /23 export was accepted")


def test_sparse_and_full_side_by_side_and_a_peering_keeps_its_mode(clusters: Any) -> None:
    """A hub that switches to sparse keeps its existing full peering (upgrade / config change);
    the next peering is sparse; both are programmed in one state; removing the sparse one holds
    its addresses in quarantine while the full one's views are freed at once."""
    hub = clusters("hub", exports=WEB)
    old, new = clusters("old"), clusters("new")

    async def go() -> None:
        await peer(old, await token(hub))
        full_views = hub.views.views("old")
        hub.over["ipam"] = SPARSE
        hub.close()
        hub.open()
        await peer(new, await token(hub))
        await hub.gw.exchange.reconciler.reconcile()
        assert hub.views.views("old") == full_views
        by_peer = {p.cluster_id: sorted(kinds(p.remote)) for p in hub.fabric.last.peers}
        assert by_peer == {"old": ["pod", "service"], "new": ["egress", "gateway"]}
        peers = {p["cluster_id"]: p["views_mode"] for p in (await hub.call("GET", "/api/v1/peers")).json()}
        assert peers == {"old": "full", "new": "sparse"}
        sparse_views = hub.views.views("new")
        assert (await hub.call("DELETE", "/api/v1/peers/new")).status_code == 200
        assert (await hub.call("DELETE", "/api/v1/peers/old")).status_code == 200
        held = hub.views.snapshot()["quarantined"]
        assert sorted(h["view"] for h in held) == sorted(m.view for m in sparse_views)

    asyncio.run(go())
