"""``crosswire-wg --standby``: a second process that takes over when the running one dies.

Starting crosswire-wg costs a Python start (interpreter, imports: ~0.3 s on an
idle machine, two to three times that under load), and while no process holds
the persistent TUN every packet is lost. A standby pays that start in advance:
it imports everything the daemon needs, loads and checks the saved
configuration (``--saved-config``; rebuilt into a throwaway device whenever the
file changes, so a configuration that would be refused is logged now, not at
the takeover), then waits on a pidfd of the active process (the UAPI socket's
owner, SO_PEERCRED). The moment the active one exits:

- if its interface is still there, marked as crosswire's (it died: ``--persist``
  kept the TUN and its routes), the standby becomes the active one: it
  re-attaches to the TUN, binds the UDP port and the UAPI socket, restores the
  saved configuration and initiates a handshake with every peer at once
  (``fabric.wg.cli._serve``);
- if the interface is gone, the active one was stopped on purpose (a clean
  stop removes it): the standby exits too, and never resurrects a data plane
  that was taken down.

One standby per interface: it holds an exclusive ``flock`` on
``/var/run/wireguard/IFACE.standby`` while it waits and until it serves (then,
or when it exits, also on SIGTERM, it removes the file); a second one finds
the lock taken and exits at once. The supervisor (the
gateway's ``fabric.wgprocess.WgProcess``, or ``crosswire-wg --supervise`` in a
data-plane container) asks ``standby_waiting`` before starting one and, when
the active process died, waits for the standby to serve instead of starting a
competing process.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import os
import select
import socket
import struct
import time

from fabric.wg.tun import leftover_of_ours
from fabric.wg.uapi_server import socket_path

log = logging.getLogger("crosswire.wg")

RECHECK = 1.0  # while waiting: re-read the saved configuration this often


def lock_path(iface: str, directory: str) -> str:
    return os.path.join(directory, f"{iface}.standby")


def take_lock(iface: str, directory: str) -> int | None:
    """The standby lock's fd, or None if another standby holds it. A few tries: a
    supervisor asking ``standby_waiting`` holds a shared lock for an instant."""
    os.makedirs(directory, mode=0o755, exist_ok=True)
    fd = os.open(lock_path(iface, directory), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
    for _ in range(5):
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return fd
        except BlockingIOError:
            time.sleep(0.02)
    os.close(fd)
    return None


def standby_waiting(iface: str, directory: str) -> bool:
    """Whether a standby holds the lock for ``iface`` (waiting, or taking over)."""
    try:
        fd = os.open(lock_path(iface, directory), os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)  # also drops the shared lock, if it was granted
    return False


def active_pid(iface: str, directory: str) -> int | None:
    """The pid of the process serving ``iface``'s UAPI socket, None if none answers."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(1.0)
    try:
        s.connect(socket_path(iface, directory))
        pid = struct.unpack("3i", s.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12))[0]
        return pid if pid > 0 else None
    except OSError:
        return None
    finally:
        s.close()


class Prepared:
    """The saved configuration, checked: rebuilt into a throwaway device when it changes."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.text: str | None = None
        self.ok = False

    def refresh(self) -> None:
        from fabric.wg import savedconfig
        from fabric.wg.device import Device
        from fabric.wg.uapi import handle

        try:
            text = savedconfig.load(self.path)
        except savedconfig.SavedConfigError as e:
            if self.text != "":
                log.warning("standby: %s (%s)", e.strerror or e, self.path)
            self.text, self.ok = "", False
            return
        if text == self.text:
            return
        self.text = text
        if text is None:
            self.ok = False
            return
        reply = handle(Device(), "set=1\n" + text + "\n", time.monotonic())
        self.ok = not reply.errno
        if not self.ok:
            log.warning("standby: the saved configuration %s is refused (errno %d)", self.path, reply.errno)


def wait(iface: str, directory: str, saved_config: str) -> bool:
    """Block until the active process for ``iface`` exits. True: take over now (it
    died, its interface is left); False: nothing to take over (stopped on purpose)."""
    prepared = Prepared(saved_config)
    prepared.refresh()
    logged_pid: int | None = None
    while True:
        pid = active_pid(iface, directory)
        if pid is None:
            if leftover_of_ours(iface):
                return True  # died before we could follow it
            log.info("standby: no data plane on %s to stand by for; exiting", iface)
            return False
        try:
            pidfd: int | None = os.pidfd_open(pid)
        except OSError as e:
            if e.errno == errno.ESRCH:
                continue  # exited just now: look again
            pidfd = None  # no pidfds (Linux < 5.3): poll the pid instead, every few ms
        if pid != logged_pid:
            log.info("standby: ready (imports done, configuration %s), watching pid %d",
                     "loaded" if prepared.ok else "absent or refused", pid)
            logged_pid = pid
        if pidfd is None:
            _poll_exit(pid, prepared)
        else:
            try:
                poller = select.poll()
                poller.register(pidfd, select.POLLIN)
                while not poller.poll(RECHECK * 1000):
                    prepared.refresh()
            finally:
                os.close(pidfd)
        if leftover_of_ours(iface):
            log.info("standby: pid %d exited, taking over %s", pid, iface)
            return True
        # Gone with its interface (a clean stop), or another process took over already.
        if active_pid(iface, directory) is None:
            log.info("standby: pid %d stopped and removed %s; exiting", pid, iface)
            return False


def _poll_exit(pid: int, prepared: Prepared) -> None:
    next_refresh = time.monotonic() + RECHECK
    while os.path.exists(f"/proc/{pid}") and _state(pid) != "Z":
        time.sleep(0.005)
        if time.monotonic() >= next_refresh:
            prepared.refresh()
            next_refresh = time.monotonic() + RECHECK


def _state(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return "Z"


def release(fd: int | None, iface: str, directory: str) -> None:
    """Give up the lock and remove its file (no leftovers): done waiting, or serving. A
    standby that opens the old file meanwhile cannot lock it (we hold it) and exits."""
    if fd is not None:
        with contextlib.suppress(OSError):
            os.unlink(lock_path(iface, directory))
        with contextlib.suppress(OSError):
            os.close(fd)
