"""``crosswire-wg --workers N``: one device served by N processes (the I/O side).

``start`` (before the owner's Daemon exists) creates the shared send counters,
N-1 more queues of the multi-queue TUN and forks N-1 workers, each with its
TUN queue and a SOCK_SEQPACKET control socket to the owner. The owner
(``OwnerDaemon``, worker 0: the process that started) binds the UDP sockets
for everybody: N IPv4 and N IPv6 sockets with SO_REUSEPORT on one port, in
worker order, with the steering program of ``fabric.wg.steer`` attached, and
hands each worker its pair with SCM_RIGHTS (again after every rebind). The
steering balances; it is not what keeps replays out: a GRO/GSO super-datagram
goes whole to the socket its first segment's counter picks, so any worker may
see any counter, and the replay windows are shared (fabric.wg.multicore).

Control messages are pickled tuples (``fabric.wg.multicore``), between
processes of this program only. A worker that dies, or the owner, ends the
device: the owner sees its control socket close and stops (removing the
interface), workers exit when the owner's end closes. Nobody restarts a worker:
a restart would re-create its socket at another index of the reuseport group.
"""

from __future__ import annotations

import array
import contextlib
import errno
import functools
import logging
import os
import pickle
import select
import signal
import socket
import time
from typing import Any

from fabric.wg import steer
from fabric.wg.daemon import Daemon
from fabric.wg.multicore import Message, OwnerDevice, SharedCounters, WorkerDevice, use_shared
from fabric.wg.tun import Tun
from fabric.wg.udp import (
    IP_PKTINFO,
    IPPROTO_IP,
    IPPROTO_IPV6,
    IPV6_RECVPKTINFO,
    SO_MARK,
    BindError,
    tune,
)

log = logging.getLogger("crosswire.wg")

_INT = array.array("i")
# Runs of 2**k consecutive counters go to one worker (fabric.wg.steer).
STEER_BLOCK_LOG2 = int(os.environ.get("CROSSWIRE_WG_STEER_BLOCK_LOG2", "6"))
CTRL_BUF = 4 << 20  # a mirrored configuration of many peers is one message
_Pair = tuple[socket.socket, socket.socket | None]


def _socket(family: int, fwmark: int) -> socket.socket:
    s = socket.socket(family, socket.SOCK_DGRAM)
    try:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        tune(s, fwmark)
        if family == socket.AF_INET:
            s.setsockopt(IPPROTO_IP, IP_PKTINFO, 1)
        else:
            s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            s.setsockopt(IPPROTO_IPV6, IPV6_RECVPKTINFO, 1)
    except OSError:
        s.close()
        raise
    return s


def bind_group(port: int, fwmark: int, n: int) -> tuple[list[_Pair], int]:
    """N (IPv4, IPv6-only) socket pairs on one port, bound in order (socket i of each
    reuseport group is worker i's), steering attached. IPv6 is left out when the
    kernel or namespace has none."""
    last: OSError | None = None
    for _ in range(100 if port == 0 else 1):
        made: list[socket.socket] = []
        try:
            v4 = []
            bound = port
            for _i in range(n):
                s = _socket(socket.AF_INET, fwmark)
                made.append(s)
                s.bind(("0.0.0.0", bound))
                bound = s.getsockname()[1]
                v4.append(s)
            v6: list[socket.socket | None] = []
            try:
                for _i in range(n):
                    s = _socket(socket.AF_INET6, fwmark)
                    made.append(s)
                    s.bind(("::", bound))
                    v6.append(s)
            except OSError as e:
                if e.errno not in (errno.EADDRNOTAVAIL, errno.EAFNOSUPPORT):
                    raise
                for s6 in v6:
                    if s6 is not None:
                        s6.close()
                v6 = [None] * n
            steer.attach(v4[0], n, STEER_BLOCK_LOG2)
            if v6[0] is not None:
                steer.attach(v6[0], n, STEER_BLOCK_LOG2)
            return list(zip(v4, v6, strict=True)), bound
        except OSError as e:
            for s in made:
                s.close()
            if e.errno == errno.EADDRINUSE and port == 0:
                last = e
                continue
            raise BindError(e.errno or errno.EIO, f"cannot bind UDP port {port}: {e.strerror}") from e
    assert last is not None
    raise BindError(last.errno or errno.EADDRINUSE, f"cannot bind UDP port {port}: {last.strerror}")


def _send(ctrl: socket.socket, obj: Any, fds: list[int] | None = None) -> None:
    data = pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
    if fds:
        socket.send_fds(ctrl, [data], fds)
    else:
        ctrl.send(data)


class Pool:
    """The owner's handle on its workers."""

    def __init__(self, shared: SharedCounters, ctrl: list[socket.socket], pids: list[int]) -> None:
        self.shared = shared
        self.ctrl = ctrl
        self.pids = pids

    def stop(self, timeout: float = 3.0) -> None:
        for c in self.ctrl:
            c.close()  # EOF: each worker stops and exits
        deadline = time.monotonic() + timeout
        for pid in self.pids:
            while True:
                with contextlib.suppress(ChildProcessError):
                    done, _ = os.waitpid(pid, os.WNOHANG)
                    if not done and time.monotonic() < deadline:
                        time.sleep(0.02)
                        continue
                    if not done:
                        with contextlib.suppress(ProcessLookupError):
                            os.kill(pid, signal.SIGKILL)
                        os.waitpid(pid, 0)
                break
        self.pids = []


def start(tun: Tun, n: int, close_in_workers: tuple[int, ...] = ()) -> Pool:
    """Fork workers 1..n-1 (each with a new queue of ``tun``, which must be
    multi-queue); returns the owner's handle. ``close_in_workers``: fds of the
    owner the workers must not hold (the readiness pipe: its reader waits for EOF)."""
    shared = SharedCounters()
    use_shared(shared)
    queues: list[Tun] = []
    try:
        for _ in range(n - 1):
            queues.append(tun.add_queue())
    except OSError:
        for q in queues:
            q.close()
        raise
    ctrl: list[socket.socket] = []
    pids: list[int] = []
    try:
        for i in range(1, n):
            a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
            for s in (a, b):
                s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, CTRL_BUF)
                s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, CTRL_BUF)
            pid = os.fork()
            if pid == 0:
                code = 1
                try:
                    # Hold nothing of the owner's or of the other workers.
                    for s in (a, *ctrl):
                        s.close()
                    os.close(tun.fd)
                    for fd in close_in_workers:
                        os.close(fd)
                    for j, q in enumerate(queues, 1):
                        if j != i:
                            os.close(q.fd)
                    code = _worker_main(i, queues[i - 1], b)
                except BaseException:
                    log.exception("worker %d crashed", i)
                finally:
                    logging.shutdown()
                    os._exit(code)
            b.close()
            ctrl.append(a)
            pids.append(pid)
    except BaseException:
        Pool(shared, ctrl, pids).stop()
        raise
    finally:
        for q in queues:
            os.close(q.fd)
    log.info("%d workers (pids %s)", n, " ".join(map(str, pids)))
    return Pool(shared, ctrl, pids)


class OwnerDaemon(Daemon):
    """Worker 0's loop: a Daemon that binds for the whole group, mirrors what the
    workers must know and takes in their facts."""

    def __init__(self, device: OwnerDevice, tun: Tun, *, pool: Pool, **kwargs: Any) -> None:
        self.pool = pool
        self.owner = device
        self.group: list[_Pair] = []
        self.worker_counters: dict[int, dict[str, int]] = {}
        super().__init__(device, tun, **kwargs)
        for i, c in enumerate(pool.ctrl, 1):
            self.epoll.register(c.fileno(), select.EPOLLIN)
            self.extra[c.fileno()] = functools.partial(self._on_worker, i, c)

    def _apply_config(self) -> None:
        dev = self.device
        gen, port, mark = dev.config_generation, dev.listen_port, dev.fwmark
        if self.group and (port == self.bound_port or (port == 0 and self.bound_port)):
            for pair in self.group:
                for s in pair:
                    if s is not None:
                        s.setsockopt(socket.SOL_SOCKET, SO_MARK, mark)
            self.generation = gen
            return
        group, bound = bind_group(port, mark, len(self.pool.ctrl) + 1)
        for c, (s4, s6) in zip(self.pool.ctrl, group[1:], strict=True):
            _send(c, ("socks",), [s4.fileno()] + ([s6.fileno()] if s6 is not None else []))
        self._close_sockets()
        for pair in self.group[1:]:
            for s in pair:
                if s is not None:
                    s.close()
        self.group = group
        self._adopt(group[0][0], group[0][1], bound)
        dev.set_bound_port(bound)
        self.generation = gen
        log.info("listening on UDP port %d%s, %d workers", bound,
                 "" if group[0][1] else " (IPv4 only)", len(group))

    def _adopt(self, s4: socket.socket, s6: socket.socket | None, bound: int) -> None:
        self.s4, self.s6, self.bound_port = s4, s6, bound
        self.s4_fd = s4.fileno()
        self.s6_fd = s6.fileno() if s6 is not None else -2
        self._s4_ready = select.poll()
        self._s4_ready.register(self.s4_fd, select.POLLIN)
        self._s6_ready = select.poll()
        for s in (s4, s6):
            if s is not None:
                if s is s6:
                    self._s6_ready.register(self.s6_fd, select.POLLIN)
                self.epoll.register(s.fileno(), select.EPOLLIN)

    def _on_uapi(self, request: str) -> str:
        old = self.owner.private_key
        reply = super()._on_uapi(request)
        if request.startswith("set=1\n") and reply.startswith(("errno=0\n", "errno=-98\n")):
            self.owner.configured(request, old, self.clock())
            self._flush()
        return reply

    def _flush(self) -> None:
        # Keypairs before the packets that use them.
        out = self.owner.to_workers
        if out:
            batch = list(out)
            out.clear()
            for c in self.pool.ctrl:
                _send(c, batch)
        super()._flush()

    def _on_worker(self, i: int, c: socket.socket, ev: int) -> None:
        now = self.clock()
        while True:
            try:
                data = c.recv(CTRL_BUF, socket.MSG_DONTWAIT)
            except BlockingIOError:
                return
            except OSError:
                data = b""
            if not data:
                self.stop_reason = f"worker {i} exited"
                return
            msgs: list[Message] = pickle.loads(data)
            for msg in msgs:
                if msg[0] == "facts":
                    self.owner.apply_facts(msg[1], now)
                elif msg[0] == "counters":
                    self.worker_counters[i] = msg[1]

    def counters(self) -> dict[str, int]:
        """The sum over all workers, plus each one's datagram counts (how the load spreads)."""
        merged = super().counters()
        per_worker = {0: (merged["rx_datagrams"], merged["tx_datagrams"])}
        for i, wc in self.worker_counters.items():
            per_worker[i] = (wc.get("rx_datagrams", 0), wc.get("tx_datagrams", 0))
            for k, v in wc.items():
                merged[k] = merged.get(k, 0) + v
        for i, (rx, tx) in sorted(per_worker.items()):
            merged[f"worker{i}_rx_datagrams"] = rx
            merged[f"worker{i}_tx_datagrams"] = tx
        return merged

    def close(self) -> None:
        self.pool.stop()
        for pair in self.group[1:]:
            for s in pair:
                if s is not None:
                    s.close()
        super().close()


class WorkerDaemon(Daemon):
    """Workers 1..N-1: the same loop over their TUN queue and UDP pair; no UAPI,
    no stats file, no link watch (the MTU is re-read each second)."""

    def __init__(self, device: WorkerDevice, tun: Tun, ctrl: socket.socket) -> None:
        # Not Daemon.__init__: no UAPI socket, no binding and no link watch of our own.
        self._init_io(device, tun, clock=time.monotonic, gso=True)
        self.worker = device
        self.ctrl = ctrl
        self.extra[ctrl.fileno()] = self._on_owner
        self._next_counters = 0.0
        device.mtu = tun.mtu()
        self._register_io()
        self.epoll.register(ctrl.fileno(), select.EPOLLIN)

    def _on_owner(self, ev: int) -> None:
        now = self.clock()
        while True:
            try:
                # Not socket.recv_fds: Python 3.11's ignores its flags (it would block).
                data, anc, _flags, _addr = self.ctrl.recvmsg(
                    CTRL_BUF, socket.CMSG_SPACE(2 * _INT.itemsize), socket.MSG_DONTWAIT)
            except BlockingIOError:
                return
            except OSError:
                data = b""
            if not data:
                self.stop_reason = "owner exited"
                return
            fds: list[int] = []
            for level, kind, cdata in anc:
                if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                    arr = array.array("i")
                    arr.frombytes(cdata[: len(cdata) - len(cdata) % _INT.itemsize])
                    fds.extend(arr)
            msgs = pickle.loads(data)
            if msgs == ("socks",):
                self._take_sockets(fds)
                continue
            for msg in msgs:
                self.worker.apply(msg, now)
            self._flush()

    def _take_sockets(self, fds: list[int]) -> None:
        self._close_sockets()
        s4 = socket.socket(fileno=fds[0])
        s6 = socket.socket(fileno=fds[1]) if len(fds) > 1 else None
        OwnerDaemon._adopt(self, s4, s6, s4.getsockname()[1])  # type: ignore[arg-type]

    def _flush(self) -> None:
        out = self.worker.to_owner
        now = self.clock()
        if now >= self._next_counters:
            self._next_counters = now + 1.0
            out.append(("counters", self.counters()))
        if out:
            batch = list(out)
            out.clear()
            _send(self.ctrl, batch)
        super()._flush()

    def _housekeeping(self) -> None:
        if not self.tun.exists():
            self.stop_reason = "interface deleted"
            return
        self._follow_mtu()

    def close(self) -> None:
        self._close_sockets()
        self.tun.close()
        self.epoll.close()
        self.ctrl.close()
        os.close(self._wake_r)
        os.close(self._wake_w)


def _worker_main(i: int, tun: Tun, ctrl: socket.socket) -> int:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the owner decides; we follow its socket
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGUSR1, signal.SIG_IGN)
    daemon = WorkerDaemon(WorkerDevice(), tun, ctrl)
    try:
        reason = daemon.run()
        log.debug("worker %d stopping: %s", i, reason)
    finally:
        daemon.close()
    return 0
