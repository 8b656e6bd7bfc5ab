"""An idle gateway's periodic work scales with what changed, not with its peers
(issue 18): probes within a budget, the desired state built once per change,
the exports sync passing only when something it reads changed, verify spaced
by its own cost. Behaviour, not timing: bench/fleet.py measures the CPU."""

from __future__ import annotations

import asyncio
import re
import time
from typing import Any

from gateway.config import parse
from gateway.health import FAIL_AFTER, HealthTracker
from gateway.reconciler import VERIFY_INTERVAL

EXPORTS = [{"name": "web.default", "addresses": ["10.96.0.10"], "ports": ["80/tcp"]}]


def test_small_installations_keep_the_half_second_interval() -> None:
    h = HealthTracker()  # 0.5 s, 200 probes/s: unchanged up to 100 peers
    h.set_peers({f"p{i}": f"100.64.0.{i}" for i in range(100)}, now=0.0)
    assert h.effective_interval == 0.5
    assert len(h.due(0.0)) == 100 and h.due(0.49) == [] and len(h.due(0.5)) == 100


def test_probes_stay_within_the_budget_with_1000_peers() -> None:
    h = HealthTracker(interval=0.5, timeout=5.0, max_rate=200)
    h.set_peers({f"p{i}": f"100.64.{i // 250}.{i % 250}" for i in range(1000)}, now=0.0)
    assert h.effective_interval == 5.0
    sent = 0
    t = 0.0
    while t < 20.0:
        sent += len(h.due(t))
        t += 0.02
    # 1,000 at once at the start, then 200 a second: not 2,000 a second.
    assert sent <= 1000 + 200 * 20 and sent >= 1000 * 4
    assert h.next_deadline() is not None and h.next_deadline() >= 20.0 - 0.02


def test_a_peer_probed_every_5s_reads_connected_and_impaired_on_time() -> None:
    h = HealthTracker(interval=0.5, timeout=5.0, max_rate=200)
    peers = {f"p{i}": f"100.64.{i // 250}.{i % 250}" for i in range(1000)}
    h.set_peers(peers, now=0.0)
    t = 0.0
    last_probe: dict[str, float] = {}
    while t < 12.0:
        for cid, _, payload in h.due(t):
            last_probe[cid] = t
            if cid != "p7" or t < 9.0:  # p7 stops answering at 9 s
                assert h.on_reply(payload, t + 0.001)
        t += 0.02
        rep = h.report(t)
        # Answered every 5 s: never "error" (silence is counted from the next answer due).
        assert rep["p1"]["state"] == "connected", (t, rep["p1"])
        # The states alone (what status and the summaries count) say what the report says,
        # and a page's report is those peers' rows of the whole one.
        assert h.states(t) == {cid: r["state"] for cid, r in rep.items()}
        assert h.report(t, ["p7", "p1", "gone"]) == {"p1": rep["p1"], "p7": rep["p7"]}
    lost = last_probe["p7"]
    assert lost >= 9.0
    assert h.report(lost + FAIL_AFTER - 0.01)["p7"]["state"] == "connected"
    assert h.report(lost + FAIL_AFTER)["p7"]["state"] == "impaired"


def test_removed_peers_are_not_probed_again() -> None:
    h = HealthTracker(interval=0.5, timeout=5.0)
    h.set_peers({"a": "100.64.0.1", "b": "100.64.0.2"}, now=0.0)
    assert {c for c, _, _ in h.due(0.0)} == {"a", "b"}
    h.set_peers({"b": "100.64.0.3"}, now=0.1)  # a gone, b's probe IP changed
    got = [(c, ip) for c, ip, _ in h.due(0.1)] + [(c, ip) for c, ip, _ in h.due(0.6)]
    assert got == [("b", "100.64.0.3"), ("b", "100.64.0.3")]


def test_desired_state_is_built_again_only_after_a_change(clusters: Any) -> None:
    lab, gpu = clusters("lab"), clusters("gpu")

    async def go() -> None:
        rec = lab.gw.reconciler
        builds = 0
        real = rec._build_desired

        def counting() -> Any:
            nonlocal builds
            builds += 1
            return real()
        rec._build_desired = counting
        await rec.check(verify=False)
        first, built = rec.desired(), builds
        for _ in range(5):
            await rec.check(verify=False)
            assert rec.desired() is first
        assert builds == built  # nothing changed: not built again
        r = await gpu.call("POST", "/api/v1/tokens", json={"ttl": "1h"})
        r = await lab.call("POST", "/api/v1/peers", json={"token": r.json()["token"]})
        assert r.status_code == 201, r.text
        now = rec.desired()
        assert now is not first and [p.cluster_id for p in now.peers] == ["gpu"]
        assert lab.fabric.last == now

    asyncio.run(go())


def test_export_sync_passes_only_when_something_changed(clusters: Any) -> None:
    gpu = clusters("gpu", exports=EXPORTS)
    lab, edge = clusters("lab"), clusters("edge")

    async def go() -> None:
        for c in (lab, edge):
            r = await gpu.call("POST", "/api/v1/tokens", json={"ttl": "1h"})
            r = await c.call("POST", "/api/v1/peers", json={"token": r.json()["token"]})
            assert r.status_code == 201, r.text
        sync = gpu.gw.export_sync
        assert await sync.step() == {"lab": "ok", "edge": "ok"}
        await sync.step()  # the replies wrote (pins, nonces): one more pass, telling no one
        quiet = sync.passes
        for _ in range(5):
            assert await sync.step() == {}
        assert sync.passes == quiet
        # A change (lab's share) makes the next step pass and tell lab.
        r = await gpu.call("PUT", "/api/v1/peers/lab/exports", json={"exports": []})
        assert r.status_code == 200, r.text
        assert await sync.step() == {"lab": "ok"}
        assert sync.passes == quiet + 1

    asyncio.run(go())


def test_verify_is_spaced_by_its_own_cost(clusters: Any) -> None:
    lab = clusters("lab")

    async def go() -> None:
        rec = lab.gw.reconciler
        await rec.check(verify=True)
        assert rec.verify_interval == VERIFY_INTERVAL  # a quick verify: every 10 s as before
        slow = lab.fabric.verify

        def slow_verify(state: Any) -> list[str]:
            time.sleep(0.15)
            return slow(state)
        lab.fabric.verify = slow_verify
        await rec.check(verify=True)
        assert rec.verify_interval >= 30.0  # 200 x its duration: at most 0.5 % of the time

    asyncio.run(go())


def test_verify_cpu_is_counted(clusters: Any) -> None:
    """The drift checks' count and CPU reach status and /metrics: a sleeping check costs
    no CPU, a spinning one costs what it spun."""
    lab = clusters("lab")

    async def go() -> None:
        rec = lab.gw.reconciler
        assert await rec.reconcile(force=True) and rec.applied is not None
        slow = lab.fabric.verify

        def spin(state: Any) -> list[str]:
            t0 = time.thread_time()
            while time.thread_time() - t0 < 0.05:
                pass
            return slow(state)
        before = rec.stats.verifies, rec.stats.verify_cpu_s
        lab.fabric.verify = lambda state: (time.sleep(0.05), slow(state))[1]
        await rec.check(verify=True)
        assert rec.stats.verifies == before[0] + 1
        assert rec.stats.verify_cpu_s - before[1] < 0.04
        lab.fabric.verify = spin
        await rec.check(verify=True)
        assert rec.stats.verifies == before[0] + 2
        assert rec.stats.verify_cpu_s - before[1] >= 0.05
        st = (await lab.call("GET", "/api/v1/status")).json()["reconcile"]
        assert st["verifies"] == rec.stats.verifies and st["verify_cpu_s"] >= 0.05
        text = (await lab.call("GET", "/metrics")).text
        assert f"crosswire_verify_total {rec.stats.verifies}" in text
        seconds = re.search(r"^crosswire_verify_seconds_total (\S+)$", text, re.M)
        assert seconds and float(seconds.group(1)) == round(rec.stats.verify_cpu_s, 6) >= 0.05

    asyncio.run(go())


def test_max_probe_rate_is_a_config_key() -> None:
    base = {"cluster_id": "a", "pod_cidrs": ["10.244.0.0/16"], "service_cidrs": ["10.96.0.0/12"],
            "wireguard": {"endpoint": "a.example:51820"}, "state_dir": "/tmp/x"}
    assert parse(base, env={}).health.max_probe_rate == 200
    assert parse({**base, "health": {"max_probe_rate": 50}}, env={}).health.max_probe_rate == 50
    try:
        parse({**base, "health": {"max_probe_rate": 0}}, env={})
    except ValueError as e:
        assert "health.max_probe_rate" in str(e)
    else:
        raise AssertionError("max_probe_rate 0 accepted")


def test_readiness_reuses_the_loops_verify_only_for_a_costly_table(clusters: Any) -> None:
    lab = clusters("lab")

    async def go() -> None:
        rec = lab.gw.reconciler
        await rec.check(verify=True)
        calls = 0
        real = lab.fabric.verify

        def counting(state: Any) -> list[str]:
            nonlocal calls
            calls += 1
            return real(state)
        lab.fabric.verify = counting
        assert rec.ready() == (True, "ok") and calls == 1  # small: verified on every call, as before
        await rec.check(verify=True)
        rec.verify_interval = 60.0  # as the loop sets it for a table that takes 0.6 s to read
        calls = 0
        assert rec.ready() == (True, "ok") and rec.ready() == (True, "ok")
        assert calls == 0  # the loop's verdict on this applied state
        lab.fabric.applied.append(lab.fabric.applied[-1])
        await rec.reconcile(force=True)  # a new apply: the old verdict no longer counts
        # ... and the loop verifies the new state within VERIFY_INTERVAL, not verify_interval,
        now = time.monotonic()
        assert rec._verify_due is not None and rec._verify_due - now <= VERIFY_INTERVAL
        assert rec._verify_now(now + VERIFY_INTERVAL, now)
        assert rec.ready() == (True, "ok") and calls == 1
        assert rec.ready() == (True, "ok") and calls == 1  # its own verdict serves the next asker
        # ... and the loop's: it verifies again only verify_interval after that check.
        now = time.monotonic()
        assert not rec._verify_now(now + VERIFY_INTERVAL, 0.0)
        assert not rec._verify_now(now + 59.0, 0.0) and rec._verify_now(now + 60.5, 0.0)

    asyncio.run(go())


def test_status_counts_states_without_building_every_peer(clusters: Any) -> None:
    lab, gpu, edge = clusters("lab"), clusters("gpu"), clusters("edge")

    async def go() -> None:
        for c in (gpu, edge):
            r = await c.call("POST", "/api/v1/tokens", json={"ttl": "1h"})
            r = await lab.call("POST", "/api/v1/peers", json={"token": r.json()["token"]})
            assert r.status_code == 201, r.text
        peers = (await lab.call("GET", "/api/v1/peers", auth=False)).json()
        want: dict[str, int] = {}
        for p in peers:
            want[p["state"]] = want.get(p["state"], 0) + 1
        built = 0
        import gateway.readmodel as rm
        real = rm.peer_summary

        def counting(*a: Any, **k: Any) -> Any:
            nonlocal built
            built += 1
            return real(*a, **k)
        rm.peer_summary = counting  # type: ignore[assignment]
        try:
            st = (await lab.call("GET", "/api/v1/status", auth=False)).json()
        finally:
            rm.peer_summary = real  # type: ignore[assignment]
        assert st["peers"] == 2 and st["peers_by_state"] == want
        assert built == 0

    asyncio.run(go())


def test_the_peer_index_is_read_again_only_after_a_write(tmp_path: Any) -> None:
    from gateway.state import StateStore

    store = StateStore(tmp_path)
    try:
        first = store.peer_index()
        assert store.peer_index() is first  # nothing written: no query, the same answer
        store.set_announced(None, "https://lab:8080")  # a write elsewhere: read again, same content
        again = store.peer_index()
        assert again == first and again is not first
    finally:
        store.close()


def test_a_page_of_peers_is_one_query_of_its_rows(tmp_path: Any) -> None:
    from gateway.state import PeerRecord, StateStore

    store = StateStore(tmp_path)
    try:
        with store.tx() as db:
            for i in range(1200):
                store.put_peer(db, PeerRecord(cluster_id=f"p{i:04d}", public_key=f"k{i}", endpoint=None,
                                              url=f"http://p{i}:8080", gateway_ip=None, ranges=(("pod", "10.244.0.0/16"),),
                                              their_views=None, channel_key=b"c" * 32, psk=b"p" * 32))
        every = store.peers()
        assert [p.cluster_id for p in store.peers(["p0007", "p0003", "nobody", "p0003"])] == ["p0003", "p0007"]
        # more IDs than one statement binds: in chunks, still by ID, each once
        assert store.peers({p.cluster_id for p in every} | {"nobody"}) == every and len(every) == 1200
        assert store.peers([]) == []
    finally:
        store.close()


def test_peer_sources_are_read_again_only_when_the_views_changed() -> None:
    from fabric.model import RangeMap
    from gateway.peersources import PeerSources

    views = {"gpu": [RangeMap("pod", "10.244.0.0/16", "100.64.0.0/16")]}
    reads = 0
    version = [1]

    def read() -> dict[str, list[RangeMap]]:
        nonlocal reads
        reads += 1
        return {k: list(v) for k, v in views.items()}
    ps = PeerSources(read, ttl=0.0, generation=lambda: version[0])
    for _ in range(100):  # a thousand agents' requests: one read while nothing changes
        assert ps.peer_of("100.64.3.4") == "gpu" and ps.peer_of("10.0.0.1") is None
    assert reads == 1
    views["lab"] = [RangeMap("pod", "10.244.0.0/16", "100.65.0.0/16")]
    version[0] += 1  # a peer added: refused at once
    assert ps.peer_of("100.65.0.9") == "lab" and reads == 2


def test_the_operator_api_refuses_a_peer_added_a_moment_ago(clusters: Any) -> None:
    lab, gpu = clusters("lab"), clusters("gpu")

    async def go() -> None:
        import httpx

        from gateway.api import create_app
        app = create_app(lab.gw)

        async def get_from(ip: str) -> int:
            t = httpx.ASGITransport(app=app, client=(ip, 40000))
            async with httpx.AsyncClient(transport=t, base_url="http://lab") as c:
                return (await c.get("/api/v1/status")).status_code
        assert await get_from("10.0.0.5") == 200
        r = await gpu.call("POST", "/api/v1/tokens", json={"ttl": "1h"})
        r = await lab.call("POST", "/api/v1/peers", json={"token": r.json()["token"]})
        assert r.status_code == 201, r.text
        view = next(m["view"] for m in r.json()["our_views"] if m["kind"] == "pod")
        assert await get_from(view.split("/")[0]) == 403

    asyncio.run(go())


def test_one_wireguard_dump_answers_the_reads_of_a_second(clusters: Any, monkeypatch: Any) -> None:
    """A page poll's requests share one dump of every peer's counters (STATS_TTL), and a
    dump older than that is taken again."""
    import gateway.readmodel as rm

    lab = clusters("lab")
    read = lab.gw.read
    read.stats_ttl = rm.STATS_TTL
    dumps = 0

    def dump() -> dict[str, dict[str, Any]]:
        nonlocal dumps
        dumps += 1
        return {"key": {"rx_bytes": dumps}}
    monkeypatch.setattr(lab.fabric, "peer_stats", dump)
    t = [1000.0]
    monkeypatch.setattr(rm.time, "monotonic", lambda: t[0])
    assert read.peer_stats() == read.peer_stats() == {"key": {"rx_bytes": 1}} and dumps == 1
    t[0] += rm.STATS_TTL  # a second later: the counters are read again
    assert read.peer_stats() == {"key": {"rx_bytes": 2}} and dumps == 2
    t[0] -= 5  # a clock that went back never serves a stale dump for long
    assert read.peer_stats() == {"key": {"rx_bytes": 3}}
