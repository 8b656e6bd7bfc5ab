"""The control plane under hostile HTTP, on a live peered pair running crosswire-wg.

Gateway a runs with RLIMIT_NOFILE 512 (so a flood meets descriptor pressure);
from b's namespace an abuser opens 1,100 idle connections, holds 300 slow-loris
connections, sends 200 concurrent GETs of /readyz and a 50 MB body to the
unauthenticated join. Meanwhile a pod pings through the tunnel. The data plane
must be untouched (same crosswire-wg process, no restart, pings keep flowing),
/healthz must answer throughout, memory must stay bounded and the log quiet.
All traffic stays in the test's namespaces; every loop is bounded in count and time.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from gwharness import PODS, Gw, serving_pid, two_gateways, view_of, wait_ping
from nsutil import Namespaces, require_root, sh

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "wg" / "io"))
from wgpair import daemon_pids

ABUSER = r"""
import json, socket, sys, threading, time, urllib.request
host, port, what = sys.argv[1], int(sys.argv[2]), sys.argv[3]
out = {}
if what == "idle":
    socks, failed = [], 0
    for _ in range(1100):
        try:
            socks.append(socket.create_connection((host, port), timeout=2))
        except OSError:
            failed += 1
    time.sleep(4)
    closed = 0
    for s in socks:
        s.settimeout(0.01)
        try:
            closed += s.recv(1) == b""
        except TimeoutError:
            pass
        except OSError:
            closed += 1
    out = {"opened": len(socks), "failed": failed, "closed_by_server": closed}
elif what == "loris":
    socks = []
    for _ in range(300):
        s = socket.create_connection((host, port), timeout=2)
        s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        socks.append(s)
    deadline = time.monotonic() + 12
    open_ = socks
    while open_ and time.monotonic() < deadline:
        time.sleep(0.5)
        still = []
        for s in open_:
            s.settimeout(0.01)
            try:
                if s.recv(1) != b"":
                    still.append(s)
            except TimeoutError:
                still.append(s)
            except OSError:
                pass
        open_ = still
    out = {"held": 300, "still_open_after_12s": len(open_)}
elif what == "readyz":
    codes = []
    def get():
        try:
            with urllib.request.urlopen(f"http://{host}:{port}/readyz", timeout=10) as r:
                codes.append(r.status)
        except urllib.error.HTTPError as e:
            codes.append(e.code)
        except OSError as e:
            codes.append(str(e))
    ts = [threading.Thread(target=get) for _ in range(200)]
    [t.start() for t in ts]
    [t.join(20) for t in ts]
    out = {"codes": codes}
elif what == "body":
    s = socket.create_connection((host, port), timeout=10)
    s.sendall(b"POST /api/v1/peering/join HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
              b"Content-Length: 52428800\r\n\r\n")
    sent = 0
    try:
        chunk = b"a" * 65536
        while sent < 52428800:
            s.sendall(chunk)
            sent += len(chunk)
    except OSError:
        pass
    s.settimeout(5)
    try:
        head = s.recv(200).split(b"\r\n")[0].decode()
    except OSError as e:
        head = str(e)
    out = {"sent": sent, "status_line": head}
print(json.dumps(out))
"""


def _rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def _daemon_pid(g: Gw) -> int:
    out = subprocess.run(["ip", "netns", "pids", g.ns], capture_output=True, text=True).stdout
    for pid in out.split():
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if "gateway run" in cmd and str(g.config) in cmd and "prlimit" not in cmd.split()[0]:
            return int(pid)
    raise AssertionError("daemon process not found")


def test_http_abuse_leaves_the_data_plane_alone(netns: Namespaces, tmp_path: Path) -> None:
    require_root("wg", "nft", "ping", "prlimit")
    os.chmod(tmp_path, 0o700)

    def prepare(a: Gw, b: Gw) -> None:
        for g in (a, b):
            text = g.config.read_text().replace("implementation: wireguard-go", "implementation: userspace")
            g.config.write_text(text.replace("api:\n", "api:\n  request_timeout: 3\n"))
        a.wrap = ("prlimit", "--nofile=512:512")

    with two_gateways(netns, tmp_path, prepare) as (a, b):
        b_token = b.cli("token", "create", "--ttl", "10m").stdout.strip()
        a.cli("peer", "add", b_token)
        dst = view_of(PODS[1], a.cli_json("peer", "list")[0]["our_views"])
        wait_ping(a.pods[0], dst)
        wg_before = serving_pid(a.iface)  # (a standby may wait beside it)
        assert wg_before is not None and wg_before in daemon_pids(a.ns, a.iface)
        pid = _daemon_pid(a)
        api = f"http://{a.underlay}:8080"

        # Ping through the tunnel for the whole abuse, 10/s; /healthz polled from a's side.
        ping = subprocess.Popen(["ip", "netns", "exec", a.pods[0], "ping", "-n", "-i", "0.1", "-W", "1",
                                 "-w", "40", dst], stdout=subprocess.PIPE, text=True)
        health: list[int | str] = []
        stop = threading.Event()

        def poll_health() -> None:
            while not stop.is_set():
                r = sh("curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", "-m", "3", api + "/healthz",
                       ns=a.ns, check=False)
                health.append(int(r.stdout) if r.stdout.isdigit() else r.stdout)
                time.sleep(0.5)

        poller = threading.Thread(target=poll_health)
        poller.start()
        results = {}
        t_abuse = time.monotonic()
        try:
            for what in ("idle", "loris", "readyz", "body"):
                r = sh("prlimit", "--nofile=8192:8192", sys.executable, "-c", ABUSER, a.underlay, "8080", what,
                       ns=b.ns, timeout=90)
                results[what] = json.loads(r.stdout)
                shown = {k: (sorted(set(map(str, v))) if isinstance(v, list) else v) for k, v in results[what].items()}
                print(what, shown, "daemon RSS", _rss_kb(pid), "kB")
        finally:
            abuse_s = time.monotonic() - t_abuse
            stop.set()
            poller.join(timeout=10)
            ping.send_signal(signal.SIGINT)  # ping prints its summary on SIGINT
            ping_out = ping.communicate(timeout=10)[0]

        # The abuse met the guards.
        assert results["idle"]["opened"] + results["idle"]["failed"] == 1100
        assert results["idle"]["closed_by_server"] >= 800  # over the 256 cap: evicted
        assert results["loris"]["still_open_after_12s"] == 0
        codes = results["readyz"]["codes"]
        assert len(codes) == 200 and all(c == 200 for c in codes), codes
        assert results["body"]["status_line"].startswith("HTTP/1.1 413") or results["body"]["sent"] < 52428800
        # The daemon stayed small and answered health checks throughout.
        assert _rss_kb(pid) < 200_000
        assert health and all(h == 200 for h in health), health
        # The data plane was never judged dead: same process, no restart, traffic flowed.
        assert serving_pid(a.iface) == wg_before
        status = a.cli_json("status")
        assert status["reconcile"]["dataplane_restarts"] == 0, status["reconcile"]
        assert status["ready"], status["ready_reason"]
        summary = next(line for line in ping_out.splitlines() if "packets transmitted" in line)
        sent, received = int(summary.split()[0]), int(summary.split(", ")[1].split()[0])
        print(f"ping during abuse: {received}/{sent}")
        # Pinged (10/s) throughout the abuse, however long it took on this machine.
        assert sent >= 9 * abuse_s and received >= sent * 0.95, (abuse_s, ping_out[-300:])
        log = a.log.read_text()
        assert "Traceback" not in log and len(log) < 200_000, log[-2000:]
