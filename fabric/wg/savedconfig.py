"""The configuration crosswire-wg saves after every applied set and restores at start.

A restarted crosswire-wg (a container restart, a crash) is configured the moment
it starts, from the file ``--saved-config`` names, instead of waiting for its
controller to start and program it; with ``--persist`` the interface and its
routes survived too, so traffic resumes after one handshake (initiated at
start, see Daemon.restore).

The file is a wg(8) UAPI set request (``replace_peers=true``: exactly these
peers) holding the private and preshared keys, so: written atomically (a
temporary file in the same directory, then rename) with mode 0600, and
refused at load when anyone but its owner may read it or when it is not
owned by us. Its content is never logged. It is written only when the
configuration changed (``Saver``), and not fsynced: the write runs in the
packet loop, and a crash of the process keeps the page cache anyway; after a
power loss the interface is gone too and the controller programs it again.
"""

from __future__ import annotations

import contextlib
import os
import stat

from fabric.wg.allowedips import format_cidr
from fabric.wg.device import Device
from fabric.wg.uapi import format_endpoint

MAX_SIZE = 16 << 20  # far beyond 10,000 peers; a bigger file is not ours


class SavedConfigError(OSError):
    """The saved configuration cannot be used; the message says why (never its content)."""


def render(device: Device) -> str:
    """The set request (without its ``set=1`` line) that rebuilds ``device``'s configuration."""
    lines = []
    if device.private_key is not None:
        lines.append(f"private_key={device.private_key.hex()}")
    if device.listen_port:
        lines.append(f"listen_port={device.listen_port}")
    if device.fwmark:
        lines.append(f"fwmark={device.fwmark}")
    lines.append("replace_peers=true")
    for peer in device.peers.values():
        lines.append(f"public_key={peer.public_key.hex()}")
        if any(peer.preshared_key):
            lines.append(f"preshared_key={peer.preshared_key.hex()}")
        if peer.endpoint is not None:
            lines.append(f"endpoint={format_endpoint(peer.endpoint)}")
        if peer.persistent_keepalive:
            lines.append(f"persistent_keepalive_interval={peer.persistent_keepalive}")
        for family, net, plen in device.allowed_ips.entries(peer):
            lines.append(f"allowed_ip={format_cidr(family, net, plen)}")
    return "".join(line + "\n" for line in lines)


def save(path: str, text: str) -> None:
    """Replace ``path`` with ``text`` atomically, mode 0600."""
    tmp = f"{path}.tmp{os.getpid()}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
    try:
        os.fchmod(fd, 0o600)  # O_CREAT's mode is masked by umask; an old tmp file kept its mode
        os.write(fd, text.encode())
    except BaseException:
        os.close(fd)
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    os.close(fd)
    os.replace(tmp, path)


def load(path: str) -> str | None:
    """The saved request, None if there is none; SavedConfigError if it must not be used."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
    except FileNotFoundError:
        return None
    except OSError as e:
        raise SavedConfigError(e.errno, f"cannot open the saved configuration: {e.strerror}") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_uid != os.geteuid():
            raise SavedConfigError(0, "the saved configuration is not a regular file of ours: ignored")
        if st.st_mode & 0o077:
            raise SavedConfigError(0, f"the saved configuration is readable by others "
                                      f"(mode {stat.S_IMODE(st.st_mode):o}, want 600): ignored")
        if st.st_size > MAX_SIZE:
            raise SavedConfigError(0, "the saved configuration is too large: ignored")
        data = os.read(fd, MAX_SIZE + 1)
    finally:
        os.close(fd)
    try:
        return data.decode()
    except UnicodeDecodeError:
        raise SavedConfigError(0, "the saved configuration is not text: ignored") from None


class Saver:
    """Saves ``device``'s configuration to ``path`` when it differs from what is there."""

    def __init__(self, path: str, device: Device) -> None:
        self.path = path
        self.device = device
        self.last: str | None = None  # what the file holds, as far as we know

    def __call__(self) -> None:
        text = render(self.device)
        if text != self.last:
            save(self.path, text)
            self.last = text
