"""Run the real DNS listener (gateway.dns.server) with a snapshot read from a JSON file.

    python dnsserve.py --listen IP:PORT --snapshot FILE [--zone Z] [--max-tcp N] [--tcp-idle S]

The snapshot callable (the daemon's seam, here fed by a test) re-reads FILE
whenever it was replaced, so a test changes the imports by rewriting it:
``[{"peer": "gpu", "name": "web.default", "ports": [], "addresses": ["100.64.0.10"]}]``.
Prints ``up`` once both sockets are bound; stops on SIGTERM.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal

from gateway.dns.config import split_listen
from gateway.dns.records import ImportedService, Snapshot
from gateway.dns.server import DnsServer


class FileSnapshot:
    def __init__(self, path: str) -> None:
        self.path = path
        self.key: tuple[int, int, int] | None = None
        self.snap: Snapshot = ()

    def __call__(self) -> Snapshot:
        st = os.stat(self.path)
        key = (st.st_ino, st.st_mtime_ns, st.st_size)
        if key != self.key:
            with open(self.path) as f:
                self.snap = tuple(ImportedService(d["peer"], d["name"], tuple(d.get("ports", ())),
                                                  tuple(d["addresses"])) for d in json.load(f))
            self.key = key
        return self.snap


def write_snapshot(path: str, entries: list[dict[str, object]]) -> None:
    """Replace the file at once (rename), as the test's writer."""
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        json.dump(entries, f)
    os.replace(tmp, path)


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--listen", required=True)
    ap.add_argument("--snapshot", required=True)
    ap.add_argument("--zone", default="clusterset.local")
    ap.add_argument("--max-tcp", type=int, default=64)
    ap.add_argument("--tcp-idle", type=float, default=5.0)
    a = ap.parse_args()
    host, port = split_listen(a.listen, "--listen")
    server = DnsServer(host, port, a.zone, FileSnapshot(a.snapshot), max_tcp=a.max_tcp, tcp_idle=a.tcp_idle)
    await server.start()
    print("up", flush=True)
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    await stop.wait()
    await server.aclose()


if __name__ == "__main__":
    asyncio.run(main())
