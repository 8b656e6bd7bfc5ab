"""The two-gateway harness: real gateways in namespaces of their own, same
10.244.0.0/16, fd00::/48 and 10.96.0.0/12 on both, peered through the real CLI.

Each gateway namespace has two pod namespaces attached directly (veth, /32
routes) and its own pod address 10.244.0.10 on lo. The gateways reach each
other over an underlay veth (198.18.0.0/24, inside the namespaces only).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nsutil import Namespaces, kill_ns_processes, remove_wg_runtime, sh, uniq

BIN = Path(sys.executable).parent
PODS = ("10.244.1.5", "10.244.2.7")
PODS6 = ("fd00::1:5", "fd00::2:7")  # dual stack: fd00::/48 on both sides too
GW_IP = "10.244.0.10"
# The operator listener: the config default (loopback, in the gateway's namespace: the CLI,
# the page, metrics); operator_on_pod moves it to the pod address, as in Kubernetes, where
# pods (node agents) reach it and the peer's namespace (the "internet") does not.
OPERATOR = "http://127.0.0.1:8081"
POD_OPERATOR = f"http://{GW_IP}:8081"


def operator_on_pod(*gws: Gw) -> None:
    """A two_gateways ``prepare``: the operator listener on the gateway pod address."""
    for g in gws:
        g.config.write_text(g.config.read_text().replace("api:\n", f"api:\n  operator_listen: {GW_IP}:8081\n", 1))


# The data plane these tests run: crosswire-wg (userspace), what ships by default (issue 20).
# CROSSWIRE_TEST_WG_IMPL=wireguard-go runs them all on the reference implementation; a
# reduced set (test_netns_gateways, the lab's interop test) always cross-checks with it.
IMPL = os.environ.get("CROSSWIRE_TEST_WG_IMPL", "userspace")


def serving_pid(iface: str) -> int | None:
    """The process serving ``iface``'s UAPI socket (SO_PEERCRED); None if none answers."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        s.connect(f"/var/run/wireguard/{iface}.sock")
        return int(struct.unpack("3i", s.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12))[0])
    except OSError:
        return None
    finally:
        s.close()


@dataclass
class Gw:
    name: str
    ns: str
    underlay: str
    config: Path
    state_dir: Path
    log: Path
    iface: str
    proc: subprocess.Popen[bytes] | None = None
    pods: tuple[str, ...] = ()
    wrap: tuple[str, ...] = ()  # e.g. ("prlimit", "--nofile=512:512"): runs the daemon under it
    api: str | None = None  # the CLI's --api (a daemon from before the operator listener: its one port)

    def cli(self, *args: str, check: bool = True, timeout: float = 30) -> subprocess.CompletedProcess[str]:
        api = ("--api", self.api) if self.api else ()
        return sh(str(BIN / "crosswire"), *args, *api, "--config", str(self.config), ns=self.ns, check=check,
                  timeout=timeout)

    def cli_json(self, *args: str) -> Any:
        return json.loads(self.cli(*args, "--json").stdout)

    def start(self) -> None:
        out = open(self.log, "ab")  # noqa: SIM115
        self.proc = subprocess.Popen(
            ["ip", "netns", "exec", self.ns, *self.wrap, str(BIN / "crosswire"), "gateway", "run", "--config",
             str(self.config)], stdout=out, stderr=out, start_new_session=True)
        out.close()

    def kill9(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=10)
        self.proc = None

    def wait_ready(self, timeout: float = 30) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        last = ""
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise AssertionError(f"gateway {self.name} exited:\n{self.log.read_text()[-3000:]}")
            r = self.cli("status", "--json", check=False)
            if r.returncode == 0:
                st = json.loads(r.stdout)
                if st["ready"]:
                    return dict(st)
                last = st["ready_reason"]
            else:
                last = r.stderr
            time.sleep(0.2)
        raise AssertionError(f"gateway {self.name} not ready: {last}\n{self.log.read_text()[-3000:]}")


def build_cluster(n: Namespaces, name: str, gw_ns: str, underlay: str, tmp: Path, impl: str = IMPL) -> Gw:
    sh("sysctl", "-qw", "net.ipv4.ip_forward=1", ns=gw_ns)
    sh("sysctl", "-qw", "net.ipv6.conf.all.forwarding=1", ns=gw_ns)
    sh("sysctl", "-qw", "net.ipv6.conf.default.accept_dad=0", ns=gw_ns)
    sh("sysctl", "-qw", "net.ipv4.conf.all.rp_filter=0", ns=gw_ns)
    sh("sysctl", "-qw", "net.ipv4.conf.default.rp_filter=0", ns=gw_ns)
    # The gateway's own "pod IP" (no dummy module here: lo holds it).
    sh("ip", "addr", "add", f"{GW_IP}/32", "dev", "lo", ns=gw_ns)
    pods = []
    for ip, ip6 in zip(PODS, PODS6, strict=True):
        pod = n.add(f"p{name}")
        sh("sysctl", "-qw", "net.ipv6.conf.default.accept_dad=0", ns=pod)
        a, b = uniq("vp"), uniq("vg")
        sh("ip", "link", "add", a, "netns", pod, "type", "veth", "peer", "name", b, "netns", gw_ns)
        sh("ip", "addr", "add", f"{ip}/32", "dev", a, ns=pod)
        sh("ip", "addr", "add", f"{ip6}/128", "dev", a, "nodad", ns=pod)
        sh("ip", "link", "set", a, "up", ns=pod)
        sh("ip", "route", "add", GW_IP, "dev", a, ns=pod)
        sh("ip", "route", "add", "default", "via", GW_IP, ns=pod)
        # v6: the gateway side's link-local is the pods' next hop (NDP answers only on-link)
        sh("ip", "addr", "add", "fe80::1/64", "dev", b, "nodad", ns=gw_ns)
        sh("ip", "link", "set", b, "up", ns=gw_ns)
        sh("ip", "-6", "route", "add", "default", "via", "fe80::1", "dev", a, ns=pod)
        sh("ip", "route", "add", f"{ip}/32", "dev", b, ns=gw_ns)
        sh("ip", "-6", "route", "add", f"{ip6}/128", "dev", b, ns=gw_ns)
        pods.append(pod)
    iface = uniq("cw" + name)
    state = tmp / name
    config = tmp / f"{name}.yaml"
    config.write_text(f"""
cluster_id: {name}
pod_cidrs: [10.244.0.0/16, fd00::/48]
service_cidrs: [10.96.0.0/12]
gateway_ip: {GW_IP}
wireguard:
  interface: {iface}
  listen_port: 51820
  endpoint: {underlay}:51820
  implementation: {impl}
api:
  listen: {underlay}:8080
state_dir: {state}
health:
  interval: 0.5
  timeout: 3
""")
    return Gw(name=name, ns=gw_ns, underlay=underlay, config=config, state_dir=state,
              log=tmp / f"{name}.log", iface=iface, pods=tuple(pods))


@contextlib.contextmanager
def two_gateways(n: Namespaces, tmp: Path, prepare: Callable[[Gw, Gw], None] | None = None,
                 impl: str = IMPL) -> Iterator[tuple[Gw, Gw]]:
    ns_a, ns_b = n.add("gwa"), n.add("gwb")
    n.veth(ns_a, ns_b, "198.18.0.1/24", "198.18.0.2/24", name="u")
    a = build_cluster(n, "a", ns_a, "198.18.0.1", tmp, impl)
    b = build_cluster(n, "b", ns_b, "198.18.0.2", tmp, impl)
    if prepare is not None:
        prepare(a, b)  # before the daemons start: config edits, wrappers
    try:
        a.start()
        b.start()
        a.wait_ready()
        b.wait_ready()
        yield a, b
    finally:
        for g in (a, b):
            if g.proc is not None and g.proc.poll() is None:
                g.proc.kill()
                g.proc.wait(timeout=10)
        # the data plane outlives the daemon on purpose: kill it (and its standby) first, or
        # it writes its stats again after they are removed from the machine-wide directory
        for g in (a, b):
            kill_ns_processes(g.ns)
            remove_wg_runtime(g.iface)


def view_of(ip: str, views: list[dict[str, str]], kind: str = "pod") -> str:
    import ipaddress
    v = next(x for x in views if x["kind"] == kind and ipaddress.ip_address(ip) in ipaddress.ip_network(x["real"]))
    real, view = ipaddress.ip_network(v["real"]), ipaddress.ip_network(v["view"])
    return str(ipaddress.ip_address(int(view.network_address) + int(ipaddress.ip_address(ip)) -
                                    int(real.network_address)))


def ping(ns: str, dst: str, count: int = 1, timeout: float = 2) -> bool:
    return sh("ping", "-n", "-c", str(count), "-W", str(int(timeout)), dst, ns=ns, check=False).returncode == 0


def wait_ping6_ready(ns: str, dst: str, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while not ping(ns, dst, timeout=1):
        assert time.monotonic() < deadline, f"no ping from {ns} to {dst}"


def wait_ping(ns: str, dst: str, timeout: float = 10) -> float:
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        if ping(ns, dst, timeout=1):
            return time.monotonic() - t0
    raise AssertionError(f"no ping from {ns} to {dst} within {timeout}s")


@contextlib.contextmanager
def serving(app: Any, **limits: Any) -> Iterator[tuple[Any, str]]:
    """``app`` behind the daemon's own HTTP server (gateway.httpserver) on a free
    loopback port, in a thread: (server, base URL); stopped on exit."""
    from gateway.httpserver import make_server

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = int(s.getsockname()[1])
    server = make_server(app, "127.0.0.1", port, **limits)
    loop = asyncio.new_event_loop()
    t = threading.Thread(target=loop.run_until_complete, args=(server.serve(),), daemon=True)
    t.start()
    deadline = time.monotonic() + 10
    while not server.started:
        assert time.monotonic() < deadline, "server did not start"
        time.sleep(0.02)
    try:
        yield server, f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        t.join(timeout=10)
        loop.close()


def entry_shim(tree: Path) -> Path:
    """Let this venv's ``crosswire`` script (``gateway.entry:main``) run an older source
    tree put first on PYTHONPATH as that release ran: trees from before gateway/entry.py
    get one that is their ``gateway.cli:main``, their entry point then. Without it the
    editable install supplies this tree's entry.py, and its launcher (gateway/launch.py)
    would run as part of the old release. Returns ``tree``."""
    entry = tree / "gateway" / "entry.py"
    if not entry.exists():
        entry.write_text("from gateway.cli import main  # noqa: F401 (added by the test harness)\n")
    return tree
