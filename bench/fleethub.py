"""One real gateway (a sparse hub) in a network namespace, and a second namespace for
synthetic peers: what bench/fleet.py and tests/gateway/test_fleet_peers.py share.

The hub namespace runs ``crosswire gateway run`` with its default data plane
(crosswire-wg, with its standby), nftables, config and state_dir in a temp dir.
The peers' namespace reaches it over one veth (198.18.0.0/24, inside the
namespaces only). ``in_namespace`` runs a function in a thread that joined the
peers' namespace (setns is per thread), so the calling process stays where it is.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from nsutil import Namespaces, kill_ns_processes, sh, uniq  # noqa: E402

BIN = Path(sys.executable).parent
HUB_IP = "198.18.0.1"
PEERS_IP = "198.18.0.2"
GW_IP = "10.244.0.10"
OPERATOR = f"http://{HUB_IP}:8081"
CLONE_NEWNET = 0x40000000
T = TypeVar("T")


@dataclass
class Hub:
    ns: str
    peers_ns: str
    config: Path
    state_dir: Path
    log: Path
    iface: str
    proc: subprocess.Popen[bytes] | None = None

    def cli(self, *args: str, check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        return sh(str(BIN / "crosswire"), *args, "--config", str(self.config), ns=self.ns, check=check,
                  timeout=timeout)

    def cli_json(self, *args: str) -> Any:
        return json.loads(self.cli(*args, "--json").stdout)

    def wait_ready(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        last = ""
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"the hub exited:\n{self.log.read_text()[-3000:]}")
            r = self.cli("status", "--json", check=False)
            if r.returncode == 0:
                st = json.loads(r.stdout)
                if st["ready"]:
                    return
                last = st["ready_reason"]
            else:
                last = r.stderr
            time.sleep(0.3)
        raise RuntimeError(f"the hub is not ready: {last}\n{self.log.read_text()[-3000:]}")

    def pids(self) -> dict[str, int]:
        """The daemon and its crosswire-wg (the one serving the UAPI socket), by /proc."""
        out: dict[str, int] = {}
        if self.proc is not None:
            # `ip netns exec` execs the daemon: same pid.
            out["daemon"] = self.proc.pid
        for pid in sh("ip", "netns", "pids", self.ns, check=False).stdout.split():
            with contextlib.suppress(OSError):
                cmd = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
                if any(c.endswith(b"crosswire-wg") for c in cmd) and b"--standby" not in cmd:
                    out.setdefault("wg", int(pid))
        return out


def hub_config(tmp: Path, iface: str, extra: str = "") -> str:
    return f"""
cluster_id: hub
pod_cidrs: [10.244.0.0/16]
service_cidrs: [10.96.0.0/12]
gateway_ip: {GW_IP}
ipam:
  views: sparse
wireguard:
  interface: {iface}
  listen_port: 51820
  endpoint: {HUB_IP}:51820
api:
  listen: {HUB_IP}:8080
  operator_listen: {HUB_IP}:8081
  max_connections: 4096
state_dir: {tmp / 'hub'}
dns:
  listen: ""
exports:
  - name: web.default
    addresses: [10.96.0.10]
    ports: [80/tcp]
{extra}"""


@contextlib.contextmanager
def hub(n: Namespaces, tmp: Path, extra_config: str = "", extra_addrs: int = 0) -> Iterator[Hub]:
    """The hub running and ready; ``extra_addrs`` more addresses (198.18.1.N) on the peers' side."""
    ns, peers_ns = n.add("cwfh"), n.add("cwfp")
    _, dev = n.veth(ns, peers_ns, f"{HUB_IP}/16", f"{PEERS_IP}/16", name="f")
    for s in ("net.ipv4.ip_forward=1", "net.ipv4.conf.all.rp_filter=0", "net.ipv4.conf.default.rp_filter=0"):
        sh("sysctl", "-qw", s, ns=ns)
    sh("ip", "addr", "add", f"{GW_IP}/32", "dev", "lo", ns=ns)
    if extra_addrs:
        batch = "".join(f"addr add 198.18.1.{i + 1}/16 dev {dev}\n" for i in range(extra_addrs))
        subprocess.run(["ip", "netns", "exec", peers_ns, "ip", "-batch", "-"], input=batch, text=True,
                       check=True, capture_output=True)
    iface = uniq("cwhub")
    config = tmp / "hub.yaml"
    config.write_text(hub_config(tmp, iface, extra_config))
    h = Hub(ns=ns, peers_ns=peers_ns, config=config, state_dir=tmp / "hub", log=tmp / "hub.log", iface=iface)
    out = open(h.log, "ab")  # noqa: SIM115
    h.proc = subprocess.Popen(["ip", "netns", "exec", ns, str(BIN / "crosswire"), "gateway", "run", "--config",
                               str(config)], stdout=out, stderr=out, start_new_session=True)
    out.close()
    try:
        h.wait_ready()
        yield h
    finally:
        if h.proc.poll() is None:
            h.proc.kill()
            h.proc.wait(timeout=10)
        # The data plane outlives the daemon on purpose: stop it (and its standby) before its
        # files in the machine-wide socket directory go, or it writes its stats again.
        kill_ns_processes(ns)
        for suffix in (".sock", ".stats", ".standby"):
            with contextlib.suppress(OSError):
                os.unlink(f"/var/run/wireguard/{iface}{suffix}")


def in_namespace(ns: str, fn: Callable[[], T]) -> T:
    """``fn()`` in a thread that joined network namespace ``ns``; its result or its exception."""
    box: dict[str, Any] = {}

    def run() -> None:
        libc = ctypes.CDLL(None, use_errno=True)
        fd = os.open(f"/var/run/netns/{ns}", os.O_RDONLY)
        try:
            if libc.setns(fd, CLONE_NEWNET) != 0:
                raise OSError(ctypes.get_errno(), f"setns {ns}")
        finally:
            os.close(fd)
        try:
            box["result"] = fn()
        except BaseException as e:  # handed to the caller's thread
            box["error"] = e

    t = threading.Thread(target=run, name=f"in-{ns}", daemon=True)
    t.start()
    while t.is_alive():  # a bare join() would hold off Ctrl-C until the thread ends
        t.join(0.5)
    if "error" in box:
        raise box["error"]
    return box["result"]  # type: ignore[no-any-return]
