"""Can one gateway hold N route long-polls, and what do they cost while nothing changes?

Run as root from the venv: ``bench/watch_hold.py [N]`` (default 1000). One real
``crosswire gateway run`` (wireguard-go data plane, no peers) in a namespace of
its own; N raw long-polls (``GET /api/v1/routes?after=<version>&wait=300``) from
N/4 loopback source addresses inside that namespace, so no traffic leaves it.
Prints: how many are held, the gateway's CPU over 30 s with none and with N held,
its RSS, a /healthz round trip while they are held, and that all N answer at
once on shutdown (SIGTERM). A final JSON line carries the figures. Not the fleet
bench (bench/fleet.py drives agents through changes); a quick check of the bound.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from nsutil import delete_ns, sh, uniq

BIN = Path(sys.executable).parent
HZ = os.sysconf("SC_CLK_TCK")

CLIENTS = r"""
import asyncio, json, sys, time
n, after = int(sys.argv[1]), sys.argv[2]

async def one(i):
    src = f"127.0.{1 + i // 1000}.{1 + (i // 4) % 250}"
    r, w = await asyncio.open_connection("127.0.0.1", 8081, local_addr=(src, 0))
    w.write(f"GET /api/v1/routes?after={after}&wait=300 HTTP/1.1\r\nHost: gw\r\n\r\n".encode())
    await w.drain()
    return r, w

async def main():
    conns = []
    for k in range(0, n, 100):
        conns += await asyncio.gather(*(one(i) for i in range(k, min(n, k + 100))))
    print(json.dumps({"opened": len(conns)}), flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)  # "check"
    early = sum(1 for r, _ in conns if r.at_eof() or len(r._buffer))
    print(json.dumps({"answered_early": early}), flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)  # "collect"
    t0 = time.monotonic()
    heads = await asyncio.gather(*(asyncio.wait_for(r.readuntil(b"\r\n\r\n"), 30) for r, _ in conns),
                                 return_exceptions=True)
    ok = sum(1 for h in heads if isinstance(h, bytes) and h.startswith(b"HTTP/1.1 200"))
    print(json.dumps({"answered": ok, "answer_s": round(time.monotonic() - t0, 3)}), flush=True)

asyncio.run(main())
"""


def ticks(pid: int) -> int:
    f = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(f[11]) + int(f[12])


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def cpu_over(pid: int, seconds: float) -> float:
    t0 = ticks(pid)
    time.sleep(seconds)
    return (ticks(pid) - t0) / HZ


def held(ns: str) -> int:
    out = sh("ss", "-Htn", "state", "established", "sport", "=", ":8081", ns=ns).stdout
    return len(out.splitlines())


def main() -> int:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 1000
    ns = uniq("cwhold")
    tmp = Path(tempfile.mkdtemp(prefix="cwhold-"))
    os.chmod(tmp, 0o700)
    iface = uniq("cwh")
    gw: subprocess.Popen[bytes] | None = None
    clients: subprocess.Popen[str] | None = None
    out: dict[str, object] = {"watchers": n}
    try:
        sh("ip", "netns", "add", ns)
        sh("ip", "link", "set", "lo", "up", ns=ns)
        sh("ip", "addr", "add", "10.244.0.10/32", "dev", "lo", ns=ns)
        (tmp / "gw.yaml").write_text(f"""
cluster_id: hold
pod_cidrs: [10.244.0.0/16]
service_cidrs: [10.96.0.0/12]
gateway_ip: 10.244.0.10
wireguard: {{interface: {iface}, listen_port: 51820, endpoint: 192.0.2.1:51820, implementation: wireguard-go}}
api: {{listen: 127.0.0.1:8080, advertise: https://192.0.2.1:8080}}
state_dir: {tmp / 'state'}
""")
        log = open(tmp / "gw.log", "wb")  # noqa: SIM115
        gw = subprocess.Popen(["ip", "netns", "exec", ns, str(BIN / "crosswire"), "gateway", "run", "--config",
                               str(tmp / "gw.yaml")], stdout=log, stderr=log)
        deadline = time.monotonic() + 60
        while sh("curl", "-sf", "-m", "2", "http://127.0.0.1:8081/readyz", ns=ns, check=False).returncode:
            assert time.monotonic() < deadline and gw.poll() is None, (tmp / "gw.log").read_text()[-2000:]
            time.sleep(0.3)
        pid = next(int(p) for p in sh("ip", "netns", "pids", ns).stdout.split()
                   if "gateway" in Path(f"/proc/{p}/cmdline").read_text())
        version = json.loads(sh("curl", "-sf", "http://127.0.0.1:8081/api/v1/routes", ns=ns).stdout)["version"]
        time.sleep(2)
        out["idle_cpu_s_30s_none"] = cpu_over(pid, 30)
        out["rss_mib_none"] = round(rss_mib(pid), 1)
        clients = subprocess.Popen(["ip", "netns", "exec", ns, sys.executable, "-c", CLIENTS, str(n), version],
                                   stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert clients.stdout is not None and clients.stdin is not None
        t0, c0 = time.monotonic(), ticks(pid)
        print(clients.stdout.readline().strip())
        out["open_s"] = round(time.monotonic() - t0, 2)
        time.sleep(1)  # the last ones parsed and held
        out["open_cpu_s"] = (ticks(pid) - c0) / HZ
        time.sleep(3)
        out["held"] = held(ns)
        out["idle_cpu_s_30s_held"] = cpu_over(pid, 30)
        out["rss_mib_held"] = round(rss_mib(pid), 1)
        t1 = time.monotonic()
        sh("curl", "-sf", "-m", "5", "http://127.0.0.1:8081/healthz", ns=ns)
        out["healthz_s_while_held"] = round(time.monotonic() - t1, 3)
        clients.stdin.write("check\n")
        clients.stdin.flush()
        out.update(json.loads(clients.stdout.readline()))
        gw.send_signal(signal.SIGTERM)  # shutdown answers every held long-poll at once
        clients.stdin.write("collect\n")
        clients.stdin.flush()
        out.update(json.loads(clients.stdout.readline()))
        gw.wait(timeout=30)
        out["load"] = Path("/proc/loadavg").read_text().split()[:3]
        for k, v in out.items():
            print(f"{k}: {v}")
        print(json.dumps(out))
        return 0 if out["held"] == n and out["answered"] == n and out["answered_early"] == 0 else 1
    finally:
        for p in (clients, gw):
            if p is not None and p.poll() is None:
                p.kill()
                p.wait()
        delete_ns(ns)
        for suffix in (".sock", ".stats"):
            with contextlib.suppress(OSError):
                os.unlink(f"/var/run/wireguard/{iface}{suffix}")
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
