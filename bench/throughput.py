#!/usr/bin/env python3
"""Throughput and latency of crosswire-wg against wireguard-go (issue 3, "Benchmark").

In namespaces it creates and removes, one run measures three pairs:
(a) wireguard-go <-> wireguard-go, (b) crosswire-wg <-> crosswire-wg,
(c) crosswire-wg (sender side) <-> wireguard-go. For each pair: iperf3 TCP for
``--duration`` seconds (default 10) over the tunnel, and the average ping RTT
of 100 pings at 10 ms intervals (``--repeat N``: N interleaved rounds, medians
reported). Prints one line per measurement, then a final JSON
line with wggo_mbps, crosswire_mbps, mixed_mbps, ratio (b/a), wggo_rtt_ms and
crosswire_rtt_ms, and writes a PNG bar chart (``--png``, default
bench/throughput.png next to this script).

Run as root from the repository: ``.venv/bin/python bench/throughput.py``.
The two namespaces are joined by a veth pair; both daemons are started and
configured exactly as in the interop tests (tests/wg/io/wgpair.py).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path[:0] = [os.path.join(REPO, "tests"), os.path.join(REPO, "tests", "wg", "io")]

from wgpair import Pair  # noqa: E402

RUNS = (("wggo", "wggo", "wggo"), ("crosswire", "crosswire", "crosswire"),
        ("mixed", "crosswire", "wggo"))


def iperf(pair: Pair, seconds: float) -> float:
    """Mbit/s received by b from a over the tunnel (iperf3 TCP)."""
    server = subprocess.Popen(["ip", "netns", "exec", pair.b.ns, "iperf3", "-s", "-1", "-B",
                               pair.b.inner4], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        time.sleep(0.3)
        out = pair.a.sh("iperf3", "-c", pair.b.inner4, "-t", str(seconds), "-J",
                        timeout=seconds + 30).stdout
        result = json.loads(out)
        return float(result["end"]["sum_received"]["bits_per_second"]) / 1e6
    finally:
        if server.poll() is None:
            server.kill()
        server.wait()


def ping_avg_ms(pair: Pair, count: int = 100) -> float:
    out = pair.a.sh("ping", "-q", "-c", str(count), "-i", "0.01", "-W", "1", pair.b.inner4,
                    timeout=60).stdout
    m = re.search(r"= [\d.]+/([\d.]+)/", out)
    if not m:
        raise RuntimeError(f"cannot parse ping output: {out}")
    return float(m.group(1))


def measure(impl_a: str, impl_b: str, seconds: float, workdir: str) -> tuple[float, float]:
    pair = Pair(impl_a, impl_b, workdir)
    try:
        pair.up(endpoint_on="both")
        pair.ping(pair.a, pair.b.inner4, count=2)  # handshake done before timing
        rtt = ping_avg_ms(pair)
        mbps = iperf(pair, seconds)
        return mbps, rtt
    finally:
        pair.close()


def chart(results: dict[str, tuple[float, float]], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(results)
    labels = {"wggo": "wireguard-go\n<-> wireguard-go", "crosswire": "crosswire-wg\n<-> crosswire-wg",
              "mixed": "crosswire-wg\n<-> wireguard-go"}
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    colors = ["#888888", "#2a7ab9", "#6aa84f"][: len(names)]
    ax1.bar([labels[n] for n in names], [results[n][0] for n in names], color=colors)
    ax1.set_ylabel("iperf3 TCP throughput (Mbit/s)")
    ax2.bar([labels[n] for n in names], [results[n][1] for n in names], color=colors)
    ax2.set_ylabel("ping RTT avg of 100 (ms)")
    for ax, idx, fmt in ((ax1, 0, "{:.0f}"), (ax2, 1, "{:.3f}")):
        for i, n in enumerate(names):
            ax.annotate(fmt.format(results[n][idx]), (i, results[n][idx]), ha="center", va="bottom")
        ax.tick_params(axis="x", labelsize=8)
    fig.suptitle("crosswire-wg vs wireguard-go (veth between two namespaces)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--duration", type=float, default=10.0, help="iperf3 seconds per pair")
    ap.add_argument("--png", default=os.path.join(HERE, "throughput.png"))
    ap.add_argument("--only", choices=[r[0] for r in RUNS], action="append",
                    help="measure only these pairs (repeatable); the JSON then lacks the others")
    ap.add_argument("--repeat", type=int, default=1,
                    help="measure the pairs this many times, interleaved, and report medians "
                         "(on a shared machine one run is noisy)")
    args = ap.parse_args()
    if os.geteuid() != 0:
        print("bench/throughput.py needs root (network namespaces)", file=sys.stderr)
        return 1
    samples: dict[str, list[tuple[float, float]]] = {}
    with tempfile.TemporaryDirectory(prefix="cwbench") as workdir:
        os.chmod(workdir, 0o700)
        for _ in range(max(1, args.repeat)):
            for name, impl_a, impl_b in RUNS:
                if args.only and name not in args.only:
                    continue
                mbps, rtt = measure(impl_a, impl_b, args.duration, workdir)
                samples.setdefault(name, []).append((mbps, rtt))
                print(f"{name:10s} {impl_a}->{impl_b}: {mbps:8.1f} Mbit/s  rtt {rtt:.3f} ms",
                      flush=True)
    results = {name: (statistics.median(m for m, _ in v), statistics.median(r for _, r in v))
               for name, v in samples.items()}
    chart(results, args.png)
    summary: dict[str, float | None] = {
        "wggo_mbps": _r(results, "wggo", 0), "crosswire_mbps": _r(results, "crosswire", 0),
        "mixed_mbps": _r(results, "mixed", 0), "ratio": None,
        "wggo_rtt_ms": _r(results, "wggo", 1), "crosswire_rtt_ms": _r(results, "crosswire", 1),
    }
    if summary["wggo_mbps"] and summary["crosswire_mbps"] is not None:
        summary["ratio"] = round(summary["crosswire_mbps"] / summary["wggo_mbps"], 3)
    print(json.dumps(summary), flush=True)
    return 0


def _r(results: dict[str, tuple[float, float]], name: str, idx: int) -> float | None:
    return round(results[name][idx], 3 if idx else 1) if name in results else None


if __name__ == "__main__":
    sys.exit(main())
