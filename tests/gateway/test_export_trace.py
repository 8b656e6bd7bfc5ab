"""The trace's export verdict and the DNS snapshot, wired to the exports read model:
in-process gateways with the fake data plane (tests/gateway/conftest.py)."""

from __future__ import annotations

import asyncio
import ipaddress
from typing import Any

import dns.message
import dns.rrset

from gateway.dns.answer import Answerer
from gateway.dns.records import ImportsSnapshot
from gateway.exports.imports import ImportedService
from tests.gateway.test_exports import EXPORTS, peer, token


def view(c: Any, kind: str, real: str) -> str:
    """``c``'s view address of its (only) peer's ``real`` address."""
    m = next(m for m in c.fabric.last.peers[0].remote if m.kind == kind)
    real_net, view_net = ipaddress.ip_network(m.real), ipaddress.ip_network(m.view)
    return str(view_net.network_address + (int(ipaddress.ip_address(real)) - int(real_net.network_address)))


def test_trace_shows_the_export_verdict_on_both_gateways(clusters: Any) -> None:
    gpu, lab = clusters("gpu", exports=EXPORTS), clusters("lab")

    async def go() -> None:
        await peer(lab, await token(gpu, exports=["web.default"]))
        assert gpu.gw.export_sync is not None and await gpu.gw.export_sync.step() == {"lab": "ok"}
        for c in (gpu, lab):
            assert await c.gw.reconciler.reconcile()

        async def trace(c: Any, src: str, dst: str, proto: str, port: int | None) -> Any:
            params = {"src": src, "dst": dst, "proto": proto, **({"dport": str(port)} if port else {})}
            r = await c.call("GET", "/api/v1/trace", auth=False, params=params)
            assert r.status_code == 200, r.text
            return r.json()

        web, trainer = view(lab, "service", "10.96.0.10"), view(lab, "pod", "10.244.5.17")
        # lab -> gpu: the verdict at gpu's gateway, from what gpu told lab it exports to it.
        t = await trace(lab, "10.244.1.10", web, "tcp", 80)
        ex = [s for s in t["steps"] if s["kind"] == "export"]
        assert t["verdict"] == "delivered" and [(s["at"], s["drop"]) for s in ex] == [("gpu", False)]
        assert "gpu's export web.default to lab" in ex[0]["text"]
        t = await trace(lab, "10.244.1.10", web, "tcp", 22)  # a port gpu did not export
        assert t["verdict"] == "dropped" and t["steps"][-1]["kind"] == "export"
        t = await trace(lab, "10.244.1.10", trainer, "tcp", 29500)  # exported, but not to lab
        assert t["verdict"] == "dropped" and "not among what gpu exports to lab" in t["steps"][-1]["text"]
        # The same packets arriving at gpu: the verdict from the policy gpu programs.
        src = view(gpu, "pod", "10.244.1.10")
        t = await trace(gpu, src, web, "tcp", 80)
        ex = [s for s in t["steps"] if s["kind"] == "export"]
        assert t["verdict"] == "delivered" and [(s["at"], s["drop"]) for s in ex] == [("gpu", False)]
        assert ex[0]["element"] == "@allowed_v4" and ex[0]["rule"].startswith('"from ')
        t = await trace(gpu, src, web, "udp", 80)
        last = t["steps"][-1]
        assert (t["verdict"], last["kind"], last["drop"], last["counted"]) == ("dropped", "export", True, "denied-lab")
        # lab exports nothing (shares everything): no export step on the way to lab.
        t = await trace(gpu, "10.244.1.10", view(gpu, "pod", "10.244.2.10"), "tcp", 8080)
        assert t["verdict"] == "delivered" and not [s for s in t["steps"] if s["kind"] == "export"]

    asyncio.run(go())


def test_dns_answers_from_the_imports_read_model(clusters: Any) -> None:
    gpu, lab = clusters("gpu", exports=EXPORTS), clusters("lab")

    async def go() -> None:
        await peer(lab, await token(gpu))
        assert gpu.gw.export_sync is not None and await gpu.gw.export_sync.step() == {"lab": "ok"}
        snap = ImportsSnapshot(lab.gw.read.imported_services)
        q = dns.message.make_query("web.default.svc.clusterset.local", "A")
        r = dns.message.from_wire(Answerer("clusterset.local").answer(q.to_wire(), snap()).response or b"")
        assert [str(x) for rr in r.answer for x in rr] == [view(lab, "service", "10.96.0.10")]
        # trainer.ml: 10.244.5.17 is a record, the /24 beside it is not.
        q = dns.message.make_query("gpu.trainer.ml.svc.clusterset.local", "A")
        r = dns.message.from_wire(Answerer("clusterset.local").answer(q.to_wire(), snap()).response or b"")
        assert [str(x) for rr in r.answer for x in rr] == [view(lab, "pod", "10.244.5.17")]

    asyncio.run(go())


def test_imports_snapshot_is_read_at_most_every_max_age_and_kept_while_equal() -> None:
    now = [0.0]
    reads: list[int] = []
    value = [(ImportedService("gpu", "web.default", None, ("100.64.0.10/32",)),)]

    def source() -> tuple[ImportedService, ...]:
        reads.append(1)
        return tuple(value[0])

    snap = ImportsSnapshot(source, max_age=0.25, clock=lambda: now[0])
    first = snap()
    assert snap() is first and len(reads) == 1  # within max_age: not read again
    now[0] = 0.3
    assert snap() is first and len(reads) == 2  # read again, equal: the same object (no re-index)
    value[0] = (ImportedService("gpu", "web.default", None, ("100.64.0.11/32",)),)
    now[0] = 0.6
    assert snap() != first and snap()[0].addresses == ("100.64.0.11/32",)
