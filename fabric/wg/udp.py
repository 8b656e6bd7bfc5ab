"""The UDP side of crosswire-wg: the socket pair, its options, GRO reads and GSO sends.

Two UDP sockets, IPv4 and IPv6-only, share the listen port (``bind_pair``; with
port 0 it retries until one port is free on both). Socket buffers are forced
large (root may exceed rmem_max), as wireguard-go does; ``fwmark`` becomes
SO_MARK. Sockets stay blocking for sends (a full send buffer applies
back-pressure instead of dropping) and are read with MSG_DONTWAIT.

Syscalls per datagram are cut in both directions:

- GRO (``read_batch``): UDP_GRO is asked for on every socket, so one read may hold
  several datagrams of one source, all ``gso_size`` bytes but the last; they are
  split here. After the first read of a wakeup a zero-timeout poll() on the
  socket decides whether to read on (see ``fabric.wg.tun.Tun.read_batch``).
- GSO (``send_gso``): runs of equal-sized datagrams to one endpoint leave in one
  sendmsg with UDP_SEGMENT; the kernel splits them, the wire sees ordinary
  datagrams. A path without GSO support makes ``send_gso`` report False, and the
  caller falls back to ``send_each``.

Sticky source (as the kernel's WireGuard): IP_PKTINFO / IPV6_RECVPKTINFO give
every read the local address it was sent to; it travels with the source as the
endpoint's third element, so the Device stores it with the peer's endpoint.
Sends to such an endpoint carry it back in an IP_PKTINFO / IPV6_PKTINFO cmsg, so
a peer that wrote to a secondary address, a VIP or an address on another
interface gets its answers from that address (and does not roam to another, or
meet a stateful firewall that drops them). When the address is gone the send
fails (ENETUNREACH for IPv4, EINVAL for IPv6): ``forget`` tells the Device to drop it for that
endpoint and the datagram goes again from the kernel's choice. A GRO read
holds datagrams of one source to one address: its one cmsg set serves them all.

These functions run per packet: they take the sockets and the loop's ``io_*``
counters (a defaultdict) as arguments rather than through attributes.
"""

from __future__ import annotations

import collections
import contextlib
import errno
import logging
import select
import socket
from collections.abc import Callable

from fabric.wg.messages import Endpoint

log = logging.getLogger("crosswire.wg")

SOCK_BUF = 8 << 20
SO_MARK = getattr(socket, "SO_MARK", 36)
SO_RCVBUFFORCE = getattr(socket, "SO_RCVBUFFORCE", 33)
SO_SNDBUFFORCE = getattr(socket, "SO_SNDBUFFORCE", 32)
SOL_UDP = 17
UDP_SEGMENT = 103
UDP_GRO = 104
UDP_MAX_SEGMENTS = 64
GSO_MAX_BYTES = 65000  # below the 65507-byte UDP/IPv4 payload limit
IP_PKTINFO = getattr(socket, "IP_PKTINFO", 8)
IPV6_RECVPKTINFO = socket.IPV6_RECVPKTINFO
IPV6_PKTINFO = socket.IPV6_PKTINFO
IPPROTO_IP = socket.IPPROTO_IP
IPPROTO_IPV6 = socket.IPPROTO_IPV6
# UDP_GRO (int) + in_pktinfo (12 bytes) or in6_pktinfo (20 bytes)
CMSG_SPACE = socket.CMSG_SPACE(4) + socket.CMSG_SPACE(20)
READ_SIZE = 65535 + 10  # a GRO read holds up to 64 KB of datagrams
_GSO_UNSUPPORTED = (errno.EIO, errno.EINVAL, errno.ENOPROTOOPT, errno.EOPNOTSUPP)
# A send from a local address that is no longer ours: IPv4 routing says ENETUNREACH,
# IPv6 EINVAL (EADDRNOTAVAIL for good measure). A real ENETUNREACH costs one retry
# and the address until the peer's next datagram brings it back.
_STALE_SOURCE = (errno.ENETUNREACH, errno.EINVAL, errno.EADDRNOTAVAIL)
_Z4 = bytes(4)

Forget = Callable[[Endpoint], None]


class BindError(OSError):
    pass


def bind_pair(port: int, fwmark: int) -> tuple[socket.socket, socket.socket | None, int]:
    """Bind an IPv4 and an IPv6-only UDP socket on the same port (any port if 0)."""
    last: OSError | None = None
    for _ in range(100 if port == 0 else 1):
        s4 = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            tune(s4, fwmark)
            s4.setsockopt(IPPROTO_IP, IP_PKTINFO, 1)
            s4.bind(("0.0.0.0", port))
        except OSError as e:
            s4.close()
            raise BindError(e.errno or errno.EIO, f"cannot bind UDP port {port}: {e.strerror}") from e
        bound = s4.getsockname()[1]
        try:
            s6 = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
        except OSError:
            return s4, None, bound  # no IPv6 in this kernel/namespace
        try:
            s6.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            s6.setsockopt(IPPROTO_IPV6, IPV6_RECVPKTINFO, 1)
            tune(s6, fwmark)
            s6.bind(("::", bound))
        except OSError as e:
            s6.close()
            if e.errno == errno.EADDRINUSE:
                s4.close()
                last = e
                continue  # someone holds this port on v6: try another (only when port==0)
            if e.errno in (errno.EADDRNOTAVAIL, errno.EAFNOSUPPORT):
                return s4, None, bound
            s4.close()
            raise BindError(e.errno or errno.EIO, f"cannot bind UDP6 port {bound}: {e.strerror}") from e
        return s4, s6, bound
    assert last is not None
    raise BindError(last.errno or errno.EADDRINUSE, f"cannot bind UDP port {port}: {last.strerror}")


def tune(s: socket.socket, fwmark: int) -> None:
    """Large buffers, the fwmark, and UDP_GRO where the kernel has it."""
    for force, plain in ((SO_RCVBUFFORCE, socket.SO_RCVBUF), (SO_SNDBUFFORCE, socket.SO_SNDBUF)):
        try:
            s.setsockopt(socket.SOL_SOCKET, force, SOCK_BUF)
        except OSError:
            s.setsockopt(socket.SOL_SOCKET, plain, SOCK_BUF)
    if fwmark:
        s.setsockopt(socket.SOL_SOCKET, SO_MARK, fwmark)
    with contextlib.suppress(OSError):  # kernels before 5.0 lack it; reads stay per datagram
        s.setsockopt(SOL_UDP, UDP_GRO, 1)


def read_batch(sock: socket.socket, ready: select.poll,
               on_datagram: Callable[[bytes, Endpoint, float], None], now: float, limit: int,
               counters: collections.defaultdict[str, int],
               on_datagrams: Callable[[bytes, int, Endpoint, float], None] | None = None) -> None:
    """Hand up to ``limit`` reads from ``sock`` to ``on_datagram``, GRO reads split.

    recvmsg for the cmsgs: UDP_GRO (a coalesced read holds several datagrams of
    gso_size bytes each, the last may be shorter, all from the same source) and
    the packet info (the local address, which joins the source endpoint).
    ``ready`` (a poll object holding ``sock``) is probed after the first read.
    A coalesced read goes whole to ``on_datagrams(data, segment_size, src, now)``
    when given (the Device's batched path), else datagram by datagram.
    """
    recvmsg = sock.recvmsg
    flags = socket.MSG_DONTWAIT
    src: Endpoint
    for i in range(limit):
        if i == 1 and not ready.poll(0):
            return
        try:
            data, anc, _, addr = recvmsg(READ_SIZE, CMSG_SPACE, flags)
        except BlockingIOError:
            return
        except OSError:
            # ICMP errors (port unreachable) surface here; they are not fatal.
            counters["io_udp_recv_error"] += 1
            continue
        # The kernel puts UDP_GRO (only on a coalesced read) before the packet info,
        # and the packet info is the only IP-level cmsg these sockets ask for.
        seg = 0
        if anc:
            level, kind, value = anc[-1]
            if level == SOL_UDP:
                src = (addr[0], addr[1])
                if kind == UDP_GRO:
                    seg = int.from_bytes(value, "little")
            else:
                # in_pktinfo: ifindex, spec_dst, addr (header dst); in6_pktinfo: addr, ifindex
                src = (addr[0], addr[1], value[8:12] if level == IPPROTO_IP else value[:16])
                if len(anc) > 1:
                    level, kind, value = anc[0]
                    if kind == UDP_GRO and level == SOL_UDP:
                        seg = int.from_bytes(value, "little")
        else:
            src = (addr[0], addr[1])
        if seg:
            n = len(data)
            if seg < n:
                counters["io_gro_reads"] += 1
                if on_datagrams is not None:
                    on_datagrams(data, seg, src, now)
                    continue
                for off in range(0, n, seg):
                    on_datagram(data[off:off + seg], src, now)
                continue
        on_datagram(data, src, now)


def pktinfo(local: bytes) -> tuple[int, int, bytes]:
    """The cmsg that makes a send leave from ``local`` (packed v4 or v6 address).
    Interface index 0: the route decides the way out, only the source is fixed."""
    if len(local) == 4:
        return (IPPROTO_IP, IP_PKTINFO, _Z4 + local + _Z4)  # ifindex, spec_dst, addr
    return (IPPROTO_IPV6, IPV6_PKTINFO, local + _Z4)  # addr, ifindex


def send_each(outbox: collections.deque[tuple[bytes, Endpoint]], s4: socket.socket | None,
              s6: socket.socket | None, counters: collections.defaultdict[str, int],
              forget: Forget) -> None:
    """Send (and empty) ``outbox`` one send per datagram."""
    pop = outbox.popleft
    while outbox:
        data, ep = pop()
        if ":" in ep[0]:
            sock = s6
            if sock is None:
                counters["io_send_no_ipv6"] += 1
                continue
        else:
            sock = s4
            if sock is None:
                continue
        try:
            if len(ep) == 2:
                sock.sendto(data, ep)
            else:
                sock.sendmsg([data], [pktinfo(ep[2])], 0, (ep[0], ep[1]))
        except OSError as e:
            if len(ep) > 2 and e.errno in _STALE_SOURCE:
                # Our address is gone: forget it, send again from the kernel's choice.
                forget(ep)
                outbox.appendleft((data, (ep[0], ep[1])))
                continue
            counters["io_udp_send_error"] += 1


def send_gso(outbox: collections.deque[tuple[bytes, Endpoint]], s4: socket.socket | None,
             s6: socket.socket | None, counters: collections.defaultdict[str, int],
             forget: Forget) -> bool:
    """Send (and empty) ``outbox``, runs of equal-sized datagrams to one endpoint as
    UDP_SEGMENT sends. False if the path turned out to lack GSO (then stop using it).

    A bulk transfer produces runs of full-MTU datagrams; one sendmsg then carries
    up to 64 of them through the whole stack as a single skb (and as one read on
    a receiver with UDP_GRO), instead of one syscall and one stack traversal each.
    """
    pop = outbox.popleft
    ok = True
    run: list[bytes] = []
    run_ep: Endpoint | None = None
    run_size = 0
    limit = 0
    while outbox:
        data, ep = pop()
        n = len(data)
        if run and ep == run_ep and n <= run_size and len(run) < limit:
            run.append(data)
            if n < run_size:  # a shorter datagram may only end a run
                ok &= _send_run(run, run_ep, run_size, s4, s6, counters, forget)
                run = []
            continue
        if run:
            ok &= _send_run(run, run_ep, run_size, s4, s6, counters, forget)
        run = [data]
        run_ep, run_size = ep, n
        limit = min(UDP_MAX_SEGMENTS, GSO_MAX_BYTES // n) if n else 1
    if run:
        ok &= _send_run(run, run_ep, run_size, s4, s6, counters, forget)
    return ok


def _send_run(run: list[bytes], ep: Endpoint | None, size: int, s4: socket.socket | None,
              s6: socket.socket | None, counters: collections.defaultdict[str, int],
              forget: Forget) -> bool:
    """One run in one send; False if GSO failed (the run then went out one by one)."""
    assert ep is not None
    sock = s6 if ":" in ep[0] else s4
    if sock is None:
        counters["io_send_no_ipv6"] += len(run)
        return True
    local = ep[2] if len(ep) == 3 else None
    try:
        if len(run) == 1:
            if local is not None:
                sock.sendmsg(run, [pktinfo(local)], 0, (ep[0], ep[1]))
            else:
                sock.sendto(run[0], ep)
        else:
            anc = [(SOL_UDP, UDP_SEGMENT, size.to_bytes(2, "little"))]
            if local is not None:
                anc.append(pktinfo(local))
            sock.sendmsg(run, anc, 0, (ep[0], ep[1]))  # one iovec each: no joined copy
            counters["io_gso_sends"] += 1
    except OSError as e:
        if local is not None and e.errno in _STALE_SOURCE:
            # Our address is gone (or, rarely, this was GSO's EINVAL: the retry tells).
            forget(ep)
            return _send_run(run, (ep[0], ep[1]), size, s4, s6, counters, forget)
        if len(run) > 1 and e.errno in _GSO_UNSUPPORTED:
            # No GSO on this path (e.g. a device without checksum offload): stop trying.
            log.info("UDP GSO unavailable (%s), sending datagrams one by one", e.strerror)
            send_each(collections.deque((d, ep) for d in run), s4, s6, counters, forget)
            return False
        counters["io_udp_send_error"] += len(run)
    return True
