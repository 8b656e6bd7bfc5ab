"""The crosswire-wg event loop: TUN + UDP sockets + UAPI socket around a sans-IO ``Device``.

One thread, one epoll (the AEAD holds the GIL, so threads would not add cores).
Each wakeup drains up to ``BATCH`` reads from every ready fd (TUN ->
``dev.on_packet``, UDP -> ``dev.on_datagram``, UAPI -> ``dev.uapi``) before
flushing the device's ``outbox`` through ``fabric.wg.udp`` and its ``inbox``
through ``Tun.write_batch``, so a busy tunnel costs one epoll_wait per batch
rather than per packet. How reads, sends and TUN writes save syscalls (GRO, GSO,
TCP coalescing, the poll(0) probe) is told in ``fabric.wg.udp``,
``fabric.wg.tun`` and ``fabric.wg.offload``. Objects alive at start are frozen
out of the garbage collector's full passes.

``config_generation`` tells the loop when ``listen_port``/``fwmark`` changed so it
rebinds or re-marks. A bind failure turns the UAPI reply's errno into -EADDRINUSE
and keeps the old sockets, as wireguard-go does. An exception escaping the
device while it handles traffic is counted (``io_internal_error``) and logged;
the tunnel keeps running.

MTU changes made with ``ip link`` apply to the next packet: an rtnetlink socket
(``fabric.wg.linkwatch``) in the epoll set is handled before the TUN in a
wakeup, and the MTU is re-read when our link changed. Housekeeping once a
second: stop if the UAPI socket file or the interface is gone, re-read the MTU
(a backstop should netlink be unavailable), write the counters file.
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
import logging
import os
import select
import signal
import socket
import time
from collections.abc import Callable
from typing import Protocol

from fabric.wg import offload, statsfile
from fabric.wg.linkwatch import LinkWatch
from fabric.wg.messages import Endpoint
from fabric.wg.tsopolicy import TsoPolicy
from fabric.wg.tun import Tun
from fabric.wg.uapi import UapiReply
from fabric.wg.uapi import handle as handle_uapi
from fabric.wg.uapi_server import UapiServer
from fabric.wg.udp import SO_MARK, send_each, send_gso
from fabric.wg.udp import bind_pair as _bind_pair
from fabric.wg.udp import read_batch as read_udp

log = logging.getLogger("crosswire.wg")


BATCH = 128
HOUSEKEEPING_INTERVAL = 1.0
STATS_LOG_INTERVAL = 10.0
FLUSH_AT = 512  # send what a burst of super-packets produced before reading more
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
    def forget_source(self, ep: Endpoint) -> None: ...
    def on_datagram(self, data: bytes, src: Endpoint, now: float) -> None: ...
    def on_packet(self, packet: bytes, now: float) -> None: ...
    def on_timer(self, now: float) -> None: ...
    def next_deadline(self) -> float | None: ...


UapiHandler = Callable[[DeviceLike, str, float], UapiReply]


class Daemon:
    """Owns the fds around one Device; ``run()`` blocks until ``stop()`` or a shutdown cause."""

    stats_path: str | None
    # After each applied set request (crosswire-wg saves its configuration there).
    on_configured: Callable[[], None] | None
    linkwatch: LinkWatch | None

    def __init__(self, device: DeviceLike, tun: Tun, *, uapi_dir: str | None = None,
                 stats_path: str | None = None, clock: Callable[[], float] = time.monotonic,
                 gso: bool = True, uapi: UapiHandler | None = None,
                 on_configured: Callable[[], None] | None = None) -> None:
        self._init_io(device, tun, clock=clock, gso=gso)
        self.stats_path = stats_path
        self.on_configured = on_configured
        # fabric.wg.uapi.handle over a real Device; tests drive the loop with a fake of both.
        self._uapi: UapiHandler = uapi if uapi is not None else handle_uapi  # type: ignore[assignment]
        try:
            self.linkwatch = LinkWatch(socket.if_nametoindex(tun.name))
            self._link_fd = self.linkwatch.fileno()
        except OSError as e:
            log.warning("no link notifications (%s): MTU changes apply within %.0f s",
                        e.strerror, HOUSEKEEPING_INTERVAL)
        # Read after subscribing, so no change can fall between the two.
        device.mtu = tun.mtu()
        try:
            self._apply_config()
            kwargs = {"directory": uapi_dir} if uapi_dir else {}
            self.uapi = UapiServer(tun.name, self._on_uapi, self.epoll, **kwargs)
        except BaseException:
            self._close_sockets()
            if self.linkwatch is not None:
                self.linkwatch.close()
            os.close(self._wake_r)
            os.close(self._wake_w)
            raise
        self._register_io()
        if self.linkwatch is not None:
            self.epoll.register(self._link_fd, select.EPOLLIN)

    def _init_io(self, device: DeviceLike, tun: Tun, *, clock: Callable[[], float],
                 gso: bool) -> None:
        """The loop's I/O state before any socket is bound: shared with
        fabric.wg.workers.WorkerDaemon, which binds no UAPI socket of its own."""
        self.device = device
        self.tun = tun
        self.clock = clock
        self.epoll = select.epoll()
        self.stats_path = None
        self.on_configured = None
        self.stop_reason: str | None = None
        self.io_counters: collections.defaultdict[str, int] = collections.defaultdict(int)
        self.s4: socket.socket | None = None
        self.s6: socket.socket | None = None
        self.s4_fd = self.s6_fd = -2
        # Zero-timeout readiness probes for the UDP reads (see fabric.wg.udp.read_batch).
        self._s4_ready = self._s6_ready = select.poll()
        self.bound_port = 0
        self.generation = -1
        self._dump_requested = False
        self.gso = gso
        self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self.linkwatch = None
        self._link_fd = -2
        # Other fds in the epoll set and their handlers (fabric.wg.workers' control sockets).
        self.extra: dict[int, Callable[[int], None]] = {}
        # TSO on and off with the traffic mix (fabric.wg.tsopolicy); None: as opened.
        self.tso_policy: TsoPolicy | None = None
        self._tso_seen = (0, 0)

    def _register_io(self) -> None:
        """Watch the TUN and the wakeup pipe (last: nothing left to undo after it)."""
        self.epoll.register(self.tun.fd, select.EPOLLIN)
        self.epoll.register(self._wake_r, select.EPOLLIN)

    # -- configuration ------------------------------------------------------------------

    def _on_uapi(self, request: str) -> str:
        now = self.clock()
        try:
            reply = self._uapi(self.device, request, now)
        except Exception:
            # A bug in configuration handling: answer (wg would otherwise hang) with EIO.
            self._internal_error()
            return UapiReply(errno=-errno.EIO).wire()
        if reply.errno:
            log.info("uapi %s refused (errno=%d): %s", request[:5], reply.errno, reply.error)
        else:
            log.debug("uapi %s -> errno=0", request[:5])
            if self.on_configured is not None and request.startswith("set=1\n"):
                try:
                    self.on_configured()
                except Exception as e:  # never fatal: the configuration is applied
                    self.io_counters["io_saved_config_error"] += 1
                    log.error("cannot save the configuration: %s", getattr(e, "strerror", None) or
                              type(e).__name__)
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

    def restore(self, request: str) -> bool:
        """Apply a saved set request (fabric.wg.savedconfig) as if a client sent it, then
        start a handshake with every peer that has an endpoint at once: its sessions
        died with the previous process, and the peer learns the new one in one round
        trip instead of at our first packet. True if the request applied."""
        reply = self._on_uapi("set=1\n" + request + "\n")
        if not reply.startswith("errno=0"):
            return False
        initiate = getattr(self.device, "send_initiation", None)
        if initiate is not None:
            now = self.clock()
            for peer in list(getattr(self.device, "peers", {}).values()):
                if peer.endpoint is not None:
                    initiate(peer, now, False)
            self._flush()
        return True

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

    # -- data path (per packet: keep lookups in locals, no extra call layers) ---------------

    def _flush(self) -> None:
        dev = self.device
        outbox = dev.outbox
        if outbox:
            if self.gso and len(outbox) > 1:
                if not send_gso(outbox, self.s4, self.s6, self.io_counters, dev.forget_source):
                    self.gso = False
            else:
                send_each(outbox, self.s4, self.s6, self.io_counters, dev.forget_source)
        inbox = dev.inbox
        if inbox and not self.tun.write_batch(inbox, self.io_counters):
            self.stop_reason = "interface deleted"

    def _flush_if_backlogged(self) -> None:
        if len(self.device.outbox) >= FLUSH_AT:
            self._flush()

    # -- loop -------------------------------------------------------------------------------

    def run(self) -> str:
        """Serve until stopped; returns why it stopped."""
        dev = self.device
        clock = self.clock
        poll = self.epoll.poll
        tun = self.tun
        tun_fd, read_tun, tun_ready = tun.fd, tun.read_batch, tun.ready.poll
        on_packet, on_datagram = dev.on_packet, dev.on_datagram
        # Optional in DeviceLike: a device without the batched path gets datagrams one by one.
        on_datagrams = getattr(dev, "on_datagrams", None)
        on_packets = getattr(dev, "on_packets", None)
        flush_if_backlogged = self._flush_if_backlogged
        io_counters = self.io_counters
        wake_r = self._wake_r
        link_fd = self._link_fd
        next_housekeeping = clock()
        next_stats_log = next_housekeeping + STATS_LOG_INTERVAL
        # Everything alive now (modules, config) lives for the whole run: keep it out of
        # the collector's full passes, which would otherwise stall the data path for ms.
        # No full pass first: it costs ~5 ms on the path of the first packets after a
        # (re)start; the few cycles the imports left are frozen with the rest.
        gc.freeze()
        gc.enable()  # off since main() (fabric/wg/cli.py): the imports run faster without it
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
                    log.debug("counters %s", statsfile.to_json(self.counters()))
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
                if len(events) > 1:
                    # A link change first: TUN packets read in this wakeup may already
                    # be sized for the new MTU.
                    for fd, _ev in events:
                        if fd == link_fd:
                            self._on_link_change()
                            break
                for fd, ev in events:
                    if fd == tun_fd:
                        if ev & _ERR_HUP:
                            self.stop_reason = "interface deleted"
                            break
                        if not read_tun(on_packet, now, BATCH, io_counters, flush_if_backlogged,
                                    on_packets):
                            self.stop_reason = "interface deleted"
                    elif fd == self.s4_fd and self.s4 is not None:
                        read_udp(self.s4, self._s4_ready, on_datagram, now, BATCH, io_counters,
                                 on_datagrams)
                    elif fd == self.s6_fd and self.s6 is not None:
                        read_udp(self.s6, self._s6_ready, on_datagram, now, BATCH, io_counters,
                                 on_datagrams)
                    elif fd == wake_r:
                        self._drain_wakeup()
                    elif fd == link_fd:
                        self._on_link_change()
                    elif fd in self.extra:
                        self.extra[fd](ev)
                    else:
                        self.uapi.on_event(fd, ev)
                wrote_tun = bool(dev.inbox)
                self._flush()
                # Writing to the TUN runs the local stack synchronously: its answers
                # (TCP ACKs, echo replies) are queued already. Take them now, not after
                # another epoll_wait round trip. Probe first: often nothing came
                # back, and a failing read costs more than the probe (Tun.read_batch).
                if wrote_tun and self.stop_reason is None and tun_ready(0):
                    if not read_tun(on_packet, now, BATCH, io_counters, flush_if_backlogged,
                                    on_packets):
                        self.stop_reason = "interface deleted"
                    self._flush()
            except Exception:
                # A bug must cost one packet, not the tunnel: count it, log it, carry on
                # (unread packets stay queued in the kernel; epoll is level-triggered).
                self._internal_error()
            if self._dump_requested:
                self._dump_requested = False
                log.info("counters %s", statsfile.to_json(self.counters()))
                self._write_stats()
        log.info("stopping: %s", self.stop_reason)
        return self.stop_reason or "stopped"

    def _internal_error(self) -> None:
        n = self.io_counters["io_internal_error"] = self.io_counters["io_internal_error"] + 1
        if n <= 10 or n % 1000 == 0:
            log.exception("internal error #%d while handling traffic (dropped)", n)

    def _on_link_change(self) -> None:
        assert self.linkwatch is not None
        if self.linkwatch.changed():
            self._follow_mtu()

    def _follow_mtu(self) -> None:
        with contextlib.suppress(OSError):  # the interface may be going away
            mtu = self.tun.mtu()
            if mtu != self.device.mtu:
                log.info("MTU now %d", mtu)
                self.device.mtu = mtu

    def _housekeeping(self) -> None:
        if not self.uapi.still_ours():
            self.stop_reason = "UAPI socket deleted"
            return
        if not self.tun.exists():
            self.stop_reason = "interface deleted"
            return
        self._follow_mtu()
        self._adapt_tso()
        self._write_stats()

    def _adapt_tso(self) -> None:
        policy = self.tso_policy
        if policy is None or not offload.numpy_loaded():
            return  # off until numpy is in (offload.preload_numpy): no packet waits for its import
        io = self.io_counters
        supers, partials = io.get("io_tso_reads", 0), io.get("io_csum_reads", 0)
        seen_s, seen_p = self._tso_seen
        self._tso_seen = (supers, partials)
        change = policy.update(supers - seen_s, partials - seen_p, self.clock())
        if change is None:
            return
        if self.tun.set_tso(change):
            io["io_tso_on" if change else "io_tso_off"] += 1
            log.info("TSO reads %s (last second: %d super-packets, %d partial checksums)",
                     "on" if change else "off", supers - seen_s, partials - seen_p)
        else:
            policy.on = self.tun.tso

    def counters(self) -> dict[str, int]:
        merged = dict(self.device.counters)
        merged.update(self.io_counters)
        return merged

    def _write_stats(self) -> None:
        if not self.stats_path:
            return
        try:
            statsfile.write(self.stats_path, self.counters())
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
        if self.linkwatch is not None:
            self.linkwatch.close()
        if self.stats_path:
            statsfile.remove(self.stats_path)
        self.tun.close()
        self.epoll.close()
        os.close(self._wake_r)
        os.close(self._wake_w)
