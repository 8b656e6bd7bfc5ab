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

import contextlib
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
SIOCGIFTXQLEN = 0x8942
SIOCSIFTXQLEN = 0x8943
IFNAMSIZ = 16

DEFAULT_MTU = 1420
TXQUEUELEN = 2048


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

    def __init__(self, name: str, mtu: int = DEFAULT_MTU, offload: bool = True,
                 tso: bool = False) -> None:
        raw = check_name(name)
        if os.path.exists(f"/sys/class/net/{name}"):
            # Attaching to someone else's device would hijack it; wireguard-go refuses too.
            raise TunError(errno.EEXIST, f"interface {name} already exists")
        fd = os.open("/dev/net/tun", os.O_RDWR | os.O_CLOEXEC | os.O_NONBLOCK)
        try:
            flags = IFF_TUN | IFF_NO_PI | (IFF_VNET_HDR if offload else 0)
            ifr = struct.pack(f"{IFNAMSIZ}sH", raw, flags)
            ifr += b"\0" * (40 - len(ifr))
            fcntl.ioctl(fd, TUNSETIFF, ifr)
            self.name = name
            self.fd = fd
            # vnet_hdr: every read/write carries a virtio_net_hdr (see gso_split/coalesce).
            self.vnet_hdr = offload
            if offload and tso:
                # Without TSO, reads are single packets, still behind a (zero) header.
                with contextlib.suppress(OSError):
                    fcntl.ioctl(fd, TUNSETOFFLOAD, TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6)
            self.set_mtu(mtu)
            # A deeper ring than the default 500: between two of our reads a TCP sender
            # may queue up to tcp_limit_output_bytes; overflowing the ring is a drop that
            # TCP pays for with a retransmit and a halved window.
            self.set_txqueuelen(TXQUEUELEN)
            self.set_up()
        except OSError as e:
            os.close(fd)
            raise TunError(e.errno or errno.EIO, f"cannot create TUN {name}: {e.strerror}") from e

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

    def exists(self) -> bool:
        return os.path.exists(f"/sys/class/net/{self.name}")

    def close(self) -> None:
        """Closing the only fd of a non-persistent TUN removes the interface."""
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def __repr__(self) -> str:
        return f"Tun({self.name!r}, fd={self.fd})"


# -- offloads (IFF_VNET_HDR) ---------------------------------------------------------------
#
# With IFF_VNET_HDR every read and write starts with a 10-byte struct virtio_net_hdr.
# On the way in, ``coalesce`` merges consecutive in-order segments of one TCP flow into
# one super-packet (as the kernel's GRO would), so one write feeds the receiving TCP
# stack a whole run instead of one syscall and one stack traversal per segment.
# TUNSETOFFLOAD(CSUM|TSO4|TSO6) (``tso=True``) would let the kernel hand us 64 KB TCP
# super-packets with partial checksums, which ``gso_split`` cuts into segments; measured
# here, computing each segment's checksum in Python costs more than the read syscalls
# it saves, so it is off by default. Both are pure functions on bytes.
#
# Checksums use the identity: the one's complement sum of big-endian 16-bit words equals
# the value of the whole buffer, read as one big integer, modulo 0xFFFF (2**16 = 1 mod
# 0xFFFF) - a single C-speed int.from_bytes instead of a Python loop over words.

IFF_VNET_HDR = 0x4000
TUN_F_CSUM = 0x01
TUN_F_TSO4 = 0x02
TUN_F_TSO6 = 0x04
VNET_HDR = struct.Struct("<BBHHHH")
VNET_HDR_LEN = VNET_HDR.size
VIRTIO_NET_HDR_F_NEEDS_CSUM = 1
GSO_NONE = 0
GSO_TCPV4 = 1
GSO_TCPV6 = 4
GSO_ECN = 0x80
ZERO_VNET_HDR = bytes(VNET_HDR_LEN)
TCP_FIN, TCP_PSH, TCP_ACK, TCP_CWR = 0x01, 0x08, 0x10, 0x80
MAX_COALESCED = 65535


class OffloadError(ValueError):
    """A packet from the kernel whose offload metadata does not describe it."""


def _sum(data: bytes | bytearray | memoryview) -> int:
    """One's complement sum of ``data`` (zero-padded to even length), mod 0xFFFF."""
    v = int.from_bytes(data, "big")
    if len(data) & 1:
        v <<= 8
    return v % 0xFFFF


def _csum(total: int) -> int:
    """The checksum field for a sum that includes a zeroed field (never 0: UDP's 'none')."""
    return 0xFFFF - total % 0xFFFF


def _pseudo_sum(pkt: bytes | bytearray, v6: bool, proto: int, length: int) -> int:
    addrs = pkt[8:40] if v6 else pkt[12:20]
    return int.from_bytes(addrs, "big") + proto + length


def complete_checksum(pkt: bytes, csum_start: int, csum_offset: int) -> bytes:
    """Finish a CHECKSUM_PARTIAL packet: the field holds the pseudo-header seed."""
    at = csum_start + csum_offset
    if at + 2 > len(pkt) or csum_start >= len(pkt):
        raise OffloadError("checksum offsets beyond the packet")
    out = bytearray(pkt)
    out[at:at + 2] = _csum(_sum(memoryview(out)[csum_start:])).to_bytes(2, "big")
    return bytes(out)


def gso_split(buf: bytes) -> list[bytes]:
    """A read from a vnet-hdr TUN -> plain IP packets with complete checksums."""
    flags, gso_type, _hdr_len, gso_size, csum_start, csum_offset = VNET_HDR.unpack_from(buf)
    pkt = buf[VNET_HDR_LEN:]
    gso_type &= ~GSO_ECN
    if gso_type == GSO_NONE:
        if flags & VIRTIO_NET_HDR_F_NEEDS_CSUM:
            return [complete_checksum(pkt, csum_start, csum_offset)]
        return [pkt]
    if gso_type not in (GSO_TCPV4, GSO_TCPV6) or gso_size == 0 or len(pkt) < 40:
        raise OffloadError(f"unsupported gso_type {gso_type}")
    v6 = gso_type == GSO_TCPV6
    if v6:
        if pkt[0] >> 4 != 6 or pkt[6] != 6:
            raise OffloadError("TCPv6 super-packet without a plain TCP header")
        iphl = 40
    else:
        if pkt[0] >> 4 != 4:
            raise OffloadError("TCPv4 super-packet is not IPv4")
        iphl = (pkt[0] & 15) * 4
    if len(pkt) < iphl + 20:
        raise OffloadError("truncated TCP super-packet")
    thl = (pkt[iphl + 12] >> 4) * 4
    hl = iphl + thl
    if thl < 20 or len(pkt) < hl:
        raise OffloadError("bad TCP header length")
    view = memoryview(pkt)
    payload = view[hl:]
    plen = len(payload)
    seq = int.from_bytes(pkt[iphl + 4:iphl + 8], "big")
    tcp_flags = pkt[iphl + 13]
    ip_id = int.from_bytes(pkt[4:6], "big")
    addr_sum = int.from_bytes(pkt[8:40] if v6 else pkt[12:20], "big")
    template = bytearray(pkt[:hl])
    template[iphl + 16:iphl + 18] = b"\0\0"
    if not v6:
        template[10:12] = b"\0\0"
    out = []
    for i, off in enumerate(range(0, plen, gso_size)):
        chunk = payload[off:off + gso_size]
        n = len(chunk)
        h = bytearray(template)
        if v6:
            h[4:6] = (thl + n).to_bytes(2, "big")
        else:
            h[2:4] = (hl + n).to_bytes(2, "big")
            h[4:6] = ((ip_id + i) & 0xFFFF).to_bytes(2, "big")
            h[10:12] = _csum(_sum(h[:iphl])).to_bytes(2, "big")
        h[iphl + 4:iphl + 8] = ((seq + off) & 0xFFFFFFFF).to_bytes(4, "big")
        f = tcp_flags
        if off + gso_size < plen:
            f &= ~(TCP_FIN | TCP_PSH)
        if i:
            f &= ~TCP_CWR
        h[iphl + 13] = f
        # Header and payload both start at even offsets, so their sums simply add.
        total = addr_sum + 6 + thl + n + _sum(h[iphl:]) + _sum(chunk)
        h[iphl + 16:iphl + 18] = _csum(total).to_bytes(2, "big")
        out.append(bytes(h) + chunk)
    if not out:  # a super-packet without payload: just finish its checksum
        return [complete_checksum(pkt, csum_start, csum_offset)]
    return out


_V4_TCP = struct.Struct("!BBHHBBBBHQIIIBBHHH")  # IPv4 (no options) + fixed TCP header
_V6_TCP = struct.Struct("!IHBBQQQQIIIBBHHH")  # IPv6 (TCP next) + fixed TCP header


def _tcp_run_key(pkt: bytes) -> tuple[tuple[object, ...], int, int, int, int] | None:
    """(flow key, seq, header length, IP header length, payload length) of a TCP data
    segment that may join a coalesced run, or None. The key covers everything that must
    be equal between segments: addresses, ports, ack, window, options, TOS/TTL/DF.
    One struct unpack per packet: this runs for every packet written to the TUN."""
    n = len(pkt)
    b0 = pkt[0] if n >= 60 else 0
    if b0 == 0x45:
        f = _V4_TCP.unpack_from(pkt)
        # f: b0 tos len id frag_hi frag_lo ttl proto csum addrs ports seq ack off flags win
        if f[7] != 6 or f[4] & 0x3F or f[5]:  # not TCP, or a fragment
            return None
        flags = f[14]
        hl = 20 + (f[13] >> 4) * 4
        key: tuple[object, ...] = (f[1], f[4], f[6], f[9], f[10], f[12], f[13], f[15], f[17],
                                   pkt[40:hl])
        seq, iphl = f[11], 20
    elif b0 >> 4 == 6:
        f = _V6_TCP.unpack_from(pkt)
        # f: ver/tc/flow plen nh hop src(2) dst(2) ports seq ack off flags win csum urg
        if f[2] != 6:
            return None
        flags = f[12]
        hl = 40 + (f[11] >> 4) * 4
        key = (f[0], f[3], f[4], f[5], f[6], f[7], f[8], f[10], f[11], f[13], f[15], pkt[60:hl])
        seq, iphl = f[9], 40
    else:
        return None
    if flags & ~(TCP_ACK | TCP_PSH) or not flags & TCP_ACK or n <= hl:
        return None
    return key, seq, hl, iphl, n - hl


def _tcp_checksum_ok(pkt: bytes, iphl: int) -> bool:
    tcp = memoryview(pkt)[iphl:]
    return (_pseudo_sum(pkt, iphl == 40, 6, len(tcp)) + _sum(tcp)) % 0xFFFF == 0


def coalesce(packets: list[bytes], verify: bool = False) -> list[list[bytes | memoryview]]:
    """Plain IP packets -> write vectors (vnet header first), merging TCP runs.

    A run: same flow key, contiguous sequence numbers, every segment but the last of
    the same payload size, only the last may carry PSH. The kernel does not re-verify
    the TCP checksum of a NEEDS_CSUM super-packet. By default segments are merged
    without checking theirs: each one was authenticated by the tunnel's AEAD, so a bad
    checksum can only come from the peer's own stack, and a peer holding the session
    key could send any valid-checksum bytes anyway; checking costs a third of a
    decryption per packet. ``verify=True`` checks and keeps bad segments out of runs.
    """
    out: list[list[bytes | memoryview]] = []
    i, count = 0, len(packets)
    while i < count:
        pkt = packets[i]
        info = _tcp_run_key(pkt)
        j = i + 1
        if info is not None and j < count and (not verify or _tcp_checksum_ok(pkt, info[3])):
            key, seq, hl, iphl, size = info
            total = len(pkt)
            nxt = seq + size
            last_flags = pkt[iphl + 13]
            while j < count and not last_flags & TCP_PSH:
                cand = packets[j]
                cinfo = _tcp_run_key(cand)
                if cinfo is None or cinfo[0] != key or cinfo[1] != nxt & 0xFFFFFFFF \
                        or cinfo[4] > size or total + cinfo[4] > MAX_COALESCED \
                        or (verify and not _tcp_checksum_ok(cand, iphl)):
                    break
                total += cinfo[4]
                nxt += cinfo[4]
                last_flags = cand[iphl + 13]
                j += 1
                if cinfo[4] < size:
                    break  # a short segment ends a run
        if j - i < 2:
            out.append([ZERO_VNET_HDR, pkt])
            i += 1
            continue
        first = packets[i]
        h = bytearray(first[:hl])
        v6 = iphl == 40
        if v6:
            h[4:6] = (total - 40).to_bytes(2, "big")
        else:
            h[2:4] = total.to_bytes(2, "big")
            h[10:12] = b"\0\0"
            h[10:12] = _csum(_sum(h[:20])).to_bytes(2, "big")
        h[iphl + 13] = last_flags
        # NEEDS_CSUM: the field carries the pseudo-header sum, the kernel adds the rest.
        seed = _pseudo_sum(first, v6, 6, total - iphl) % 0xFFFF
        h[iphl + 16:iphl + 18] = seed.to_bytes(2, "big")
        vhdr = VNET_HDR.pack(VIRTIO_NET_HDR_F_NEEDS_CSUM, GSO_TCPV6 if v6 else GSO_TCPV4,
                             hl, size, iphl, 16)
        vec: list[bytes | memoryview] = [vhdr, bytes(h)]
        for k in range(i, j):
            vec.append(memoryview(packets[k])[hl:])
        out.append(vec)
        i = j
    return out
