"""What an open page, a scrape and the reconcile loop cost with many peers (issue 18):
the route set is published only when it may have changed, the counters a page and a
scrape read are one gateway-side snapshot per interval, and the page's combined poll
answers exactly what its separate requests do. Behaviour, not timing: bench/fleet.py
measures the CPU."""

from __future__ import annotations

import asyncio
from typing import Any


def test_a_pass_with_nothing_new_does_not_rebuild_the_route_set(clusters: Any, monkeypatch: Any) -> None:
    lab, gpu = clusters("lab"), clusters("gpu")

    async def go() -> None:
        rec, read, watch = lab.gw.reconciler, lab.gw.read, lab.gw.routewatch
        built = 0
        real = read.routes

        def counting() -> Any:
            nonlocal built
            built += 1
            return real()
        monkeypatch.setattr(read, "routes", counting)
        await rec.reconcile(force=True)
        assert built == 1 and watch.version is not None
        first, changes = watch.version, watch.changes
        for _ in range(5):  # forced passes (drift, endpoint retries) with nothing written
            await rec.reconcile(force=True)
            await rec.check(verify=True)
        assert built == 1 and watch.changes == changes and watch.version == first
        r = await gpu.call("POST", "/api/v1/tokens", json={"ttl": "1h"})
        r = await lab.call("POST", "/api/v1/peers", json={"token": r.json()["token"]})
        assert r.status_code == 201, r.text
        await rec.reconcile()
        assert built >= 2 and watch.version != first and watch.changes > changes
        assert watch.body is not None and watch.body["cidrs"] == real()["cidrs"] != []
        # A changed next hop is a changed route set, though no store was written.
        rec.gateway_ip = "10.244.0.11"
        v = watch.version
        await rec.reconcile()
        assert watch.version != v and watch.body is not None and watch.body["gateway_ip"] == "10.244.0.11"

    asyncio.run(go())


async def _peered(lab: Any, gpu: Any) -> None:
    r = await gpu.call("POST", "/api/v1/tokens", json={"ttl": "1h"})
    r = await lab.call("POST", "/api/v1/peers", json={"token": r.json()["token"]})
    assert r.status_code == 201, r.text
    assert await lab.gw.reconciler.reconcile()


def test_counters_are_one_snapshot_for_every_request_until_the_interval_passed(clusters: Any,
                                                                               monkeypatch: Any) -> None:
    """The page's requests, other tabs and a scrape read the drop rules, the policy counters,
    their total and the NAT counters once per STATS_TTL between them; later reads see new
    values. A page of NAT rows reads its own peers' policy counters."""
    import gateway.readmodel as rm

    lab, gpu = clusters("lab"), clusters("gpu")
    t = [1000.0]
    monkeypatch.setattr(rm.time, "monotonic", lambda: t[0])  # the module gateway.snapshot reads too
    reads = {"drops": 0, "denied": 0, "total": 0, "nat": 0}
    real_nat = lab.fabric.nat

    def drops() -> list[dict[str, Any]]:
        reads["drops"] += 1
        return [{"chain": "forward", "comment": "x", "packets": reads["drops"], "bytes": 1, "handle": 1}]

    def denied(state: Any) -> dict[str, dict[str, int]]:
        reads["denied"] += 1
        return {"gpu": {"packets": reads["denied"], "bytes": 0}}

    def total(state: Any) -> dict[str, int]:
        reads["total"] += 1
        return {"packets": 40 + reads["total"], "bytes": 0}

    def nat(state: Any, only: Any = None, denied: Any = None) -> list[dict[str, Any]]:
        if only is None:
            assert denied is not None  # the scrape's: the snapshot's, never read again
            reads["nat"] += 1
        return list(real_nat(state, only))
    monkeypatch.setattr(lab.fabric, "nat_drops", drops)
    monkeypatch.setattr(lab.fabric, "export_denied", denied)
    monkeypatch.setattr(lab.fabric, "denied_total", total)
    monkeypatch.setattr(lab.fabric, "nat", nat)

    async def go() -> None:
        await _peered(lab, gpu)
        lab.gw.read.stats_ttl = rm.STATS_TTL
        for _ in range(3):  # three viewers' polls, and two scrapes, within the interval
            s = (await lab.call("GET", "/api/v1/nat?summary=true", auth=False)).json()
            assert s["drops"][0]["packets"] == 1 and s["export_denied"]["packets"] == 41
            await lab.call("GET", "/api/v1/nat?peer=gpu", auth=False)
            await lab.call("GET", "/metrics", auth=False)
        assert reads == {"drops": 1, "denied": 1, "total": 1, "nat": 1}
        t[0] += rm.STATS_TTL  # the interval passed: read again, once
        s = (await lab.call("GET", "/api/v1/nat?summary=true", auth=False)).json()
        m = (await lab.call("GET", "/metrics", auth=False)).text
        assert s["drops"][0]["packets"] == 2 and reads["drops"] == 2 and reads["nat"] == 2
        assert s["export_denied"]["packets"] == 42 and reads["total"] == 2
        assert 'crosswire_export_denied_packets_total{peer="gpu"} ' in m
        # A newly programmed state is never answered with the counters of the old one.
        r = await lab.call("DELETE", "/api/v1/peers/gpu")
        assert r.status_code == 200, r.text
        await lab.gw.reconciler.reconcile()
        m = (await lab.call("GET", "/metrics", auth=False)).text
        assert reads["nat"] == 3 and 'peer="gpu"' not in m

    asyncio.run(go())


def test_metrics_values_are_the_sums_of_the_nat_report(clusters: Any, monkeypatch: Any) -> None:
    lab, gpu = clusters("lab"), clusters("gpu")
    real_nat = lab.fabric.nat

    def counted(state: Any, only: Any = None, denied: Any = None) -> list[dict[str, Any]]:
        rows = real_nat(state, only)
        for p in rows:
            for i, r in enumerate(p["rules"]):
                r.update(packets=10 + i, bytes=1000 + i, connections=None if "element" in r else 2)
            p["export_denied"] = {"packets": 7, "bytes": 70}
        return list(rows)
    monkeypatch.setattr(lab.fabric, "nat", counted)

    async def go() -> None:
        await _peered(lab, gpu)
        report = (await lab.call("GET", "/api/v1/nat", auth=False)).json()["peers"]
        want: dict[tuple[str, str], list[int]] = {}
        for p in report:
            for r in p["rules"]:
                c = want.setdefault((p["cluster_id"], r["chain"]), [0, 0, 0])
                c[0] += r["packets"]
                c[1] += r["bytes"]
                c[2] += r["connections"] or 0
        assert len(want) == 2 and all(v[0] > 0 for v in want.values())
        text = (await lab.call("GET", "/metrics", auth=False)).text
        for (peer, chain), (pk, by, cn) in want.items():
            assert f'crosswire_nat_packets_total{{peer="{peer}",chain="{chain}"}} {pk}\n' in text
            assert f'crosswire_nat_bytes_total{{peer="{peer}",chain="{chain}"}} {by}\n' in text
            assert f'crosswire_nat_connections_total{{peer="{peer}",chain="{chain}"}} {cn}\n' in text
        assert 'crosswire_export_denied_packets_total{peer="gpu"} 7\n' in text

    asyncio.run(go())


def test_the_page_poll_answers_what_its_four_requests_answer(clusters: Any) -> None:
    lab, gpu, edge = clusters("lab"), clusters("gpu"), clusters("edge")

    async def go() -> None:
        await _peered(lab, gpu)
        await _peered(lab, edge)

        async def get(path: str) -> Any:
            r = await lab.call("GET", path, auth=False)
            assert r.status_code == 200, (path, r.text)
            return r.json()
        # the selected peer on the page: no separate row
        both = await get("/api/v1/page?limit=1&offset=0&peer=edge")
        assert both == {"peers_summary": await get("/api/v1/peers?summary=true"),
                        "nat_summary": await get("/api/v1/nat?summary=true"),
                        "peers": await get("/api/v1/peers?limit=1&offset=0"),
                        "selected": None, "nat": await get("/api/v1/nat?peer=edge")}
        assert [p["cluster_id"] for p in both["peers"]["peers"]] == ["edge"] and both["nat"]["peers"]
        # the selected peer elsewhere: its row as /api/v1/peers?peer= answers it
        both = await get("/api/v1/page?limit=1&offset=0&peer=gpu")
        assert both["selected"] == await get("/api/v1/peers?peer=gpu")
        assert both["nat"] == await get("/api/v1/nat?peer=gpu")
        # no peer selected, or one removed meanwhile: no row, no NAT (the page picks another)
        for q in ("", "&peer=gone"):
            both = await get("/api/v1/page?limit=50&offset=0" + q)
            assert both["selected"] is None and both["nat"] is None and both["peers"]["total"] == 2
        # an ETag, and 304 while nothing changed
        r = await lab.call("GET", "/api/v1/page?limit=50&offset=0&peer=gpu", auth=False)
        again = await lab.call("GET", "/api/v1/page?limit=50&offset=0&peer=gpu", auth=False,
                               headers={"If-None-Match": r.headers["ETag"]})
        assert again.status_code == 304
        bad = await lab.call("GET", "/api/v1/page?limit=0", auth=False)
        assert bad.status_code == 422 and "limit" in bad.text

    asyncio.run(go())


def test_a_failed_read_is_not_held(monkeypatch: Any) -> None:
    import gateway.snapshot as snap

    t = [50.0]
    monkeypatch.setattr(snap.time, "monotonic", lambda: t[0])
    answers: list[Any] = [OSError("no table"), {"a": 1}, {"a": 2}]

    def read(key: object) -> dict[str, int]:
        a = answers.pop(0)
        if isinstance(a, Exception):
            raise a
        return dict(a)
    s: snap.Snapshot[dict[str, int]] = snap.Snapshot("test counters", read, lambda: 1.0, {})
    assert s.get() == {} and s.reads == 0  # the fallback, not kept
    assert s.get() == {"a": 1} and s.get() == {"a": 1} and s.reads == 1
    key = object()
    assert s.get(key) == {"a": 2} and s.reads == 2  # another key: read afresh


def test_metrics_per_peer_values_are_the_peer_summaries(clusters: Any) -> None:
    """/metrics takes each peer's state, handshake age, bytes, RTT and loss from lean rows
    (no summaries built): they are what /api/v1/peers says, for a connected and a pending peer."""
    lab, gpu, edge = clusters("lab"), clusters("gpu"), clusters("edge")

    async def go() -> None:
        await _peered(lab, gpu)
        r = await edge.call("POST", "/api/v1/tokens", json={"ttl": "1h"})
        r = await lab.call("POST", "/api/v1/peers", json={"token": r.json()["token"]})
        assert r.status_code == 201, r.text
        lab.fabric.handshake = lab.gw.read.clock() - 5
        lab.gw.read.stats_ttl = 0  # every read asks the data plane: both answers see the same
        rows = {p.cluster_id: p for p in lab.gw.read.peer_metrics()}
        summaries = {p["cluster_id"]: p for p in (await lab.call("GET", "/api/v1/peers", auth=False)).json()}
        assert set(rows) == set(summaries) == {"gpu", "edge"}
        for cid, s in summaries.items():
            row = rows[cid]
            assert (row.state, row.rx_bytes, row.tx_bytes, row.rtt_ms, row.loss) == \
                (s["state"], s["rx_bytes"], s["tx_bytes"], s["rtt_ms"], s["loss"])
            assert (row.handshake_age_s is None) == (s["handshake_age_s"] is None)
        assert rows["gpu"].rx_bytes == 7 and rows["gpu"].handshake_age_s is not None
        assert 4 < rows["gpu"].handshake_age_s < 60
        m = (await lab.call("GET", "/metrics", auth=False)).text
        assert 'crosswire_peer_rx_bytes_total{peer="gpu"} 7' in m
        assert f'crosswire_peers{{state="{rows["edge"].state}"}} ' in m
        assert sum(int(line.rsplit(" ", 1)[1]) for line in m.splitlines()
                   if line.startswith("crosswire_peers{")) == 2

    asyncio.run(go())
