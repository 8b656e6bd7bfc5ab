"""What a peer learns from us over the peering channel: its own views and the exports
granted to it, never another peer's existence, addresses, exports or counters.
In-process gateways with the fake data plane (tests/gateway/conftest.py)."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from test_exports import peer, token


def test_a_refused_join_does_not_name_the_peer_whose_view_it_collided_with(clusters: Any) -> None:
    # hub's pool holds one /16. c0's pods (kubeadm's, like hub's) take it as their view;
    # c1's pods really are 100.64.0.0/16, the same numbers as that view, and there is no
    # room left to remap them: hub refuses c1, without telling it about c0 or its view.
    hub = clusters("hub", ipam={"pools": ["100.64.0.0/16"]})
    c0 = clusters("c0", service_cidrs=["10.112.0.0/12"])
    c1 = clusters("c1", pod_cidrs=["100.64.0.0/16"], service_cidrs=["10.128.0.0/12"], gateway_ip="100.64.0.10",
                  ipam={"pools": ["100.65.0.0/16", "100.80.0.0/12"]})

    async def go() -> None:
        await peer(c0, await token(hub))
        hub_views = (await hub.call("GET", "/api/v1/peers")).json()
        assert any(v["view"] == "100.64.0.0/16" for p in hub_views for v in p["our_views"])
        r = await c1.call("POST", "/api/v1/peers", json={"token": await token(hub)})
        assert r.status_code == 422, r.text
        detail = r.json()["detail"]
        assert "100.64.0.0/16" in detail and "overlaps a range in use here" in detail, detail
        assert "c0" not in detail and "of peer" not in detail, detail
        # The operator of hub still sees the whole story in its log, and in c0 nothing changed.
        assert [p["cluster_id"] for p in (await hub.call("GET", "/api/v1/peers")).json()] == ["c0"]

    asyncio.run(go())


def test_messages_to_a_peer_carry_only_its_own_share(clusters: Any) -> None:
    exports = [{"name": "web.default", "ports": ["80/tcp"], "addresses": ["10.96.0.10"]},
               {"name": "db.prod", "ports": ["5432/tcp"], "addresses": ["10.96.0.21"]}]
    gpu = clusters("gpu", exports=exports)
    lab, edge = clusters("lab"), clusters("edge")
    sent: list[tuple[str, str, str]] = []

    async def go() -> None:
        real = gpu.gw.exchange.channel.send

        async def spy(p: Any, kind: str, body: dict[str, Any]) -> dict[str, Any]:
            sent.append((p.cluster_id, kind, json.dumps(body)))
            return dict(await real(p, kind, body))

        gpu.gw.exchange.channel.send = spy
        await peer(lab, await token(gpu, exports=["web.default"]))
        await peer(edge, await token(gpu, exports=["db.prod"]))
        assert gpu.gw.export_sync is not None
        assert await gpu.gw.export_sync.step() == {"lab": "ok", "edge": "ok"}
        to_lab = " ".join(b for cid, _, b in sent if cid == "lab")
        to_edge = " ".join(b for cid, _, b in sent if cid == "edge")
        assert "web.default" in to_lab and "db.prod" not in to_lab and "edge" not in to_lab
        assert "db.prod" in to_edge and "web.default" not in to_edge and '"lab"' not in to_edge
        # What each peer can ask us about the other through the channel's answers: nothing.
        imports = (await lab.call("GET", "/api/v1/imports")).json()
        assert "edge" not in json.dumps(imports) and "db.prod" not in json.dumps(imports)

    asyncio.run(go())


def test_a_pending_reply_does_not_carry_the_data_planes_error(clusters: Any) -> None:
    # gpu's data plane fails with an error naming another peer (edge) while lab's key
    # change arrives: lab is told it is pending, not why.
    gpu, lab, edge = clusters("gpu"), clusters("lab"), clusters("edge")

    async def go() -> None:
        await peer(lab, await token(gpu))
        await peer(edge, await token(gpu))
        gpu.fabric.fail_next = RuntimeError("WireGuard cw-gpu: peer edge endpoint edge.example:51820 unreachable")
        r = await lab.call("POST", "/api/v1/key/rotate")
        assert r.status_code == 200, r.text
        pending = r.json()["peers_pending"]["gpu"]
        assert "not taken the change yet" in pending
        assert "edge" not in pending and "boom" not in pending

    asyncio.run(go())


def test_the_peering_port_does_not_say_who_is_peered(clusters: Any) -> None:
    # A channel message without the channel key: the same answer whether its sender is a
    # peer of gpu or not (before, "unknown peer X" 403 against a MAC failure 401).
    from gateway import peering

    gpu, lab = clusters("gpu"), clusters("lab")

    async def go() -> None:
        await peer(lab, await token(gpu))
        answers = []
        for sender in ("lab", "ghost"):
            msg = peering.build_message(b"\x00" * 32, sender, "gpu", "views", {"views": []}, gpu.clock())
            r = await gpu.call("POST", "/api/v1/peering/message", json=msg)
            answers.append((r.status_code, r.json()))
        assert answers[0] == answers[1] and answers[0][0] == 401, answers

    asyncio.run(go())
