"""Which WireGuard implementation serves the interface, and why.

``choose`` is pure (the configured implementation and what is known about the
kernel module in, the implementation and a one-line reason out);
``probe_kernel_module`` is its I/O half. ``auto`` picks the kernel module when
it is loaded or can be loaded (the fastest data plane: see the README's
"Choosing the WireGuard implementation"), else crosswire-wg.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass
from typing import Literal

Resolved = Literal["userspace", "kernel", "wireguard-go"]
SYS_MODULE = "/sys/module/wireguard"
# What the implementations are called where people read them (status, metrics, logs).
DISPLAY = {"userspace": "crosswire-wg", "kernel": "kernel", "wireguard-go": "wireguard-go"}


@dataclass(frozen=True)
class ModuleState:
    available: bool  # the module is loaded (or built in) now
    detail: str  # how we know: "loaded", "loaded by modprobe", or why not


@dataclass(frozen=True)
class Choice:
    implementation: Resolved
    reason: str

    @property
    def display(self) -> str:
        return DISPLAY[self.implementation]


def choose(configured: str, module: ModuleState | None) -> Choice:
    """``module``: the kernel module's state, needed (probed) only for ``auto``."""
    if configured != "auto":
        return Choice(configured, f"configured: implementation {configured}")  # type: ignore[arg-type]
    if module is not None and module.available:
        return Choice("kernel", f"auto: kernel WireGuard module {module.detail}")
    why = module.detail if module is not None else "not probed"
    return Choice("userspace", f"auto: no kernel WireGuard module ({why}), using crosswire-wg")


def probe_kernel_module(sys_module: str = SYS_MODULE, timeout: float = 10.0) -> ModuleState:
    """Loaded already, or loadable now (``modprobe wireguard``, which loads it)?"""
    if os.path.isdir(sys_module):
        return ModuleState(True, "loaded")
    modprobe = shutil.which("modprobe") or ("/sbin/modprobe" if os.path.exists("/sbin/modprobe") else None)
    if modprobe is None:
        return ModuleState(False, "modprobe not found")
    try:
        r = subprocess.run([modprobe, "wireguard"], capture_output=True, text=True, timeout=timeout)
    except (OSError, subprocess.TimeoutExpired) as e:
        return ModuleState(False, f"modprobe wireguard: {e}")
    if r.returncode == 0 and os.path.isdir(sys_module):
        return ModuleState(True, "loaded by modprobe")
    err = (r.stderr.strip().splitlines() or [f"exit status {r.returncode}"])[-1]
    return ModuleState(False, f"modprobe wireguard: {err[:200]}")
