"""IPAM benchmark (issue 2, item 6): views for 10,000 peers, then reopen the store.

    python bench/ipam.py [--peers N] [--dir DIR]

Every peer claims the kubeadm defaults, pods 10.244.0.0/16 + services
10.96.0.0/12, and so does the local cluster: every range must be remapped.

Case 1, "ipv4_literal": exactly that, in IPv4. It cannot fit: 10,000 distinct
/12s would need 10,000 x 2^20 addresses > 2^32, and even the /16s alone need
6.5e8 addresses. The pools are the widest non-public IPv4 space
(100.64.0.0/10, 10.0.0.0/8, 172.16.0.0/12, 192.168.0.0/16, 198.18.0.0/15;
public space is left out because a view there would shadow real internet
destinations), minus the local ranges. The bench prints how many peers got
placed and that the rest were refused with an IpamError, and checks that the
refusals stored nothing.

Case 2, the headline numbers: the same shape in IPv6, where it fits. Local
and peers use pods fd00::/48 and services fd01::/108 (the smallest service
prefix kubeadm allows is /108); the pool is the default fd00::/8. 10,000 peers
are allocated one transaction each, then the store is closed and reopened.

The last line is one JSON object: peers, alloc_seconds, reopen_seconds, placed,
failed, plus the IPv4 case. The *_cpu_seconds fields are this process's CPU
time: on a shared machine wall time also counts other processes' turns. Targets (printed, not asserted): 10,000 peers in
under 2 s, reopen under 0.2 s.
"""

from __future__ import annotations

import argparse
import json
import sqlite3
import sys
import tempfile
import time
from contextlib import closing
from pathlib import Path

# This file is itself named ipam.py: keep its directory off sys.path so that
# "import ipam" finds the package (from the repo root if not installed).
_HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE]
sys.path.insert(0, str(_HERE.parent))

from ipam import DEFAULT_POOLS, IpamError, IpamStore, LocalRanges, PeerRange  # noqa: E402

V4_LOCAL = LocalRanges(pod=("10.244.0.0/16",), service=("10.96.0.0/12",))
V4_POOLS = ("100.64.0.0/10", "10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "198.18.0.0/15")
V4_RANGES = [PeerRange("pod", "10.244.0.0/16"), PeerRange("service", "10.96.0.0/12")]

V6_LOCAL = LocalRanges(pod=("fd00::/48",), service=("fd01::/108",))
V6_RANGES = [PeerRange("pod", "fd00::/48"), PeerRange("service", "fd01::/108")]


def count_rows(db: Path) -> int:
    with closing(sqlite3.connect(db)) as c:
        n = c.execute("SELECT COUNT(*) FROM views").fetchone()[0]
        assert isinstance(n, int)
        return n


def ipv4_literal(db: Path, peers: int) -> dict[str, object]:
    placed = failed = 0
    first_error = ""
    with IpamStore.open(db, V4_LOCAL, V4_POOLS) as s:
        t0 = time.perf_counter()
        for i in range(peers):
            try:
                s.allocate(f"peer{i}", V4_RANGES)
                placed += 1
            except IpamError as e:
                failed += 1
                first_error = first_error or str(e)
        seconds = time.perf_counter() - t0
        last = s.views(f"peer{placed - 1}") if placed else []
    rows = count_rows(db)
    assert rows == 2 * placed, (rows, placed)  # refusals stored nothing
    print(f"ipv4 literal: {placed} of {peers} peers placed, {failed} refused, in {seconds:.3f} s")
    print(f"  pools: {', '.join(V4_POOLS)} (minus local 10.244.0.0/16, 10.96.0.0/12)")
    if last:
        print(f"  last placed: {last[0].real} -> {last[0].view}, {last[1].real} -> {last[1].view}")
    print(f"  first refusal: IpamError: {first_error}")
    return {"peers": peers, "placed": placed, "failed": failed, "seconds": round(seconds, 4),
            "pools": list(V4_POOLS)}


def ipv6_fit(db: Path, peers: int) -> dict[str, object]:
    with IpamStore.open(db, V6_LOCAL, DEFAULT_POOLS) as s:
        t0, c0 = time.perf_counter(), time.process_time()
        for i in range(peers):
            s.allocate(f"peer{i}", V6_RANGES)
        alloc, alloc_cpu = time.perf_counter() - t0, time.process_time() - c0
        t0 = time.perf_counter()
        for i in range(peers):  # idempotent re-ask (what a gateway does on every re-peer)
            s.allocate(f"peer{i}", V6_RANGES)
        again = time.perf_counter() - t0
        before = s.allocations()
    t0, c0 = time.perf_counter(), time.process_time()
    with IpamStore.open(db, V6_LOCAL, DEFAULT_POOLS) as s:
        reopen, reopen_cpu = time.perf_counter() - t0, time.process_time() - c0
        after = s.allocations()
    assert after == before
    views = sum(len(v) for v in after.values())
    last = after[f"peer{peers - 1}"]
    print(f"ipv6: {len(after)} of {peers} peers placed ({views} views) in {alloc:.3f} s "
          f"({alloc_cpu:.3f} s CPU), idempotent re-ask {again:.3f} s, "
          f"reopen {reopen:.3f} s ({reopen_cpu:.3f} s CPU)")
    print(f"  last: {last[0].real} -> {last[0].view}, {last[1].real} -> {last[1].view}")
    return {"peers": peers, "alloc_seconds": round(alloc, 4), "reopen_seconds": round(reopen, 4),
            "placed": len(after), "failed": peers - len(after), "views": views,
            "idempotent_seconds": round(again, 4), "alloc_cpu_seconds": round(alloc_cpu, 4),
            "reopen_cpu_seconds": round(reopen_cpu, 4)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0] if __doc__ else None)
    ap.add_argument("--peers", type=int, default=10_000)
    ap.add_argument("--dir", type=Path, help="where to put the stores (default: a temp dir)")
    a = ap.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        d = a.dir or Path(tmp)
        d.mkdir(parents=True, exist_ok=True)
        for name in ("ipam-v4.db", "ipam-v6.db"):
            for suffix in ("", "-wal", "-shm"):
                (d / (name + suffix)).unlink(missing_ok=True)
        v4 = ipv4_literal(d / "ipam-v4.db", a.peers)
        v6 = ipv6_fit(d / "ipam-v6.db", a.peers)
    print(json.dumps({**v6, "case": "ipv6 fd00::/48 + fd01::/108 in fd00::/8",
                      "targets": {"alloc_seconds": 2.0, "reopen_seconds": 0.2},
                      "ipv4_literal": v4}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
