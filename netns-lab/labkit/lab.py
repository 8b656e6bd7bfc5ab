"""Building, inspecting and tearing down a lab instance (the I/O side of netns-lab).

Everything a lab creates lives in namespaces named ``<name>-...`` and in its
state dir ``/run/crosswire-lab/<name>/`` (mode 0700: gateway keys live there).
``state.json`` lists the namespaces (written *before* creating them), the
processes and the WireGuard interfaces, so ``down`` cleans up after a failed
or interrupted ``up`` too; ``down`` also sweeps namespaces and UAPI sockets by
the name prefix in case the state file itself is gone.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import yaml

from . import clusterdns, dualstack, render
from .topology import POD_PORT, ClusterPlan, LabPlan, Topology, TopologyError, parse, plan

STATE_ROOT = Path(os.environ.get("CROSSWIRE_LAB_STATE", "/run/crosswire-lab"))
REPO = Path(__file__).resolve().parents[2]
PODSERVER = Path(__file__).resolve().parent / "podserver.py"
WG_SOCK_DIR = Path("/var/run/wireguard")
BUILD_WORKERS = 4  # clusters built at once


class LabError(RuntimeError):
    pass


def run(*cmd: str, ns: str | None = None, check: bool = True, timeout: float = 60,
        input: str | None = None) -> subprocess.CompletedProcess[str]:
    full = ["ip", "netns", "exec", ns, *cmd] if ns else list(cmd)
    p = subprocess.run(full, capture_output=True, text=True, timeout=timeout, input=input)
    if check and p.returncode != 0:
        raise LabError(f"{' '.join(full)} failed ({p.returncode}): {p.stderr.strip() or p.stdout.strip()}")
    return p


def venv_bin() -> Path:
    return Path(sys.executable).parent


def tool_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PATH"] = f"{venv_bin()}:{env.get('PATH', '/usr/sbin:/usr/bin:/sbin:/bin')}"
    env["PYTHONUNBUFFERED"] = "1"
    return env


def topology_to_data(t: Topology) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(json.dumps(dataclasses.asdict(t)))
    return data


class Lab:
    def __init__(self, name: str, topology: Topology | None = None) -> None:
        self.name = name
        self.dir = STATE_ROOT / name
        self.state_file = self.dir / "state.json"
        if topology is None:
            topology = self._load_topology()
        self.plan: LabPlan = plan(name, topology)

    # ---------------------------------------------------------------- state

    def _load_topology(self) -> Topology:
        try:
            st = json.loads(self.state_file.read_text())
        except (OSError, ValueError) as e:
            raise LabError(f"lab {self.name!r} is not up (no {self.state_file})") from e
        return parse(st["topology"])

    def _state(self) -> dict[str, Any]:
        try:
            data: dict[str, Any] = json.loads(self.state_file.read_text())
            return data
        except (OSError, ValueError):
            return {"namespaces": [], "processes": {}, "wg_interfaces": []}

    def _save(self, st: dict[str, Any]) -> None:
        tmp = self.state_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(st, indent=1))
        tmp.replace(self.state_file)

    def is_up(self) -> bool:
        return self.state_file.exists()

    # ---------------------------------------------------------------- up

    def up(self, log: Any = print, gateways: bool = True) -> None:
        """Build every namespace and start pods, agents and (unless ``gateways`` is off) gateways."""
        if self.is_up():
            raise LabError(f"lab {self.name!r} is already up; run `lab down --name {self.name}` first")
        p = self.plan
        self.dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        os.chmod(self.dir, 0o700)
        namespaces = p.namespaces() + clusterdns.namespaces(p)  # each cluster's DNS pod too
        st = {"name": self.name, "topology": topology_to_data(p.topology),
              "namespaces": namespaces, "processes": {},
              "wg_interfaces": [c.wg_interface for c in p.clusters], "started": time.time()}
        self._save(st)  # before creating anything: `down` must find half-built labs
        for ns in namespaces:
            run("ip", "netns", "add", ns)
            run("ip", "link", "set", "lo", "up", ns=ns)
        self._bridge(p.internet_ns)
        for c in p.clusters:
            log(f"[{c.id}] {len(c.nodes)} nodes, {len(c.pods)} pods, gateway {c.gateway.ip if c.gateway else '-'}")
        # Clusters are independent (each in namespaces of its own; the internet bridge
        # ports are c<i>): build a few at once, most of the time is spent spawning `ip`.
        with ThreadPoolExecutor(max_workers=BUILD_WORKERS) as pool:
            for f in [pool.submit(self._build_cluster, c) for c in p.clusters]:
                f.result()
        for c in p.clusters:
            self._start_cluster(c, st, gateways)
        for c in p.clusters:
            self._wait_ready(c, gateways)
        log(f"lab {self.name!r} is up (state in {self.dir})")

    def _bridge(self, ns: str) -> None:
        run("ip", "link", "add", "br0", "type", "bridge", ns=ns)
        run("ip", "link", "set", "br0", "up", ns=ns)

    def _veth(self, ns_a: str, a: str, ns_b: str, b: str) -> None:
        run("ip", "link", "add", a, "netns", ns_a, "type", "veth", "peer", "name", b, "netns", ns_b)

    def _router(self, ns: str) -> None:
        for k in ("net.ipv4.ip_forward=1", "net.ipv4.conf.all.rp_filter=0",
                  "net.ipv4.conf.default.rp_filter=0"):
            run("sysctl", "-qw", k, ns=ns)

    def _build_cluster(self, c: ClusterPlan) -> None:
        assert c.gateway is not None
        plen = c.spec.node_cidr.split("/")[1]
        self._bridge(c.switch_ns)
        for n in c.nodes:
            self._router(n.ns)
            port = f"{n.name}"
            self._veth(n.ns, "eth0", c.switch_ns, port)
            run("ip", "link", "set", port, "master", "br0", "up", ns=c.switch_ns)
            run("ip", "addr", "add", f"{n.underlay_ip}/{plen}", "dev", "eth0", ns=n.ns)
            run("ip", "link", "set", "eth0", "up", ns=n.ns)
        for n in c.nodes:
            # Host-network clients need some route to service IPs before the output-hook
            # DNAT picks a pod (real nodes use their default route; ours have none).
            run("ip", "route", "add", c.spec.service_cidr, "dev", "eth0", ns=n.ns)
        for n in c.nodes:  # nodes route each other's pod subnets (as flannel host-gw does)
            for o in c.nodes:
                if o is not n:
                    run("ip", "route", "add", o.pod_subnet, "via", o.underlay_ip, ns=n.ns)
        for pod in [*c.pods, c.gateway, clusterdns.dns_pod(self.plan, c)]:
            node = c.node(pod.node)
            self._veth(node.ns, pod.host_if, pod.ns, "eth0")
            run("ip", "addr", "add", f"{node.pod_gw}/32", "dev", pod.host_if, ns=node.ns)
            run("ip", "link", "set", pod.host_if, "up", ns=node.ns)
            run("ip", "route", "add", f"{pod.ip}/32", "dev", pod.host_if, ns=node.ns)
            run("ip", "addr", "add", f"{pod.ip}/32", "dev", "eth0", ns=pod.ns)
            run("ip", "link", "set", "eth0", "up", ns=pod.ns)
            run("ip", "route", "add", node.pod_gw, "dev", "eth0", "scope", "link", ns=pod.ns)
            run("ip", "route", "add", "default", "via", node.pod_gw, "dev", "eth0", ns=pod.ns)
        # The gateway pod's second leg: the "internet", as through a LoadBalancer.
        gw = c.gateway
        self._router(gw.ns)
        port = f"c{c.index}"
        inet_len = self.plan.topology.internet.split("/")[1]
        self._veth(gw.ns, "eth1", self.plan.internet_ns, port)
        run("ip", "link", "set", port, "master", "br0", "up", ns=self.plan.internet_ns)
        run("ip", "addr", "add", f"{c.internet_ip}/{inet_len}", "dev", "eth1", ns=gw.ns)
        run("ip", "link", "set", "eth1", "up", ns=gw.ns)
        ruleset = render.kubeproxy_ruleset(c)
        for n in c.nodes:
            run("nft", "-f", "-", ns=n.ns, input=ruleset)
        if c.spec.cilium_check:
            run("nft", "-f", "-", ns=c.node(gw.node).ns, input=render.cilium_ruleset(c))
        for ns, cmd in dualstack.commands(c):  # the IPv6 side of a dual-stack cluster
            run(*cmd, ns=ns)
        clusterdns.write_resolv_confs(self.plan, c)  # before any pod's process starts

    def gateway_config_path(self, c: ClusterPlan) -> Path:
        return self.dir / c.id / "gateway.yaml"

    def spawn(self, st: dict[str, Any], label: str, ns: str, cmd: list[str]) -> int:
        logf = self.dir / "logs" / f"{label}.log"
        logf.parent.mkdir(exist_ok=True)
        with open(logf, "ab") as out:
            proc = subprocess.Popen(["ip", "netns", "exec", ns, *cmd], stdout=out, stderr=out,
                                    stdin=subprocess.DEVNULL, start_new_session=True, env=tool_env())
        st["processes"][label] = {"pid": proc.pid, "ns": ns, "cmd": cmd}
        self._save(st)
        return proc.pid

    def start_gateway(self, c: ClusterPlan, st: dict[str, Any] | None = None) -> int:
        st = st if st is not None else self._state()
        assert c.gateway is not None
        cdir = self.dir / c.id
        cdir.mkdir(exist_ok=True, mode=0o700)
        cfg = self.gateway_config_path(c)
        cfg.write_text(yaml.safe_dump(render.gateway_config(self.plan, c, str(cdir / "state"))))
        return self.spawn(st, f"{c.id}-gateway", c.gateway.ns,
                          [str(venv_bin() / "crosswire"), "gateway", "run", "--config", str(cfg)])

    def stop_process(self, label: str) -> None:
        st = self._state()
        info = st["processes"].pop(label, None)
        if info:
            _kill_group(info["pid"], info.get("cmd"))
            self._save(st)

    def restart_gateway(self, cid: str) -> int:
        """Restart a gateway as a pod restart would: every process in its pod dies
        (the daemon and the WireGuard data plane with its TUN device), then it starts again."""
        c = self.plan.cluster(cid)
        assert c.gateway is not None
        self.stop_process(f"{cid}-gateway")
        _kill_ns_processes(c.gateway.ns)
        for suffix in (".sock", ".standby"):
            (WG_SOCK_DIR / f"{c.wg_interface}{suffix}").unlink(missing_ok=True)
        return self.start_gateway(c)

    def _start_cluster(self, c: ClusterPlan, st: dict[str, Any], gateways: bool) -> None:
        assert c.gateway is not None
        self.spawn(st, f"{c.id}-dns", clusterdns.dns_pod(self.plan, c).ns, clusterdns.dnsmasq_command(self.plan, c))
        for pod in c.pods:
            self.spawn(st, f"{c.id}-{pod.name}", pod.ns,
                       [sys.executable, str(PODSERVER), "--name", f"{c.id}/{pod.name}",
                        "--cluster", c.id, "--port", str(POD_PORT)])
        if gateways:
            self.start_gateway(c, st)
        for n in c.nodes:
            self.spawn(st, f"{c.id}-{n.name}-agent", n.ns,
                       [str(venv_bin() / "crosswire"), "agent", "run", "--gateway", c.api_url,
                        "--interval", f"{c.spec.agent_interval:g}", "--allow", ",".join(c.spec.agent_allow())])

    def _wait_ready(self, c: ClusterPlan, gateways: bool, timeout: float = 60) -> None:
        assert c.gateway is not None
        node = c.nodes[0].ns
        end = time.monotonic() + timeout
        pending = [f"http://{p.ip}:{POD_PORT}/" for p in c.pods]
        if gateways:
            pending.append(f"{c.api_url}/healthz")
        while pending:
            url = pending[0]
            code, _ = http(node, url, timeout=2)
            if code == 200:
                pending.pop(0)
                continue
            if time.monotonic() > end:
                raise LabError(f"[{c.id}] {url} not ready after {timeout:.0f}s "
                               f"(logs in {self.dir / 'logs'})")
            self._check_alive(c)
            time.sleep(0.3)

    def _check_alive(self, c: ClusterPlan) -> None:
        st = self._state()
        for label, info in st["processes"].items():
            if label.startswith(f"{c.id}-") and not _alive(info["pid"]):
                tail = ""
                with contextlib.suppress(OSError):
                    tail = (self.dir / "logs" / f"{label}.log").read_text()[-2000:]
                raise LabError(f"{label} exited:\n{tail}")

    # ---------------------------------------------------------------- inspect

    def status(self) -> dict[str, Any]:
        st = self._state()
        procs = {k: _alive(v["pid"]) for k, v in st.get("processes", {}).items()}
        out: dict[str, Any] = {"name": self.name, "clusters": []}
        for c in self.plan.clusters:
            assert c.gateway is not None
            code, body = http(c.nodes[0].ns, f"{c.api_url}/api/v1/status", timeout=3)
            gw_status: Any = _json(body) if code == 200 else f"unreachable ({code})"
            pcode, pbody = http(c.nodes[0].ns, f"{c.api_url}/api/v1/peers", timeout=3)
            out["clusters"].append({
                "id": c.id, "pod_cidr": c.spec.pod_cidr, "service_cidr": c.spec.service_cidr,
                "gateway": {"pod_ip": c.gateway.ip, "public": c.internet_ip,
                            "api": c.api_url, "status": gw_status},
                "peers": _json(pbody) if pcode == 200 else None,
                "nodes": [n.name for n in c.nodes],
                "pods": {p.name: p.ip for p in c.pods},
                "services": {s.name: f"{s.ip}:{s.port}" for s in c.spec.services},
                "processes": {k: ("running" if v else "DEAD") for k, v in procs.items()
                              if k.startswith(f"{c.id}-")},
            })
        return out

    # ---------------------------------------------------------------- down

    def down(self) -> list[str]:
        return teardown(self.name)


def teardown(name: str) -> list[str]:
    """Remove everything lab ``name`` made; works without (or with a partial) state file."""
    if not re.match(r"^[a-z][a-z0-9]{0,9}$", name):
        raise TopologyError(f"bad lab name {name!r}")
    d = STATE_ROOT / name
    removed: list[str] = []
    st: dict[str, Any] = {}
    with contextlib.suppress(OSError, ValueError):
        st = json.loads((d / "state.json").read_text())
    # All at once, not one by one: a 31-cluster lab has ~150 processes and namespaces,
    # and waiting for each in turn took most of a minute.
    _kill_groups([(int(info["pid"]), info.get("cmd")) for info in st.get("processes", {}).values()])
    _stop_stray_ip(name)
    existing = run("ip", "netns", "list", check=False).stdout.split("\n")
    existing_names = {line.split()[0] for line in existing if line.strip()}
    wanted = set(st.get("namespaces", [])) | {n for n in existing_names if n.startswith(f"{name}-")}
    doomed = sorted(wanted & existing_names)
    _kill_ns_processes(*doomed)
    if doomed:  # one `ip` for all of them; -force goes on past one that vanished meanwhile
        run("ip", "-force", "-batch", "-", check=False, input="".join(f"netns del {ns}\n" for ns in doomed))
    removed += doomed
    # crosswire-wg keeps stats beside the socket, and a standby its lock
    sock_re = re.compile(rf"^{name}w\d+\.(sock|stats|standby)$")
    if WG_SOCK_DIR.is_dir():
        for sock in WG_SOCK_DIR.iterdir():
            if sock_re.match(sock.name):
                sock.unlink(missing_ok=True)
                removed.append(str(sock))
    removed += clusterdns.remove_resolv_confs(name)
    if d.exists():
        shutil.rmtree(d, ignore_errors=True)
        removed.append(str(d))
    return removed


def list_labs() -> list[str]:
    if not STATE_ROOT.is_dir():
        return []
    return sorted(p.name for p in STATE_ROOT.iterdir() if (p / "state.json").exists())


def http(ns: str, url: str, timeout: float = 5, data: str | None = None,
         method: str | None = None) -> tuple[int, str]:
    """An HTTP request from inside a namespace (curl; the host namespace has no lab routes)."""
    cmd = ["curl", "-s", "-m", str(timeout), "-o", "-", "-w", "\n%{http_code}", url]
    if data is not None:
        cmd += ["-H", "Content-Type: application/json", "--data-binary", data]
    if method:
        cmd += ["-X", method]
    p = run(*cmd, ns=ns, check=False, timeout=timeout + 5)
    body, _, code = p.stdout.rpartition("\n")
    try:
        return int(code), body
    except ValueError:
        return 0, body


def _json(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return text


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie child of ours counts as dead.
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ")[1][0] != "Z"
    except (OSError, IndexError):
        return False


def _is_ours(pid: int, cmd: list[str] | None) -> bool:
    """The pid still runs what the lab started (``ip netns exec`` execs the command in
    place), not an unrelated process that inherited a recycled pid."""
    if cmd is None:
        return _alive(pid)
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    # A subsequence, not a prefix: a script runs as "python /path/script args...".
    it = iter(a.decode(errors="replace") for a in argv)
    return all(any(a == c for a in it) for c in cmd)


def _kill_group(pid: int, cmd: list[str] | None = None) -> None:
    _kill_groups([(pid, cmd)], grace=1.0)


def _kill_groups(procs: list[tuple[int, list[str] | None]], grace: float = 2.0) -> None:
    """SIGTERM every group, give them ``grace`` seconds together, SIGKILL what is left."""
    # Each lab process leads its own session (start_new_session), so the group is ours.
    pids = [pid for pid, cmd in procs if _is_ours(pid, cmd)]
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 1.0)):
        for pid in pids:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pid, sig)
        end = time.monotonic() + wait
        while pids and time.monotonic() < end:
            for pid in pids:
                with contextlib.suppress(ChildProcessError, OSError):
                    os.waitpid(pid, os.WNOHANG)
            pids = [pid for pid in pids if _alive(pid)]
            if pids:
                time.sleep(0.05)
        if not pids:
            return


def _stop_stray_ip(name: str, wait: float = 2.0) -> None:
    """Kill `ip` commands an interrupted `up` left running for this lab.

    A killed `up` orphans the `ip netns add` it was waiting for; left alone, it could
    create its namespace after `down` has listed them.
    """
    prefix = f"{name}-"
    pids = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            argv = (proc / "cmdline").read_bytes().split(b"\0")
            if os.path.basename(argv[0]) == b"ip" and any(a.decode(errors="replace").startswith(prefix)
                                                          for a in argv[1:]):
                pids.append(int(proc.name))
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    end = time.monotonic() + wait
    while (pids := [pid for pid in pids if _alive(pid)]) and time.monotonic() < end:
        time.sleep(0.02)


def _kill_ns_processes(*namespaces: str) -> None:
    """Every process left in these namespaces (the daemonized crosswire-wg too)."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        pids = [pid for ns in namespaces for pid in run("ip", "netns", "pids", ns, check=False).stdout.split()]
        if not pids:
            return
        for pid in pids:
            with contextlib.suppress(ProcessLookupError, ValueError):
                os.kill(int(pid), sig)
        time.sleep(0.3)
