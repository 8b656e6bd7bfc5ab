"""Counters read from the data plane at most once per interval, whatever the readers.

An open page polls every 2 s per tab, a scrape comes every 15-30 s, the CLI now and
then; with 1,000 peers each read of the kernel's counters or of WireGuard's dump is
milliseconds to tenths of a second. A ``Snapshot`` holds the last value read and
answers every reader within ``ttl`` seconds (time.monotonic) from it: one read per
interval for any number of viewers. ``key`` ties a value to what it was read for
(the programmed state: counters of another table are not these); a failed read is
not held (the next reader tries again) and answers ``fallback``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any, Generic, TypeVar

log = logging.getLogger("crosswire.gateway")

T = TypeVar("T")


class Snapshot(Generic[T]):
    def __init__(self, what: str, read: Callable[[Any], T], ttl: Callable[[], float], fallback: T) -> None:
        self.what = what  # for the log line of a failed read
        self._read = read  # called with the key
        self._ttl = ttl  # read at each get: tests and the daemon may change it
        self._fallback = fallback
        self._held: tuple[float, object, T] | None = None
        self.reads = 0  # reads of the data plane since start (tests)

    def get(self, key: object = None) -> T:
        now = time.monotonic()
        held = self._held
        # ``is``: the key is the programmed state, whose == compares 1,000 peers
        if held is not None and held[1] is key and 0 <= now - held[0] < self._ttl():
            return held[2]
        try:
            value = self._read(key)
        except Exception as e:
            log.debug("%s unavailable: %s", self.what, e)
            return self._fallback
        self.reads += 1
        self._held = (now, key, value)
        return value
