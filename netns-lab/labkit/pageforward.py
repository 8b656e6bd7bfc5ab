"""``lab page CLUSTER``: a lab gateway's operator page on this machine's loopback.

The lab's gateways listen inside their namespaces only. This forwards
127.0.0.1:PORT (the host's loopback, nowhere else) to port ``target`` on the
loopback of the gateway pod's namespace: each connection is opened by a
worker thread that joined that namespace (a socket stays in the namespace it
was made in), then bytes are copied both ways. Runs until interrupted.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import os
import socket
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

CLONE_NEWNET = 0x40000000


def _join(ns: str) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    fd = os.open(f"/run/netns/{ns}", os.O_RDONLY)
    try:
        if libc.setns(fd, CLONE_NEWNET) != 0:
            raise OSError(ctypes.get_errno(), f"cannot join network namespace {ns}")
    finally:
        os.close(fd)


async def _copy(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
    try:
        while data := await r.read(65536):
            w.write(data)
            await w.drain()
    except (ConnectionError, OSError):
        pass
    finally:
        with contextlib.suppress(Exception):
            w.close()


async def serve(ns: str, target: int, port: int, ready: Callable[[int], None] | None = None,
                host: str = "127.0.0.1") -> None:
    """Forward 127.0.0.1:``port`` (0: any free port) to ``host``:``target`` in ``ns``
    (the gateway's operator listener); ``ready`` gets the port once listening."""
    if not os.path.exists(f"/run/netns/{ns}"):
        raise OSError(f"network namespace {ns} does not exist (is the lab up?)")
    pool = ThreadPoolExecutor(4, initializer=_join, initargs=(ns,), thread_name_prefix="page")
    loop = asyncio.get_running_loop()

    def connect() -> socket.socket:
        s = socket.create_connection((host, target), timeout=5)
        s.setblocking(False)
        return s

    async def handle(cr: asyncio.StreamReader, cw: asyncio.StreamWriter) -> None:
        try:
            s = await loop.run_in_executor(pool, connect)
        except OSError:
            cw.close()
            return
        ur, uw = await asyncio.open_connection(sock=s)
        await asyncio.gather(_copy(cr, uw), _copy(ur, cw))

    server = await asyncio.start_server(handle, "127.0.0.1", port)
    try:
        if ready is not None:
            ready(server.sockets[0].getsockname()[1])
        async with server:
            await server.serve_forever()
    finally:
        pool.shutdown(wait=False, cancel_futures=True)
