"""Concurrent iperf3 pairs: the measuring loop the scale benches share.

A path with one peer (A) and a path with many (B) run iperf3 at the same time,
so both share whatever else loads the box; their ratio B/A is the figure, and a
control round (the same table on both paths) shows the box's noise.
"""

from __future__ import annotations

import json
import statistics
import subprocess
from collections.abc import Sequence


def measure(clients: Sequence[Sequence[str]], rounds: int, seconds: int,
            label: str) -> tuple[list[float], list[float], list[float]]:
    """``rounds`` rounds of the two iperf3 client commands (A, B) at once: per round
    each one's Mbit/s and B/A."""
    a_runs, b_runs, ratios = [], [], []
    for _ in range(rounds):
        procs = [subprocess.Popen([*argv, "-t", str(seconds), "-J"], stdout=subprocess.PIPE, text=True)
                 for argv in clients]
        got = []
        for proc in procs:
            out, _ = proc.communicate(timeout=seconds + 30)
            got.append(float(json.loads(out)["end"]["sum_received"]["bits_per_second"]) / 1e6)
        a_runs.append(got[0])
        b_runs.append(got[1])
        ratios.append(got[1] / got[0])
        print(f"{label}: A {got[0]:9.1f} Mbit/s | B {got[1]:9.1f} Mbit/s | B/A {ratios[-1]:.3f}", flush=True)
    return a_runs, b_runs, ratios


def figures(runs_one: list[float], runs_many: list[float], ratios: list[float],
            control: list[float]) -> dict[str, object]:
    """The result fields both benches print: medians of the concurrent pairs and the
    control's ratio (the same table on both paths: the noise)."""
    return {"mbps_1": round(statistics.median(runs_one), 1), "mbps_1000": round(statistics.median(runs_many), 1),
            "ratio": round(statistics.median(ratios), 3),
            "ratio_range": [round(min(ratios), 3), round(max(ratios), 3)],
            "control_ratio": round(statistics.median(control), 3),
            "control_range": [round(min(control), 3), round(max(control), 3)]}
