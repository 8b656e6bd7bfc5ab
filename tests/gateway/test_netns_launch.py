"""A container restart with the launch record (gateway/launch.py), on a real gateway:
everything killed with SIGKILL, then ``crosswire gateway run`` again. The record starts
crosswire-wg before the daemon's imports, the daemon adopts it; a refused start stops it."""

from __future__ import annotations

import os
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

from nsutil import Namespaces, remove_wg_runtime, require_root, sh, uniq, wg_processes

BIN = Path(sys.executable).parent


def _gateway(netns: Namespaces, tmp_path: Path) -> tuple[str, str, Path, Path]:
    ns = netns.add("cwl")
    sh("ip", "link", "set", "lo", "up", ns=ns)
    sh("ip", "addr", "add", "10.244.0.10/32", "dev", "lo", ns=ns)
    iface = uniq("cwl")
    sd = tmp_path / "sd"
    cfg = tmp_path / "gw.yaml"
    cfg.write_text(f"cluster_id: t1\npod_cidrs: [10.244.0.0/16]\ngateway_ip: 10.244.0.10\n"
                   f"wireguard: {{interface: {iface}, implementation: userspace}}\n"
                   f"api: {{listen: '127.0.0.1:8080', advertise: 'http://192.0.2.1:8080', "
                   f"operator_listen: '127.0.0.1:8081'}}\n"
                   f"dns: {{listen: ''}}\nstate_dir: {sd}\n")
    return ns, iface, sd, cfg


def _start(ns: str, cfg: Path, log: Path) -> subprocess.Popen[bytes]:
    with open(log, "ab") as out:
        return subprocess.Popen(["ip", "netns", "exec", ns, str(BIN / "crosswire"), "gateway", "run", "--config",
                                 str(cfg)], stdout=out, stderr=out, start_new_session=True)


def _wait(what: str, cond: object, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not cond():  # type: ignore[operator]
        assert time.monotonic() < deadline, what
        time.sleep(0.05)


def _kill_all(gw: subprocess.Popen[bytes], iface: str) -> None:
    """A container restart: the daemon and every data-plane process, SIGKILL."""
    gw.kill()
    gw.wait(timeout=10)
    for pid in wg_processes(iface):
        os.kill(pid, signal.SIGKILL)
    _wait("the data plane did not die", lambda: not wg_processes(iface), 10)


def test_restart_starts_the_data_plane_from_the_record(netns: Namespaces, tmp_path: Path) -> None:
    require_root()
    ns, iface, sd, cfg = _gateway(netns, tmp_path)
    log = tmp_path / "gw.log"
    sock = Path(f"/var/run/wireguard/{iface}.sock")
    gw = _start(ns, cfg, log)
    try:
        record = sd / "launch.json"
        _wait("no launch record written", record.exists)
        _wait("no saved configuration", (sd / f"wg-{iface}.conf").exists)
        assert stat.S_IMODE(record.stat().st_mode) == 0o600
        text = record.read_text()
        assert (sd / "admin-token").read_text().strip() not in text
        _kill_all(gw, iface)
        gw = _start(ns, cfg, log)
        _wait("not started from the record", lambda: "started from the launch record" in log.read_text())
        _wait("the data plane is not up", sock.exists)
        # The daemon took it over: the process it adopted is the one serving, and a standby waits.
        _wait("no standby", lambda: len(wg_processes(iface)) == 2)
        assert gw.poll() is None
        assert "re-attached to the persistent interface" in (sd / "dataplane.log").read_text()
    finally:
        gw.terminate()
        gw.wait(timeout=30)
        _kill_all(gw, iface)
        remove_wg_runtime(iface)


def test_refused_restart_stops_what_the_record_started(netns: Namespaces, tmp_path: Path) -> None:
    require_root()
    ns, iface, sd, cfg = _gateway(netns, tmp_path)
    log = tmp_path / "gw.log"
    gw = _start(ns, cfg, log)
    try:
        _wait("no launch record written", (sd / "launch.json").exists)
        _wait("no saved configuration", (sd / f"wg-{iface}.conf").exists)
        _kill_all(gw, iface)
        (sd / "state.db").write_bytes(b"")  # damaged: the restart is refused naming it
        p = subprocess.run(["ip", "netns", "exec", ns, str(BIN / "crosswire"), "gateway", "run", "--config",
                            str(cfg)], capture_output=True, text=True, timeout=60)
        assert p.returncode == 1, p.stderr
        assert "started from the launch record" in p.stderr and "state.db: is empty" in p.stderr, p.stderr
        assert wg_processes(iface) == []
        assert sh("ip", "link", "show", iface, ns=ns, check=False).returncode != 0
        assert not Path(f"/var/run/wireguard/{iface}.sock").exists()
        assert not (sd / "launch.json").exists()  # a refused start leaves no record to start from
    finally:
        if gw.poll() is None:
            gw.terminate()
            gw.wait(timeout=30)
        _kill_all(gw, iface)
        remove_wg_runtime(iface)  # the standby killed above could not remove its lock
