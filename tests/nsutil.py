"""Helpers for tests that need root and network namespaces.

Under CI=true a test that cannot get root or namespaces fails instead of
skipping, so a green CI run always means the namespace tests really ran.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import time
import uuid
from collections.abc import Iterator

import pytest

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def _unavailable(reason: str) -> None:
    if IN_CI:
        pytest.fail(f"needs root/namespaces but {reason} (CI=true: failing, not skipping)")
    pytest.skip(reason)


def require_root(*tools: str) -> None:
    """Fail (CI) or skip (dev laptop) unless root, netns and the given tools are there."""
    if os.geteuid() != 0:
        _unavailable("not running as root")
    for tool in ("ip", *tools):
        if shutil.which(tool) is None:
            _unavailable(f"{tool} not installed")
    if not os.path.exists("/dev/net/tun"):
        _unavailable("/dev/net/tun missing")


def uniq(prefix: str) -> str:
    """A short machine-unique name (interface names are limited to 15 chars)."""
    return f"{prefix}{uuid.uuid4().hex[:6]}"[:15]


def sh(*args: str, check: bool = True, ns: str | None = None, timeout: float = 60,
       input: str | None = None) -> subprocess.CompletedProcess[str]:
    cmd = list(args)
    if ns is not None:
        cmd = ["ip", "netns", "exec", ns, *cmd]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, input=input)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} -> {proc.returncode}\n{proc.stdout}\n{proc.stderr}")
    return proc


def wg_processes(iface: str) -> list[int]:
    """Pids of crosswire-wg processes whose command line names ``iface`` (unique on the machine)."""
    out = []
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open(f"/proc/{d}/cmdline", "rb") as f:
                    argv = f.read().split(b"\0")
            except OSError:
                continue
            if iface.encode() in argv and any(b"crosswire-wg" in a for a in argv):
                out.append(int(d))
    return out


def remove_wg_runtime(iface: str) -> None:
    """The machine-wide runtime files of a data plane on ``iface`` (socket, stats, the
    standby's lock: a SIGKILLed standby cannot remove its own). Kill its processes first,
    or a live one writes its stats again."""
    for suffix in (".sock", ".stats", ".standby"):
        with contextlib.suppress(OSError):
            os.unlink(f"/var/run/wireguard/{iface}{suffix}")


def kill_ns_processes(ns: str) -> None:
    pids = subprocess.run(["ip", "netns", "pids", ns], capture_output=True, text=True).stdout.split()
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in pids:
            with contextlib.suppress(ProcessLookupError, ValueError):
                os.kill(int(pid), sig)
        if sig == signal.SIGTERM and pids:
            time.sleep(0.3)
        pids = subprocess.run(["ip", "netns", "pids", ns], capture_output=True, text=True).stdout.split()
        if not pids:
            break


def delete_ns(ns: str) -> None:
    kill_ns_processes(ns)
    subprocess.run(["ip", "netns", "del", ns], capture_output=True)


class Namespaces:
    """Creates uniquely named namespaces and removes them (and their processes) at teardown."""

    def __init__(self) -> None:
        self.created: list[str] = []

    def add(self, prefix: str = "cw") -> str:
        name = uniq(prefix)
        sh("ip", "netns", "add", name)
        self.created.append(name)
        sh("ip", "link", "set", "lo", "up", ns=name)
        return name

    def veth(self, ns_a: str, ns_b: str, addr_a: str, addr_b: str, name: str = "v") -> tuple[str, str]:
        """A veth pair between two namespaces with the given addresses (CIDR notation)."""
        a, b = uniq(name + "a"), uniq(name + "b")
        sh("ip", "link", "add", a, "netns", ns_a, "type", "veth", "peer", "name", b, "netns", ns_b)
        for ns, ifname, addr in ((ns_a, a, addr_a), (ns_b, b, addr_b)):
            flags = ["nodad"] if ":" in addr else []
            sh("ip", "addr", "add", addr, "dev", ifname, *flags, ns=ns)
            sh("ip", "link", "set", ifname, "up", ns=ns)
        return a, b

    def cleanup(self) -> None:
        for ns in reversed(self.created):
            delete_ns(ns)
        self.created.clear()


@contextlib.contextmanager
def namespaces() -> Iterator[Namespaces]:
    n = Namespaces()
    try:
        yield n
    finally:
        n.cleanup()
