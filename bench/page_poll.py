"""What an open operator page costs the gateway with 1000 peers (issue 18, part 3).

In a network namespace of its own (nothing leaves it): a state directory with
1000 peers (state.db, ipam.db: two ranges each, the views agreed both ways), the
real nftables table of that state programmed into the namespace, and the real
operator app (``gateway.api.create_app``) called in process through ASGI. The
data plane is a stand-in for what needs a WireGuard device: ``peer_stats`` is a
canned dict of 1000 peers (a real crosswire-wg's UAPI dump is not counted) and
``verify`` checks the nft table only (as ``fabric.apply.verify`` does first),
without routes and WireGuard. NAT reports, counters and drops come from the
kernel through ``fabric.dataplane.Dataplane``'s own code.

Measured as process CPU time (user + system, this process and libnftables in
it) per poll cycle, median of ``--rounds``:

* ``old_cycle_s``: what the page fetched before: status, /api/v1/peers, /api/v1/nat;
* ``new_cycle_s``: what it fetches now: both summaries, a page of 50 peers, one
  peer's NAT, plus a 15th of a status (it asks every 15th poll, and when the
  peers' version moves); ``new_views_s`` the same without the status;
* each request alone (``*_s``), and the bytes of each answer.

``*_core_pct`` = CPU per cycle / the 2 s poll interval, in % of one core.
Run as root: ``python bench/page_poll.py [--peers 1000] [--rounds 7]``. Last line: JSON.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

POLL_S = 2.0
STATUS_EVERY = 15  # the page's STATUS_EVERY (it also asks when the peers' version moves)


def cpu() -> float:
    return time.process_time()  # user + system of this process (libnftables runs in it)


class BenchFabric:
    """The data plane without a WireGuard device: NAT, drops and denied from the kernel
    through Dataplane's own methods; canned per-peer stats."""

    def __init__(self, table: str, stats: dict[str, dict[str, Any]]) -> None:
        self.nft_table = table
        self.stats = stats

    def ensure_up(self) -> None: ...
    def stop(self) -> None: ...
    def apply(self, state: Any, previous: Any) -> None: ...

    def alive(self) -> bool:
        return True

    def peer_stats(self) -> dict[str, dict[str, Any]]:
        return dict(self.stats)

    def nat(self, state: Any, only: Any = None, *, denied: Any = None) -> list[dict[str, Any]]:
        from fabric.dataplane import Dataplane
        return Dataplane.nat(self, state, only, denied=denied)  # type: ignore[arg-type]

    def nat_totals(self, state: Any, *, denied: Any = None) -> Any:
        from fabric.dataplane import Dataplane
        return Dataplane.nat_totals(self, state, denied=denied)  # type: ignore[arg-type]

    def export_denied(self, state: Any, only: Any = None) -> Any:
        from fabric.dataplane import Dataplane
        return Dataplane.export_denied(self, state, only)  # type: ignore[arg-type]

    def denied_total(self, state: Any) -> Any:
        from fabric.dataplane import Dataplane
        return Dataplane.denied_total(self, state)  # type: ignore[arg-type]

    def nat_drops(self) -> list[dict[str, Any]]:
        from fabric.dataplane import Dataplane
        return Dataplane.nat_drops(self)  # type: ignore[arg-type]

    def verify(self, state: Any) -> list[str]:
        from fabric.apply import _nat_problem
        from fabric.nft import Nft
        problem = _nat_problem(state, Nft())
        return [problem] if problem else []

    def endpoint_problems(self) -> tuple[dict[str, str], float | None]:
        return {}, None

    def process_pid(self) -> int | None:
        return None


def build(root: Path, n: int) -> Any:
    from fabric import nat
    from fabric.model import RangeMap
    from fabric.nft import Nft
    from gateway.config import parse
    from gateway.controlplane import ControlPlane
    from gateway.ipam_adapter import IpamViews
    from gateway.state import PeerRecord, StateStore

    config = parse({
        "cluster_id": "hub", "pod_cidrs": ["10.244.0.0/16"], "service_cidrs": ["10.96.0.0/12"],
        "wireguard": {"interface": "cwbench0", "listen_port": 51820, "endpoint": "192.0.2.1:51820"},
        "api": {"listen": "127.0.0.1:8080", "advertise": "https://192.0.2.1:8080"},
        "state_dir": str(root), "gateway_ip": "10.244.0.1"}, env={})
    store = StateStore(root)
    views = IpamViews(root / "ipam.db", config.pod_cidrs, config.service_cidrs, config.reserved_cidrs,
                      config.ipam_pools)
    theirs = (RangeMap("pod", "10.244.0.0/16", "100.65.0.0/16"), RangeMap("service", "10.96.0.0/12", "100.80.0.0/12"))
    stats = {}
    now = time.time()
    for i in range(n):
        a, b = divmod(i, 250)
        cid = f"peer{i:04d}"
        ranges = (("pod", f"10.{a}.{b}.0/24"), ("service", f"172.{16 + a}.{b}.0/24"))
        views.allocate(cid, list(ranges))
        pub = secrets.token_bytes(32).hex()[:43] + "="
        with store.tx() as db:
            store.put_peer(db, PeerRecord(
                cluster_id=cid, public_key=pub, endpoint=f"198.18.{a}.{b + 1}:51820",
                url=f"https://198.18.{a}.{b + 1}:8080", gateway_ip=f"10.{a}.{b}.1", ranges=ranges,
                their_views=theirs, channel_key=secrets.token_bytes(32), psk=secrets.token_bytes(32), created=now))
        stats[pub] = {"endpoint": f"198.18.{a}.{b + 1}:51820", "last_handshake": now - i % 100,
                      "rx_bytes": 1000 * i, "tx_bytes": 700 * i}
    fabric = BenchFabric(config.nft_table, stats)
    cp = ControlPlane.build(config, store, views, fabric, tls_post=None)
    state = cp.reconciler.desired()
    Nft().apply(nat.render_text(state))  # the table the counters are read from
    cp.reconciler.applied = state
    cp.reconciler.stats.ok = True
    return cp


async def measure(cp: Any, n: int, rounds: int) -> dict[str, Any]:
    import httpx

    from gateway.api import create_app

    app = create_app(cp)
    out: dict[str, Any] = {}
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app, client=("127.0.0.1", 1)),
                                 base_url="http://gw") as c:
        async def cost(paths: list[str]) -> tuple[float, int]:
            runs, size = [], 0
            for _ in range(rounds):
                # a poll comes 2 s after the last: the counters' snapshots (1 s) are read afresh
                cp.read.snapshots = type(cp.read.snapshots)(cp.read)
                t = cpu()
                size = 0
                for p in paths:
                    r = await c.get(p)
                    assert r.status_code == 200, (p, r.status_code, r.text[:200])
                    size += len(r.content)
                runs.append(cpu() - t)
            return statistics.median(runs), size

        mid = f"peer{n // 2:04d}"
        single = {"status": "/api/v1/status", "peers": "/api/v1/peers", "nat": "/api/v1/nat",
                  "peers_summary": "/api/v1/peers?summary=true", "nat_summary": "/api/v1/nat?summary=true",
                  "peers_page": f"/api/v1/peers?limit=50&offset={n // 2}",
                  "nat_peer": f"/api/v1/nat?peer={mid}", "nat_page": f"/api/v1/nat?limit=50&offset={n // 2}",
                  "page_poll": f"/api/v1/page?limit=50&offset={n // 2}&peer={mid}", "metrics": "/metrics"}
        for name, path in single.items():
            s, size = await cost([path])
            out[f"{name}_s"], out[f"{name}_bytes"] = round(s, 4), size
            print(f"{name:14} {s * 1000:8.1f} ms CPU  {size:>9} B", flush=True)
        old, old_bytes = await cost([single["status"], single["peers"], single["nat"]])
        new, new_bytes = await cost([single[k] for k in ("peers_summary", "nat_summary", "peers_page", "nat_peer")])
        out["new_views_s"] = round(new, 4)
        # the page now: one request a poll (/api/v1/page), the status as before
        out["page_poll_core_pct"] = round(100 * (out["page_poll_s"] + out["status_s"] / STATUS_EVERY) / POLL_S, 2)
        out["new_views_core_pct"] = round(100 * new / POLL_S, 2)
        new += out["status_s"] / STATUS_EVERY
        new_bytes += out["status_bytes"] // STATUS_EVERY
    out.update(old_cycle_s=round(old, 4), new_cycle_s=round(new, 4), old_cycle_bytes=old_bytes,
               new_cycle_bytes=new_bytes, old_core_pct=round(100 * old / POLL_S, 2),
               new_core_pct=round(100 * new / POLL_S, 2))
    return out


def inner(n: int, rounds: int) -> int:
    with tempfile.TemporaryDirectory(prefix="cw-page-poll-") as d:
        t = time.monotonic()
        cp = build(Path(d), n)
        print(f"{n} peers set up in {time.monotonic() - t:.1f} s", flush=True)
        try:
            result = {"peers": n, **asyncio.run(measure(cp, n, rounds))}
        finally:
            cp.views.close()
            cp.store.close()
    print(f"old page: {result['old_cycle_s'] * 1000:.0f} ms CPU per poll ({result['old_core_pct']} % of a core), "
          f"{result['old_cycle_bytes']} B; new: {result['new_cycle_s'] * 1000:.1f} ms "
          f"({result['new_core_pct']} %), {result['new_cycle_bytes']} B")
    print(json.dumps(result))
    return 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--peers", type=int, default=1000)
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--inner", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.inner:
        return inner(args.peers, args.rounds)
    ns = f"cwbpp{os.urandom(3).hex()}"
    subprocess.run(["ip", "netns", "add", ns], check=True)
    try:
        return subprocess.run(["ip", "netns", "exec", ns, sys.executable, os.path.abspath(__file__), "--inner",
                               "--peers", str(args.peers), "--rounds", str(args.rounds)], check=False).returncode
    finally:
        subprocess.run(["ip", "netns", "del", ns], check=False)


if __name__ == "__main__":
    sys.exit(main())
