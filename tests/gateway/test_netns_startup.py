"""Environment errors at start stop the daemon with one line naming the key, before it
changes anything in its namespace (no forwarding sysctl, no WireGuard link), never a traceback."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

from nsutil import Namespaces, require_root, sh, uniq, wg_processes

BIN = Path(sys.executable).parent


def test_api_port_in_use_stops_before_touching_anything(netns: Namespaces, tmp_path: Path) -> None:
    require_root()
    ns = netns.add("cws")
    sh("ip", "link", "set", "lo", "up", ns=ns)
    sh("ip", "addr", "add", "10.244.0.10/32", "dev", "lo", ns=ns)
    sh("sysctl", "-qw", "net.ipv4.ip_forward=0", ns=ns)
    iface = uniq("cws")
    cfg = tmp_path / "gw.yaml"
    cfg.write_text(f"cluster_id: t1\npod_cidrs: [10.244.0.0/16]\ngateway_ip: 10.244.0.10\n"
                   f"wireguard: {{interface: {iface}, implementation: userspace}}\n"
                   f"api: {{listen: '127.0.0.1:8080', advertise: 'http://192.0.2.1:8080'}}\n"
                   f"state_dir: {tmp_path / 'sd'}\n")
    holder = subprocess.Popen(["ip", "netns", "exec", ns, sys.executable, "-c",
                               "import socket, time\ns = socket.socket(); s.bind(('127.0.0.1', 8080)); "
                               "s.listen(); print('up', flush=True); time.sleep(60)"],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "up"
        t0 = time.monotonic()
        p = subprocess.run(["ip", "netns", "exec", ns, str(BIN / "crosswire"), "gateway", "run",
                            "--config", str(cfg)], capture_output=True, text=True, timeout=60)
        assert p.returncode == 1, p.stderr
        assert "crosswire: cannot start: api.listen: cannot listen on 127.0.0.1:8080: Address already in use" \
            in p.stderr, p.stderr
        assert "Traceback" not in p.stderr
        assert time.monotonic() - t0 < 30
        # Nothing was changed: forwarding still off, no WireGuard interface.
        assert sh("sysctl", "-n", "net.ipv4.ip_forward", ns=ns).stdout.strip() == "0"
        assert sh("ip", "link", "show", iface, ns=ns, check=False).returncode != 0
    finally:
        holder.kill()
        holder.wait(timeout=10)


# --- a refused start leaves no data plane behind (issue 20) ----------------------------------

def _refused_setup(netns: Namespaces, tmp_path: Path) -> tuple[str, str, Path, Path]:
    """A namespace and a state directory that crosswire-wg saved a configuration in,
    with a damaged state.db: the daemon starts the data plane early, then refuses."""
    ns = netns.add("cwr")
    sh("ip", "link", "set", "lo", "up", ns=ns)
    iface = uniq("cwr")
    sd = tmp_path / "sd"
    sd.mkdir(mode=0o700)
    (sd / "state.db").write_bytes(b"")  # damaged: refused naming the file
    saved = sd / f"wg-{iface}.conf"
    saved.write_text(f"private_key={'11' * 32}\nreplace_peers=true\n")
    saved.chmod(0o600)
    cfg = tmp_path / "gw.yaml"
    cfg.write_text(f"cluster_id: t1\npod_cidrs: [10.244.0.0/16]\ngateway_ip: 10.244.0.10\n"
                   f"wireguard: {{interface: {iface}, implementation: userspace}}\n"
                   f"api: {{listen: '127.0.0.1:8080', advertise: 'http://192.0.2.1:8080'}}\n"
                   f"dns: {{listen: ''}}\nstate_dir: {sd}\n")
    return ns, iface, sd, cfg


def _run_refused(ns: str, cfg: Path) -> None:
    p = subprocess.run(["ip", "netns", "exec", ns, str(BIN / "crosswire"), "gateway", "run",
                        "--config", str(cfg)], capture_output=True, text=True, timeout=60)
    assert p.returncode == 1, p.stderr
    assert "cannot start:" in p.stderr and "state.db: is empty" in p.stderr, p.stderr


def test_refused_start_stops_the_data_plane_it_started_early(netns: Namespaces, tmp_path: Path) -> None:
    require_root()
    ns, iface, sd, cfg = _refused_setup(netns, tmp_path)
    _run_refused(ns, cfg)
    # It did start one early (and that one restored the saved configuration) ...
    log = (sd / "dataplane.log").read_text()
    assert "restored the saved configuration" in log, log
    # ... and stopped it cleanly: no process, no interface, no UAPI socket.
    assert "shut down, removed" in log, log
    assert wg_processes(iface) == []
    assert sh("ip", "link", "show", iface, ns=ns, check=False).returncode != 0
    assert not Path(f"/var/run/wireguard/{iface}.sock").exists()


def test_refused_start_leaves_a_data_plane_that_ran_before(netns: Namespaces, tmp_path: Path) -> None:
    require_root()
    ns, iface, sd, cfg = _refused_setup(netns, tmp_path)
    wg = subprocess.Popen(["ip", "netns", "exec", ns, str(BIN / "crosswire-wg"), "-f", "--persist",
                           "--saved-config", str(sd / f"wg-{iface}.conf"), iface],
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 30
        while not Path(f"/var/run/wireguard/{iface}.sock").exists():
            assert wg.poll() is None and time.monotonic() < deadline, "crosswire-wg did not start"
            time.sleep(0.05)
        time.sleep(0.2)  # its socket answers
        _run_refused(ns, cfg)
        assert wg.poll() is None, "the refused daemon stopped a data plane it had not started"
        assert sh("ip", "link", "show", iface, ns=ns, check=False).returncode == 0
        assert not (sd / "dataplane.log").exists()  # nothing was started early
    finally:
        wg.terminate()
        try:
            wg.wait(timeout=10)
        except subprocess.TimeoutExpired:
            wg.kill()
            wg.wait(timeout=10)
