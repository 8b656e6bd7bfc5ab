"""The crosswire-wg event loop: TUN + UDP sockets + UAPI socket around a sans-IO ``Device``.

One thread, one epoll (the AEAD holds the GIL, so threads would not add cores).
Each wakeup drains up to ``BATCH`` reads from every ready fd before flushing the
device's ``outbox`` (to UDP) and ``inbox`` (to TUN), so a busy tunnel costs one
epoll_wait per batch rather than per packet. Syscalls per packet are cut further:

- UDP GSO: runs of equal-sized datagrams to one endpoint leave in one sendmsg with
  UDP_SEGMENT (the kernel splits them; the wire sees ordinary datagrams).
- UDP GRO: reads ask for coalesced datagrams (UDP_GRO cmsg gives the segment size).
- TUN GRO: the TUN has IFF_VNET_HDR; in-order segments of one TCP flow in a batch
  are merged into one super-packet and written with one writev (``tun.coalesce``).
- No failing read for a lone packet: after the first read of a wakeup a zero-timeout
  poll() on that fd decides whether to read on (Python's EAGAIN exception path is
  the costlier way to learn the queue is empty, ~45 us on a CPU cold from idle).

UDP sockets stay blocking for sends (a full send buffer applies back-pressure
instead of dropping) and are read with MSG_DONTWAIT; the TUN fd is non-blocking.
Socket buffers are forced large (root may exceed rmem_max), as wireguard-go does.
Objects alive at start are frozen out of the garbage collector's full passes.

Two UDP sockets, IPv4 and IPv6-only, share the listen port; ``config_generation``
tells the loop when ``listen_port``/``fwmark`` changed so it rebinds or re-marks.
A bind failure turns the UAPI reply's errno into -EADDRINUSE and keeps the old
sockets, as wireguard-go does. An exception escaping the device while it handles
traffic is counted (``io_internal_error``) and logged; the tunnel keeps running.

Housekeeping once a second: stop if the UAPI socket file or the interface is
gone, follow MTU changes made with ``ip link``, write the counters file.
Counters are the device's dict plus the loop's own ``io_*`` entries; they are
written as JSON to ``stats_path`` and logged on SIGUSR1 (and at debug level
every ``STATS_LOG_INTERVAL`` s). The wg(8) protocol has no room for them: wg
rejects unknown keys in a ``get`` reply.
"""

from __future__ import annotations

import collections
import contextlib
import errno
import gc
import json
import logging
import os
import select
import signal
import socket
import struct
import time
from collections.abc import Callable
from typing import Protocol

from fabric.wg.messages import Endpoint
from fabric.wg.tun import (
    VNET_HDR_LEN,
    ZERO_VNET_HDR,
    OffloadError,
    Tun,
    coalesce,
    gso_split,
)
from fabric.wg.uapi import UapiReply
from fabric.wg.uapi import handle as handle_uapi
from fabric.wg.uapi_server import UapiServer

log = logging.getLogger("crosswire.wg")


BATCH = 128
SOCK_BUF = 8 << 20
SO_MARK = getattr(socket, "SO_MARK", 36)
SO_RCVBUFFORCE = getattr(socket, "SO_RCVBUFFORCE", 33)
SO_SNDBUFFORCE = getattr(socket, "SO_SNDBUFFORCE", 32)
HOUSEKEEPING_INTERVAL = 1.0
STATS_LOG_INTERVAL = 10.0
READ_SIZE = 65535 + 10  # a TSO super-packet plus its virtio_net_hdr
FLUSH_AT = 512  # send what a burst of super-packets produced before reading more
SOL_UDP = 17
UDP_SEGMENT = 103
UDP_GRO = 104
UDP_MAX_SEGMENTS = 64
GSO_MAX_BYTES = 65000  # below the 65507-byte UDP/IPv4 payload limit
GRO_CMSG_SPACE = socket.CMSG_SPACE(4)
_ERR_HUP = select.EPOLLERR | select.EPOLLHUP


class DeviceLike(Protocol):
    """The part of ``fabric.wg.device.Device`` the loop uses (see the contract in device.py)."""

    listen_port: int
    fwmark: int
    config_generation: int
    mtu: int
    outbox: collections.deque[tuple[bytes, Endpoint]]
    inbox: collections.deque[bytes]
    counters: dict[str, int]

    def set_bound_port(self, port: int) -> None: ...
    def on_datagram(self, data: bytes, src: Endpoint, now: float) -> None: ...
    def on_packet(self, packet: bytes, now: float) -> None: ...
    def on_timer(self, now: float) -> None: ...
    def next_deadline(self) -> float | None: ...


class BindError(OSError):
    pass


def _bind_pair(port: int, fwmark: int) -> tuple[socket.socket, socket.socket | None, int]:
    """Bind an IPv4 and an IPv6-only UDP socket on the same port (any port if 0)."""
    last: OSError | None = None
    for _ in range(100 if port == 0 else 1):
        s4 = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            _tune(s4, fwmark)
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
            _tune(s6, fwmark)
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


def _tune(s: socket.socket, fwmark: int) -> None:
    for force, plain in ((SO_RCVBUFFORCE, socket.SO_RCVBUF), (SO_SNDBUFFORCE, socket.SO_SNDBUF)):
        try:
            s.setsockopt(socket.SOL_SOCKET, force, SOCK_BUF)
        except OSError:
            s.setsockopt(socket.SOL_SOCKET, plain, SOCK_BUF)
    if fwmark:
        s.setsockopt(socket.SOL_SOCKET, SO_MARK, fwmark)
    with contextlib.suppress(OSError):  # kernels before 5.0 lack it; reads stay per datagram
        s.setsockopt(SOL_UDP, UDP_GRO, 1)


class Daemon:
    """Owns the fds around one Device; ``run()`` blocks until ``stop()`` or a shutdown cause."""

    def __init__(self, device: DeviceLike, tun: Tun, *, uapi_dir: str | None = None,
                 stats_path: str | None = None, clock: Callable[[], float] = time.monotonic,
                 gso: bool = True) -> None:
        self.device = device
        self.tun = tun
        self.clock = clock
        self.epoll = select.epoll()
        self.stats_path = stats_path
        self.stop_reason: str | None = None
        self.io_counters: dict[str, int] = collections.defaultdict(int)
        self.s4: socket.socket | None = None
        self.s6: socket.socket | None = None
        self.s4_fd = self.s6_fd = -2
        # Zero-timeout readiness probes (see _read_tun): one select.poll per fd.
        self._tun_ready = select.poll()
        self._tun_ready.register(tun.fd, select.POLLIN)
        self._s4_ready = self._s6_ready = select.poll()
        self.bound_port = 0
        self.generation = -1
        self._dump_requested = False
        self.gso = gso
        device.mtu = tun.mtu()
        self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        try:
            self._apply_config()
            kwargs = {"directory": uapi_dir} if uapi_dir else {}
            self.uapi = UapiServer(tun.name, self._on_uapi, self.epoll, **kwargs)
        except BaseException:
            self._close_sockets()
            os.close(self._wake_r)
            os.close(self._wake_w)
            raise
        self.epoll.register(tun.fd, select.EPOLLIN)
        self.epoll.register(self._wake_r, select.EPOLLIN)

    # -- configuration ------------------------------------------------------------------

    def _on_uapi(self, request: str) -> str:
        now = self.clock()
        try:
            # The device is a fabric.wg.device.Device (DeviceLike is the loop's narrower view).
            reply = handle_uapi(self.device, request, now)  # type: ignore[arg-type]
        except Exception:
            # A bug in configuration handling: answer (wg would otherwise hang) with EIO.
            self._internal_error()
            return UapiReply(errno=-errno.EIO).wire()
        if reply.errno:
            log.info("uapi %s refused (errno=%d): %s", request[:5], reply.errno, reply.error)
        else:
            log.debug("uapi %s -> errno=0", request[:5])
        if self.device.config_generation != self.generation:
            try:
                self._apply_config()
            except OSError as e:
                log.error("%s", e)
                # The device already took the new port; tell it (and `wg show`) the truth.
                self.device.set_bound_port(self.bound_port)
                self.generation = self.device.config_generation
                if not reply.errno:
                    # Negative, as wireguard-go's IpcErrorPortInUse: wg negates it for strerror.
                    reply = UapiReply(errno=-errno.EADDRINUSE, body=reply.body, error=str(e))
        self._flush()
        return reply.wire()

    def _apply_config(self) -> None:
        dev = self.device
        gen, port, mark = dev.config_generation, dev.listen_port, dev.fwmark
        if self.s4 is not None and (port == self.bound_port or (port == 0 and self.bound_port)):
            for s in (self.s4, self.s6):
                if s is not None:
                    s.setsockopt(socket.SOL_SOCKET, SO_MARK, mark)
            self.generation = gen
            return
        s4, s6, bound = _bind_pair(port, mark)
        self._close_sockets()
        self.s4, self.s6, self.bound_port = s4, s6, bound
        self.s4_fd = s4.fileno()
        self.s6_fd = s6.fileno() if s6 is not None else -2
        self._s4_ready = select.poll()
        self._s4_ready.register(self.s4_fd, select.POLLIN)
        self._s6_ready = select.poll()
        if s6 is not None:
            self._s6_ready.register(self.s6_fd, select.POLLIN)
        for s in (s4, s6):
            if s is not None:
                self.epoll.register(s.fileno(), select.EPOLLIN)
        dev.set_bound_port(bound)
        self.generation = gen
        log.info("listening on UDP port %d%s", bound, "" if s6 else " (IPv4 only)")

    def _close_sockets(self) -> None:
        for s in (self.s4, self.s6):
            if s is not None:
                with contextlib.suppress(OSError):
                    self.epoll.unregister(s.fileno())
                s.close()
        self.s4 = self.s6 = None
        self.s4_fd = self.s6_fd = -2  # never an fd, never equal to an epoll event's

    # -- data path ------------------------------------------------------------------------

    # Reads stop at EAGAIN, but after the first packet of a wakeup a zero-timeout
    # poll() asks first whether a second one is there. A lone packet (a ping, an ACK,
    # a keepalive) is the common case at low rates, and Python's EAGAIN path (building
    # a BlockingIOError, its strerror and traceback, unwinding) costs ~2 us warm and
    # ~45 us on a CPU cold from idle, against ~20 us for the poll. Bulk reads pay one
    # poll per batch, not per packet.

    def _read_tun(self, now: float) -> None:
        read, fd, on_packet = os.read, self.tun.fd, self.device.on_packet
        vnet = self.tun.vnet_hdr
        outbox = self.device.outbox
        first = True
        for _ in range(BATCH):
            try:
                buf = read(fd, READ_SIZE)
            except BlockingIOError:
                return
            except OSError as e:
                if e.errno == errno.EBADFD:
                    self.stop_reason = "interface deleted"
                    return
                self.io_counters["io_tun_read_error"] += 1
                return
            if not vnet:
                on_packet(buf, now)
            elif len(buf) > VNET_HDR_LEN and not buf[0] and not buf[1]:
                on_packet(buf[VNET_HDR_LEN:], now)  # plain packet, checksum complete
            else:
                try:
                    segments = gso_split(buf)
                except (OffloadError, struct.error):
                    self.io_counters["io_tun_bad_offload"] += 1
                    segments = []
                else:
                    self.io_counters["io_tso_reads"] += 1
                for seg in segments:
                    on_packet(seg, now)
                if len(outbox) >= FLUSH_AT:
                    self._flush()
            if first:
                first = False
                if not self._tun_ready.poll(0):
                    return

    def _read_udp(self, sock: socket.socket, ready: select.poll, now: float) -> None:
        # recvmsg for the UDP_GRO cmsg: a coalesced read holds several datagrams of
        # gso_size bytes each (the last may be shorter), all from the same source.
        # ``ready`` probes the socket after the first read (see _read_tun).
        recvmsg, on_datagram = sock.recvmsg, self.device.on_datagram
        flags = socket.MSG_DONTWAIT
        for i in range(BATCH):
            if i == 1 and not ready.poll(0):
                return
            try:
                data, anc, _, addr = recvmsg(READ_SIZE, GRO_CMSG_SPACE, flags)
            except BlockingIOError:
                return
            except OSError:
                # ICMP errors (port unreachable) surface here; they are not fatal.
                self.io_counters["io_udp_recv_error"] += 1
                continue
            src = (addr[0], addr[1])
            if anc:
                level, kind, value = anc[0]
                if level == SOL_UDP and kind == UDP_GRO:
                    seg = int.from_bytes(value, "little")
                    n = len(data)
                    if 0 < seg < n:
                        self.io_counters["io_gro_reads"] += 1
                        for i in range(0, n, seg):
                            on_datagram(data[i:i + seg], src, now)
                        continue
            on_datagram(data, src, now)

    def _sock_for(self, host: str) -> socket.socket | None:
        return self.s6 if ":" in host else self.s4

    def _send_each(self, outbox: collections.deque[tuple[bytes, Endpoint]]) -> None:
        s4, s6 = self.s4, self.s6
        pop = outbox.popleft
        while outbox:
            data, ep = pop()
            try:
                if ":" in ep[0]:
                    if s6 is None:
                        self.io_counters["io_send_no_ipv6"] += 1
                        continue
                    s6.sendto(data, ep)
                elif s4 is not None:
                    s4.sendto(data, ep)
            except OSError:
                self.io_counters["io_udp_send_error"] += 1

    def _send_gso(self, outbox: collections.deque[tuple[bytes, Endpoint]]) -> None:
        """Coalesce runs of equal-sized datagrams to one endpoint into UDP_SEGMENT sends.

        A bulk transfer produces runs of full-MTU datagrams; one sendmsg then carries
        up to 64 of them through the whole stack as a single skb (and as one read on
        a receiver with UDP_GRO), instead of one syscall and one stack traversal each.
        The kernel splits them into ordinary datagrams before they leave the host.
        """
        pop = outbox.popleft
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
                    self._send_run(run, run_ep, run_size)
                    run = []
                continue
            if run:
                self._send_run(run, run_ep, run_size)
            run = [data]
            run_ep, run_size = ep, n
            limit = min(UDP_MAX_SEGMENTS, GSO_MAX_BYTES // n) if n else 1
        if run:
            self._send_run(run, run_ep, run_size)

    def _send_run(self, run: list[bytes], ep: Endpoint | None, size: int) -> None:
        assert ep is not None
        sock = self._sock_for(ep[0])
        if sock is None:
            self.io_counters["io_send_no_ipv6"] += len(run)
            return
        try:
            if len(run) == 1:
                sock.sendto(run[0], ep)
            else:
                sock.sendmsg([b"".join(run)], [(SOL_UDP, UDP_SEGMENT, size.to_bytes(2, "little"))],
                               0, ep)
                self.io_counters["io_gso_sends"] += 1
        except OSError as e:
            if len(run) > 1 and e.errno in (errno.EIO, errno.EINVAL, errno.ENOPROTOOPT,
                                            errno.EOPNOTSUPP):
                # No GSO on this path (e.g. a device without checksum offload): stop trying.
                log.info("UDP GSO unavailable (%s), sending datagrams one by one", e.strerror)
                self.gso = False
                self._send_each(collections.deque((d, ep) for d in run))
                return
            self.io_counters["io_udp_send_error"] += len(run)

    def _flush(self) -> None:
        dev = self.device
        outbox = dev.outbox
        if outbox:
            if self.gso and len(outbox) > 1:
                self._send_gso(outbox)
            else:
                self._send_each(outbox)
        inbox = dev.inbox
        if inbox and self.tun.vnet_hdr:
            self._write_tun_coalesced(inbox)
        elif inbox:
            write, fd = os.write, self.tun.fd
            pop_in = inbox.popleft
            while inbox:
                try:
                    write(fd, pop_in())
                except OSError as e:
                    if e.errno == errno.EBADFD:
                        self.stop_reason = "interface deleted"
                        inbox.clear()
                        return
                    self.io_counters["io_tun_write_error"] += 1

    def _write_tun_coalesced(self, inbox: collections.deque[bytes]) -> None:
        writev, fd = os.writev, self.tun.fd
        if len(inbox) == 1:  # latency path (a ping, an ACK): nothing to merge
            vecs: list[list[bytes | memoryview]] = [[ZERO_VNET_HDR, inbox.popleft()]]
        else:
            vecs = coalesce(list(inbox))
            inbox.clear()
        for vec in vecs:
            try:
                writev(fd, vec)
            except OSError as e:
                if e.errno == errno.EBADFD:
                    self.stop_reason = "interface deleted"
                    return
                self.io_counters["io_tun_write_error"] += 1
            else:
                if len(vec) > 2:
                    self.io_counters["io_gro_writes"] += 1

    # -- loop -------------------------------------------------------------------------------

    def run(self) -> str:
        """Serve until stopped; returns why it stopped."""
        dev = self.device
        clock = self.clock
        poll = self.epoll.poll
        tun_fd = self.tun.fd
        wake_r = self._wake_r
        next_housekeeping = clock()
        next_stats_log = next_housekeeping + STATS_LOG_INTERVAL
        # Everything alive now (modules, config) lives for the whole run: keep it out of
        # the collector's full passes, which would otherwise stall the data path for ms.
        gc.collect()
        gc.freeze()
        while self.stop_reason is None:
            now = clock()
            deadline = dev.next_deadline()
            if deadline is not None and deadline <= now:
                try:
                    dev.on_timer(now)
                    self._flush()
                except Exception:
                    self._internal_error()
                deadline = dev.next_deadline()
                if deadline is not None and deadline <= now:
                    deadline = now + 0.01  # a timer that failed to advance must not spin
            if now >= next_housekeeping:
                self._housekeeping()
                next_housekeeping = now + HOUSEKEEPING_INTERVAL
                if now >= next_stats_log and log.isEnabledFor(logging.DEBUG):
                    log.debug("counters %s", json.dumps(self.counters(), sort_keys=True))
                    next_stats_log = now + STATS_LOG_INTERVAL
                if self.stop_reason:
                    break
            wake_at = next_housekeeping if deadline is None else min(deadline, next_housekeeping)
            timeout = max(0.0, wake_at - now)
            try:
                events = poll(timeout)
            except InterruptedError:
                continue
            now = clock()
            try:
                for fd, ev in events:
                    if fd == tun_fd:
                        if ev & _ERR_HUP:
                            self.stop_reason = "interface deleted"
                            break
                        self._read_tun(now)
                    elif fd == self.s4_fd and self.s4 is not None:
                        self._read_udp(self.s4, self._s4_ready, now)
                    elif fd == self.s6_fd and self.s6 is not None:
                        self._read_udp(self.s6, self._s6_ready, now)
                    elif fd == wake_r:
                        self._drain_wakeup()
                    else:
                        self.uapi.on_event(fd, ev)
                wrote_tun = bool(dev.inbox)
                self._flush()
                # Writing to the TUN runs the local stack synchronously: its answers
                # (TCP ACKs, echo replies) are queued already. Take them now, not after
                # another epoll_wait round trip. Probe first: often nothing came
                # back, and a failing read costs more than the probe (_read_tun).
                if wrote_tun and self.stop_reason is None and self._tun_ready.poll(0):
                    self._read_tun(now)
                    self._flush()
            except Exception:
                # A bug must cost one packet, not the tunnel: count it, log it, carry on
                # (unread packets stay queued in the kernel; epoll is level-triggered).
                self._internal_error()
            if self._dump_requested:
                self._dump_requested = False
                log.info("counters %s", json.dumps(self.counters(), sort_keys=True))
                self._write_stats()
        log.info("stopping: %s", self.stop_reason)
        return self.stop_reason or "stopped"

    def _internal_error(self) -> None:
        n = self.io_counters["io_internal_error"] = self.io_counters["io_internal_error"] + 1
        if n <= 10 or n % 1000 == 0:
            log.exception("internal error #%d while handling traffic (dropped)", n)

    def _housekeeping(self) -> None:
        if not self.uapi.still_ours():
            self.stop_reason = "UAPI socket deleted"
            return
        if not self.tun.exists():
            self.stop_reason = "interface deleted"
            return
        with contextlib.suppress(OSError):
            mtu = self.tun.mtu()
            if mtu != self.device.mtu:
                log.info("MTU now %d", mtu)
                self.device.mtu = mtu
        self._write_stats()

    def counters(self) -> dict[str, int]:
        merged = dict(self.device.counters)
        merged.update(self.io_counters)
        return merged

    def _write_stats(self) -> None:
        if not self.stats_path:
            return
        tmp = f"{self.stats_path}.tmp"
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
            with os.fdopen(fd, "w") as f:
                json.dump(self.counters(), f, sort_keys=True)
            os.replace(tmp, self.stats_path)
        except OSError as e:
            self.io_counters["io_stats_write_error"] += 1
            log.debug("cannot write stats file: %s", e.strerror)

    # -- signals and shutdown ------------------------------------------------------------

    def install_signal_handlers(self) -> None:
        """SIGTERM/SIGINT stop the loop, SIGUSR1 dumps counters; the wakeup pipe breaks epoll_wait."""
        signal.set_wakeup_fd(self._wake_w, warn_on_full_buffer=False)
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(sig, self._on_stop_signal)
        signal.signal(signal.SIGUSR1, self._on_dump_signal)

    def _on_stop_signal(self, signum: int, _frame: object) -> None:
        self.stop_reason = f"signal {signal.Signals(signum).name}"

    def _on_dump_signal(self, _signum: int, _frame: object) -> None:
        self._dump_requested = True

    def _drain_wakeup(self) -> None:
        with contextlib.suppress(OSError):
            while os.read(self._wake_r, 512):
                pass

    def stop(self, reason: str = "stopped") -> None:
        self.stop_reason = reason
        with contextlib.suppress(OSError):
            os.write(self._wake_w, b"\0")

    def close(self) -> None:
        """Remove everything this daemon created: UAPI socket, stats file, sockets, TUN."""
        with contextlib.suppress(ValueError):  # ValueError: not the main thread
            signal.set_wakeup_fd(-1)
        self.uapi.close()
        self._close_sockets()
        if self.stats_path:
            for p in (self.stats_path, f"{self.stats_path}.tmp"):
                with contextlib.suppress(OSError):
                    os.unlink(p)
        self.tun.close()
        self.epoll.close()
        os.close(self._wake_r)
        os.close(self._wake_w)
