"""The day-2 events of issue 12, each run against the two-gateway harness.

Each event disrupts gateway ``a`` (the endpoint move: ``b``), calls ``ctx.begin()``
when the disruption starts, and returns once the gateways are ready again.
Events that cannot be done faithfully here raise ``NotMeasured`` with the reason.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import sqlite3
import struct
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from disruptionkit import Traffic
from gwharness import BIN, GW_IP, POD_OPERATOR, Gw, build_cluster, operator_on_pod
from nsutil import Namespaces, sh


class NotMeasured(Exception):
    """This event cannot be measured faithfully here; the message says why."""


@dataclass
class Ctx:
    a: Gw
    b: Gw
    n: Namespaces
    tmp: Path
    impl: str
    t0: float | None = None
    notes: list[str] = field(default_factory=list)
    # A source tree of an older crosswire (bench --previous): (h) upgrades from it.
    previous: Path | None = None
    previous_rev: str = ""
    previous_config: str = ""  # a's config for the current code (on_previous)
    # Waits until the traffic flows again (set by run_event): for set-up inside a driver.
    settle: Callable[[], float] | None = None
    # a's data-plane "container" once an event moved it there (to_pod_layout).
    dataplane: subprocess.Popen[bytes] | None = None

    def begin(self) -> None:
        self.t0 = time.monotonic()


def use_impl(impl: str) -> Callable[..., None]:
    """A two_gateways ``prepare``: run the gateways on ``impl`` (userspace = crosswire-wg)."""
    def prepare(*gws: Gw) -> None:
        for g in gws:
            text = g.config.read_text()
            g.config.write_text(text.replace("implementation: wireguard-go", f"implementation: {impl}"))
    return prepare


def disruption_prepare(impl: str) -> Callable[..., None]:
    """use_impl, and the operator listener on the pod address: (g) runs a node agent in a pod."""
    def prepare(*gws: Gw) -> None:
        use_impl(impl)(*gws)
        operator_on_pod(*gws)
    return prepare


def dataplane_pids(g: Gw) -> list[int]:
    pids = []
    for pid in sh("ip", "netns", "pids", g.ns).stdout.split():
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue  # exited meanwhile
        if g.iface.encode() in cmd and b"gateway" not in cmd:
            pids.append(int(pid))
    return pids


def _sigterm(g: Gw) -> None:
    assert g.proc is not None
    g.proc.send_signal(signal.SIGTERM)
    code = g.proc.wait(timeout=20)
    assert code == 0, f"gateway {g.name} exited {code} on SIGTERM: " + g.log.read_text()[-2000:]
    g.proc = None


def active_pid(g: Gw) -> int:
    """The data-plane process serving the interface (its UAPI socket's owner): a standby
    waiting beside it is not the one that crashes."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        s.connect(f"/var/run/wireguard/{g.iface}.sock")
        pid = int(struct.unpack("3i", s.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12))[0])
    finally:
        s.close()
    assert pid in dataplane_pids(g), f"{pid} is not a data plane process of {g.iface}"
    return pid


def standby_pids(g: Gw) -> list[int]:
    """Standbys waiting (a standby that took over keeps --standby in its command line)."""
    try:
        serving = active_pid(g)
    except OSError:
        serving = None
    out = []
    for pid in dataplane_pids(g):
        with contextlib.suppress(OSError):
            if pid != serving and b"--standby" in Path(f"/proc/{pid}/cmdline").read_bytes():
                out.append(pid)
    return out


def memory_kib(pid: int) -> tuple[int, int]:
    """(RSS, PSS) of ``pid`` in KiB: PSS shares the pages it shares (libraries) fairly."""
    rss = next(int(ln.split()[1]) for ln in Path(f"/proc/{pid}/status").read_text().splitlines()
               if ln.startswith("VmRSS:"))
    pss = next(int(ln.split()[1]) for ln in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()
               if ln.startswith("Pss:"))
    return rss, pss


def _kill_dataplane(g: Gw) -> None:
    os.kill(active_pid(g), signal.SIGKILL)


def _restarts(g: Gw) -> int:
    return int(g.cli_json("status")["reconcile"]["dataplane_restarts"])


# ------------------------------------------------------------------ the events


def restart(ctx: Ctx) -> None:
    """(a) daemon restart: SIGTERM, start (the data plane keeps running)."""
    ctx.begin()
    _sigterm(ctx.a)
    ctx.a.start()
    ctx.a.wait_ready()


def kill9(ctx: Ctx) -> None:
    """(b) the daemon killed with SIGKILL, then started."""
    ctx.begin()
    ctx.a.kill9()
    ctx.a.start()
    ctx.a.wait_ready()


def dataplane_kill9(ctx: Ctx) -> None:
    """(c) the data plane killed with SIGKILL; its standby takes over (the daemon then
    starts a new standby), or without one the daemon restarts it."""
    before = _restarts(ctx.a)
    for pid in standby_pids(ctx.a):
        rss, pss = memory_kib(pid)
        ctx.notes.append(f"standby pid {pid}: RSS {rss / 1024:.1f} MiB, PSS {pss / 1024:.1f} MiB")
    ctx.begin()
    _kill_dataplane(ctx.a)
    deadline = time.monotonic() + 30
    while _restarts(ctx.a) <= before:
        assert time.monotonic() < deadline, "the daemon did not restart the data plane within 30 s"
        time.sleep(0.1)
    ctx.a.wait_ready()


def both_kill9(ctx: Ctx) -> None:
    """(d) daemon and data plane killed with SIGKILL (a container restart), then started."""
    ctx.begin()
    pids = dataplane_pids(ctx.a)
    ctx.a.kill9()
    for pid in pids:
        os.kill(pid, signal.SIGKILL)
    ctx.a.start()
    ctx.a.wait_ready()


def key_rotation(ctx: Ctx) -> None:
    """(e) crosswire key rotate."""
    ctx.begin()
    ctx.a.cli("key", "rotate", "--json")
    ctx.a.wait_ready()
    ctx.b.wait_ready()


def peer_add_remove(ctx: Ctx) -> None:
    """(f) a third gateway peered with a, then removed (c is built before the window)."""
    ns_c = ctx.n.add("gwc")
    ctx.n.veth(ctx.a.ns, ns_c, "198.18.1.1/24", "198.18.1.2/24", name="w")
    sh("ip", "route", "add", "198.18.0.0/24", "via", "198.18.1.1", ns=ns_c)
    c = build_cluster(ctx.n, "c", ns_c, "198.18.1.2", ctx.tmp)
    use_impl(ctx.impl)(c)
    c.start()
    try:
        c.wait_ready()
        token = c.cli("token", "create", "--ttl", "5m").stdout.strip()
        ctx.begin()
        # the token on stdin, as an operator would (never in argv)
        sh(str(BIN / "crosswire"), "peer", "add", "-", "--config", str(ctx.a.config), ns=ctx.a.ns,
           input=token, timeout=60)
        ctx.a.wait_ready()
        ctx.a.cli("peer", "remove", "c", timeout=60)
        ctx.a.wait_ready()
    finally:
        if c.proc is not None and c.proc.poll() is None:
            c.proc.kill()
            c.proc.wait(timeout=10)


# Run inside a's namespace: the daemon's own full-replace path (nat.render_text of the
# desired state, one atomic nft batch), as at start-up or after drift.
_REPLACE = """
import os, sys, time
from fabric import nat
from fabric.nft import Nft
from gateway.config import load
from gateway.controlplane import ControlPlane
from gateway.ipam_adapter import IpamViews
from gateway.state import StateStore
c = load(sys.argv[1])
store = StateStore(c.state_dir)
views = IpamViews(os.path.join(c.state_dir, "ipam.db"), c.pod_cidrs, c.service_cidrs, c.reserved_cidrs, c.ipam_pools)
state = ControlPlane.build(c, store, views, None).reconciler.desired()
text = nat.render_text(state)
t = time.monotonic(); Nft().apply(text); print(round(time.monotonic() - t, 4))
views.close(); store.close()
"""


def nat_replace(ctx: Ctx) -> None:
    """(g) the whole NAT table replaced in one batch while traffic flows."""
    ctx.begin()
    out = sh(sys.executable, "-c", _REPLACE, str(ctx.a.config), ns=ctx.a.ns).stdout.strip()
    ctx.notes.append(f"nft batch {out}s")
    ctx.a.wait_ready()


def on_previous(g: Gw, tree: Path) -> str:
    """A two_gateways ``prepare`` step (bench --previous): ``g`` starts, from its fresh
    state directory, on the release in ``tree`` (the venv's interpreter and
    dependencies, that tree's code: PYTHONPATH comes before the editable install), so
    that release writes the state the upgrade (h) then starts on. A release from before
    the operator listener refuses its key and serves everything on its one port: its
    config goes without it. Returns the config text to restore for the new release."""
    text = g.config.read_text()
    g.wrap = ("env", f"PYTHONPATH={tree}")
    if "operator_listen" not in (tree / "gateway" / "config.py").read_text():
        g.config.write_text("".join(line for line in text.splitlines(keepends=True)
                                    if "operator_listen:" not in line))
        g.api = f"http://{g.underlay}:8080"
    return text


def ipam_schema(g: Gw) -> str:
    db = sqlite3.connect(f"file:{g.state_dir / 'ipam.db'}?mode=ro", uri=True, timeout=10)
    try:
        return str(db.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()[0])
    finally:
        db.close()


def upgrade(ctx: Ctx) -> None:
    """(h) an upgrade: the new daemon started against the data plane the old version runs.
    With ``ctx.previous`` (bench --previous), gateway a has run the older release since it
    was built (``on_previous``): that release wrote the state and started the data plane;
    the current code is started on both. Else EMULATED, see upgrade_emulated."""
    if ctx.previous is None:
        upgrade_emulated(ctx)
        return
    a = ctx.a
    assert a.wrap and ctx.previous_config, "--previous: gateway a must have started on it (on_previous)"
    old_pid, schema = active_pid(a), ipam_schema(a)
    ctx.begin()
    _sigterm(a)
    a.wrap, a.api = (), None
    a.config.write_text(ctx.previous_config)
    a.start()
    a.wait_ready()
    kept = active_pid(a) == old_pid  # (the new daemon adds a standby beside it)
    ctx.notes.append(f"real: {ctx.previous_rev} wrote the state (ipam.db schema {schema}, now "
                     f"{ipam_schema(a)}); its data plane " + ("adopted (same process)" if kept else "REPLACED"))


def upgrade_emulated(ctx: Ctx) -> None:
    """(h) EMULATED: the same code plays both versions. The old daemon (SIGTERM) leaves its
    data plane running; the link alias and the table's marker set are removed, as versions
    before the marker left them; the new daemon starts against that and adopts it."""
    a = ctx.a
    ctx.begin()
    _sigterm(a)
    sh("ip", "link", "set", "dev", a.iface, "alias", "", ns=a.ns)
    sh("nft", "delete", "set", "inet", "crosswire", "created_by_crosswire", ns=a.ns)
    a.start()
    a.wait_ready()
    log = a.log.read_text()
    adopted = "adopted the running" in log
    ctx.notes.append("emulated: same version both sides; unmarked link " +
                     ("adopted" if adopted else "NOT reported adopted"))


def to_pod_layout(ctx: Ctx) -> subprocess.Popen[bytes]:
    """Set-up, outside any window: gateway a's data plane moves to a "container" of its
    own, as deploy/ runs it: `crosswire dataplane run` (crosswire-wg and its standby)
    beside a daemon with wireguard.supervise: false, which adopts it. Idempotent."""
    a = ctx.a
    if ctx.dataplane is not None and ctx.dataplane.poll() is None:
        return ctx.dataplane
    _sigterm(a)
    text = a.config.read_text()
    if "supervise: false" not in text:
        a.config.write_text(text.replace("  implementation:", "  supervise: false\n  implementation:", 1))
    out = open(a.state_dir / "dataplane-container.log", "ab")  # noqa: SIM115
    ctx.dataplane = subprocess.Popen(["ip", "netns", "exec", a.ns, str(BIN / "crosswire"), "dataplane", "run",
                                      "--config", str(a.config)], stdout=out, stderr=out, start_new_session=True)
    out.close()
    a.start()
    a.wait_ready()
    return ctx.dataplane


def gateway_container_restart(ctx: Ctx) -> None:
    """(k) the gateway container restarts (everything in it killed with SIGKILL, then
    started) while the data plane runs in its own container: deploy/'s layout."""
    to_pod_layout(ctx)
    if ctx.settle is not None:
        ctx.settle()
    ctx.begin()
    ctx.a.kill9()
    ctx.a.start()
    ctx.a.wait_ready()


def endpoint_move(ctx: Ctx) -> None:
    """(i) b's gateway moves to a new underlay address (198.18.0.3): the old address goes
    away, b's daemon restarts with the new endpoint and announces it to a."""
    b = ctx.b
    new = "198.18.0.3"
    dev = sh("ip", "-o", "addr", "show", "to", f"{b.underlay}/32", ns=b.ns).stdout.split()[1]
    b.config.write_text(b.config.read_text().replace(b.underlay, new))
    # without it, deleting the old (primary) address takes the new one in its subnet along
    sh("sysctl", "-qw", f"net.ipv4.conf.{dev}.promote_secondaries=1", ns=b.ns)
    ctx.begin()
    sh("ip", "addr", "add", f"{new}/24", "dev", dev, ns=b.ns)
    sh("ip", "addr", "del", f"{b.underlay}/24", "dev", dev, ns=b.ns)
    b.underlay = new
    _sigterm(b)
    b.start()
    b.wait_ready()
    deadline = time.monotonic() + 30
    while json.loads(ctx.a.cli("peer", "list", "--json").stdout)[0]["endpoint"] != f"{new}:51820":
        assert time.monotonic() < deadline, "a did not learn b's new endpoint within 30 s"
        time.sleep(0.1)
    ctx.a.wait_ready()


def _start_agent(ctx: Ctx, ns: str) -> subprocess.Popen[bytes]:
    out = open(ctx.tmp / "agent.log", "ab")  # noqa: SIM115
    try:
        return subprocess.Popen(["ip", "netns", "exec", ns, str(BIN / "crosswire"), "agent", "run", "--gateway",
                                 POD_OPERATOR, "--interval", "0.5"],
                                stdout=out, stderr=out, start_new_session=True)
    finally:
        out.close()


def _agent_routes(ns: str) -> str:
    return str(sh("ip", "route", "show", "proto", "246", ns=ns).stdout)


def node_agent(ctx: Ctx) -> None:
    """(j) the node agent restarted (SIGTERM, start). a's probing pod plays the node: a
    node agent there routes the views to the gateway, and the pod's default route is
    removed first, so the traffic depends on the agent's routes alone."""
    pod = ctx.a.pods[0]
    agent = _start_agent(ctx, pod)
    try:
        deadline = time.monotonic() + 30
        while not _agent_routes(pod):
            assert agent.poll() is None, (ctx.tmp / "agent.log").read_text()[-2000:]
            assert time.monotonic() < deadline, "the node agent installed no route within 30 s"
            time.sleep(0.1)
        sh("ip", "route", "add", f"{ctx.a.underlay}/32", "via", GW_IP, ns=pod)  # the API, without a default
        sh("ip", "route", "del", "default", ns=pod)
        before = _agent_routes(pod)
        time.sleep(1.0)  # traffic flows on the agent's routes alone
        ctx.begin()
        agent.send_signal(signal.SIGTERM)
        assert agent.wait(timeout=20) == 0
        agent = _start_agent(ctx, pod)
        time.sleep(2.0)  # four polls of the new agent
        assert agent.poll() is None, (ctx.tmp / "agent.log").read_text()[-2000:]
        assert _agent_routes(pod) == before
        ctx.notes.append(f"{len(before.splitlines())} agent routes, pod without a default route")
    finally:
        sh("ip", "route", "replace", "default", "via", GW_IP, ns=pod)
        if agent.poll() is None:
            agent.send_signal(signal.SIGTERM)
            try:
                agent.wait(timeout=10)
            except subprocess.TimeoutExpired:
                agent.kill()
                agent.wait(timeout=10)


# label, key, target (ms), driver; order matters: (i) moves b for good, so it comes last.
EVENTS: list[tuple[str, str, int, Callable[[Ctx], None]]] = [
    ("a", "daemon_restart", 0, restart),
    ("b", "daemon_kill9", 0, kill9),
    ("c", "dataplane_kill9", 100, dataplane_kill9),
    ("d", "both_kill9_restart", 100, both_kill9),
    ("e", "key_rotation", 0, key_rotation),
    ("f", "peer_add_remove", 0, peer_add_remove),
    ("g", "nat_table_replace", 0, nat_replace),
    ("h", "upgrade", 0, upgrade),
    ("j", "node_agent_restart", 0, node_agent),
    ("k", "gateway_container_restart_pod", 0, gateway_container_restart),
    ("i", "peer_endpoint_move", 500, endpoint_move),
]


def run_event(ctx: Ctx, traffic: Traffic, driver: Callable[[Ctx], None]) -> dict[str, object]:
    """Run one event between two quiet periods and measure it."""
    traffic.wait_flowing()
    ctx.t0, ctx.notes = None, []
    ctx.settle = traffic.wait_flowing
    try:
        driver(ctx)
    except NotMeasured as e:
        return {"measured": False, "why": str(e)}
    assert ctx.t0 is not None, "the event never began"
    t1 = traffic.wait_flowing(timeout=60)
    res: dict[str, object] = {"measured": True, "event_s": round(t1 - ctx.t0, 3)}
    res.update(traffic.measure(ctx.t0, t1))
    if ctx.notes:
        res["notes"] = "; ".join(ctx.notes)
    return res


