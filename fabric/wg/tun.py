"""The TUN device: a Linux L3 interface whose packets a file descriptor reads and writes.

Opened with IFF_TUN | IFF_NO_PI, so every read() returns exactly one bare IP
packet and every write() injects one. MTU and the UP flag are set by ioctls on
a throwaway datagram socket (no netlink round trips, no pyroute2 import cost at
start-up). The device is not persistent: it disappears when the fd is closed,
which is how the daemon removes what it created.

When someone deletes the interface (``ip link del``) while the fd is open, the
kernel detaches the fd: reads then fail with EBADFD and epoll reports
EPOLLERR/EPOLLHUP. ``Tun.exists()`` checks by name as a second signal.
"""

from __future__ import annotations

import errno
import fcntl
import os
import socket
import struct

TUNSETIFF = 0x400454CA
TUNSETOFFLOAD = 0x400454D0
IFF_TUN = 0x0001
IFF_NO_PI = 0x1000
IFF_UP = 0x1
SIOCGIFFLAGS = 0x8913
SIOCSIFFLAGS = 0x8914
SIOCGIFMTU = 0x8921
SIOCSIFMTU = 0x8922
IFNAMSIZ = 16

DEFAULT_MTU = 1420


class TunError(OSError):
    """The TUN device could not be created or configured."""


def check_name(name: str) -> bytes:
    raw = name.encode()
    if not raw or len(raw) >= IFNAMSIZ or "/" in name or any(c.isspace() for c in name) \
            or name in (".", ".."):
        raise TunError(errno.EINVAL, f"invalid interface name {name!r}")
    return raw


def _ifreq_ioctl(name: bytes, request: int, value: int | None, fmt: str = "i") -> int:
    """One SIOC[GS]IF* ioctl on a scratch socket; returns the integer field."""
    payload = struct.pack(f"{IFNAMSIZ}s{fmt}", name, value or 0)
    payload += b"\0" * (40 - len(payload))
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        out = fcntl.ioctl(s.fileno(), request, payload)
    return int(struct.unpack_from(fmt, out, IFNAMSIZ)[0])


class Tun:
    """An open TUN interface. ``fd`` is non-blocking; ``read``/``write`` are os.read/os.write."""

    def __init__(self, name: str, mtu: int = DEFAULT_MTU) -> None:
        raw = check_name(name)
        if os.path.exists(f"/sys/class/net/{name}"):
            # Attaching to someone else's device would hijack it; wireguard-go refuses too.
            raise TunError(errno.EEXIST, f"interface {name} already exists")
        fd = os.open("/dev/net/tun", os.O_RDWR | os.O_CLOEXEC | os.O_NONBLOCK)
        try:
            ifr = struct.pack(f"{IFNAMSIZ}sH", raw, IFF_TUN | IFF_NO_PI)
            ifr += b"\0" * (40 - len(ifr))
            fcntl.ioctl(fd, TUNSETIFF, ifr)
            self.name = name
            self.fd = fd
            self.set_mtu(mtu)
            self.set_up()
        except OSError as e:
            os.close(fd)
            raise TunError(e.errno or errno.EIO, f"cannot create TUN {name}: {e.strerror}") from e

    def set_mtu(self, mtu: int) -> None:
        _ifreq_ioctl(self.name.encode(), SIOCSIFMTU, mtu)

    def mtu(self) -> int:
        return _ifreq_ioctl(self.name.encode(), SIOCGIFMTU, None)

    def set_up(self) -> None:
        raw = self.name.encode()
        flags = _ifreq_ioctl(raw, SIOCGIFFLAGS, None, "h")
        _ifreq_ioctl(raw, SIOCSIFFLAGS, flags | IFF_UP, "h")

    def exists(self) -> bool:
        return os.path.exists(f"/sys/class/net/{self.name}")

    def close(self) -> None:
        """Closing the only fd of a non-persistent TUN removes the interface."""
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def __repr__(self) -> str:
        return f"Tun({self.name!r}, fd={self.fd})"
