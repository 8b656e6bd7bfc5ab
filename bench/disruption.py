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

While each event lasts, the peer state gateway a reports (GET /api/v1/peers,
every 100 ms) is sampled: the samples per state, and any sample saying
"connected" while every probe of the second before it was lost (flagged).

Targets (printed, not asserted): 0 ms gap for a, b, e, f, g, h, j, k; <= 100 ms
for c, d (issue 20); <= 500 ms for i; the TCP stream survives all of them.
(k) moves gateway a's data plane into a "container" of its own first
(`crosswire dataplane run` beside a daemon with wireguard.supervise: false, the
layout deploy/ ships) and then restarts the gateway container.

    bench/disruption.py [--previous REV] [EVENT_LABEL ...]     # e.g. "a c e"; default: all

--previous REV: (h) upgrades for real from that commit of this repository
(`git archive`, run with this venv's dependencies): gateway a starts on it
from a fresh state directory (that release writes the state, peers with b and
starts its data plane), (h) runs first and starts the current daemon on that
state and data plane; the other events follow on the current code. The
release must be able to peer with the current b: c51c3b7 cannot (it predates
TLS peering; b answers 426): tests/gateway/test_netns_upgrade.py upgrades
from it with both gateways on it. Without it (h) is emulated (same code both
sides).

Start-up times count here ((d) is two Python starts): run it with the Python of
a regular install, as the image has it (``python3 -m venv V && V/bin/pip install
. pytest && V/bin/python bench/disruption.py``). An editable install (the dev
venv of netns-lab/setup.sh) adds its import hook to every Python start, ~10 ms
each; the JSON line says which install ran (``install``).

Prints one line per event and a final JSON line.
"""

from __future__ import annotations

import io
import json
import os
import platform
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT / "tests"), str(ROOT / "tests" / "gateway")]

from disruptionevents import EVENTS, Ctx, disruption_prepare, on_previous, run_event  # noqa: E402
from disruptionkit import Traffic  # noqa: E402
from gwharness import BIN, POD_OPERATOR, PODS, Gw, entry_shim, two_gateways, view_of, wait_ping  # noqa: E402
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
            + (f"; a said of b: {_states(r)}" if "health_states" in r else "")
            + (f" [{r['notes']}]" if r.get("notes") else ""))


def export_tree(rev: str, into: Path) -> Path:
    """The source tree of commit ``rev`` of this repository, extracted into ``into``."""
    data = subprocess.run(["git", "-C", str(ROOT), "archive", "--format=tar", rev], capture_output=True,
                          check=True, timeout=60).stdout
    into.mkdir()
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        tar.extractall(into, filter="data")
    return entry_shim(into)


def _states(r: dict[str, object]) -> str:
    states = r["health_states"]
    assert isinstance(states, dict)
    text = " ".join(f"{k} {v}" for k, v in sorted(states.items(), key=lambda kv: -kv[1]))
    lies = r.get("connected_while_failing")
    return text + (f", CONNECTED WHILE PROBES FAILED x{lies}" if lies else ", never connected while probes failed")


def _install() -> str:
    """'editable' (a dev venv: an import hook in every Python start) or 'regular'."""
    from importlib import metadata

    try:
        direct = metadata.distribution("crosswire").read_text("direct_url.json") or "{}"
    except metadata.PackageNotFoundError:
        return "none"
    return "editable" if json.loads(direct).get("dir_info", {}).get("editable") else "regular"


def main(argv: list[str]) -> int:
    if os.geteuid() != 0:
        print("bench/disruption.py needs root (network namespaces)", file=sys.stderr)
        return 1
    impl = os.environ.get("CROSSWIRE_TEST_WG_IMPL", "userspace")
    previous_rev = ""
    if argv[:1] == ["--previous"]:
        if len(argv) < 2:
            print("--previous needs a commit", file=sys.stderr)
            return 2
        previous_rev, argv = argv[1], argv[2:]
    wanted = set(argv) or {label for label, *_ in EVENTS}
    results: dict[str, dict[str, object]] = {}
    with tempfile.TemporaryDirectory() as tmp_s, namespaces() as n:
        tmp = Path(tmp_s)
        os.chmod(tmp, 0o700)
        previous, previous_config = None, ""
        if previous_rev:
            previous = export_tree(previous_rev, tmp / "previous")
        prepare_all = disruption_prepare(impl)

        def prepare(a: Gw, b: Gw) -> None:
            nonlocal previous_config
            prepare_all(a, b)
            if previous is not None:  # a starts on the older release: it writes the state (h) upgrades
                previous_config = on_previous(a, previous)

        with two_gateways(n, tmp, prepare=prepare) as (a, b):
            token = b.cli("token", "create", "--ttl", "5m").stdout.strip()
            api = ("--api", a.api) if a.api else ()
            added = json.loads(sh(*a.wrap, str(BIN / "crosswire"), "peer", "add", "-", "--json", *api, "--config",
                                  str(a.config), ns=a.ns, input=token).stdout)
            dst = view_of(PODS[1], added["our_views"])
            wait_ping(a.pods[0], dst, timeout=20)
            traffic = Traffic(a.pods[0], b.pods[1], dst, tmp, health=(a.ns, POD_OPERATOR, "b"))
            traffic.start()
            try:
                ctx = Ctx(a=a, b=b, n=n, tmp=tmp, impl=impl, previous=previous, previous_rev=previous_rev,
                          previous_config=previous_config)
                # A real upgrade first: a runs the older release until (h) upgrades it.
                events = sorted(EVENTS, key=lambda e: e[0] != "h") if previous is not None else EVENTS
                for label, key, target, driver in events:
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
    print(json.dumps({"impl": impl, "install": _install(), "previous": previous_rev or None, "date": time.strftime("%Y-%m-%d", time.gmtime()),
                      "machine": f"{platform.machine()} {os.cpu_count()} cores", "loadavg_1m": round(load, 2),
                      "events": results}))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
