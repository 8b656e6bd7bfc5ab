"""Exports in the control plane: config, per-consumer shares, the exports message, API,
resolution seam. In-process gateways with the fake data plane (tests/gateway/conftest.py)."""

from __future__ import annotations

import asyncio
from typing import Any

import dns.message
import pytest

from fabric.exports.model import Allowed
from gateway.config import ConfigError, parse
from gateway.dns.answer import Answerer
from gateway.exports.config import Resolver
from gateway.exports.imports import ImportedService

BASE: dict[str, Any] = {"cluster_id": "gpu", "pod_cidrs": ["10.244.0.0/16"], "service_cidrs": ["10.96.0.0/12"]}
EXPORTS = [
    {"name": "web.default", "ports": ["80/tcp", "443/tcp"], "addresses": ["10.96.0.10"]},
    {"name": "trainer.ml", "addresses": ["10.244.5.17", "10.244.6.0/24"], "ports": ["29500/tcp"]},
]


def bad(msg: str, exports: Any) -> None:
    with pytest.raises(ConfigError) as e:
        parse({**BASE, "exports": exports}, env={})
    assert str(e.value) == msg


def test_config_exports_parse_and_bad_entries_name_the_key() -> None:
    c = parse({**BASE, "exports": [*EXPORTS, {"name": "db.prod"}]}, env={})
    assert c.exports is not None
    web, trainer, db = c.exports
    assert [str(p) for p in web.ports or ()] == ["80/tcp", "443/tcp"] and web.addresses == ("10.96.0.10/32",)
    assert trainer.addresses == ("10.244.5.17/32", "10.244.6.0/24")
    assert db.ports is None and db.addresses is None and db.dns_name() == "db.prod.svc.cluster.local"
    assert parse(BASE, env={}).exports is None  # no key: share everything, as before
    assert parse({**BASE, "exports": []}, env={}).exports == ()  # an empty list shares nothing
    bad("exports: expected a list of {name, ports, addresses}, got dict", {"name": "x.y"})
    bad("exports[0].name: required", [{"ports": ["80/tcp"]}])
    bad("exports[0].name: 'web' is not <service>.<namespace> (two DNS labels)", [{"name": "web"}])
    bad("exports[1].name: web.default is exported twice", [{"name": "web.default"}, {"name": "web.default"}])
    bad("exports[0].ports[1]: '80' is not PORT/PROTOCOL (e.g. 80/tcp)", [{"name": "a.b", "ports": ["80/tcp", "80"]}])
    bad("exports[0].ports[0]: port 70000 is out of range 1-65535", [{"name": "a.b", "ports": ["70000/tcp"]}])
    bad("exports[0].ports[0]: protocol 'icmp' is not one of tcp, udp, sctp", [{"name": "a.b", "ports": ["1/icmp"]}])
    bad("exports[0].addresses[0]: 'nope' is not an IP address or CIDR", [{"name": "a.b", "addresses": ["nope"]}])
    bad("exports[0].addresses[0]: '10.244.5.1/24' has host bits set", [{"name": "a.b", "addresses": ["10.244.5.1/24"]}])
    bad("exports[0].addresses[0]: 192.168.1.1/32 is not inside this cluster's pod or service ranges",
        [{"name": "a.b", "addresses": ["192.168.1.1"]}])
    bad("exports[0].colour: unknown key", [{"name": "a.b", "colour": "red"}])


async def token(c: Any, **kw: Any) -> str:
    r = await c.call("POST", "/api/v1/tokens", json={"ttl": "1h", **kw})
    assert r.status_code == 201, r.text
    return str(r.json()["token"])


async def peer(a: Any, tok: str) -> None:
    r = await a.call("POST", "/api/v1/peers", json={"token": tok})
    assert r.status_code == 201, r.text


def shares(c: Any) -> dict[str, tuple[Allowed, ...]]:
    pol = c.fabric.last.exports
    assert pol is not None
    return {p.cluster_id: p.allowed for p in pol.peers}


WEB = (Allowed("10.96.0.10/32", "tcp", 80), Allowed("10.96.0.10/32", "tcp", 443))
TRAINER = (Allowed("10.244.5.17/32", "tcp", 29500), Allowed("10.244.6.0/24", "tcp", 29500))


def test_two_consumers_with_different_token_exports_see_different_things(clusters: Any) -> None:
    gpu = clusters("gpu", exports=EXPORTS)
    lab, edge = clusters("lab"), clusters("edge")

    async def go() -> None:
        await peer(lab, await token(gpu, exports=["web.default"]))
        await peer(edge, await token(gpu))  # no --exports: every export
        assert shares(gpu) == {"lab": WEB, "edge": tuple(sorted(WEB + TRAINER))}
        # The policy's sources are gpu's views of each consumer's pods.
        pol = gpu.fabric.last.exports
        views = {p.cluster_id: {m.view for m in p.remote if m.kind == "pod"} for p in gpu.fabric.last.peers}
        assert {p.cluster_id: set(p.sources) for p in pol.peers} == views
        assert gpu.gw.export_sync is not None
        assert await gpu.gw.export_sync.step() == {"lab": "ok", "edge": "ok"}
        r_lab = (await lab.call("GET", "/api/v1/imports", auth=False)).json()
        r_edge = (await edge.call("GET", "/api/v1/imports", auth=False)).json()
        assert [i["name"] for i in r_lab["imports"]] == ["web.default"]
        assert [i["name"] for i in r_edge["imports"]] == ["trainer.ml", "web.default"]
        # Addresses are in each consumer's own view of gpu's service range.
        svc_view = next(m.view for m in lab.fabric.last.peers[0].remote if m.kind == "service")
        web = r_lab["imports"][0]
        assert web["peer"] == "gpu" and web["ports"] == ["80/tcp", "443/tcp"]
        assert web["addresses"] == [svc_view.split("/")[0][:-1] + "10/32"]
        assert web["dns_names"] == ["web.default.svc.clusterset.local", "gpu.web.default.svc.clusterset.local"]
        # The typed snapshot DNS answers from.
        snap = edge.gw.read.imported_services()
        assert all(isinstance(s, ImportedService) for s in snap)
        trainer = next(s for s in snap if s.name == "trainer.ml")
        assert trainer.peer == "gpu" and trainer.ports == ("29500/tcp",) and len(trainer.addresses) == 2
        assert trainer.hosts == (trainer.addresses[0].split("/")[0],)  # the /24 is no A record
        # Ours, per peer.
        ex = (await gpu.call("GET", "/api/v1/exports", auth=False)).json()
        assert ex["exposure"] == "exports"
        assert {p["cluster_id"]: (p["all"], p["exports"]) for p in ex["peers"]} == {
            "edge": (True, ["web.default", "trainer.ml"]), "lab": (False, ["web.default"])}
        st = (await gpu.call("GET", "/api/v1/status", auth=False)).json()
        assert st["exposure"] == "exports"
        assert (await lab.call("GET", "/api/v1/status", auth=False)).json()["exposure"] == "all"
        assert lab.fabric.last.exports is None  # no exports configured: no policy at all

    asyncio.run(go())


def test_admin_changes_one_peers_share_only(clusters: Any) -> None:
    gpu = clusters("gpu", exports=EXPORTS)
    lab, edge = clusters("lab"), clusters("edge")

    async def go() -> None:
        await peer(lab, await token(gpu, exports=["web.default"]))
        await peer(edge, await token(gpu, exports=["trainer.ml"]))
        sync = gpu.gw.export_sync
        await sync.step()
        before = gpu.fabric.last.exports
        r = await gpu.call("PUT", "/api/v1/peers/lab/exports", json={"exports": ["web.default", "trainer.ml"]})
        assert r.status_code == 200, r.text
        assert r.json() == {"cluster_id": "lab", "exports": ["web.default", "trainer.ml"], "all": False,
                            "applied": True}
        after = gpu.fabric.last.exports
        assert dict(shares(gpu))["lab"] == tuple(sorted(WEB + TRAINER))
        # edge's part is the same object content: the data plane's delta leaves it alone.
        assert [p for p in after.peers if p.cluster_id == "edge"] == [p for p in before.peers if p.cluster_id == "edge"]
        assert await sync.step() == {"lab": "ok"}  # only lab is told again
        names = [i["name"] for i in (await lab.call("GET", "/api/v1/imports", auth=False)).json()["imports"]]
        assert names == ["trainer.ml", "web.default"]
        # Back to every export; bad requests change nothing.
        r = await gpu.call("PUT", "/api/v1/peers/lab/exports", json={"all": True})
        assert r.status_code == 200 and r.json()["all"] is True
        r = await gpu.call("PUT", "/api/v1/peers/lab/exports", json={"exports": ["nope.default"]})
        assert r.status_code == 400
        assert "nope.default is not an export of this gateway" in r.json()["detail"]
        r = await gpu.call("PUT", "/api/v1/peers/ghost/exports", json={"exports": []})
        assert r.status_code == 404
        r = await gpu.call("PUT", "/api/v1/peers/lab/exports", json={"exports": []}, auth=False)
        assert r.status_code == 401
        assert shares(gpu)["lab"] == tuple(sorted(WEB + TRAINER))
        # Removing the peer forgets its share: a new peering starts from the token again.
        r = await gpu.call("DELETE", "/api/v1/peers/lab")
        assert r.status_code == 200
        assert gpu.gw.reconciler.exports.grant("lab") is None

    asyncio.run(go())


def test_token_exports_are_checked(clusters: Any) -> None:
    gpu = clusters("gpu", exports=EXPORTS)
    plain = clusters("lab")

    async def go() -> None:
        r = await gpu.call("POST", "/api/v1/tokens", json={"exports": ["web.default", "db.prod"]})
        assert r.status_code == 400 and "exports[1]: db.prod is not an export of this gateway" in r.json()["detail"]
        r = await plain.call("POST", "/api/v1/tokens", json={"exports": ["web.default"]})
        assert r.status_code == 409 and "no exports configured" in r.json()["detail"]
        assert gpu.store.tokens() == [] and plain.store.tokens() == []  # nothing issued

    asyncio.run(go())


def test_imports_outside_the_senders_ranges_are_refused(clusters: Any) -> None:
    gpu = clusters("gpu", exports=EXPORTS)
    lab = clusters("lab")

    async def go() -> None:
        await peer(lab, await token(gpu))
        rec = gpu.store.peer("lab")
        from gateway.errors import GatewayError

        with pytest.raises(GatewayError, match=r"exports\[0\]\.addresses\[0\]: 192\.168\.0\.1/32 is not inside"):
            await gpu.gw.exchange.channel.send(rec, "exports", {"exports": [
                {"name": "x.y", "ports": None, "addresses": ["192.168.0.1/32"]}]})
        assert lab.gw.read.imported_services() == ()

    asyncio.run(go())


def test_resolver_seam_follows_address_changes(clusters: Any) -> None:
    answers = {"db.prod.svc.cluster.local": ["10.96.0.20"]}
    calls: list[str] = []

    def lookup(name: str) -> list[str]:
        calls.append(name)
        if name not in answers:
            raise OSError("Name or service not known")
        return answers[name]

    now = [0.0]
    gpu = clusters("gpu", exports=[{"name": "db.prod", "ports": ["5432/tcp"]}])
    lab = clusters("lab")
    gpu.gw.reconciler.exports.resolver = Resolver(lookup, interval=1.0, clock=lambda: now[0])

    async def go() -> None:
        await peer(lab, await token(gpu))
        sync = gpu.gw.export_sync
        await sync.step()
        assert shares(gpu)["lab"] == (Allowed("10.96.0.20/32", "tcp", 5432),)
        answers["db.prod.svc.cluster.local"] = ["10.96.0.21"]
        await sync.step()  # not due yet: the old answer stands
        assert shares(gpu)["lab"] == (Allowed("10.96.0.20/32", "tcp", 5432),)
        now[0] += 1.0
        assert await sync.step() == {"lab": "ok"}  # re-resolved, re-applied and told
        assert shares(gpu)["lab"] == (Allowed("10.96.0.21/32", "tcp", 5432),)
        imp = lab.gw.read.imported_services()
        assert imp[0].addresses[0].endswith(".21/32")
        # ... and lab's DNS answers the new address: a move costs at most one lookup interval
        # (1 s) plus one sync pass (0.5 s) before the peer's next query sees it.
        q = dns.message.make_query("db.prod.svc.clusterset.local", "A")
        r = dns.message.from_wire(Answerer("clusterset.local").answer(q.to_wire(), imp).response or b"")
        assert [str(x) for rr in r.answer for x in rr] == [imp[0].hosts[0]]
        # A failing lookup keeps the last good answer.
        del answers["db.prod.svc.cluster.local"]
        now[0] += 1.0
        await sync.step()
        assert shares(gpu)["lab"] == (Allowed("10.96.0.21/32", "tcp", 5432),)
        ex = (await gpu.call("GET", "/api/v1/exports", auth=False)).json()
        assert ex["exports"][0]["resolve_error"] == "Name or service not known"
        assert calls == ["db.prod.svc.cluster.local"] * 3

    asyncio.run(go())


def test_denied_counter_in_metrics_and_nat(clusters: Any) -> None:
    gpu = clusters("gpu", exports=EXPORTS)
    lab = clusters("lab")

    async def go() -> None:
        await peer(lab, await token(gpu))
        real = gpu.fabric.nat
        gpu.fabric.nat = lambda st, only=None, **kw: [{**m, "export_denied": {"packets": 3, "bytes": 180}}
                                                   for m in real(st, only)]
        # /api/v1/exports reads the denied counters alone (not the whole NAT report)
        gpu.fabric.export_denied = lambda st: {"lab": {"packets": 3, "bytes": 180}}
        text = (await gpu.call("GET", "/metrics", auth=False)).text
        assert 'crosswire_export_denied_packets_total{peer="lab"} 3' in text
        # Without exports the counter is there too: the guard drops count against the peer.
        plain = (await lab.call("GET", "/metrics", auth=False)).text
        assert 'crosswire_export_denied_packets_total{peer="gpu"} 0' in plain
        ex = (await gpu.call("GET", "/api/v1/exports", auth=False)).json()
        assert ex["peers"][0]["denied"] == {"packets": 3, "bytes": 180}

    asyncio.run(go())
