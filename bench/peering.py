"""Time from `crosswire peer add` to the first successful pod-to-pod ping (median of 5).

Builds the namespace topology of tests/gateway/test_netns_gateways.py (two
gateways, same 10.244.0.0/16 + 10.96.0.0/12, wireguard-go data plane), then
five times: `crosswire peer add TOKEN` on a, ping b's pod through a's view
until it answers, `crosswire peer remove b`. Needs root.
CROSSWIRE_TEST_WG_IMPL=userspace runs it on crosswire-wg instead of wireguard-go.

Prints one line per round and a final JSON line: {"median_s": ..., "rounds": [...]}.
Target (issue 4): median under 1 s.
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT / "tests"), str(ROOT / "tests" / "gateway")]

from nsutil import namespaces  # noqa: E402
from test_netns_gateways import PODS, ping, two_gateways, view_of  # noqa: E402


def main() -> int:
    if os.geteuid() != 0:
        print("bench/peering.py needs root (network namespaces)", file=sys.stderr)
        return 1
    rounds: list[float] = []
    add_only: list[float] = []
    with tempfile.TemporaryDirectory() as tmp, namespaces() as n:
        os.chmod(tmp, 0o700)
        with two_gateways(n, Path(tmp)) as (a, b):
            for i in range(5):
                token = b.cli("token", "create", "--ttl", "5m").stdout.strip()
                t0 = time.monotonic()
                added = json.loads(a.cli("peer", "add", token, "--json").stdout)
                t_add = time.monotonic() - t0
                dst = view_of(PODS[1], added["our_views"])
                while not ping(a.pods[0], dst, timeout=1):
                    if time.monotonic() - t0 > 30:
                        raise SystemExit(f"round {i}: no ping within 30 s")
                dt = time.monotonic() - t0
                rounds.append(round(dt, 4))
                add_only.append(round(t_add, 4))
                print(f"round {i + 1}: peer add {t_add:.3f}s, first ping at {dt:.3f}s", flush=True)
                a.cli("peer", "remove", "b")
                b.wait_ready()
    print(json.dumps({"median_s": round(statistics.median(rounds), 4),
                      "median_peer_add_s": round(statistics.median(add_only), 4), "rounds": rounds}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
