"""The UAPI unix socket (/var/run/wireguard/IFACE.sock) served from the daemon's event loop.

The wire format is wg(8)'s text protocol: a request is ``get=1\\n`` or
``set=1\\n`` followed by key=value lines and ends at an empty line. The server
only frames requests and replies; what they mean is the ``handler`` callback's
business (the daemon answers with fabric.wg.uapi.handle). As in wireguard-go,
a connection may carry any number of requests; an unknown operation or an
oversized request closes it.

Everything is non-blocking and driven by the daemon's epoll loop, so the
handler runs on the loop thread and the device never needs a lock. Request
bodies are never logged: they carry private and preshared keys.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import select
import socket
import stat
import time
from collections.abc import Callable

log = logging.getLogger("crosswire.wg.uapi")

SOCKET_DIR = "/var/run/wireguard"
MAX_REQUEST = 16 << 20  # a wg syncconf of thousands of peers stays far below this
VALID_OPS = (b"get=1\n", b"set=1\n")
# A burst of concurrent `wg show` / gateway reads waits in the backlog instead of
# failing with EAGAIN (which the gateway once took for a dead data plane).
UAPI_BACKLOG = 512
ACCEPT_LOG_EVERY = 10.0


class UapiError(OSError):
    """The UAPI socket could not be created."""


def socket_path(iface: str, directory: str = SOCKET_DIR) -> str:
    return os.path.join(directory, f"{iface}.sock")


class _Conn:
    __slots__ = ("closing", "inbuf", "outbuf", "sock")

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.inbuf = bytearray()
        self.outbuf = bytearray()
        self.closing = False  # the client shut its write side: close once answered


class UapiServer:
    """Listens on the UAPI socket; ``on_event`` handles every fd it registered in ``epoll``."""

    def __init__(self, iface: str, handler: Callable[[str], str], epoll: select.epoll,
                 directory: str = SOCKET_DIR) -> None:
        self.path = socket_path(iface, directory)
        self.handler = handler
        self.epoll = epoll
        self.conns: dict[int, _Conn] = {}
        self.accept_errors = 0
        self._accept_logged = -ACCEPT_LOG_EVERY
        os.makedirs(directory, mode=0o755, exist_ok=True)
        with contextlib.suppress(OSError):
            os.chmod(directory, 0o755)
        if os.path.exists(self.path):
            if _socket_alive(self.path):
                raise UapiError(errno.EADDRINUSE, f"{self.path} is in use by a running daemon")
            os.unlink(self.path)  # stale, left by a killed daemon
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        old_umask = os.umask(0o077)  # the socket is born 0600, never briefly wider
        try:
            sock.bind(self.path)
        except OSError as e:
            sock.close()
            raise UapiError(e.errno or errno.EIO, f"cannot bind {self.path}: {e.strerror}") from e
        finally:
            os.umask(old_umask)
        os.chmod(self.path, 0o600)
        sock.listen(UAPI_BACKLOG)
        sock.setblocking(False)
        self.listener = sock
        self.inode = os.stat(self.path).st_ino
        epoll.register(sock.fileno(), select.EPOLLIN)

    def fds(self) -> set[int]:
        return {self.listener.fileno(), *self.conns}

    def still_ours(self) -> bool:
        """False once someone deleted or replaced the socket file: the signal to shut down."""
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return False
        return st.st_ino == self.inode and stat.S_ISSOCK(st.st_mode)

    def on_event(self, fd: int, events: int) -> None:
        if fd == self.listener.fileno():
            self._accept()
            return
        conn = self.conns.get(fd)
        if conn is None:
            return
        if events & (select.EPOLLIN | select.EPOLLRDHUP):
            self._read(conn)
        if fd in self.conns and events & select.EPOLLOUT:
            self._write(conn)
        if fd in self.conns and events & (select.EPOLLERR | select.EPOLLHUP):
            self._close(conn)  # HUP: the client can read no answer any more

    def _accept(self) -> None:
        while True:
            try:
                sock, _ = self.listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as e:
                # EMFILE and the like repeat on every loop turn while they last:
                # one line per ACCEPT_LOG_EVERY seconds, with a count.
                self.accept_errors += 1
                now = time.monotonic()
                if now - self._accept_logged >= ACCEPT_LOG_EVERY:
                    self._accept_logged = now
                    log.warning("uapi accept failed: %s (%d failures so far)", e.strerror, self.accept_errors)
                return
            sock.setblocking(False)
            self.conns[sock.fileno()] = _Conn(sock)
            self.epoll.register(sock.fileno(), select.EPOLLIN | select.EPOLLRDHUP)

    def _read(self, conn: _Conn) -> None:
        while True:
            try:
                chunk = conn.sock.recv(65536)
            except (BlockingIOError, InterruptedError):
                break
            except OSError:
                self._close(conn)
                return
            if not chunk:
                # Peer closed its write side; answer what is complete, then close.
                self._serve(conn)
                if conn.sock.fileno() in self.conns:
                    conn.closing = True
                    self._write(conn)
                return
            conn.inbuf += chunk
            if len(conn.inbuf) > MAX_REQUEST:
                log.warning("uapi request larger than %d bytes, closing connection", MAX_REQUEST)
                self._close(conn)
                return
        self._serve(conn)

    def _serve(self, conn: _Conn) -> None:
        """Answer every complete request in the buffer, in order."""
        while True:
            buf = conn.inbuf
            # A request ends at its first empty line; "get=1\n\n" has no key lines at all.
            end = buf.find(b"\n\n")
            if end < 0:
                return
            request = bytes(buf[: end + 2])
            del buf[: end + 2]
            op = request[:6]
            if op not in VALID_OPS:
                log.warning("invalid uapi operation, closing connection")
                self._close(conn)
                return
            try:
                text = request.decode()
            except UnicodeDecodeError:
                reply = f"errno={-errno.EINVAL}\n\n"
            else:
                reply = self.handler(text)
            conn.outbuf += reply.encode()
            self._write(conn)
            if conn.sock.fileno() not in self.conns:
                return

    def _write(self, conn: _Conn) -> None:
        fd = conn.sock.fileno()
        while conn.outbuf:
            try:
                n = conn.sock.send(conn.outbuf)
            except (BlockingIOError, InterruptedError):
                # After EOF only writability matters (a readable EOF would wake us forever).
                wanted = select.EPOLLOUT if conn.closing else \
                    select.EPOLLIN | select.EPOLLOUT | select.EPOLLRDHUP
                self.epoll.modify(fd, wanted)
                return
            except OSError:
                self._close(conn)
                return
            del conn.outbuf[:n]
        if conn.closing:
            self._close(conn)
            return
        self.epoll.modify(fd, select.EPOLLIN | select.EPOLLRDHUP)

    def _close(self, conn: _Conn) -> None:
        fd = conn.sock.fileno()
        if fd in self.conns:
            del self.conns[fd]
            with contextlib.suppress(OSError):
                self.epoll.unregister(fd)
        conn.sock.close()

    def close(self) -> None:
        """Close everything; remove the socket file only if it is still the one we made."""
        for conn in list(self.conns.values()):
            self._close(conn)
        if self.still_ours():
            with contextlib.suppress(OSError):
                os.unlink(self.path)
        with contextlib.suppress(OSError):
            self.epoll.unregister(self.listener.fileno())
        self.listener.close()


def _socket_alive(path: str) -> bool:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        try:
            s.connect(path)
        except OSError:
            return False
    return True
