"""crosswire-wg as a process: start-up contract, UAPI socket, shutdown causes, logs without keys."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import stat
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from nsutil import Namespaces, sh, uniq
from wgpair import CROSSWIRE_WG, PYTHON, SOCK_DIR, daemon_pids, genkey, wait_daemon_gone

pytestmark = pytest.mark.root


@dataclass
class Daemon:
    ns: str
    iface: str
    log: Path
    stats: Path

    @property
    def sock(self) -> str:
        return os.path.join(SOCK_DIR, f"{self.iface}.sock")

    def pids(self) -> list[int]:
        return daemon_pids(self.ns, self.iface)

    def wait_gone(self, timeout: float = 5.0) -> bool:
        return wait_daemon_gone(self.ns, self.iface, timeout)

    def iface_exists(self) -> bool:
        proc: subprocess.CompletedProcess[str] = sh("ip", "link", "show", self.iface, ns=self.ns,
                                                    check=False)
        return proc.returncode == 0

    def wg(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        proc: subprocess.CompletedProcess[str] = sh("wg", *args, ns=self.ns, check=check)
        return proc


def start(ns: str, tmp_path: Path, iface: str | None = None) -> tuple[Daemon, subprocess.CompletedProcess[str]]:
    iface = iface or uniq("cwl")
    d = Daemon(ns, iface, tmp_path / f"{iface}.log", tmp_path / f"{iface}.stats")
    proc = sh(CROSSWIRE_WG, "--log-level", "debug", "--log-file", str(d.log), "--stats-file",
              str(d.stats), iface, ns=ns, check=False, timeout=20)
    return d, proc


@pytest.fixture
def daemon(netns: Namespaces, tmp_path: Path) -> Iterator[Daemon]:
    ns = netns.add("cwl")
    d, proc = start(ns, tmp_path)
    try:
        assert proc.returncode == 0, proc.stderr
        yield d
    finally:
        for pid in d.pids():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        with contextlib.suppress(OSError):
            os.unlink(d.sock)


def test_returns_when_ready_with_socket_modes(daemon: Daemon) -> None:
    # No sleep: the parent returned only after the child reported readiness.
    assert daemon.iface_exists()
    st = os.stat(daemon.sock)
    assert stat.S_ISSOCK(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o600
    assert stat.S_IMODE(os.stat(SOCK_DIR).st_mode) == 0o755
    assert len(daemon.pids()) == 1
    shown = daemon.wg("show", daemon.iface).stdout
    assert f"interface: {daemon.iface}" in shown
    mtu = sh("cat", f"/sys/class/net/{daemon.iface}/mtu", ns=daemon.ns).stdout.strip()
    assert mtu == "1420"
    qlen = sh("cat", f"/sys/class/net/{daemon.iface}/tx_queue_len", ns=daemon.ns).stdout.strip()
    assert qlen == "2048"


@pytest.mark.parametrize("cause", ["sigterm", "sigint", "socket_deleted", "interface_deleted"])
def test_stops_and_cleans_up(daemon: Daemon, cause: str) -> None:
    (pid,) = daemon.pids()
    if cause == "sigterm":
        os.kill(pid, signal.SIGTERM)
    elif cause == "sigint":
        os.kill(pid, signal.SIGINT)
    elif cause == "socket_deleted":
        os.unlink(daemon.sock)
    else:
        sh("ip", "link", "del", daemon.iface, ns=daemon.ns)
    assert daemon.wait_gone(5), f"daemon still running after {cause}"
    assert not daemon.iface_exists()
    assert not os.path.exists(daemon.sock)
    assert not daemon.stats.exists()
    assert "stopping:" in daemon.log.read_text()


def test_second_instance_on_same_interface_fails(daemon: Daemon, tmp_path: Path) -> None:
    _, proc = start(daemon.ns, tmp_path, iface=daemon.iface)
    assert proc.returncode == 1
    assert "exists" in proc.stderr
    assert len(daemon.pids()) == 1 and os.path.exists(daemon.sock)
    assert daemon.wg("show", daemon.iface).returncode == 0


def test_bad_interface_name_fails_cleanly(netns: Namespaces, tmp_path: Path) -> None:
    ns = netns.add("cwl")
    _, proc = start(ns, tmp_path, iface="x" * 16)
    assert proc.returncode == 1 and "invalid interface name" in proc.stderr


def test_stale_socket_of_killed_daemon_is_replaced(daemon: Daemon, tmp_path: Path) -> None:
    (pid,) = daemon.pids()
    os.kill(pid, signal.SIGKILL)
    assert daemon.wait_gone(5)
    assert os.path.exists(daemon.sock)  # SIGKILL: nobody removed it
    d2, proc = start(daemon.ns, tmp_path, iface=daemon.iface)
    assert proc.returncode == 0, proc.stderr
    assert d2.wg("show", d2.iface).returncode == 0


def _uapi(path: str, payload: bytes) -> bytes:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(5)
        s.connect(path)
        s.sendall(payload)
        s.shutdown(socket.SHUT_WR)
        chunks = []
        while data := s.recv(65536):
            chunks.append(data)
    return b"".join(chunks)


def test_uapi_several_requests_per_connection_and_bad_op(daemon: Daemon) -> None:
    reply = _uapi(daemon.sock, b"set=1\nlisten_port=40123\n\nget=1\n\nget=1\n\n")
    parts = reply.split(b"\n\n")
    assert parts[0] == b"errno=0"
    assert reply.count(b"errno=0\n\n") == 3
    assert b"listen_port=40123\n" in reply
    # An unknown operation closes the connection without an answer (as wireguard-go).
    assert _uapi(daemon.sock, b"bogus=1\n\nget=1\n\n") == b""
    # Malformed set: an error errno, and nothing changed.
    bad = _uapi(daemon.sock, b"set=1\nlisten_port=notaport\n\n")
    assert bad.startswith(b"errno=") and bad != b"errno=0\n\n"
    assert daemon.wg("show", daemon.iface, "listen-port").stdout.strip() == "40123"


def test_listen_port_in_use_is_refused(daemon: Daemon) -> None:
    daemon.wg("set", daemon.iface, "listen-port", "40200")
    holder = subprocess.Popen(
        ["ip", "netns", "exec", daemon.ns, PYTHON, "-c",
         "import socket,sys,time; s=socket.socket(socket.AF_INET,socket.SOCK_DGRAM); "
         "s.bind(('0.0.0.0',40300)); print('ok',flush=True); time.sleep(30)"],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "ok"
        proc = daemon.wg("set", daemon.iface, "listen-port", "40300", check=False)
        assert proc.returncode != 0
        assert "in use" in proc.stderr.lower()
    finally:
        holder.kill()
        holder.wait()
    # Still bound to, and showing, the port it really has.
    assert daemon.wg("show", daemon.iface, "listen-port").stdout.strip() == "40200"
    assert ":40200" in sh("ss", "-Hlun", ns=daemon.ns).stdout


def test_logs_and_stats_never_contain_keys(daemon: Daemon) -> None:
    priv, _ = genkey()
    psk = sh("wg", "genpsk").stdout.strip()
    _, peer_pub = genkey()
    keyfile = daemon.log.parent / "k"
    keyfile.write_text(priv + "\n")
    keyfile.chmod(0o600)
    pskfile = daemon.log.parent / "p"
    pskfile.write_text(psk + "\n")
    pskfile.chmod(0o600)
    daemon.wg("set", daemon.iface, "private-key", str(keyfile), "peer", peer_pub,
              "preshared-key", str(pskfile), "allowed-ips", "10.1.0.0/24", "endpoint", "192.0.2.9:1")
    daemon.wg("showconf", daemon.iface)
    (pid,) = daemon.pids()
    os.kill(pid, signal.SIGUSR1)
    deadline = time.monotonic() + 5
    while "counters" not in daemon.log.read_text() and time.monotonic() < deadline:
        time.sleep(0.05)
    text = daemon.log.read_text() + daemon.stats.read_text()
    assert "counters" in text
    import base64
    for secret in (priv, psk):
        raw = base64.b64decode(secret)
        for form in (secret, raw.hex(), secret[:12]):
            assert form not in text
    assert stat.S_IMODE(os.stat(daemon.stats).st_mode) & 0o077 in (0, 0o044)


def test_follows_mtu_changes_made_with_ip_link(daemon: Daemon) -> None:
    sh("ip", "link", "set", "dev", daemon.iface, "mtu", "1280", ns=daemon.ns)
    deadline = time.monotonic() + 5
    while "MTU now 1280" not in daemon.log.read_text() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert "MTU now 1280" in daemon.log.read_text()
