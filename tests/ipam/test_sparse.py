"""Sparse views in IPAM: export/gateway addresses and egress blocks, quarantine, schema upgrade."""

from __future__ import annotations

import contextlib
import ipaddress
import sqlite3

import pytest

from ipam import IpamError, IpamStore, LocalRanges, PeerRange, Planner

KUBEADM = LocalRanges(pod=("10.244.0.0/16",), service=("10.96.0.0/12",))
POOL = ("100.64.0.0/10", "fd00::/8")
EGRESS = PeerRange("egress", "0.0.0.0/28")


def sparse(*exports: str, gw: str | None = "10.244.0.5/32") -> list[PeerRange]:
    out = [EGRESS]
    if gw:
        out.append(PeerRange("gateway", gw))
    return out + [PeerRange("export", e) for e in exports]


def in_pool(view: str) -> bool:
    net = ipaddress.ip_network(view)
    return any(net.version == p.version and net.subnet_of(p)  # type: ignore[arg-type]
               for p in map(ipaddress.ip_network, POOL))


def test_sparse_views_always_come_from_the_pools() -> None:
    p = Planner(KUBEADM, POOL)
    # 10.50.0.7 is free here, but a sparse view is never the real address.
    plan = p.plan("c1", sparse("10.96.0.10/32", "10.50.0.7/32", "10.244.3.0/30"))
    p.commit(plan)
    views = {v.real: v for v in p.views("c1")}
    assert views["0.0.0.0/28"].view == "100.64.0.0/28"
    assert all(v.remapped and in_pool(v.view) for v in views.values())
    assert ipaddress.ip_network(views["10.244.3.0/30"].view).prefixlen == 30
    assert {v.kind for v in views.values()} == {"egress", "gateway", "export"}


def test_egress_real_must_only_give_a_size() -> None:
    p = Planner(KUBEADM, POOL)
    with pytest.raises(IpamError, match=r"must be 0\.0\.0\.0/N or ::/N"):
        p.plan("c1", [PeerRange("egress", "10.0.0.0/28")])
    p.commit(p.plan("c1", [PeerRange("egress", "::/124")]))
    assert p.views("c1")[0].view == "fd00::/124"


def test_thirty_kubeadm_spokes_fit_where_full_views_stop_at_three() -> None:
    full = Planner(KUBEADM, ("100.64.0.0/10",))
    placed = 0
    for i in range(30):
        try:
            full.commit(full.plan(f"c{i}", [PeerRange("pod", "10.244.0.0/16"),
                                            PeerRange("service", "10.96.0.0/12")]))
            placed += 1
        except IpamError as e:
            assert "pools exhausted" in str(e)
            break
    assert placed == 3
    p = Planner(KUBEADM, ("100.64.0.0/10",))
    for i in range(1000):
        p.commit(p.plan(f"c{i}", sparse(*(f"10.96.{j}.10/32" for j in range(20)))))
    used = sum(ipaddress.ip_network(v.view).num_addresses for vs in p.allocations().values() for v in vs)
    assert used == 1000 * (16 + 1 + 20)


def test_an_export_removed_is_held_and_given_back_only_to_the_same_range() -> None:
    p = Planner(KUBEADM, POOL)
    p.commit(p.plan("c1", sparse("10.96.0.10/32", "10.96.0.11/32"), now=0))
    first = {v.real: v.view for v in p.views("c1")}
    p.commit(p.plan("c1", sparse("10.96.0.11/32"), replace=True, now=10, hold=60))
    assert "10.96.0.10/32" not in {v.real for v in p.views("c1")}
    assert [(v.view, until) for v, until in p.held()] == [(first["10.96.0.10/32"], 70)]
    # Another export, and another peer, never get the held address during the hold.
    p.commit(p.plan("c2", sparse("10.96.0.10/32"), now=20, hold=60))
    p.commit(p.plan("c1", sparse("10.96.0.11/32", "10.96.0.12/32"), replace=True, now=20, hold=60))
    taken = {v.view for vs in p.allocations().values() for v in vs}
    assert first["10.96.0.10/32"] not in taken
    # The same range of the same peer gets its address back (a stale answer stays right).
    p.commit(p.plan("c1", sparse("10.96.0.10/32", "10.96.0.11/32"), replace=True, now=30, hold=60))
    again = {v.real: v.view for v in p.views("c1")}
    assert again["10.96.0.10/32"] == first["10.96.0.10/32"]
    assert {v.real for v, _ in p.held()} == {"10.96.0.12/32"}


def test_a_hold_ends_and_frees_the_address() -> None:
    p = Planner(KUBEADM, ("100.64.0.0/30",))
    p.commit(p.plan("c1", [PeerRange("export", "10.96.0.10/32")], now=0))
    held = p.views("c1")[0].view
    p.release("c1", now=0, hold=60)
    with pytest.raises(IpamError, match="pools exhausted"):
        for i in range(4):  # the pool holds four addresses, one of them held
            p.commit(p.plan(f"x{i}", [PeerRange("export", "10.96.0.10/32")], now=30))
    assert p.expire(59) == []
    assert [r.view.view for r in p.expire(61)] == [held]
    p.commit(p.plan("late", [PeerRange("export", "10.96.0.10/32")], now=61))
    assert p.views("late")[0].view == held
    assert p.held() == []


def test_store_keeps_holds_across_a_reopen(tmp_path) -> None:  # type: ignore[no-untyped-def]
    db = tmp_path / "ipam.db"
    with IpamStore.open(db, KUBEADM, POOL) as s:
        s.allocate("c1", sparse("10.96.0.10/32"), now=0)
        before = {v.real: v.view for v in s.views("c1")}
        s.release("c1", hold=100, now=0)
        assert s.views("c1") == []
    with IpamStore.open(db, KUBEADM, POOL) as s:
        assert sorted(v.view for v, _ in s.held()) == sorted(before.values())
        got = {v.real: v.view for v in s.allocate("c1", sparse("10.96.0.10/32"), now=50)}
        assert got == before  # the same peer back within the hold: the same addresses
        s.allocate("c1", sparse(), replace=True, hold=100, now=60)
        s.allocate("c9", sparse("10.96.0.10/32"), now=200)  # past the hold: expired rows go
    with contextlib.closing(sqlite3.connect(db)) as c:
        assert c.execute("SELECT count(*) FROM views WHERE held IS NOT NULL").fetchone()[0] == 0


def test_version_1_store_is_upgraded_in_place(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """A state directory of the previous release: its full views survive and sparse ones fit."""
    db = tmp_path / "ipam.db"
    with contextlib.closing(sqlite3.connect(db)) as c:
        c.executescript("""
            CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
            INSERT INTO meta VALUES ('schema_version', '1');
            CREATE TABLE views (peer TEXT NOT NULL, real TEXT NOT NULL, seq INTEGER NOT NULL,
                kind TEXT NOT NULL CHECK (kind IN ('pod', 'service')), view TEXT NOT NULL,
                vfirst BLOB NOT NULL, PRIMARY KEY (peer, real)) WITHOUT ROWID;
            INSERT INTO views VALUES ('old', '10.244.0.0/16', 0, 'pod', '100.64.0.0/16', x'64400000');
        """)
    with IpamStore.open(db, KUBEADM, POOL) as s:
        assert [(v.kind, v.view) for v in s.views("old")] == [("pod", "100.64.0.0/16")]
        views = s.allocate("new", sparse("10.96.0.10/32"))
        assert all(not ipaddress.ip_network(v.view).overlaps(ipaddress.ip_network("100.64.0.0/16"))
                   for v in views)
    with contextlib.closing(sqlite3.connect(db)) as c:
        assert c.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()[0] == "2"
