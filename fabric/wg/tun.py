"""The TUN device: a Linux L3 interface whose packets a file descriptor reads and writes.

Opened with IFF_TUN | IFF_NO_PI, so every read() returns exactly one bare IP
packet and every write() injects one. MTU and the UP flag are set by ioctls on
a throwaway datagram socket (no netlink round trips, no pyroute2 import cost at
start-up). By default the device is not persistent: it disappears when the fd
is closed, which is how the daemon removes what it created.

With ``persist`` (TUNSETPERSIST) the device outlives a crash of the process, with
its addresses and routes: a new process re-attaches to it (only to a TUN marked
as crosswire's, with the link alias ``crosswire``, that no process holds), so
routes point at a live device again the moment it starts. ``close`` clears the
flag first, so a clean stop still removes the interface.

With ``offload`` (the default) the TUN also has IFF_VNET_HDR: every read and write
carries a virtio_net_hdr, which ``read_batch``/``write_batch`` strip and add with
``fabric.wg.offload`` (writes merge TCP runs; reads split TSO super-packets when
``tso`` asked the kernel for them).

``read_batch`` and ``write_batch`` are the loop's per-packet path: locals instead
of attribute lookups, and a lone packet never pays for a failing read (see
``read_batch``).

When someone deletes the interface (``ip link del``) while the fd is open, the
kernel detaches the fd: reads then fail with EBADFD and epoll reports
EPOLLERR/EPOLLHUP. ``Tun.exists()`` checks by name as a second signal.
"""

from __future__ import annotations

import collections
import contextlib
import errno
import fcntl
import os
import select
import socket
import struct
from collections.abc import Callable

from fabric.wg.offload import VNET_HDR_LEN, ZERO_VNET_HDR, OffloadError, coalesce, gso_split

TUNSETIFF = 0x400454CA
TUNSETPERSIST = 0x400454CB
TUNSETOFFLOAD = 0x400454D0
IFF_TUN = 0x0001
IFF_NO_PI = 0x1000
IFF_VNET_HDR = 0x4000
IFF_MULTI_QUEUE = 0x0100
TUN_F_CSUM = 0x01
TUN_F_TSO4 = 0x02
TUN_F_TSO6 = 0x04
IFF_UP = 0x1
SIOCGIFFLAGS = 0x8913
SIOCSIFFLAGS = 0x8914
SIOCGIFMTU = 0x8921
SIOCSIFMTU = 0x8922
SIOCGIFTXQLEN = 0x8942
SIOCSIFTXQLEN = 0x8943
IFNAMSIZ = 16

DEFAULT_MTU = 1420
TXQUEUELEN = 2048
READ_SIZE = 65535 + VNET_HDR_LEN  # a TSO super-packet plus its virtio_net_hdr


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


MARK = "crosswire"  # the link alias crosswire gives the links it creates (fabric.wgprocess)


def leftover_of_ours(name: str) -> bool:
    """A TUN device (it has tun_flags) carrying crosswire's alias: what a crashed
    persistent crosswire-wg leaves. Whether a process still holds it, TUNSETIFF says."""
    base = f"/sys/class/net/{name}"
    try:
        with open(f"{base}/ifalias") as f:
            alias = f.read().strip()
    except OSError:
        return False
    return alias == MARK and os.path.exists(f"{base}/tun_flags")


class Tun:
    """An open TUN interface. ``fd`` is non-blocking; ``ready.poll(0)`` says whether a read waits."""

    def __init__(self, name: str, mtu: int = DEFAULT_MTU, offload: bool = True,
                 tso: bool = False, persist: bool = False, multi_queue: bool = False) -> None:
        raw = check_name(name)
        self.persist = persist
        self.reattached = False
        if os.path.exists(f"/sys/class/net/{name}"):
            # Attaching to someone else's device would hijack it; wireguard-go refuses too.
            # A persistent TUN of ours left by a crash is the exception (see module doc).
            if not (persist and leftover_of_ours(name)):
                raise TunError(errno.EEXIST, f"interface {name} already exists")
            self.reattached = True
        fd = os.open("/dev/net/tun", os.O_RDWR | os.O_CLOEXEC | os.O_NONBLOCK)
        try:
            flags = IFF_TUN | IFF_NO_PI | (IFF_VNET_HDR if offload else 0)
            if multi_queue:
                flags |= IFF_MULTI_QUEUE
            self._flags = flags
            ifr = struct.pack(f"{IFNAMSIZ}sH", raw, flags)
            ifr += b"\0" * (40 - len(ifr))
            fcntl.ioctl(fd, TUNSETIFF, ifr)  # EBUSY if another process holds a reattached TUN
            self.name = name
            self.fd = fd
            if persist:
                fcntl.ioctl(fd, TUNSETPERSIST, 1)
            # vnet_hdr: every read/write carries a virtio_net_hdr (fabric.wg.offload).
            self.vnet_hdr = offload
            self.tso = False
            if offload and tso:
                # Without TSO, reads are single packets, still behind a (zero) header.
                self.set_tso(True)
            self.set_mtu(mtu)
            # A deeper ring than the default 500: between two of our reads a TCP sender
            # may queue up to tcp_limit_output_bytes; overflowing the ring is a drop that
            # TCP pays for with a retransmit and a halved window.
            self.set_txqueuelen(TXQUEUELEN)
            self.set_up()
        except OSError as e:
            os.close(fd)
            raise TunError(e.errno or errno.EIO, f"cannot create TUN {name}: {e.strerror}") from e
        # Zero-timeout readiness probe (see read_batch).
        self.ready = select.poll()
        self.ready.register(fd, select.POLLIN)

    def add_queue(self) -> Tun:
        """Another queue of a ``multi_queue`` TUN (``--workers``): its own fd; the kernel
        spreads the stack's flows over the queues by flow hash. The interface goes when
        its last queue is closed."""
        fd = os.open("/dev/net/tun", os.O_RDWR | os.O_CLOEXEC | os.O_NONBLOCK)
        try:
            ifr = struct.pack(f"{IFNAMSIZ}sH", self.name.encode(), self._flags)
            fcntl.ioctl(fd, TUNSETIFF, ifr + b"\0" * (40 - len(ifr)))
        except OSError as e:
            os.close(fd)
            raise TunError(e.errno or errno.EIO, f"cannot add a queue to {self.name}: {e.strerror}") from e
        q = object.__new__(Tun)
        q.name, q.fd, q.persist, q.reattached = self.name, fd, False, False
        q.vnet_hdr, q._flags = self.vnet_hdr, self._flags
        q.ready = select.poll()
        q.ready.register(fd, select.POLLIN)
        return q

    def set_mtu(self, mtu: int) -> None:
        _ifreq_ioctl(self.name.encode(), SIOCSIFMTU, mtu)

    def set_txqueuelen(self, qlen: int) -> None:
        _ifreq_ioctl(self.name.encode(), SIOCSIFTXQLEN, qlen)

    def txqueuelen(self) -> int:
        return _ifreq_ioctl(self.name.encode(), SIOCGIFTXQLEN, None)

    def mtu(self) -> int:
        return _ifreq_ioctl(self.name.encode(), SIOCGIFMTU, None)

    def set_up(self) -> None:
        raw = self.name.encode()
        flags = _ifreq_ioctl(raw, SIOCGIFFLAGS, None, "h")
        _ifreq_ioctl(raw, SIOCSIFFLAGS, flags | IFF_UP, "h")

    # Reads stop at EAGAIN, but after the first packet of a wakeup a zero-timeout
    # poll() asks first whether a second one is there. A lone packet (a ping, an ACK,
    # a keepalive) is the common case at low rates, and Python's EAGAIN path (building
    # a BlockingIOError, its strerror and traceback, unwinding) costs ~2 us warm and
    # ~45 us on a CPU cold from idle, against ~20 us for the poll. Bulk reads pay one
    # poll per batch, not per packet. fabric.wg.udp reads the same way.

    def read_batch(self, on_packet: Callable[[bytes, float], None], now: float, limit: int,
                   counters: collections.defaultdict[str, int],
                   after_burst: Callable[[], None],
                   on_packets: Callable[[list[bytes], float], None] | None = None) -> bool:
        """Hand up to ``limit`` queued packets to the Device; False once the interface is gone.

        With ``on_packets`` (the Device's batched path) the packets of one call go
        over as one list (a TSO super-packet's segments as one list of their own),
        else one by one to ``on_packet``. ``after_burst`` runs after each TSO
        super-packet was split, so the caller may send what a burst of segments
        produced before reading on.
        """
        read, fd = os.read, self.fd
        vnet = self.vnet_hdr
        first = True
        batch: list[bytes] = []
        add = batch.append if on_packets is not None else None
        try:
            for _ in range(limit):
                try:
                    buf = read(fd, READ_SIZE)
                except BlockingIOError:
                    return True
                except OSError as e:
                    if e.errno == errno.EBADFD:
                        return False
                    counters["io_tun_read_error"] += 1
                    return True
                if not vnet or (len(buf) > VNET_HDR_LEN and not buf[0] and not buf[1]):
                    # plain packet (behind a zero vnet header: checksum complete)
                    pkt = buf[VNET_HDR_LEN:] if vnet else buf
                    if add is not None:
                        add(pkt)
                    else:
                        on_packet(pkt, now)
                else:
                    try:
                        segments = gso_split(buf)
                    except (OffloadError, struct.error):
                        counters["io_tun_bad_offload"] += 1
                        segments = []
                    else:  # a super-packet, or one packet with a partial checksum
                        counters["io_tso_reads" if buf[1] else "io_csum_reads"] += 1
                    if on_packets is not None:
                        if batch:  # in order: what was read before goes first
                            on_packets(batch, now)
                            batch.clear()
                        on_packets(segments, now)
                    else:
                        for seg in segments:
                            on_packet(seg, now)
                    after_burst()
                if first:
                    first = False
                    if not self.ready.poll(0):
                        return True
            return True
        finally:
            if batch:
                assert on_packets is not None
                on_packets(batch, now)

    def set_tso(self, on: bool) -> bool:
        """TSO (with the checksum offload it needs) on or off; it applies to packets
        queued from then on, and reads handle both kinds. False if the kernel refused."""
        try:
            fcntl.ioctl(self.fd, TUNSETOFFLOAD, TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6 if on else 0)
        except OSError:
            return False
        self.tso = on
        return True

    def write_batch(self, packets: collections.deque[bytes],
                    counters: collections.defaultdict[str, int]) -> bool:
        """Write (and empty) ``packets``; False once the interface is gone."""
        if not self.vnet_hdr:
            write, fd = os.write, self.fd
            pop = packets.popleft
            while packets:
                try:
                    write(fd, pop())
                except OSError as e:
                    if e.errno == errno.EBADFD:
                        packets.clear()
                        return False
                    counters["io_tun_write_error"] += 1
            return True
        writev, fd = os.writev, self.fd
        if len(packets) == 1:  # latency path (a ping, an ACK): nothing to merge
            vecs: list[list[bytes | memoryview]] = [[ZERO_VNET_HDR, packets.popleft()]]
        else:
            vecs = coalesce(list(packets))
            packets.clear()
        for vec in vecs:
            try:
                writev(fd, vec)
            except OSError as e:
                if e.errno == errno.EBADFD:
                    return False
                counters["io_tun_write_error"] += 1
            else:
                if len(vec) > 2:
                    counters["io_gro_writes"] += 1
        return True

    def exists(self) -> bool:
        return os.path.exists(f"/sys/class/net/{self.name}")

    def close(self) -> None:
        """Closing the only fd of a non-persistent TUN removes the interface (a
        persistent one is made non-persistent first)."""
        if self.fd >= 0:
            if self.persist:
                with contextlib.suppress(OSError):
                    fcntl.ioctl(self.fd, TUNSETPERSIST, 0)
            os.close(self.fd)
            self.fd = -1

    def __repr__(self) -> str:
        return f"Tun({self.name!r}, fd={self.fd})"
