"""Know the moment the data-plane process exits, instead of at the next poll.

A pidfd (Linux 5.3+) becomes readable when its process exits, whether or not
it is our child, so an adopted crosswire-wg or wireguard-go is watched as well
as one we started. The reconcile loop waits on it next to its 1 s timer: a
killed data plane is restarted at once (the poll and its confirmation used to
cost ~1.2 s of the ~1.3 s gap). Where pidfds are unavailable the poll remains.
"""

from __future__ import annotations

import asyncio
import contextlib
import os


class ExitWatch:
    """Sets ``exited`` when the followed process exits."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.exited = asyncio.Event()
        self.pid: int | None = None
        self._fd: int | None = None

    def follow(self, pid: int | None) -> None:
        """Watch ``pid`` (None: nothing); following the same pid again is free."""
        if pid == self.pid and (pid is None or self._fd is not None):
            return
        self.close()
        if pid is None:
            return
        try:
            self._fd = os.pidfd_open(pid)
        except OSError:
            return  # already gone, or no pidfds here: the poll notices
        self.pid = pid
        self.loop.add_reader(self._fd, self._on_exit)

    def _on_exit(self) -> None:
        self.exited.set()
        self.close()  # one notice per process: the next one is followed after the restart

    def close(self) -> None:
        if self._fd is not None:
            self.loop.remove_reader(self._fd)
            with contextlib.suppress(OSError):
                os.close(self._fd)
        self._fd = None
        self.pid = None
