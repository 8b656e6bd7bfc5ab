#!/usr/bin/env python3
"""Throughput, CPU and latency of crosswire-wg against wireguard-go (issues 3 and 19).

In namespaces it creates and removes, one run measures these pairs:
(a) ``wggo``: wireguard-go <-> wireguard-go (the ``wireguard-go`` on PATH, Debian's),
(b) ``crosswire``: crosswire-wg <-> crosswire-wg, (c) ``mixed``: crosswire-wg
(sender side) <-> wireguard-go, and, per ``--reference PATH`` (repeatable), a
pair of that wireguard-go build, named ``ref-VERSION``, and per ``--crosswire
NAME=PATH`` a pair of that crosswire-wg build (``crosswire-NAME``; before and
after a change in one run), and per ``--workers N`` the pairs ``mixed-wN``
and ``crosswire-wN`` with ``crosswire-wg --workers N``. ``--parallel P``
runs P iperf3 streams; ``--taskset CPUS`` pins the sending daemon (side a,
all its processes) to those CPUs. For each pair: iperf3 TCP
for ``--duration`` seconds (default 10) over the tunnel, the CPU seconds both
daemons used meanwhile (utime+stime from /proc, all threads) per GB received,
each daemon's CPU as % of one core over the run (``cores S%+R%``: a sender
near 100 % with one worker is what limits a single flow), and the average
ping RTT of 100 pings at 10 ms intervals. ``--repeat N`` runs N rounds, each
measuring every pair once in turn (alternating, so load drifts hit all
alike); medians are reported. Each line carries the 1-minute load average at
its start, since the machine is shared. A final JSON line holds, per pair,
mbps, cpu_s_per_gb, rtt_ms, sender_pct, receiver_pct, the ratios
crosswire/reference, and the load averages at start and end; a PNG bar chart
goes to ``--png`` (default bench/throughput.png next to this script).

Run as root from the repository: ``.venv/bin/python bench/throughput.py
[--reference /path/to/wireguard-go]``. The two namespaces are joined by a veth
pair; both daemons are started and configured exactly as in the interop tests
(tests/wg/io/wgpair.py).
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
from dataclasses import dataclass

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path[:0] = [os.path.join(REPO, "tests"), os.path.join(REPO, "tests", "wg", "io")]

from wgpair import CROSSWIRE_WG, Pair  # noqa: E402

# name -> (impl a, impl b); references are added per --reference
RUNS = (("wggo", "wggo", "wggo"), ("crosswire", "crosswire", "crosswire"),
        ("mixed", "crosswire", "wggo"))


@dataclass
class Sample:
    mbps: float
    cpu_s_per_gb: float
    rtt_ms: float
    load1: float
    # each daemon's CPU over the iperf3 run's wall time, % of one core: a side near
    # 100 % with one worker is the bottleneck, whatever the other cores do
    sender_pct: float = 0.0
    receiver_pct: float = 0.0

    @property
    def sender_share(self) -> float:
        """Of cpu_s_per_gb, the sending daemon's part."""
        both = self.sender_pct + self.receiver_pct
        return self.sender_pct / both if both else 0.0


def iperf(pair: Pair, seconds: float, parallel: int = 1) -> tuple[float, float, float]:
    """(Mbit/s, bytes, seconds) received by b from a over the tunnel (iperf3 TCP,
    ``parallel`` streams)."""
    server = subprocess.Popen(["ip", "netns", "exec", pair.b.ns, "iperf3", "-s", "-1", "-B",
                               pair.b.inner4], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        time.sleep(0.3)
        out = pair.a.sh("iperf3", "-c", pair.b.inner4, "-t", str(seconds), "-P", str(parallel),
                        "-J", timeout=seconds + 30).stdout
        received = json.loads(out)["end"]["sum_received"]
        return (float(received["bits_per_second"]) / 1e6, float(received["bytes"]),
                float(received["seconds"]))
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


CLK_TCK = os.sysconf("SC_CLK_TCK")


def daemons_cpu_s(pair: Pair) -> tuple[float, float]:
    """utime+stime of each side's daemon processes (the process line sums all its threads)."""
    out = []
    for side in pair.sides:
        total = 0
        pids = side.pids()
        if not pids:
            raise RuntimeError(f"no daemon for {side.iface} in {side.ns}")
        for pid in pids:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])  # utime, stime (fields 14, 15)
        out.append(total / CLK_TCK)
    return out[0], out[1]


def measure(impl_a: str, impl_b: str, seconds: float, workdir: str, binary: str,
            crosswire_args: list[str], parallel: int = 1, taskset: str = "") -> Sample:
    load1 = os.getloadavg()[0]
    if impl_a == "crosswire" and impl_b == "crosswire":
        pair = Pair(impl_a, impl_b, workdir, crosswire_bin=binary)
    else:
        pair = Pair(impl_a, impl_b, workdir, wggo_bin=binary)
    for side in pair.sides:
        side.extra_args = list(crosswire_args)
    try:
        pair.up(endpoint_on="both")
        if taskset:
            # The sender's daemon (all its processes and threads) on these CPUs only.
            for pid in pair.a.pids():
                subprocess.run(["taskset", "-a", "-p", "-c", taskset, str(pid)], check=True,
                               capture_output=True)
        pair.ping(pair.a, pair.b.inner4, count=2)  # handshake done before timing
        rtt = ping_avg_ms(pair)
        a0, b0 = daemons_cpu_s(pair)
        mbps, nbytes, wall = iperf(pair, seconds, parallel)
        a1, b1 = daemons_cpu_s(pair)
        cpu = a1 - a0 + b1 - b0
        return Sample(mbps, cpu / (nbytes / 1e9) if nbytes else float("nan"), rtt, load1,
                      100 * (a1 - a0) / wall, 100 * (b1 - b0) / wall)
    finally:
        pair.close()


def reference_name(path: str) -> str:
    out = subprocess.run([path, "--version"], capture_output=True, text=True, timeout=10).stdout
    m = re.search(r"v?(\d+\.\d+\.\d+)", out)
    return f"ref-{m.group(1)}" if m else f"ref-{os.path.basename(os.path.dirname(path))}"


def chart(results: dict[str, Sample], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(results)
    fig, axes = plt.subplots(1, 3, figsize=(14, 4))
    for ax, attr, label, fmt in ((axes[0], "mbps", "iperf3 TCP throughput (Mbit/s)", "{:.0f}"),
                                 (axes[1], "cpu_s_per_gb", "CPU-s per GB (both daemons)", "{:.1f}"),
                                 (axes[2], "rtt_ms", "ping RTT avg of 100 (ms)", "{:.3f}")):
        values = [getattr(results[n], attr) for n in names]
        ax.bar(names, values, color=["#2a7ab9" if n == "crosswire" else "#888888" for n in names])
        ax.set_ylabel(label)
        for i, v in enumerate(values):
            ax.annotate(fmt.format(v), (i, v), ha="center", va="bottom")
        ax.tick_params(axis="x", labelsize=8, rotation=20)
    fig.suptitle("crosswire-wg vs wireguard-go (veth between two namespaces; wggo = Debian's)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--duration", type=float, default=10.0, help="iperf3 seconds per pair")
    ap.add_argument("--png", default=os.path.join(HERE, "throughput.png"))
    ap.add_argument("--reference", action="append", default=[], metavar="PATH",
                    help="also measure this wireguard-go build (repeatable)")
    ap.add_argument("--crosswire", action="append", default=[], metavar="NAME=PATH",
                    help="also measure this crosswire-wg build as pair crosswire-NAME (repeatable), "
                         "e.g. a checkout of the previous commit: before/after in one run")
    ap.add_argument("--crosswire-args", default="", metavar="ARGS",
                    help="extra crosswire-wg options for its pairs, one string (e.g. '--tso')")
    ap.add_argument("--workers", action="append", type=int, default=[], metavar="N",
                    help="also measure crosswire-wg --workers N: pairs mixed-wN (it sends to "
                         "wireguard-go) and crosswire-wN (both ends) (repeatable)")
    ap.add_argument("--parallel", type=int, default=1, metavar="P",
                    help="iperf3 -P: parallel TCP streams (a multi-queue TUN spreads flows)")
    ap.add_argument("--taskset", default="", metavar="CPUS",
                    help="pin the sending daemon (side a) to these CPUs (taskset -c list)")
    ap.add_argument("--only", action="append",
                    help="measure only these pairs (repeatable: wggo, crosswire, mixed, ref-VERSION); "
                         "the JSON then lacks the others")
    ap.add_argument("--repeat", type=int, default=1,
                    help="rounds; each measures every pair once, and medians are reported "
                         "(on a shared machine one run is noisy)")
    args = ap.parse_args()
    if os.geteuid() != 0:
        print("bench/throughput.py needs root (network namespaces)", file=sys.stderr)
        return 1
    runs: list[tuple[str, str, str, str, list[str]]] = [
        (name, a, b, CROSSWIRE_WG if name == "crosswire" else "wireguard-go", [])
        for name, a, b in RUNS]
    for spec in args.crosswire:
        name, _, path = spec.rpartition("=")
        path = os.path.abspath(path)
        if "crosswire-wg" not in path or not os.access(path, os.X_OK):
            print(f"--crosswire {spec}: not an executable whose path contains 'crosswire-wg'",
                  file=sys.stderr)
            return 1
        runs.insert(2, (f"crosswire-{name or 'other'}", "crosswire", "crosswire", path, []))
    for n in args.workers:
        runs.append((f"mixed-w{n}", "crosswire", "wggo", "wireguard-go", ["--workers", str(n)]))
        runs.append((f"crosswire-w{n}", "crosswire", "crosswire", CROSSWIRE_WG,
                     ["--workers", str(n)]))
    for path in args.reference:
        path = os.path.abspath(path)
        if "wireguard-go" not in path or not os.access(path, os.X_OK):
            print(f"--reference {path}: not an executable whose path contains 'wireguard-go'",
                  file=sys.stderr)
            return 1
        runs.append((reference_name(path), "wggo", "wggo", path, []))
    if args.only:
        runs = [r for r in runs if r[0] in args.only]
    load_start = os.getloadavg()
    samples: dict[str, list[Sample]] = {}
    with tempfile.TemporaryDirectory(prefix="cwbench") as workdir:
        os.chmod(workdir, 0o700)
        for _ in range(max(1, args.repeat)):
            for name, impl_a, impl_b, binary, extra in runs:
                smp = measure(impl_a, impl_b, args.duration, workdir, binary,
                              args.crosswire_args.split() + extra, args.parallel, args.taskset)
                samples.setdefault(name, []).append(smp)
                print(f"{name:16s} {impl_a}->{impl_b}: {smp.mbps:8.1f} Mbit/s  "
                      f"{smp.cpu_s_per_gb:6.2f} CPU-s/GB ({100 * smp.sender_share:.0f}% sender)  "
                      f"cores {smp.sender_pct:.0f}%+{smp.receiver_pct:.0f}%  rtt {smp.rtt_ms:.3f} ms  "
                      f"load {smp.load1:.2f}", flush=True)
    load_end = os.getloadavg()
    results = {name: Sample(*(statistics.median(getattr(x, f) for x in v)
                              for f in ("mbps", "cpu_s_per_gb", "rtt_ms", "load1",
                                        "sender_pct", "receiver_pct")))
               for name, v in samples.items()}
    chart(results, args.png)
    summary: dict[str, object] = {
        name: {"mbps": round(r.mbps, 1), "cpu_s_per_gb": round(r.cpu_s_per_gb, 2),
               "rtt_ms": round(r.rtt_ms, 3), "sender_pct": round(r.sender_pct),
               "receiver_pct": round(r.receiver_pct)} for name, r in results.items()}
    if "crosswire" in results:
        cw = results["crosswire"]
        for name, r in results.items():
            if (name.startswith("ref-") or name == "wggo") and r.mbps and r.cpu_s_per_gb:
                summary[f"crosswire_vs_{name}"] = {"mbps": round(cw.mbps / r.mbps, 3),
                                                   "cpu_per_gb": round(cw.cpu_s_per_gb / r.cpu_s_per_gb, 3)}
    summary["rounds"] = max(1, args.repeat)
    summary["duration_s"] = args.duration
    summary["parallel"] = args.parallel
    summary["taskset"] = args.taskset or "all"
    summary["loadavg_start"] = [round(x, 2) for x in load_start]
    summary["loadavg_end"] = [round(x, 2) for x in load_end]
    print(json.dumps(summary), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
