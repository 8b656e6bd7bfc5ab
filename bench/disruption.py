"""Day-2 disruption budget (issue 12): what each operational event costs traffic.

Builds the two-gateway namespace harness of tests/gateway (real `crosswire
gateway run` daemons, peered through the CLI, crosswire-wg as the data plane
unless CROSSWIRE_TEST_WG_IMPL says otherwise), then runs a sequenced UDP probe
(200/s, echoed) and a TCP stream (1 KiB messages at 100/s, echoed and checked)
from a pod of gateway a to a pod of gateway b, and runs each event of
tests/gateway/disruptionevents.py between two quiet periods. Per event: the
longest gap (send time without an answered probe), the longest stall (time
without any answer arriving), lost and duplicated probes, whether the TCP
stream survived, and its longest stall. Needs root; all traffic stays inside
the namespaces it creates, which it removes.

Targets (printed, not asserted): 0 ms gap for a, b, e, f, g, h, j; <= 500 ms
for c, d, i; the TCP stream survives all of them.

    bench/disruption.py [EVENT_LABEL ...]     # e.g. "a c e"; default: all

Prints one line per event and a final JSON line.
"""

from __future__ import annotations

import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT / "tests"), str(ROOT / "tests" / "gateway")]

from disruptionevents import EVENTS, Ctx, run_event, use_impl  # noqa: E402
from disruptionkit import Traffic  # noqa: E402
from gwharness import BIN, PODS, two_gateways, view_of, wait_ping  # noqa: E402
from nsutil import namespaces, sh  # noqa: E402


def line(label: str, key: str, target: int, r: dict[str, object]) -> str:
    if not r.get("measured"):
        return f"({label}) {key:<20} not measured: {r.get('why') or r.get('error')}"
    gap = r["gap_ms"]
    ok = "meets" if isinstance(gap, float | int) and gap <= target and r["tcp_alive"] else "MISSES"
    return (f"({label}) {key:<20} gap {gap} ms (target {target}) stall {r['stall_ms']} ms "
            f"lost {r['lost']}/{r['sent']} dup {r['dup']} rtt<= {r['max_rtt_ms']} ms "
            f"tcp {'survived' if r['tcp_alive'] else 'BROKE ' + str(r['tcp_error'])} "
            f"(stall {r['tcp_stall_ms']} ms) event {r['event_s']}s: {ok} target"
            + (f" [{r['notes']}]" if r.get("notes") else ""))


def main(argv: list[str]) -> int:
    if os.geteuid() != 0:
        print("bench/disruption.py needs root (network namespaces)", file=sys.stderr)
        return 1
    impl = os.environ.get("CROSSWIRE_TEST_WG_IMPL", "userspace")
    wanted = set(argv) or {label for label, *_ in EVENTS}
    results: dict[str, dict[str, object]] = {}
    with tempfile.TemporaryDirectory() as tmp_s, namespaces() as n:
        tmp = Path(tmp_s)
        os.chmod(tmp, 0o700)
        with two_gateways(n, tmp, prepare=use_impl(impl)) as (a, b):
            token = b.cli("token", "create", "--ttl", "5m").stdout.strip()
            added = json.loads(sh(str(BIN / "crosswire"), "peer", "add", "-", "--json", "--config",
                                  str(a.config), ns=a.ns, input=token).stdout)
            dst = view_of(PODS[1], added["our_views"])
            wait_ping(a.pods[0], dst, timeout=20)
            traffic = Traffic(a.pods[0], b.pods[1], dst, tmp)
            traffic.start()
            try:
                ctx = Ctx(a=a, b=b, n=n, tmp=tmp, impl=impl)
                for label, key, target, driver in EVENTS:
                    if label not in wanted:
                        continue
                    try:
                        r = run_event(ctx, traffic, driver)
                    except Exception as e:  # report it and go on: the next event may still run
                        r = {"measured": False, "error": f"{type(e).__name__}: {str(e)[-700:]}"}
                    r["target_ms"] = target
                    results[f"{label}_{key}"] = r
                    print(line(label, key, target, r), flush=True)
            finally:
                traffic.stop()
    load = os.getloadavg()[0]
    print(json.dumps({"impl": impl, "date": time.strftime("%Y-%m-%d", time.gmtime()),
                      "machine": f"{platform.machine()} {os.cpu_count()} cores", "loadavg_1m": round(load, 2),
                      "events": results}))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
