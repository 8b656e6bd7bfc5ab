"""Fleet scale (issue 18): one real gateway with 1,000 peers and 1,000 watching agents.

Real: one ``crosswire gateway run`` (a sparse hub, ``ipam.views: sparse``, one
export) in a network namespace this bench creates, with its default data
plane (crosswire-wg and its standby), nftables, config and state_dir in a
temp dir; its TLS peering listener, its operator listener, the CLI.

Synthetic (bench/fleetpeers.py): the peers, all in this process, in a second
namespace joined to the hub's by a veth. Each redeems the hub's reusable
token over pinned TLS with the project's own peering client code, tells the
hub its views, answers the hub's channel messages (one HTTP listener, a URL
path per peer) and is a real WireGuard peer (fabric/wg's sans-IO Device on a
UDP socket of its own) that hand-shakes with the hub's crosswire-wg and
echoes the hub's health probes through the tunnel. Behind a synthetic peer
there is no cluster: no pods, no NAT of its own (the probe echo is the packet
its conntrack would send), and all peers use the same ranges and the same
views of the hub. The watching agents are long-polls of ``GET
/api/v1/routes?after=V&wait=S`` (the route watch contract) from 40 source
addresses; the page poll cost is a real headless Chromium with the operator
page open (tests/gateway/pagebrowser.py).

Prints progress to stderr and one JSON line to stdout:

- ``idle``: CPU (% of one core) of the gateway daemon (also without its drift checks:
  ``daemon_less_verify_pct``) and of crosswire-wg over ``--idle`` seconds with every
  peer connected and nothing changing, and RSS;
- ``status_s``: ``crosswire status`` wall time (median of 3);
- ``peer_add``: one more peer at N: ``join_s`` (join + views acknowledged: the
  hub programmed it), ``first_probe_s`` (its first health probe answered, from
  the start), ``connected_s`` (the hub's /api/v1/peers says ``connected``);
- ``route_change_to_last_agent_s``: from that peer's views message (the
  gateway then programs it) until the last watcher holds the new route version (null when
  the gateway has no route watch: no ``version`` in /api/v1/routes);
- ``watchers_cpu_pct``: the daemon over 10 s with every watcher's long-poll held
  (``watchers_less_verify_pct``: without its drift checks);
- ``api``: size (bytes), wall time and the gateway's CPU for /api/v1/nat and
  /api/v1/peers, full and ``?summary=true`` (null when a summary is not served);
- ``page_cpu_pct``: gateway daemon CPU with the page open minus with it closed: four
  pairs of alternating 30 s windows, each begun 5 s after the switch, each without the
  daemon's drift checks (status's ``reconcile.verify_cpu_s``; one is 0.3-0.5 s of CPU at
  1,000 peers, 1-1.5 points of a window it falls into; ``page_windows_less_verify`` says
  whether they were left out); the median of the open windows less that of the closed
  ones (every window in ``page_open_pct`` / ``page_closed_pct``; ``page_wg_cpu_pct`` the
  same for crosswire-wg);
  ``page_load_ms``: the daemon's CPU over the 5 s after opening the page (its load and first
  polls); ``daemon_rss_after_page_mb``;
- ``page_poll``: the page's polls as page.js makes them (``/api/v1/page`` with a page of
  50 rows and a selected peer every 2 s; the status, exports and imports when page.js
  would ask: ``asked`` counts each path), each poll bracketed by the daemon's and
  crosswire-wg's CPU time (schedstat, ns): ``daemon_ms`` and ``wg_ms`` per poll (median
  and mean of ``polls``) and ``daemon_pct`` = median / period (a poll that overlaps the
  daemon's own periodic work, a table verify, counts that work too, which lifts the mean). The windows
  above measure the whole page but are decided by the daemon's own periodic work (a table
  verify is ~1 s of CPU); the brackets hold only the poll's own work.

Run as root from the venv: ``.venv/bin/python bench/fleet.py [--peers 1000]``.
Ctrl-C or a failure removes the namespaces and the processes.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import statistics
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests" / "gateway"))

from fleethub import OPERATOR, PEERS_IP, Hub, hub, in_namespace
from fleetpeers import Fleet
from nsutil import namespaces

TICK = os.sysconf("SC_CLK_TCK")
WATCH_SOURCES = 40


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK  # utime + stime


def run_ns(pid: int) -> int:
    """Nanoseconds on a CPU of every thread of ``pid`` (schedstat: exact, where the
    stat file's utime/stime count 10 ms ticks)."""
    total = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(OSError, ValueError, IndexError):
            total += int((task / "schedstat").read_text().split()[0])
    return total


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return round(int(line.split()[1]) / 1024, 1)
    return 0.0


def get(path: str, timeout: float = 120) -> tuple[int, bytes, float]:
    t0 = time.monotonic()
    try:
        with urllib.request.urlopen(OPERATOR + path, timeout=timeout) as r:
            return r.status, r.read(), time.monotonic() - t0
    except urllib.error.HTTPError as e:
        return e.code, e.read(), time.monotonic() - t0


def verify_cpu_s() -> float | None:
    """The daemon's drift checks' CPU seconds so far (status's ``reconcile.verify_cpu_s``;
    None from a gateway without it)."""
    code, body, _ = get("/api/v1/status")
    v = json.loads(body).get("reconcile", {}).get("verify_cpu_s") if code == 200 else None
    return None if v is None else float(v)


def measure_cpu(h: Hub, seconds: float) -> dict[str, float]:
    """% of a core of each process over ``seconds``; ``daemon_less_verify``: the daemon's
    without its drift checks (one at 1,000 peers is 0.3-0.5 s of CPU: whether one falls
    into a 30 s window moves it by 1-1.5 points)."""
    pids = h.pids()
    v0 = verify_cpu_s()
    before = {k: cpu_s(p) for k, p in pids.items()}
    t0 = time.monotonic()
    time.sleep(seconds)
    # read before the CPU: a status request can make a drift check itself (then it is in both)
    v1 = verify_cpu_s()
    dt = time.monotonic() - t0
    out = {k: round(100 * (cpu_s(p) - before[k]) / dt, 2) for k, p in pids.items()}
    if v0 is not None and v1 is not None and "daemon" in out:
        out["daemon_less_verify"] = round(out["daemon"] - 100 * (v1 - v0) / dt, 2)
    return out


def api_cost(h: Hub, path: str) -> dict[str, Any] | None:
    pid = h.pids()["daemon"]
    c0 = cpu_s(pid)
    status, body, wall = get(path)
    cpu = cpu_s(pid) - c0
    if status != 200:
        return None
    try:
        parsed = json.loads(body)
    except ValueError:
        return None
    if "summary=true" in path and isinstance(parsed, list):
        return None  # the parameter is ignored: no summary here
    return {"bytes": len(body), "wall_s": round(wall, 3), "cpu_s": round(cpu, 3)}


def peer_states() -> dict[str, int]:
    _, body, _ = get("/api/v1/peers")
    out: dict[str, int] = {}
    data = json.loads(body)
    for p in data if isinstance(data, list) else data.get("peers", []):
        out[p["state"]] = out.get(p["state"], 0) + 1
    return out


class Watchers:
    """Long-polls of /api/v1/routes (the route watch contract), from many source addresses."""

    def __init__(self, count: int) -> None:
        self.count = count
        self.versions: list[str | None] = [None] * count
        self.seen_at: list[float] = [0.0] * count
        self.errors = 0
        self.tasks: list[asyncio.Task[None]] = []

    async def start(self, version: str) -> None:
        loop = asyncio.get_running_loop()
        for i in range(self.count):
            self.versions[i] = version
            self.tasks.append(loop.create_task(self._poll(i, f"198.18.1.{i % WATCH_SOURCES + 1}")))

    async def _poll(self, i: int, source: str) -> None:
        host, port = OPERATOR.split("//")[1].split(":")
        while True:
            try:
                reader, writer = await asyncio.open_connection(host, int(port), local_addr=(source, 0))
                try:
                    while True:
                        writer.write(f"GET /api/v1/routes?after={self.versions[i]}&wait=55 HTTP/1.1\r\n"
                                     f"Host: {host}\r\n\r\n".encode())
                        head = await reader.readuntil(b"\r\n\r\n")
                        length = next(int(x.split(b":")[1]) for x in head.split(b"\r\n")
                                      if x.lower().startswith(b"content-length:"))
                        body = json.loads(await reader.readexactly(length))
                        if not head.startswith(b"HTTP/1.1 200"):
                            self.errors += 1
                            await asyncio.sleep(1)
                            continue
                        if body.get("version") != self.versions[i]:
                            self.versions[i] = body.get("version")
                            self.seen_at[i] = time.monotonic()
                finally:
                    writer.close()
            except (OSError, asyncio.IncompleteReadError, ValueError, StopIteration):
                self.errors += 1
                await asyncio.sleep(1)

    async def stop(self) -> None:
        for t in self.tasks:
            t.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)


async def join_all(fleet: Fleet, token: str, n: int, parallel: int) -> None:
    sem = asyncio.Semaphore(parallel)
    done = 0
    t0 = time.monotonic()

    async def one(i: int) -> None:
        nonlocal done
        async with sem:
            p = await fleet.add(f"f{i:04d}")
            await p.join(token, attempts=5)
            done += 1
            if done % 50 == 0 or done == n:
                log(f"{done}/{n} peers joined ({time.monotonic() - t0:.0f}s)")

    await asyncio.gather(*(one(i) for i in range(n)))


async def fleet_run(h: Hub, args: argparse.Namespace, token: str) -> dict[str, Any]:
    fleet = Fleet(PEERS_IP, 9000, 20000)
    await fleet.start()
    result: dict[str, Any] = {"peers": args.peers}
    watchers: Watchers | None = None
    try:
        t0 = time.monotonic()
        await join_all(fleet, token, args.peers, args.parallel)
        result["join_all_s"] = round(time.monotonic() - t0, 1)
        deadline = time.monotonic() + 600
        while True:
            states = await asyncio.to_thread(peer_states)
            log(f"hub says: {states}")
            if states.get("connected", 0) == args.peers or time.monotonic() > deadline:
                break
            await asyncio.sleep(5)
        result["states"] = states
        log(f"settling {args.settle:.0f}s, then idle for {args.idle:.0f}s")
        await asyncio.sleep(args.settle)
        if args.hold:
            log(f"holding {args.hold:.0f}s for a profiler: {h.pids()}")
            await asyncio.sleep(args.hold)
        load0 = os.getloadavg()[0]
        cpu = await asyncio.to_thread(measure_cpu, h, args.idle)
        pids = h.pids()
        result["idle"] = {"daemon_cpu_pct": cpu.get("daemon"), "daemon_less_verify_pct": cpu.get("daemon_less_verify"),
                          "wg_cpu_pct": cpu.get("wg"),
                          "daemon_rss_mb": rss_mb(pids["daemon"]),
                          "wg_rss_mb": rss_mb(pids["wg"]) if "wg" in pids else None,
                          "load1": [round(load0, 2), round(os.getloadavg()[0], 2)]}
        log(f"idle: {result['idle']}")
        times = []
        for _ in range(3):
            t = time.monotonic()
            await asyncio.to_thread(h.cli, "status")
            times.append(time.monotonic() - t)
        result["status_s"] = round(statistics.median(times), 3)
        api: dict[str, Any] = {}
        for name, path in (("nat", "/api/v1/nat"), ("nat_summary", "/api/v1/nat?summary=true"),
                           ("peers", "/api/v1/peers"), ("peers_summary", "/api/v1/peers?summary=true")):
            api[name] = await asyncio.to_thread(api_cost, h, path)
        for name in ("nat", "peers"):
            full, summ = api[name], api[name + "_summary"]
            if full is not None and summ is not None and summ["bytes"] == full["bytes"]:
                api[name + "_summary"] = None  # the parameter is ignored: no summary served here
        result["api"] = api
        log(f"api: {api}")

        # The route watch: 1,000 agents long-polling, then one more peer joins.
        status, body, _ = await asyncio.to_thread(get, "/api/v1/routes")
        version = json.loads(body).get("version") if status == 200 else None
        if version is not None and args.watchers > 0:
            watchers = Watchers(args.watchers)
            await watchers.start(version)
            await asyncio.sleep(5)  # every long-poll is held by now
            held = await asyncio.to_thread(measure_cpu, h, 10)
            # a drift check (0.3-0.5 s) in these 10 s would be most of them
            result["watchers_cpu_pct"] = held.get("daemon")
            result["watchers_less_verify_pct"] = held.get("daemon_less_verify")
        extra = await fleet.add("fextra")
        t0 = time.monotonic()
        try:
            await extra.join(token, attempts=3)
        except Exception as e:
            result["peer_add_error"] = f"{type(e).__name__}: {e}"
            log(f"the extra peer could not join: {result['peer_add_error']}")
        t_join = time.monotonic()
        t_views = extra.views_sent_at or t_join
        connected = None
        while time.monotonic() - t0 < 60:
            st = json.loads((await asyncio.to_thread(get, "/api/v1/peers?peer=fextra"))[1])
            rows = [p for p in (st if isinstance(st, list) else st.get("peers", []))
                    if p["cluster_id"] == "fextra"]
            if rows and rows[0]["state"] == "connected":
                connected = time.monotonic() - t0
                break
            await asyncio.sleep(0.1)
        result["peer_add"] = {"join_s": round(t_join - t0, 3),
                              "first_probe_s": None if extra.first_probe is None else
                              round(extra.first_probe - t0, 3),
                              "connected_s": None if connected is None else round(connected, 3)}
        log(f"peer add: {result['peer_add']}")
        if watchers is not None:
            # From the views message on: the gateway programs the peer, so the route set changes.
            while time.monotonic() - t_views < 60 and min(watchers.seen_at) < t_views:
                await asyncio.sleep(0.05)
            late = [s for s in watchers.seen_at if s >= t_views]
            result["route_change_to_last_agent_s"] = round(max(late) - t_views, 3) \
                if len(late) == watchers.count else None
            result["route_change_to_median_agent_s"] = round(statistics.median(late) - t_views, 3) \
                if late else None
            result["route_change_agents_reached"] = len(late)
            result["watch_errors"] = watchers.errors
        else:
            result["route_change_to_last_agent_s"] = None
            result["route_change_note"] = ("no watchers asked (--watchers 0)" if args.watchers <= 0 else
                                           "no route watch (no version in /api/v1/routes)")
        result["synthetic"] = {"probes_answered": sum(p.probes_answered for p in fleet.peers.values()),
                               "http_errors": fleet.http_errors}
        if watchers is not None:
            await watchers.stop()  # the page's cost is measured against the idle gateway
            watchers = None
        if args.page:
            result["page_poll"] = await asyncio.to_thread(page_poll_cost, h, "fextra")
            result.update(await asyncio.to_thread(page_cost, h))
            result["daemon_rss_after_page_mb"] = rss_mb(h.pids()["daemon"])
        return result
    finally:
        if watchers is not None:
            await watchers.stop()
        await fleet.aclose()


POLL_PERIOD = 2.0  # page.js: POLL_MS
POLL_ROWS = 50  # page.js: PAGE
POLL_STATUS_EVERY = 15  # page.js: STATUS_EVERY
POLLS = 30


def page_poll_cost(h: Hub, selected: str) -> dict[str, Any]:
    """The page's polls as page.js makes them, each bracketed by the daemon's and
    crosswire-wg's CPU time: /api/v1/page (50 rows, ``selected``) every 2 s with its ETag;
    the status every 15th poll and whenever the peers summary's version moved; exports and
    imports every 15th poll and whenever the NAT summary's version moved."""
    pids = h.pids()
    daemon: list[float] = []
    wg: list[float] = []
    tags: dict[str, str] = {}
    asked: dict[str, int] = {}
    versions: dict[str, Any] = {}

    def fetch(path: str) -> Any:
        asked[path.split("?")[0]] = asked.get(path.split("?")[0], 0) + 1
        req = urllib.request.Request(OPERATOR + path, headers={"If-None-Match": tags[path]} if path in tags else {})
        try:
            with urllib.request.urlopen(req, timeout=30) as r:
                body = json.loads(r.read())
                if r.headers.get("ETag"):
                    tags[path] = r.headers["ETag"]
                return body
        except urllib.error.HTTPError as e:
            if e.code != 304:
                raise
            return None

    for i in range(POLLS):
        t0 = time.monotonic()
        d0, w0 = run_ns(pids["daemon"]), run_ns(pids["wg"]) if "wg" in pids else 0
        body = fetch(f"/api/v1/page?limit={POLL_ROWS}&offset=0&peer={selected}") or {}
        peers_v = (body.get("peers_summary") or {}).get("version", versions.get("peers"))
        nat_v = (body.get("nat_summary") or {}).get("version", versions.get("nat"))
        if i % POLL_STATUS_EVERY == 0 or peers_v != versions.get("peers"):
            fetch("/api/v1/status")
        if i % POLL_STATUS_EVERY == 0 or nat_v != versions.get("nat"):
            fetch("/api/v1/exports")
            fetch("/api/v1/imports")
        versions.update(peers=peers_v, nat=nat_v)
        daemon.append((run_ns(pids["daemon"]) - d0) / 1e6)
        if "wg" in pids:
            wg.append((run_ns(pids["wg"]) - w0) / 1e6)
        time.sleep(max(0.0, POLL_PERIOD - (time.monotonic() - t0)))

    def ms(xs: list[float]) -> dict[str, float] | None:
        return {"median": round(statistics.median(xs), 2), "mean": round(statistics.mean(xs), 2)} \
            if xs else None

    out = {"polls": POLLS, "asked": asked, "daemon_ms": ms(daemon), "wg_ms": ms(wg),
           "daemon_pct": round(100 * statistics.median(daemon) / (1000 * POLL_PERIOD), 2)}
    log(f"page poll: {out}; daemon ms per poll {[round(x, 1) for x in daemon]}")
    return out


PAGE_WINDOW = 30.0  # the page fetches the status and the optional views once per 30 s
PAGE_SETTLE = 5.0  # after opening or closing: the page's load and first polls, measured apart
PAGE_PAIRS = 4


def page_cost(h: Hub) -> dict[str, Any]:
    """Gateway CPU with a headless Chromium's operator page open, against the page closed
    (about:blank in the same browser), in alternating 30 s windows, each begun
    ``PAGE_SETTLE`` s after the switch: the page's load (the first poll without a selected
    peer, then its row and NAT, the status, exports and imports) is ``page_load_ms``, the
    daemon's CPU over those seconds. The daemon verifies its table every ~60-90 s at 1,000
    peers (0.3-0.5 s of CPU, 1-1.5 points of a window it falls into), so its windows leave
    its drift checks out (``daemon_less_verify``); the cost is the median of the open
    windows less the median of the closed ones."""
    try:
        from pagebrowser import browser
    except ImportError as e:
        log(f"no page cost: {e}")
        return {"page_cpu_pct": None}
    windows: list[dict[str, Any]] = []
    loads: list[float] = []
    daemon = h.pids()["daemon"]
    with tempfile.TemporaryDirectory() as work, browser(h.peers_ns, Path(work)) as b:
        for i in range(2 * PAGE_PAIRS):
            opened = i % 2 == 1
            c0 = cpu_s(daemon)
            b.get(OPERATOR + "/" if opened else "about:blank")
            time.sleep(PAGE_SETTLE)
            if opened:
                loads.append(round(1000 * (cpu_s(daemon) - c0)))
            windows.append({"open": opened, **measure_cpu(h, PAGE_WINDOW)})
    log(f"page windows (% of a core, {PAGE_WINDOW:g} s): {windows}; loads {loads} ms")
    daemon_key = "daemon_less_verify" if all("daemon_less_verify" in w for w in windows) else "daemon"

    def cost(who: str) -> float:
        return round(statistics.median(w[who] for w in windows if w["open"])
                     - statistics.median(w[who] for w in windows if not w["open"]), 2)
    return {"page_cpu_pct": cost(daemon_key), "page_wg_cpu_pct": cost("wg") if "wg" in h.pids() else None,
            "page_open_pct": [w[daemon_key] for w in windows if w["open"]],
            "page_closed_pct": [w[daemon_key] for w in windows if not w["open"]],
            "page_windows_less_verify": daemon_key != "daemon", "page_load_ms": loads}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--peers", type=int, default=1000)
    ap.add_argument("--watchers", type=int, default=1000)
    ap.add_argument("--parallel", type=int, default=8, help="joins at once")
    ap.add_argument("--settle", type=float, default=15.0)
    ap.add_argument("--idle", type=float, default=120.0,
                    help="seconds of idle CPU measurement (long enough to hold the table verifies in proportion)")
    ap.add_argument("--no-page", dest="page", action="store_false")
    ap.add_argument("--hold", type=float, default=0.0,
                    help="seconds to wait, everything up and idle, before measuring (for py-spy)")
    args = ap.parse_args()
    if os.geteuid() != 0:
        print("bench/fleet.py needs root (network namespaces)", file=sys.stderr)
        return 1
    # Ctrl-C and kill both clean up, also when started in the background (where a
    # shell leaves SIGINT ignored and Python then never raises KeyboardInterrupt).
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    with tempfile.TemporaryDirectory() as tmp, namespaces() as n:
        os.chmod(tmp, 0o700)
        with hub(n, Path(tmp), extra_addrs=WATCH_SOURCES) as h:
            log(f"hub up in {h.ns} (pids {h.pids()}); peers in {h.peers_ns}")
            token = h.cli("token", "create", "--reusable", "--ttl", "6h").stdout.strip()

            with contextlib.suppress(KeyboardInterrupt):
                result = in_namespace(h.peers_ns, lambda: asyncio.run(fleet_run(h, args, token)))
                result["load1_end"] = round(os.getloadavg()[0], 2)
                print(json.dumps(result), flush=True)
                return 0
    return 130


if __name__ == "__main__":
    sys.exit(main())
