"""The SQLite store: persistence, file modes, restart, conflicts, bad files."""

from __future__ import annotations

import contextlib
import itertools
import logging
import os
import re
import sqlite3
import stat
import threading
from pathlib import Path

import pytest

from ipam import DEFAULT_POOLS, IpamError, IpamStore, LocalRanges, PeerRange, View
from ipam.cidr import parse_cidr

KUBEADM = LocalRanges(pod=("10.244.0.0/16", "fd00::/48"), service=("10.96.0.0/12", "fd01::/108"))
POD = PeerRange("pod", "10.244.0.0/16")
SVC = PeerRange("service", "10.96.0.0/12")
POD6 = PeerRange("pod", "fd00::/48")


def mode(p: Path) -> int:
    return stat.S_IMODE(os.stat(p).st_mode)


def test_files_are_mode_0600_even_with_a_lax_umask(tmp_path: Path) -> None:
    old = os.umask(0)
    try:
        db = tmp_path / "state" / "ipam.db"
        with IpamStore.open(db, KUBEADM) as s:
            s.allocate("gpu", [POD, SVC])
            files = sorted(p.name for p in db.parent.iterdir())
            assert files == ["ipam.db", "ipam.db-shm", "ipam.db-wal"]
            for name in files:
                assert mode(db.parent / name) == 0o600, name
        assert mode(db.parent) == 0o700
    finally:
        os.umask(old)


def test_an_existing_file_with_a_wide_mode_is_tightened(tmp_path: Path) -> None:
    db = tmp_path / "ipam.db"
    db.touch(mode=0o644)
    os.chmod(db, 0o644)
    IpamStore.open(db, KUBEADM).close()
    assert mode(db) == 0o600


def test_store_uses_wal(tmp_path: Path) -> None:
    db = tmp_path / "ipam.db"
    IpamStore.open(db, KUBEADM).close()
    with contextlib.closing(sqlite3.connect(db)) as c:
        assert c.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_restart_returns_the_same_views(tmp_path: Path) -> None:
    db = tmp_path / "ipam.db"
    with IpamStore.open(db, KUBEADM) as s:
        gpu = s.allocate("gpu", [POD, SVC])
        lab = s.allocate("lab", [POD, POD6])
        gpu = s.allocate("gpu", [POD, PeerRange("pod", "192.0.2.0/24")])  # extend
        s.allocate("gone", [SVC])
        s.release("gone")
        before = s.allocations()
    assert before == {"gpu": gpu, "lab": lab}
    with IpamStore.open(db, KUBEADM) as s:
        assert s.allocations() == before
        assert s.views("gpu") == gpu  # same order: allocation order
        assert s.allocate("gpu", [SVC, POD]) == gpu  # idempotent after restart
        new = s.allocate("new", [POD, SVC])
        for v in new:  # and a new peer avoids the reloaded views
            assert v.view not in {x.view for vs in before.values() for x in vs}
        assert [v.view for v in new] == ["100.66.0.0/16", "100.96.0.0/12"]  # the released hole


def test_allocate_is_all_or_nothing_in_the_file(tmp_path: Path) -> None:
    db = tmp_path / "ipam.db"
    with IpamStore.open(db, KUBEADM, ["100.64.0.0/15"]) as s:
        s.allocate("a", [POD])
        s.allocate("b", [POD])
        with pytest.raises(IpamError, match="exhausted"):
            s.allocate("c", [PeerRange("pod", "192.0.2.0/24"), POD])
        with pytest.raises(IpamError, match="host bits"):
            s.allocate("c", [PeerRange("pod", "192.0.2.0/24"), PeerRange("pod", "10.1.1.0/16")])
        assert s.views("c") == []
    with contextlib.closing(sqlite3.connect(db)) as c:
        assert c.execute("SELECT COUNT(*) FROM views WHERE peer='c'").fetchone()[0] == 0


def test_replace_is_persisted(tmp_path: Path) -> None:
    db = tmp_path / "ipam.db"
    with IpamStore.open(db, KUBEADM) as s:
        s.allocate("a", [POD, SVC])
        after = s.allocate("a", [SVC, POD6], replace=True)
    with IpamStore.open(db, KUBEADM) as s:
        assert s.views("a") == after
        assert [v.real for v in after] == ["10.96.0.0/12", "fd00::/48"]


def test_two_stores_in_one_process_see_each_others_writes(tmp_path: Path) -> None:
    db = tmp_path / "ipam.db"
    with IpamStore.open(db, KUBEADM) as s1, IpamStore.open(db, KUBEADM) as s2:
        a = s1.allocate("a", [POD])
        assert s2.views("a") == a
        b = s2.allocate("b", [POD])
        assert b[0].view != a[0].view
        assert s1.allocations() == {"a": a, "b": b}
        s2.release("a")
        assert s1.views("a") == []
        assert s1.allocate("c", [POD])[0].view == a[0].view


def test_check_validates_without_allocating(tmp_path: Path) -> None:
    with IpamStore.open(tmp_path / "ipam.db", KUBEADM) as s:
        s.check([POD, SVC])
        with pytest.raises(IpamError, match=r"'10\.244\.0\.1/16'.*host bits"):
            s.check([PeerRange("pod", "10.244.0.1/16")])
        with pytest.raises(IpamError, match="overlaps the peer's pod range"):
            s.check([POD, PeerRange("service", "10.244.0.0/24")])
        assert s.allocations() == {}


def test_conflicts_after_a_local_range_change_are_exposed_not_dropped(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    db = tmp_path / "ipam.db"
    with IpamStore.open(db, KUBEADM) as s:
        a = s.allocate("a", [POD, SVC])
    moved = LocalRanges(pod=("100.64.0.0/16",), service=KUBEADM.service, reserved=("100.80.0.0/12",))
    with caplog.at_level(logging.WARNING, logger="ipam.store"), IpamStore.open(db, moved) as s:
        assert s.views("a") == a  # still there
        conflicts = s.conflicts()
        assert {(c.view, c.local) for c in conflicts} == {
            (a[0], "pod range 100.64.0.0/16"), (a[1], "reserved range 100.80.0.0/12")}
        # new allocations avoid both the conflicting views and the new local ranges
        [b] = s.allocate("b", [PeerRange("pod", "100.64.0.0/16")])
        assert b.view == "100.65.0.0/16"
        # re-peering moves the peer out of the conflict
        s.release("a")
        assert [v.view for v in s.allocate("a", [POD, SVC])] == ["10.244.0.0/16", "100.96.0.0/12"]
        assert s.conflicts() == []
    assert "100.64.0.0/16" in caplog.text and "re-peer" in caplog.text


def test_not_a_database_is_a_clear_error(tmp_path: Path) -> None:
    db = tmp_path / "ipam.db"
    db.write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(IpamError, match=re.escape(str(db))):
        IpamStore.open(db, KUBEADM)


def test_newer_schema_is_refused(tmp_path: Path) -> None:
    db = tmp_path / "ipam.db"
    IpamStore.open(db, KUBEADM).close()
    with contextlib.closing(sqlite3.connect(db)) as c:
        c.execute("UPDATE meta SET value='99' WHERE key='schema_version'")
        c.commit()
    with pytest.raises(IpamError, match="schema version 99"):
        IpamStore.open(db, KUBEADM)


def test_overlapping_rows_written_behind_our_back_are_detected(tmp_path: Path) -> None:
    db = tmp_path / "ipam.db"
    with IpamStore.open(db, KUBEADM) as s:
        s.allocate("a", [POD])
    with contextlib.closing(sqlite3.connect(db)) as c:
        c.execute("INSERT INTO views SELECT 'evil', real, seq + 1, kind, view, vfirst, held FROM views")
        c.commit()
    with pytest.raises(IpamError, match="inconsistent"):
        IpamStore.open(db, KUBEADM)


def test_bad_config_fails_before_creating_files(tmp_path: Path) -> None:
    db = tmp_path / "sub" / "ipam.db"
    with pytest.raises(IpamError, match="IPAM pool 'nope'"):
        IpamStore.open(db, KUBEADM, ["nope"])
    assert not db.parent.exists()


def test_closed_store_refuses_work(tmp_path: Path) -> None:
    s = IpamStore.open(tmp_path / "ipam.db", KUBEADM)
    s.close()
    s.close()  # idempotent
    with pytest.raises(IpamError, match="closed"):
        s.allocate("a", [POD])
    with pytest.raises(IpamError, match="closed"):
        s.views("a")


def test_accessors(tmp_path: Path) -> None:
    with IpamStore.open(tmp_path / "ipam.db", KUBEADM) as s:
        assert s.local == KUBEADM
        assert s.pools == DEFAULT_POOLS
        s.allocate("a", [POD])
        assert "1 views" in repr(s)
        assert View("a", "pod", "10.244.0.0/16", "100.64.0.0/16").remapped


def test_threads_sharing_one_store_never_overlap(tmp_path: Path) -> None:
    with IpamStore.open(tmp_path / "ipam.db", KUBEADM) as s:
        def work(t: int) -> None:
            for i in range(40):
                s.allocate(f"t{t}-{i}", [POD, PeerRange("service", "10.96.0.0/24")])
                if i % 5 == 4:
                    s.release(f"t{t}-{i - 2}")
        done = threading.Event()
        errors: list[BaseException] = []

        def read() -> None:  # readers run while writers commit
            try:
                while not done.is_set():
                    for vs in s.allocations().values():
                        assert vs
                    s.views("t0-1")
                    s.conflicts()
            except BaseException as e:
                errors.append(e)

        threads = [threading.Thread(target=work, args=(t,)) for t in range(4)]
        reader = threading.Thread(target=read)
        reader.start()
        for th in threads:
            th.start()
        for th in threads:
            th.join()
        done.set()
        reader.join()
        assert errors == []
        views = [v for vs in s.allocations().values() for v in vs]
    assert len(views) == 2 * 4 * (40 - 8)
    nets = sorted(parse_cidr(v.view, "v") for v in views)
    assert all(not a.overlaps(b) for a, b in itertools.pairwise(nets))
    with IpamStore.open(tmp_path / "ipam.db", KUBEADM) as again:
        assert [v for vs in again.allocations().values() for v in vs] == views


def test_unusable_paths_are_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(IpamError, match="Is a directory"):
        IpamStore.open(tmp_path, KUBEADM)
    (tmp_path / "file").write_text("x")
    with pytest.raises(IpamError, match=r"File exists|Not a directory"):
        IpamStore.open(tmp_path / "file" / "ipam.db", KUBEADM)


def test_a_malformed_row_is_a_clear_error(tmp_path: Path) -> None:
    db = tmp_path / "ipam.db"
    with IpamStore.open(db, KUBEADM) as s:
        s.allocate("a", [POD])
    with contextlib.closing(sqlite3.connect(db)) as c:
        c.execute("UPDATE views SET real='junk'")
        c.commit()
    with pytest.raises(IpamError, match="malformed row"):
        IpamStore.open(db, KUBEADM)
    with contextlib.closing(sqlite3.connect(db)) as c:
        c.execute("UPDATE views SET real='fd00::/16'")
        c.commit()
    with pytest.raises(IpamError, match=r"malformed row.*family"):
        IpamStore.open(db, KUBEADM)


def test_repeated_request_of_a_known_peer_needs_no_write_lock(tmp_path: Path) -> None:
    db = tmp_path / "ipam.db"
    with IpamStore.open(db, KUBEADM) as s:
        a = s.allocate("a", [POD, SVC])
        s._conn.execute("PRAGMA busy_timeout=200")
        with contextlib.closing(sqlite3.connect(db, isolation_level=None)) as other:
            other.execute("BEGIN IMMEDIATE")  # another process holds the write lock
            try:
                assert s.allocate("a", [SVC, POD]) == a
                assert s.allocate("a", [POD]) == a
                with pytest.raises(sqlite3.OperationalError, match="locked"):
                    s.allocate("b", [POD])  # a change does need the lock
                with pytest.raises(sqlite3.OperationalError, match="locked"):
                    s.allocate("a", [POD], replace=True)
            finally:
                other.execute("ROLLBACK")
        assert s.allocate("b", [POD])[0].view == "100.65.0.0/16"
        assert s.views("a") == a


def test_generation_moves_with_the_allocations_and_holds_still_on_reads(tmp_path: Path) -> None:
    """What readers caching derived data (gateway.peersources) compare: it must move on
    every change, here or by another connection, and hold still while nothing changes."""
    db = tmp_path / "ipam.db"
    with IpamStore.open(db, KUBEADM) as s, IpamStore.open(db, KUBEADM) as other:
        g0 = s.generation()
        s.allocations()
        assert s.generation() == g0  # reads change nothing
        s.allocate("gpu", [POD, SVC])
        g1 = s.generation()
        assert g1 != g0 and s.generation() == g1
        other.allocate("lab", [POD])  # another connection's commit: seen through data_version
        g2 = s.generation()
        assert g2 != g1 and "lab" in s.allocations()
        s.release("gpu")
        assert s.generation() != g2 and "gpu" not in s.allocations()
