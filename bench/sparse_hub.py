#!/usr/bin/env python3
"""Sparse hub benchmark (issue "Sparse views", Prove it, third bullet). Run as root.

    python bench/sparse_hub.py [--peers 1000] [--exports 20] [--no-nat]

A hub gateway with ``ipam.views: sparse`` and the one pool 100.64.0.0/10, every
cluster on kubeadm's ranges (pods 10.244.0.0/16, services 10.96.0.0/12):

1. IPAM (``ipam.IpamStore``, a SQLite file in a temporary directory): each peer
   gets what a sparse hub allocates for it (``gateway.sparse.claims``): a /28
   egress block, its gateway's /32 and one /32 per exported address (20
   ClusterIPs), one transaction per peer; then the store is closed and
   reopened; then one peer's exports change (one replaced, quarantine on).
   ``ipam_alloc_s`` (target < 2 s), ``ipam_reopen_s`` (< 0.2 s),
   ``ipam_change_s``, and the addresses used of the pool.
2. NAT (``bench/nat_scale.py``, in namespaces it makes and removes; 1,000
   peers x 20 exports, its fixed shape): ``--sparse``, the nft table alone,
   whole and as a one-peer delta (one more export), sparse hub against full
   (``nat_table_*``); and ``--shape sparse``: ``fabric.apply`` of the sparse
   hub's 1,000 peers (WireGuard through wireguard-go's UAPI, routes, nft;
   target < 1 s for the table, < 0.1 s for a one-peer delta) and TCP
   throughput through the table with 1,000 peers against 1 (ratio >= 0.95),
   with a 1-vs-1 control in the same run (``nat_*``).

Targets are printed, not asserted. The last line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from gateway.config import IpamConfig  # noqa: E402
from gateway.sparse import claims  # noqa: E402
from ipam import IpamStore, LocalRanges, PeerRange  # noqa: E402

POOL = "100.64.0.0/10"
KUBEADM = LocalRanges(pod=("10.244.0.0/16",), service=("10.96.0.0/12",))
RANGES = (("pod", "10.244.0.0/16"), ("service", "10.96.0.0/12"))


def exports_of(n: int, shift: int = 0) -> list[dict[str, object]]:
    return [{"name": f"svc{j}.default", "addresses": [f"10.96.{(j + shift) // 250}.{(j + shift) % 250 + 1}"]}
            for j in range(n)]


def ipam_part(peers: int, exports: int) -> dict[str, float | int]:
    cfg = IpamConfig(views="sparse")
    want = [PeerRange(k, c) for k, c in claims(cfg, RANGES, "10.244.0.2", exports_of(exports))]  # type: ignore[arg-type]
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "ipam.db"
        store = IpamStore.open(path, KUBEADM, (POOL,))
        t0 = time.perf_counter()
        c0 = time.process_time()
        for i in range(peers):
            store.allocate(f"c{i:04d}", want)
        alloc, alloc_cpu = time.perf_counter() - t0, time.process_time() - c0
        store.close()
        t0 = time.perf_counter()
        store = IpamStore.open(path, KUBEADM, (POOL,))
        n = len(store.allocations())
        reopen = time.perf_counter() - t0
        changed = [PeerRange(k, c) for k, c in claims(cfg, RANGES, "10.244.0.2",  # type: ignore[arg-type]
                                                        exports_of(exports, shift=1))]
        t0 = time.perf_counter()
        store.allocate("c0000", changed, replace=True, hold=cfg.quarantine)
        change = time.perf_counter() - t0
        used = sum(_size(v.view) for vs in store.allocations().values() for v in vs)
        held = len(store.held())
        store.close()
    assert n == peers
    return {"peers": peers, "exports_per_peer": exports, "ipam_alloc_s": round(alloc, 3),
            "ipam_alloc_cpu_s": round(alloc_cpu, 3), "ipam_reopen_s": round(reopen, 3),
            "ipam_change_s": round(change, 4), "ipam_held_after_change": held,
            "pool": POOL, "pool_addresses": 1 << 22, "addresses_used": used,
            "pool_used_pct": round(100 * used / (1 << 22), 2)}


def _size(cidr: str) -> int:
    bits, plen = (32, int(cidr.split("/")[1])) if ":" not in cidr else (128, int(cidr.split("/")[1]))
    return 1 << (bits - plen)


def _run(*args: str) -> dict[str, object]:
    out = subprocess.run([sys.executable, str(ROOT / "bench" / "nat_scale.py"), *args],
                         capture_output=True, text=True, timeout=3600)
    sys.stderr.write(out.stdout)
    lines = [ln for ln in out.stdout.splitlines() if ln.startswith("{")]
    if out.returncode != 0 or not lines:
        raise SystemExit(f"nat_scale.py {' '.join(args)} failed ({out.returncode}): {out.stderr[-2000:]}")
    result: dict[str, object] = json.loads(lines[-1])
    return result


def nat_part() -> dict[str, object]:
    """1,000 peers x 20 exports (nat_scale's fixed shape): the table alone (``--sparse``),
    then apply and throughput with the sparse hub's peers (``--shape sparse``)."""
    tables = {f"nat_table_{k}": v for k, v in _run("--sparse").items()}
    full = {f"nat_{k}": v for k, v in _run("--shape", "sparse").items()}
    return {**tables, **full}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--peers", type=int, default=1000)
    ap.add_argument("--exports", type=int, default=20)
    ap.add_argument("--no-nat", action="store_true", help="the IPAM part only (no root needed)")
    a = ap.parse_args()
    result: dict[str, object] = dict(ipam_part(a.peers, a.exports))
    print(f"IPAM: {a.peers} peers x {a.exports} exports: allocated in {result['ipam_alloc_s']} s "
          f"(target < 2 s), reopened in {result['ipam_reopen_s']} s (target < 0.2 s); "
          f"{result['addresses_used']} of {result['pool_addresses']} addresses of {POOL} used", file=sys.stderr)
    if not a.no_nat:
        if os.geteuid() != 0:
            raise SystemExit("the NAT part needs root (or pass --no-nat)")
        result.update(nat_part())
    result["load_avg"] = round(os.getloadavg()[0], 2)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
