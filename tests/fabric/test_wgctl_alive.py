"""WgControl.alive: the reconcile loop's periodic look asks a large device for its
whole answer only now and then (issue 18); other callers always ask for it."""

from __future__ import annotations

import contextlib
import os
import socket
import tempfile
import threading
import time

from fabric.wgctl import ALIVE_SHARE, WgControl


class FakeUapi:
    """A UAPI listener that answers ``get`` after ``delay`` seconds and counts requests."""

    def __init__(self, path: str, delay: float,
                 reply: bytes = b"private_key=" + b"0" * 64 + b"\nlisten_port=51820\nerrno=0\n\n") -> None:
        self.delay = delay
        self.reply = reply
        self.gets = 0
        self.connections = 0
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.bind(path)
        self.sock.listen(16)
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with conn:
                self.connections += 1
                if conn.recv(100).startswith(b"get=1"):
                    self.gets += 1
                    time.sleep(self.delay)
                    conn.sendall(self.reply)

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)  # wakes the accept(): the listener is gone
        self.sock.close()
        self.thread.join(timeout=5)


def test_periodic_checks_skip_the_dump_of_a_slow_device_until_due() -> None:
    with tempfile.TemporaryDirectory() as d:
        srv = FakeUapi(os.path.join(d, "cwx.sock"), delay=0.01)  # >= 3 s of ALIVE_SHARE
        try:
            wg = WgControl("cwx", socket_dir=d)
            assert wg.alive(periodic=True) is True and srv.gets == 1
            for _ in range(5):
                assert wg.alive(periodic=True) is True
            assert srv.gets == 1  # a connection accepted was the answer
            assert wg.alive() is True and srv.gets == 2  # not periodic: always the whole answer
            wg._full_due = 0.0  # due again
            assert wg.alive(periodic=True) is True and srv.gets == 3
        finally:
            srv.close()
        # The process gone: its socket refuses, and the cheap look says so.
        assert wg.alive(periodic=True) is False


def test_a_fast_device_is_asked_again_once_its_short_window_passed() -> None:
    with tempfile.TemporaryDirectory() as d:
        srv = FakeUapi(os.path.join(d, "cwy.sock"), delay=0.0)
        try:
            wg = WgControl("cwy", socket_dir=d)
            for _ in range(3):
                assert wg.alive(periodic=True) is True
                wait = wg._full_due - time.monotonic()
                assert wait < 5.0, wait  # a few ms of answer (more under load): a short window
                time.sleep(max(wait, 0.0) + 0.001)
            assert srv.gets == 3
        finally:
            srv.close()
    # The reconcile loop looks every second: a device answering in 3 ms is asked every time.
    assert ALIVE_SHARE * 0.003 < 1.0


def test_an_answer_without_errno_or_with_an_error_is_not_alive() -> None:
    for reply in (b"garbage\n\n", b"errno=19\n\n", b"public_key=zz\nerrno=0\n\n"):
        with tempfile.TemporaryDirectory() as d:
            srv = FakeUapi(os.path.join(d, "cwz.sock"), delay=0.0, reply=reply)
            try:
                assert WgControl("cwz", socket_dir=d).alive() is False, reply
            finally:
                srv.close()
