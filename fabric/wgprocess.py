"""The WireGuard implementation behind one interface: start, adopt, supervise, stop.

:mod:`fabric.dataplane` (the data plane's one facade) owns one ``WgProcess``.

- ``userspace``: ``crosswire-wg -f IFACE`` (our implementation), the default
  because many kernels (this one too) have no WireGuard module.
- ``wireguard-go``: ``wireguard-go -f IFACE`` (the Debian reference peer).
- ``kernel``: ``ip link add IFACE type wireguard`` through pyroute2, configured
  over generic netlink (:mod:`fabric.wgnetlink`).
- ``auto``: the kernel when its module is loaded or loadable, else ``userspace``
  (:mod:`fabric.wgselect`); decided once, on first use, and logged with the reason.

Userspace processes run in the foreground as our child in a session of their
own (``ip netns exec NS ...`` for a namespace), so ``stop`` knows the pid and a
crash shows up in ``alive``; after a gateway restart the running process is
adopted (interface + answering socket), not started twice. The UAPI socket
directory is not namespaced: interface names must be unique on the machine.

crosswire-wg runs with ``--persist`` and ``--saved-config`` (a 0600 file
beside ``log_path``, in the state directory): when it dies its interface and
routes stay, and the next one re-attaches to them and configures itself from
the file at once. ``fabric.wgearly.start_early`` starts it that way before the
gateway's own slow start-up (a container restart), and the WgProcess made
later takes that process over as its child.

Ownership: every link crosswire creates carries the alias ``crosswire``
(IFLA_IFALIAS, set right after the link appears). A link without it is never
deleted, reconfigured or replaced: ``claim`` (at gateway start) refuses it,
naming the link, and every action that would change it fails. The one
exception is the upgrade from a version that did not mark its links: an
unmarked ``tun`` whose UAPI socket answers (or, for ``kernel``, an unmarked
``wireguard`` link) is adopted and marked when the state directory already
holds this gateway's state.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from typing import Literal

from fabric.model import MTU_MAX, MTU_MIN
from fabric.wgctl import SOCKET_DIR, WgControl
from fabric.wglink import MARK, Link, LinkOwnershipError, WgProcessError, iproute
from fabric.wgnetlink import NetlinkWgControl
from fabric.wgselect import Choice, ModuleState, choose, probe_kernel_module
from fabric.wgspawn import spawn

# LinkOwnershipError and WgProcessError live with the link (fabric.wglink); callers import them here.
__all__ = ["Implementation", "LinkOwnershipError", "WgProcess", "WgProcessError", "saved_config_path"]

Implementation = Literal["auto", "userspace", "kernel", "wireguard-go"]
IMPLEMENTATIONS = ("auto", "userspace", "kernel", "wireguard-go")
# How long a userspace implementation may take to create its TUN and socket. Only
# emulated machines (the VM tier: a Python start takes seconds there) raise it.
START_TIMEOUT = float(os.environ.get("CROSSWIRE_WG_START_TIMEOUT", "10"))
STANDBY_RESPAWN = 5.0  # at most one standby started per this many seconds (one that keeps dying)
log = logging.getLogger("crosswire.dataplane")


def _userspace_binary() -> str:
    beside = os.path.join(os.path.dirname(sys.executable), "crosswire-wg")
    found = beside if os.access(beside, os.X_OK) else shutil.which("crosswire-wg")
    if not found:
        raise WgProcessError("crosswire-wg not found (install the crosswire package)")
    return found


# interface -> the process fabric.wgearly.start_early began; the WgProcess made later takes it.
_early: dict[str, subprocess.Popen[bytes]] = {}


def saved_config_path(log_path: str, interface: str) -> str:
    return os.path.join(os.path.dirname(log_path), f"wg-{interface}.conf")


class WgProcess:
    def __init__(self, interface: str, implementation: Implementation = "auto", mtu: int = 1420,
                 netns: str | None = None, socket_dir: str = SOCKET_DIR,
                 log_path: str | None = None, standby: bool = False, supervise: bool = True,
                 saved_config: str | None = None, inherit_output: bool = False) -> None:
        if implementation not in IMPLEMENTATIONS:
            raise WgProcessError(
                f"wireguard.implementation: {implementation!r} is not one of {', '.join(IMPLEMENTATIONS)}")
        if not interface or len(interface) > 15 or "/" in interface or interface.strip() != interface:
            raise WgProcessError(f"wireguard.interface: {interface!r} is not a valid interface name")
        if not MTU_MIN <= mtu <= MTU_MAX:  # the config's range: checked there first
            raise WgProcessError(f"wireguard.mtu: {mtu} is out of range {MTU_MIN}-{MTU_MAX}")
        self.interface = interface
        self.implementation: Implementation = implementation
        self.mtu = mtu
        self.netns = netns
        self.socket_dir = socket_dir
        self.log_path = log_path
        self.starts = 0  # processes started by this object (restarts = starts - 1)
        self.unknown_checks = 0  # liveness checks that could not tell (resources)
        self._unknown_logged = -10.0
        self.saved_config = saved_config or (saved_config_path(log_path, interface) if log_path else None)
        # False: another supervisor (the data-plane container, `crosswire dataplane run`)
        # runs the userspace process; we only wait for it and program it.
        self.supervise = supervise
        self.inherit_output = inherit_output  # the process logs to our stdout/stderr (a container's)
        self._proc: subprocess.Popen[bytes] | None = _early.pop(interface, None)
        # crosswire-wg with a saved configuration: keep a standby ready (fabric/wg/standby.py).
        self.standby = standby
        self._standby: subprocess.Popen[bytes] | None = None
        self._standby_spawned = -STANDBY_RESPAWN
        self._standby_mutex = threading.Lock()
        self.takeovers = 0  # restarts a standby served
        self._choice: Choice | None = None
        self.link = Link(interface, netns)
        self._uapi = WgControl(interface, socket_dir=socket_dir)
        self._netlink: NetlinkWgControl | None = None

    def __repr__(self) -> str:
        return f"WgProcess({self.interface!r}, {self.implementation!r}, netns={self.netns!r})"

    @property
    def choice(self) -> Choice:
        """The implementation serving the interface and why (``auto`` probes the module once)."""
        if self._choice is None:
            module: ModuleState | None = probe_kernel_module() if self.implementation == "auto" else None
            self._choice = choose(self.implementation, module)
            log.info("%s: wireguard implementation %s (%s)", self.interface, self._choice.display,
                     self._choice.reason)
        return self._choice

    @property
    def resolved(self) -> Literal["userspace", "kernel", "wireguard-go"]:
        return self.choice.implementation

    def control(self) -> WgControl | NetlinkWgControl:
        """The control of this interface's implementation (UAPI socket or kernel netlink)."""
        if self.resolved == "kernel":
            if self._netlink is None:
                self._netlink = NetlinkWgControl(self.interface, netns=self.netns)
            return self._netlink
        return self._uapi

    def command(self, standby: bool = False) -> list[str]:
        binary = "wireguard-go" if self.resolved == "wireguard-go" else _userspace_binary()
        cmd = [binary, "--standby" if standby else "-f", self.interface]
        if self.resolved == "userspace" and self.saved_config:
            cmd[2:2] = ["--persist", "--saved-config", self.saved_config]
        return (["ip", "netns", "exec", self.netns] if self.netns else []) + cmd

    def _standby_wanted(self) -> bool:
        return self.standby and self.supervise and self.resolved == "userspace" and self.saved_config is not None

    def ensure_standby(self) -> None:
        """Start a standby unless one waits (ours, or one left by a previous gateway)."""
        if not self._standby_wanted():
            return
        with self._standby_mutex:  # alive() runs in the reconcile loop's and the API's threads
            self._ensure_standby()

    def _ensure_standby(self) -> None:
        sb = self._standby
        if sb is not None and sb.poll() is None:
            if (self._proc is None or self._proc.poll() is not None) and self._uapi.server_pid() == sb.pid:
                self._proc, self._standby = sb, None  # it took over: our active process now
                self.starts += 1
                self.takeovers += 1
                log.info("%s: the standby took over the data plane", self.interface)
            else:
                return
        self._standby = None  # reaped, or promoted
        from fabric.wg.standby import standby_waiting

        if standby_waiting(self.interface, self.socket_dir):
            return
        now = time.monotonic()
        if now - self._standby_spawned < STANDBY_RESPAWN:
            return
        self._standby_spawned = now
        try:
            self._standby = self._spawn(standby=True)
        except WgProcessError as e:
            log.warning("%s: no standby: %s", self.interface, e)

    def _await_takeover(self) -> bool:
        """The active process died and a standby waits: give it the interface instead of
        starting a competitor. True once it serves (it is then our active process)."""
        if not self._standby_wanted():
            return False
        from fabric.wg.standby import standby_waiting

        ours = self._standby if self._standby is not None and self._standby.poll() is None else None
        if ours is None and not standby_waiting(self.interface, self.socket_dir):
            return False
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self._uapi.alive() is True:
                self._proc, self._standby = ours, None  # an adopted one: pid() asks the socket
                self.starts += 1
                self.takeovers += 1
                log.info("%s: the standby took over the data plane", self.interface)
                return True
            if ours is not None and ours.poll() is not None:
                return False  # it gave up (it logs why): start one the usual way
            if ours is None and not standby_waiting(self.interface, self.socket_dir):
                if self._uapi.alive() is True:
                    continue
                return False
            time.sleep(0.005)
        return False

    # -------------------------------------------------------------- queries

    def claim(self, adopt_unmarked: bool) -> str:
        """Check that the link named ``interface`` is absent or ours, before anything changes.

        ``adopt_unmarked``: the state directory holds this gateway's state, so an
        unmarked link that is what a previous crosswire version ran (see module
        docstring) is ours: it is marked now. Returns "absent", "ours" or "adopted";
        raises LinkOwnershipError for any other link.
        """
        with iproute(self.netns) as ipr:
            found = self.link.find(ipr)
            if found is None:
                return "absent"
            index, kind, marked = found
            if marked:
                return "ours"
            expected = "wireguard" if self.resolved == "kernel" else "tun"
            if not (adopt_unmarked and kind == expected
                    and (self.resolved == "kernel" or self._uapi.alive() is True)):
                raise self.link.foreign(kind)
            ipr.link("set", index=index, ifalias=MARK)
        log.info("%s: adopted the running %s link of the previous crosswire version", self.interface, kind)
        return "adopted"

    def link_exists(self) -> bool:
        return self.link.exists()

    def pid(self) -> int | None:
        """Our child's pid, or for an adopted process the UAPI socket owner's (SO_PEERCRED);
        None for a kernel link or when nothing answers."""
        if self._proc is not None and self._proc.poll() is None:
            return self._proc.pid
        if self.resolved == "kernel":
            return None
        return self._uapi.server_pid()

    def alive(self) -> bool:
        """False only on confirmed death: our process exited, the interface is gone,
        or (userspace) the UAPI socket is missing or refusing. A check that fails for
        want of resources (EMFILE, a full backlog, a timeout) counts as alive: a
        restart would only make it worse (the new process could not even start)."""
        if self._proc is not None and self._proc.poll() is not None:
            self._proc = None  # reaped: it died
            return False
        try:
            if not self.link.exists():
                return False
        except WgProcessError as e:
            if e.transient:
                self._note_unknown(str(e))
                return True
            return False
        if self.resolved == "kernel":
            return True
        answer = self._uapi.alive(periodic=True)
        if answer is None:
            self._note_unknown("UAPI socket busy or out of descriptors")
            return True
        if answer:
            # The supervisor's one-second look: a standby that died (or took over) is
            # replaced here, rate-limited, so the next crash finds one again.
            self.ensure_standby()
        return answer

    def _note_unknown(self, why: str) -> None:
        self.unknown_checks += 1
        now = time.monotonic()
        if now - self._unknown_logged >= 10.0:
            self._unknown_logged = now
            log.warning("%s: cannot check the data plane (%s); not restarting it (%d such checks)",
                        self.interface, why, self.unknown_checks)

    # -------------------------------------------------------------- actions

    def ensure_up(self) -> None:
        """Create the interface if missing, set MTU, bring it up. Idempotent."""
        if self.resolved == "kernel":
            self._ensure_kernel()
        elif self._proc is not None and self.starts == 0 and self._proc.poll() is None:
            self._wait_started()  # start_early's process: give it its start-up time
        elif not self.supervise:
            self._await_external()
        elif not self.alive() and not self._await_takeover():
            self._start_userspace()
        self.link.set_mtu_up(self.mtu)
        self.ensure_standby()

    def _await_external(self) -> None:
        """``supervise`` is off: the process runs in a container of its own. Wait for it
        (a restart of that container), never start one."""
        deadline = time.monotonic() + START_TIMEOUT
        while not self.alive():
            if time.monotonic() >= deadline:
                raise WgProcessError(
                    f"{self.interface}: no {self.resolved} process answers (wireguard.supervise is false: "
                    "it runs in its own container, `crosswire dataplane run`)")
            time.sleep(0.05)

    def _ensure_kernel(self) -> None:
        with iproute(self.netns) as ipr:
            found = self.link.find(ipr)
            index = self.link.owned_index(ipr)
            if index is not None and found is not None and found[1] == "wireguard":
                return
            if index is not None:  # ours, of another kind (a userspace TUN): replace it
                ipr.link("del", index=index)
            try:
                ipr.link("add", ifname=self.interface, kind="wireguard")
            except Exception as e:
                raise WgProcessError(
                    f"{self.interface}: cannot create kernel WireGuard interface ({e}); "
                    "use implementation userspace") from None
        self.link.mark()

    def _start_userspace(self) -> None:
        self._kill_own()
        # A link of ours without an answering socket is a leftover of a dead
        # process (crosswire-wg --persist re-attaches to its TUN, keeping the
        # routes); any other link of that name is not ours to replace.
        try:
            self._delete_leftover()
        except LinkOwnershipError:
            raise
        except WgProcessError:
            pass  # netlink unavailable: the start below fails or succeeds on its own
        self._proc = self._spawn()
        self._wait_started()

    def _delete_leftover(self) -> None:
        with iproute(self.netns) as ipr:
            index = self.link.owned_index(ipr)
            found = self.link.find(ipr)
            if index is not None and found is not None and not (
                    found[1] == "tun" and self.resolved == "userspace" and self.saved_config):
                ipr.link("del", index=index)

    def _spawn(self, standby: bool = False) -> subprocess.Popen[bytes]:
        # A standby must not remove the socket of the process it waits for.
        try:
            return spawn(self.command(standby), self.log_path, None if standby else self._uapi.socket_path,
                         inherit_output=self.inherit_output)
        except OSError as e:
            raise WgProcessError(f"{self.interface}: cannot start {self.resolved}: {e}") from None

    def _wait_started(self) -> None:
        assert self._proc is not None
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                code = self._proc.returncode
                self._proc = None
                raise WgProcessError(f"{self.interface}: {self.resolved} exited with status {code} at start")
            if self.alive():
                self.starts += 1
                self.link.mark()
                return
            time.sleep(0.05)
        self._kill_own()
        raise WgProcessError(f"{self.interface}: {self.resolved} did not come up within {START_TIMEOUT:.0f} s")

    def _kill_own(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        terminate(proc)

    def abandon(self) -> None:
        """SIGKILL our processes (active and standby), as a container runtime stopping their
        container does: the persistent interface, its routes and the saved configuration
        stay for the next start."""
        for proc in (self._standby, self._proc):
            if proc is not None and proc.poll() is None:
                proc.kill()
                proc.wait(timeout=3)
        self._standby = self._proc = None

    def stop(self) -> None:
        """Remove the interface and stop the userspace process (ours or adopted; with
        ``supervise`` off, its own container's supervisor starts it again)."""
        standby, self._standby = self._standby, None
        if standby is not None and standby.poll() is None:  # first: it must not take over
            standby.kill()
            standby.wait(timeout=3)
        self._kill_own()
        # Deleting the TUN makes an adopted wireguard-go / crosswire-wg exit too.
        # A link of that name that is not ours stays (LinkOwnershipError).
        self.link.delete()
        if self.resolved != "kernel":
            deadline = time.monotonic() + 3
            while os.path.exists(self._uapi.socket_path) and time.monotonic() < deadline:
                time.sleep(0.05)


def terminate(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM a child of ours, SIGKILL it if it has not exited within 3 s."""
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=3)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=3)
