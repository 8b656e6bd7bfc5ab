"""The daemon caps glibc's malloc arenas (gateway.memory): threads that allocate at the
same time share two arenas instead of one each (the RSS spread of issue 18)."""

from __future__ import annotations

import ctypes
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from gateway import memory

PROBE = textwrap.dedent("""
    import ctypes, sys, threading
    from gateway import memory
    if sys.argv[1] == "cap":
        assert memory.limit_arenas() == memory.ARENAS
    libc = ctypes.CDLL(None)
    libc.malloc.restype = ctypes.c_void_p
    libc.malloc.argtypes = [ctypes.c_size_t]
    held = threading.Barrier(9)
    done = threading.Barrier(9)

    def work():
        ptrs = [libc.malloc(2000) for _ in range(500)]  # small blocks: from the thread's arena
        held.wait()
        done.wait()

    threads = [threading.Thread(target=work) for _ in range(8)]
    for t in threads:
        t.start()
    held.wait()
    heaps = set()  # a non-main arena is a heap mapped at a 64 MiB boundary
    for line in open("/proc/self/maps"):
        fields = line.split()
        start = int(fields[0].split("-")[0], 16)
        if len(fields) == 5 and start % (64 << 20) == 0:
            heaps.add(start)
    print(len(heaps))
    done.wait()
""")


def _arenas(mode: str) -> int:
    env = {"PATH": "/usr/bin:/bin"}  # no MALLOC_ARENA_MAX from the caller
    out = subprocess.run([sys.executable, "-c", PROBE, mode], capture_output=True, text=True, timeout=60,
                         env=env, cwd=str(Path(memory.__file__).parent.parent))
    assert out.returncode == 0, out.stderr
    return int(out.stdout.strip())


def test_threads_share_two_arenas_once_capped() -> None:
    if not hasattr(ctypes.CDLL(None), "mallopt"):
        pytest.fail("not glibc: no mallopt (the daemon's image is Debian)")
    free = _arenas("free")
    capped = _arenas("cap")
    assert free >= 4, free  # without the cap, eight threads made arenas of their own
    assert capped <= memory.ARENAS - 1, capped  # the main arena is the process heap


def test_an_operators_malloc_arena_max_is_left_alone() -> None:
    assert memory.limit_arenas(environ={"MALLOC_ARENA_MAX": "4"}) is None
