"""Link change notifications: an rtnetlink socket subscribed to RTMGRP_LINK.

``ip link set dev X mtu N`` makes the kernel multicast an RTM_NEWLINK before
the command returns, so with this socket in the loop's epoll set (handled
before the TUN in a wakeup) the next packet read from the TUN is padded for
the new MTU. Nothing is read per packet: the socket is only readable when
some link changed. The messages are only checked for our interface index;
the MTU itself is then read with the usual ioctl.
"""

from __future__ import annotations

import contextlib
import socket
import struct

RTMGRP_LINK = 1
RTM_NEWLINK = 16
_NLMSG = struct.Struct("=IHHII")  # len, type, flags, seq, pid
_IFINFO = struct.Struct("=BxHiII")  # family, type, index, flags, change
_READ = 1 << 16


class LinkWatch:
    """Tells whether interface ``ifindex`` changed since the last ``changed()``."""

    def __init__(self, ifindex: int) -> None:
        self.ifindex = ifindex
        self.sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_NONBLOCK
                                  | socket.SOCK_CLOEXEC, socket.NETLINK_ROUTE)
        try:
            self.sock.bind((0, RTMGRP_LINK))
        except OSError:
            self.sock.close()
            raise

    def fileno(self) -> int:
        return self.sock.fileno()

    def changed(self) -> bool:
        """Drain the socket; True if a message was about our link, or some were lost
        (ENOBUFS: the receive buffer overflowed, so assume the worst)."""
        ours = False
        while True:
            try:
                data = self.sock.recv(_READ)
            except BlockingIOError:
                return ours
            except OSError:  # ENOBUFS: notifications were dropped
                ours = True
                continue
            if not data:
                return ours
            ours = ours or self._mentions(data)

    def _mentions(self, data: bytes) -> bool:
        off, n = 0, len(data)
        while off + _NLMSG.size + _IFINFO.size <= n:
            length, kind = _NLMSG.unpack_from(data, off)[:2]
            if length < _NLMSG.size:
                return False
            if kind == RTM_NEWLINK and _IFINFO.unpack_from(data, off + _NLMSG.size)[2] == self.ifindex:
                return True
            off += (length + 3) & ~3
        return False

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.close()
