"""IP forwarding: the gateway routes pod traffic between its pod interfaces and WireGuard.

The daemon sets the sysctls itself at startup (the manifests used to need a
privileged init container for it). Where /proc/sys is read-only (an
unprivileged container) it logs a warning naming the sysctl and carries on:
someone else (the init container, the node) may have set it. ``/readyz``
checks the values on every call, so a gateway that cannot forward is never
reported ready.
"""

from __future__ import annotations

import ipaddress
import logging
from pathlib import Path

from gateway.config import Config

log = logging.getLogger("crosswire.forwarding")

IPV4 = "net.ipv4.ip_forward"
IPV6 = "net.ipv6.conf.all.forwarding"
PROC_SYS = Path("/proc/sys")


def wanted(config: Config) -> tuple[str, ...]:
    """The forwarding sysctls this gateway needs: IPv4 always, IPv6 when it has IPv6 ranges."""
    v6 = any(ipaddress.ip_network(c).version == 6 for c in config.pod_cidrs + config.service_cidrs)
    return (IPV4, IPV6) if v6 else (IPV4,)


def _path(name: str, root: Path) -> Path:
    return root.joinpath(*name.split("."))


def read(name: str, root: Path = PROC_SYS) -> str | None:
    try:
        return _path(name, root).read_text().strip()
    except OSError:
        return None


def enable(names: tuple[str, ...], root: Path = PROC_SYS) -> list[str]:
    """Set each sysctl to 1; the problems (one per sysctl that is still not 1)."""
    problems = []
    for name in names:
        if read(name, root) == "1":
            continue
        try:
            _path(name, root).write_text("1\n")
        except OSError as e:
            why = e.strerror or type(e).__name__
            log.warning("cannot set %s=1 (%s): the gateway will not forward traffic unless it is set "
                        "elsewhere (privileged init container, node sysctl)", name, why)
            problems.append(f"{name}: cannot set it to 1 ({why})")
            continue
        log.info("set %s=1", name)
    return problems


def check(names: tuple[str, ...], root: Path = PROC_SYS) -> list[str]:
    """Readiness: one problem per sysctl that is not 1."""
    out = []
    for name in names:
        v = read(name, root)
        if v != "1":
            out.append(f"IP forwarding is off ({name}={v if v is not None else 'unreadable'})")
    return out
