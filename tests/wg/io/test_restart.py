"""crosswire-wg --persist --saved-config: a killed process leaves its interface and routes,
the next one re-attaches and configures itself from the saved file (issue 12, event d)."""

from __future__ import annotations

import contextlib
import os
import signal
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest
from nsutil import Namespaces, sh, uniq
from wgpair import CROSSWIRE_WG, SOCK_DIR, daemon_pids, genkey, wait_daemon_gone

pytestmark = pytest.mark.root


def _start(ns: str, iface: str, tmp: Path, *extra: str) -> str:
    proc = sh(CROSSWIRE_WG, "--log-file", str(tmp / "wg.log"), "--stats-file", "none", *extra, iface,
              ns=ns, check=False, timeout=20)
    return str(proc.returncode) + proc.stderr


@pytest.fixture
def ns(netns: Namespaces) -> Iterator[tuple[str, str]]:
    name = netns.add("cwr")
    iface = uniq("cwr")
    try:
        yield name, iface
    finally:
        for pid in daemon_pids(name, iface):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        with contextlib.suppress(OSError):
            os.unlink(os.path.join(SOCK_DIR, f"{iface}.sock"))


def test_killed_then_restarted_keeps_interface_routes_and_configuration(ns: tuple[str, str],
                                                                         tmp_path: Path) -> None:
    name, iface = ns
    saved = tmp_path / "wg.conf"
    args = ("--persist", "--saved-config", str(saved))
    assert _start(name, iface, tmp_path, *args) == "0"
    priv, _ = genkey()
    _, peer_pub = genkey()
    key_file = tmp_path / "key"
    key_file.write_text(priv + "\n")
    sh("wg", "set", iface, "private-key", str(key_file), "listen-port", "51999", "peer", peer_pub,
       "endpoint", "192.0.2.9:51820", "allowed-ips", "10.77.0.0/24", ns=name)
    sh("ip", "link", "set", iface, "alias", "crosswire", ns=name)  # the mark crosswire gives its links
    sh("ip", "route", "add", "10.77.0.0/24", "dev", iface, ns=name)
    shown = sh("wg", "showconf", iface, ns=name).stdout
    st = os.stat(saved)
    assert stat.S_IMODE(st.st_mode) == 0o600 and "private_key=" in saved.read_text()
    assert priv not in (tmp_path / "wg.log").read_text()

    (pid,) = daemon_pids(name, iface)
    os.kill(pid, signal.SIGKILL)
    assert wait_daemon_gone(name, iface, 5)
    # the interface and its route outlived the process
    assert "10.77.0.0/24" in sh("ip", "route", "show", "dev", iface, ns=name).stdout

    assert _start(name, iface, tmp_path, *args) == "0"
    assert sh("wg", "showconf", iface, ns=name).stdout == shown  # configured before it said ready
    assert "10.77.0.0/24" in sh("ip", "route", "show", "dev", iface, ns=name).stdout
    # a handshake went out at once (no packet needed to trigger it)
    assert int(sh("wg", "show", iface, "transfer", ns=name).stdout.split()[2]) > 0

    # a clean stop still removes the interface
    (pid,) = daemon_pids(name, iface)
    os.kill(pid, signal.SIGTERM)
    assert wait_daemon_gone(name, iface, 5)
    assert sh("ip", "link", "show", iface, ns=name, check=False).returncode != 0


def test_never_attaches_to_an_interface_crosswire_did_not_mark(ns: tuple[str, str], tmp_path: Path) -> None:
    name, iface = ns
    sh("ip", "tuntap", "add", "dev", iface, "mode", "tun", ns=name)  # someone else's persistent TUN
    out = _start(name, iface, tmp_path, "--persist", "--saved-config", str(tmp_path / "wg.conf"))
    assert out.startswith("1") and "exists" in out
    assert sh("ip", "link", "show", iface, ns=name).returncode == 0  # untouched


def test_a_saved_configuration_others_may_read_is_refused(ns: tuple[str, str], tmp_path: Path) -> None:
    name, iface = ns
    saved = tmp_path / "wg.conf"
    saved.write_text("listen_port=51998\nreplace_peers=true\n")
    os.chmod(saved, 0o644)
    assert _start(name, iface, tmp_path, "--saved-config", str(saved)) == "0"
    assert "51998" not in sh("wg", "show", iface, "listen-port", ns=name).stdout
    assert "readable by others" in (tmp_path / "wg.log").read_text()
