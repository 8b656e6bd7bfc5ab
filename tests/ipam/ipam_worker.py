"""A separate process that allocates into an IPAM store (for crash and concurrency tests).

    python ipam_worker.py DB PREFIX COUNT [--go FILE] [--kill-before-commit N]
        [--ranges v4small|kubeadm] [--release-every K] [--pause SECONDS]

Prints one JSON line per committed peer: {"peer": ..., "views": [[kind, real, view], ...]}.
``--go FILE`` waits until FILE exists, so two workers start together.
``--kill-before-commit N`` SIGKILLs this process inside the transaction of the
N-th allocation, after its rows were written and before COMMIT.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sqlite3
import sys
import time
from typing import Any

from ipam import IpamStore, LocalRanges, PeerRange

LOCAL = LocalRanges(pod=("10.244.0.0/16",), service=("10.96.0.0/12",), reserved=("100.64.0.0/24",))
POOLS = ("100.64.0.0/12",)
RANGES = {
    # small ranges so that many peers fit in the pool
    "v4small": [PeerRange("pod", "10.244.0.0/24"), PeerRange("service", "10.96.0.0/26"),
                PeerRange("pod", "192.0.2.0/28")],
    "kubeadm": [PeerRange("pod", "10.244.0.0/16"), PeerRange("service", "10.96.0.0/12")],
}


class KillBeforeCommit:
    """Wraps the store's connection; SIGKILLs the process at the armed COMMIT."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self._conn = conn
        self.armed = False
        self.wrote = False

    def execute(self, sql: str, *args: Any) -> sqlite3.Cursor:
        if sql == "COMMIT" and self.armed and self.wrote:
            os.kill(os.getpid(), signal.SIGKILL)
        return self._conn.execute(sql, *args)

    def executemany(self, sql: str, rows: Any) -> sqlite3.Cursor:
        if sql.startswith("INSERT"):
            self.wrote = True
        return self._conn.executemany(sql, rows)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._conn, name)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("db")
    ap.add_argument("prefix")
    ap.add_argument("count", type=int)
    ap.add_argument("--go")
    ap.add_argument("--kill-before-commit", type=int, default=-1)
    ap.add_argument("--ranges", default="v4small")
    ap.add_argument("--release-every", type=int, default=0)
    ap.add_argument("--pause", type=float, default=0.0, help="seconds to sleep between peers")
    a = ap.parse_args()
    store = IpamStore.open(a.db, LOCAL, POOLS)
    killer = KillBeforeCommit(store._conn)
    store._conn = killer  # type: ignore[assignment]
    print(json.dumps({"ready": True}), flush=True)
    if a.go:
        while not os.path.exists(a.go):
            time.sleep(0.001)
    for i in range(a.count):
        peer = f"{a.prefix}{i}"
        killer.armed, killer.wrote = i == a.kill_before_commit, False
        views = store.allocate(peer, RANGES[a.ranges])
        print(json.dumps({"peer": peer, "views": [[v.kind, v.real, v.view] for v in views]}),
              flush=True)
        if a.pause:
            time.sleep(a.pause)  # outside any transaction: lets the other worker in
        if a.release_every and i % a.release_every == a.release_every - 1:
            store.release(f"{a.prefix}{i - 1}")
            print(json.dumps({"released": f"{a.prefix}{i - 1}"}), flush=True)
    store.close()
    sys.exit(0)


if __name__ == "__main__":
    main()
