"""Crash (kill -9) and two-process tests of the SQLite store, with real processes."""

from __future__ import annotations

import contextlib
import importlib.util
import itertools
import json
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from ipam import IpamStore, View
from ipam.cidr import parse_cidr

WORKER = Path(__file__).with_name("ipam_worker.py")
# Load the worker's constants by path: no sys.path change for the whole session.
_spec = importlib.util.spec_from_file_location("ipam_worker", WORKER)
assert _spec is not None and _spec.loader is not None
_worker = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_worker)
LOCAL, POOLS, RANGES = _worker.LOCAL, _worker.POOLS, _worker.RANGES


@contextlib.contextmanager
def worker(*args: str) -> Iterator[subprocess.Popen[str]]:
    proc = subprocess.Popen([sys.executable, str(WORKER), *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=30)
        assert proc.stdout is not None and proc.stderr is not None
        proc.stdout.close()
        proc.stderr.close()


def read_json(proc: subprocess.Popen[str]) -> dict[str, object]:
    assert proc.stdout is not None
    line = proc.stdout.readline()
    assert line, f"worker ended early: {proc.wait(timeout=30)} {proc.stderr.read() if proc.stderr else ''}"
    got = json.loads(line)
    assert isinstance(got, dict)
    return got


def committed(lines: list[dict[str, object]]) -> dict[str, list[list[str]]]:
    """Peer -> views, as the worker reported them after each commit."""
    out: dict[str, list[list[str]]] = {}
    for d in lines:
        if "peer" in d:
            out[str(d["peer"])] = d["views"]  # type: ignore[assignment]
        elif "released" in d:
            out.pop(str(d["released"]), None)
    return out


def assert_consistent(db: Path, per_peer: int) -> dict[str, list[View]]:
    """SQLite integrity, all-or-nothing per peer, no overlaps, nothing in local ranges."""
    with contextlib.closing(sqlite3.connect(db)) as c:
        assert c.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    with IpamStore.open(db, LOCAL, POOLS) as s:  # reopen also re-checks disjointness
        allocs = s.allocations()
        assert s.conflicts() == []
    nets = []
    for peer, views in allocs.items():
        assert len(views) == per_peer, (peer, views)
        nets.extend(parse_cidr(v.view, "view") for v in views)
    local = [parse_cidr(c, "local") for c in (*LOCAL.pod, *LOCAL.service, *LOCAL.reserved)]
    nets.sort()
    for a, b in itertools.pairwise(nets):
        assert not a.overlaps(b), (a, b)
    for n in nets:
        assert not any(n.overlaps(lr) for lr in local)
    return allocs


def as_lists(views: list[View]) -> list[list[str]]:
    return [[v.kind, v.real, v.view] for v in views]


def test_kill_inside_the_transaction_stores_nothing_of_that_peer(tmp_path: Path) -> None:
    db = tmp_path / "ipam.db"
    with worker(str(db), "p", "50", "--kill-before-commit", "30") as proc:
        assert read_json(proc) == {"ready": True}
        assert proc.wait(timeout=60) == -signal.SIGKILL
        assert proc.stdout is not None
        lines = [json.loads(x) for x in proc.stdout.read().splitlines()]
    reported = committed(lines)
    assert sorted(reported) == sorted(f"p{i}" for i in range(30))
    allocs = assert_consistent(db, len(RANGES["v4small"]))
    assert {p: as_lists(v) for p, v in allocs.items()} == reported  # same views after restart
    # the store is usable afterwards and the killed peer gets a place
    with IpamStore.open(db, LOCAL, POOLS) as s:
        assert len(s.allocate("p30", RANGES["v4small"])) == len(RANGES["v4small"])
        assert s.views("p0") == allocs["p0"]


def test_kill_at_a_random_moment_leaves_a_consistent_store(tmp_path: Path) -> None:
    db = tmp_path / "ipam.db"
    for round_ in range(3):  # each round kills a worker somewhere in its loop
        with worker(str(db), f"r{round_}-", "100000", "--release-every", "7") as proc:
            assert read_json(proc) == {"ready": True}
            lines = [read_json(proc) for _ in range(40 + 25 * round_)]
            time.sleep(0.01 * round_)
            proc.send_signal(signal.SIGKILL)
            assert proc.wait(timeout=30) == -signal.SIGKILL
        allocs = assert_consistent(db, len(RANGES["v4small"]))
        for peer, views in committed(lines).items():  # every reported commit survived
            assert as_lists(allocs[peer]) == views


def test_two_processes_allocating_at_once_never_overlap(tmp_path: Path) -> None:
    db = tmp_path / "ipam.db"
    go = tmp_path / "go"
    n = 200
    IpamStore.open(db, LOCAL, POOLS).close()  # create the schema up front
    # A short pause between peers (outside transactions) makes the two really
    # take turns even on a loaded machine; within a turn they hammer the lock.
    with worker(str(db), "a", str(n), "--go", str(go), "--pause", "0.0005") as pa, \
            worker(str(db), "b", str(n), "--go", str(go), "--pause", "0.0005") as pb:
        assert read_json(pa) == {"ready": True} and read_json(pb) == {"ready": True}
        go.touch()
        assert pa.wait(timeout=120) == 0 and pb.wait(timeout=120) == 0
        assert pa.stdout is not None and pb.stdout is not None
        la = [json.loads(x) for x in pa.stdout.read().splitlines()]
        lb = [json.loads(x) for x in pb.stdout.read().splitlines()]
    allocs = assert_consistent(db, len(RANGES["v4small"]))
    assert len(allocs) == 2 * n
    for peer, views in {**committed(la), **committed(lb)}.items():
        assert as_lists(allocs[peer]) == views
    # They really ran at the same time: in address order the two workers'
    # views alternate (one running entirely before the other would give 1 switch).
    owners = [p[0] for _, p in sorted((parse_cidr(v.view, "v").first, v.peer)
                                      for vs in allocs.values() for v in vs)]
    switches = sum(1 for x, y in itertools.pairwise(owners) if x != y)
    assert switches > 10, switches


def test_two_processes_allocating_the_same_peers_agree(tmp_path: Path) -> None:
    db = tmp_path / "ipam.db"
    go = tmp_path / "go"
    n = 80
    IpamStore.open(db, LOCAL, POOLS).close()
    with worker(str(db), "same", str(n), "--go", str(go)) as pa, \
            worker(str(db), "same", str(n), "--go", str(go)) as pb:
        assert read_json(pa) == {"ready": True} and read_json(pb) == {"ready": True}
        go.touch()
        assert pa.wait(timeout=120) == 0 and pb.wait(timeout=120) == 0
        assert pa.stdout is not None and pb.stdout is not None
        la = committed([json.loads(x) for x in pa.stdout.read().splitlines()])
        lb = committed([json.loads(x) for x in pb.stdout.read().splitlines()])
    assert la == lb  # idempotent across processes: whoever came second got the same views
    allocs = assert_consistent(db, len(RANGES["v4small"]))
    assert {p: as_lists(v) for p, v in allocs.items()} == la
