"""crosswire-wg --standby (issue 20): a second process waits ready and takes over the
persistent interface and the saved configuration the moment the active one dies; it
never resurrects a data plane stopped on purpose, and only one waits per interface."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import struct
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from nsutil import Namespaces, sh, uniq
from wgpair import CROSSWIRE_WG, SOCK_DIR, daemon_pids, genkey, wait_daemon_gone

pytestmark = pytest.mark.root


def _socket_owner(iface: str) -> int | None:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        s.connect(os.path.join(SOCK_DIR, f"{iface}.sock"))
        return int(struct.unpack("3i", s.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12))[0])
    except OSError:
        return None
    finally:
        s.close()


def _standby(ns: str, iface: str, tmp: Path, log: str = "standby.log") -> subprocess.Popen[bytes]:
    out = open(tmp / log, "ab")  # noqa: SIM115
    try:
        return subprocess.Popen(["ip", "netns", "exec", ns, CROSSWIRE_WG, "--standby", "--persist",
                                 "--saved-config", str(tmp / "wg.conf"), "--stats-file", "none", iface],
                                stdout=out, stderr=out)
    finally:
        out.close()


def _wait_log(path: Path, text: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while text not in (path.read_text() if path.exists() else ""):
        assert time.monotonic() < deadline, f"{text!r} not in {path}: {path.read_text() if path.exists() else ''}"
        time.sleep(0.05)


@pytest.fixture
def active(netns: Namespaces, tmp_path: Path) -> Iterator[tuple[str, str, str]]:
    """A configured crosswire-wg --persist (marked as crosswire's) with a route; yields
    (namespace, interface, its `wg showconf`)."""
    ns = netns.add("cwsb")
    iface = uniq("cwsb")
    try:
        sh(CROSSWIRE_WG, "--log-file", str(tmp_path / "wg.log"), "--stats-file", "none", "--persist",
           "--saved-config", str(tmp_path / "wg.conf"), iface, ns=ns, timeout=20)
        priv, _ = genkey()
        _, peer_pub = genkey()
        (tmp_path / "key").write_text(priv + "\n")
        sh("wg", "set", iface, "private-key", str(tmp_path / "key"), "listen-port", "51999", "peer", peer_pub,
           "endpoint", "192.0.2.9:51820", "allowed-ips", "10.77.0.0/24", ns=ns)
        sh("ip", "link", "set", iface, "alias", "crosswire", ns=ns)  # the mark crosswire gives its links
        sh("ip", "link", "set", iface, "up", ns=ns)
        sh("ip", "route", "add", "10.77.0.0/24", "dev", iface, ns=ns)
        yield ns, iface, sh("wg", "showconf", iface, ns=ns).stdout
    finally:
        for pid in daemon_pids(ns, iface):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        for suffix in (".sock", ".standby"):
            with contextlib.suppress(OSError):
                os.unlink(os.path.join(SOCK_DIR, iface + suffix))


def test_standby_takes_over_a_killed_process_at_once(active: tuple[str, str, str], tmp_path: Path) -> None:
    ns, iface, shown = active
    first = _socket_owner(iface)
    assert first is not None
    sb = _standby(ns, iface, tmp_path)
    _wait_log(tmp_path / "standby.log", "standby: ready (imports done, configuration loaded)")
    # Only one standby per interface: a second one exits at once.
    second = _standby(ns, iface, tmp_path, "standby2.log")
    assert second.wait(timeout=30) == 0
    assert "another standby waits" in (tmp_path / "standby2.log").read_text()
    assert _socket_owner(iface) == first  # waiting, not serving

    t0 = time.monotonic()
    os.kill(first, signal.SIGKILL)
    while _socket_owner(iface) in (None, first):
        assert time.monotonic() - t0 < 5, (tmp_path / "standby.log").read_text()
        time.sleep(0.002)
    took = time.monotonic() - t0
    assert _socket_owner(iface) == sb.pid
    assert took < 1.0, f"takeover took {took:.3f} s"  # ~5 ms idle; generous for a loaded CI box
    assert sh("wg", "showconf", iface, ns=ns).stdout == shown
    assert "10.77.0.0/24" in sh("ip", "route", "show", "dev", iface, ns=ns).stdout
    # it initiated the handshake at once
    assert int(sh("wg", "show", iface, "transfer", ns=ns).stdout.split()[2]) > 0
    # serving, it no longer holds the standby lock: a new standby may wait for it
    nxt = _standby(ns, iface, tmp_path, "standby3.log")
    _wait_log(tmp_path / "standby3.log", f"watching pid {sb.pid}")
    assert os.path.exists(os.path.join(SOCK_DIR, f"{iface}.standby"))
    nxt.terminate()  # a stopped standby leaves no lock file behind
    assert nxt.wait(timeout=10) == 0
    assert not os.path.exists(os.path.join(SOCK_DIR, f"{iface}.standby"))


def test_standby_never_resurrects_a_cleanly_stopped_data_plane(active: tuple[str, str, str],
                                                               tmp_path: Path) -> None:
    ns, iface, _ = active
    first = _socket_owner(iface)
    assert first is not None
    sb = _standby(ns, iface, tmp_path)
    _wait_log(tmp_path / "standby.log", "standby: ready")
    os.kill(first, signal.SIGTERM)  # a clean stop removes the interface
    assert sb.wait(timeout=30) == 0
    assert "stopped and removed" in (tmp_path / "standby.log").read_text()
    assert not os.path.exists(os.path.join(SOCK_DIR, f"{iface}.standby"))
    assert wait_daemon_gone(ns, iface, 5)
    assert sh("ip", "link", "show", iface, ns=ns, check=False).returncode != 0


def test_standby_needs_persist_and_saved_config(tmp_path: Path) -> None:
    p = subprocess.run([CROSSWIRE_WG, "--standby", "cwsbx0"], capture_output=True, text=True, timeout=30)
    assert p.returncode == 2 and "--standby needs --persist and --saved-config" in p.stderr


def test_without_pidfds_the_exit_is_polled(tmp_path: Path) -> None:
    # Kernels before 5.3 have no pidfd: the standby polls /proc instead (every 5 ms).
    from fabric.wg import standby

    p = subprocess.Popen(["sleep", "0.3"])
    t0 = time.monotonic()
    standby._poll_exit(p.pid, standby.Prepared(str(tmp_path / "absent.conf")))
    took = time.monotonic() - t0
    p.wait()
    assert 0.2 <= took < 5, took
