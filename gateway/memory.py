"""The daemon's memory: glibc's malloc arenas (at most ``ARENAS``, whatever the
threads), its free pages given back, and the garbage collector's pace.

Why (bench/RESULTS.md, "Fleet", issue 18): with 1,000 peers the daemon's RSS
varied 177-375 MB over runs of the same code path. /proc/PID/smaps of a
275 MB daemon showed ~137 MB in five 64 MB-aligned anonymous regions (glibc's
per-thread arenas) beside a 26 MB main heap. glibc gives each thread that
allocates while the others hold theirs a new arena, up to 8 per core; the
request threads (anyio's pool for sync endpoints, asyncio.to_thread) build
large transient objects (NAT reports, table listings, WireGuard dumps) in
whichever arena they got, and what a non-main arena frees stays resident
unless it is at the top of its heap. How many arenas a run ends with depends
on how requests overlapped: the spread. Two arenas bound that, at no
measurable cost for a daemon whose threads mostly wait.

``MALLOC_ARENA_MAX`` in the environment, if set, is the operator's choice and
is left alone (glibc read it already). Not glibc (musl, no mallopt): nothing done.

Large transient answers (a full NAT report is ~5 MB of JSON at 1,000 peers, a
scrape's table dump ~4 MB) come from the heap once glibc has raised its mmap
threshold (it does when such a block is freed), and what they free between
long-lived blocks stays resident (tests/gateway/test_memory.py shows it).
``trim_every`` gives free pages back (``malloc_trim``) once a minute: ~12 ms
for 200 MB freed, well under 1 ms when there is little.

The collector: with 1,000 peers the heap holds about a million objects, and
CPython's default pace (a young collection every 700 allocations) promoted
the transient objects of each request, so full collections of that heap
(~120 ms each) came 1-3 times a minute: 20-40 % of an idle daemon's CPU.
``tune_gc`` lets a request's garbage die by reference counting first.
"""

from __future__ import annotations

import asyncio
import ctypes
import gc
import logging
import os
import time

log = logging.getLogger("crosswire.gateway")

ARENAS = 2
M_ARENA_MAX = -8  # glibc's <malloc.h>
TRIM_EVERY = 60.0  # seconds between malloc_trim calls


def limit_arenas(arenas: int = ARENAS, environ: dict[str, str] | None = None) -> int | None:
    """Cap glibc's arenas before the daemon starts threads; the cap in force, or None
    (left to the environment, or not glibc)."""
    env = os.environ if environ is None else environ
    if env.get("MALLOC_ARENA_MAX"):
        return None
    try:
        libc = ctypes.CDLL(None)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return None
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    if mallopt(M_ARENA_MAX, arenas) != 1:  # 1: done
        log.debug("mallopt(M_ARENA_MAX, %d) refused", arenas)
        return None
    return arenas


def trim() -> bool:
    """Return the heaps' free pages to the kernel (glibc ``malloc_trim``); False: not glibc."""
    try:
        malloc_trim = ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):
        return False
    malloc_trim.argtypes = [ctypes.c_size_t]
    malloc_trim.restype = ctypes.c_int
    malloc_trim(0)
    return True


async def trim_every(seconds: float = TRIM_EVERY) -> None:
    """``trim`` forever, every ``seconds`` (a task the daemon cancels at exit)."""
    while True:
        await asyncio.sleep(seconds)
        if not trim():
            return


class GcClock:
    """Collections and the time they took, per generation (``gc.callbacks``): what
    /metrics shows as ``crosswire_gc_*``. With a big heap (1,000 peers' state) the
    collector's pauses were a large hidden cost, so they are counted."""

    def __init__(self) -> None:
        self.collections = [0, 0, 0]
        self.seconds = [0.0, 0.0, 0.0]
        self._started = 0.0

    def __call__(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._started = time.perf_counter()
            return
        gen = info["generation"]
        self.collections[gen] += 1
        self.seconds[gen] += time.perf_counter() - self._started

    def install(self) -> GcClock:
        if self not in gc.callbacks:
            gc.callbacks.append(self)
        return self


GC_CLOCK = GcClock()


GC_YOUNG = 10_000  # allocations between young collections (CPython's default: 700)


def tune_gc(young: int = GC_YOUNG) -> tuple[int, int, int]:
    """Fewer young collections, so a request's transient objects (a WireGuard dump of
    1,000 peers is ~5,000 containers) are freed by reference counting before a
    collection sees them, instead of being promoted and then found by full collections
    of the whole heap (~120 ms each at 1,000 peers, 1-3 a minute; bench/RESULTS.md,
    "Fleet, fifth stop"). Counts collections for /metrics; returns the thresholds."""
    _, mid, old = gc.get_threshold()
    gc.set_threshold(young, mid, old)
    GC_CLOCK.install()
    return gc.get_threshold()
