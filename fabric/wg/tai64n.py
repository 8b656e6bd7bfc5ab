"""TAI64N timestamps as WireGuard sends them in handshake initiations.

12 bytes: big-endian u64 seconds (label 2^62 plus the 10 s TAI-UTC offset at
the 1970 epoch, as wireguard-go and the kernel) and big-endian u32
nanoseconds, rounded down to 2^24 ns so the timestamp does not leak a precise
clock (the same "whitening" both reference implementations apply).
"""

from __future__ import annotations

import struct

BASE = 0x400000000000000A
WHITENER_MASK = 0x1000000 - 1
SIZE = 12


def encode(unix_time: float) -> bytes:
    secs = int(unix_time // 1)
    nanos = round((unix_time - secs) * 1e9)
    if nanos >= 1_000_000_000:
        secs, nanos = secs + 1, nanos - 1_000_000_000
    return encode_parts(secs, nanos)


def encode_parts(secs: int, nanos: int) -> bytes:
    return struct.pack(">QI", BASE + secs, nanos & ~WHITENER_MASK)


def decode(stamp: bytes) -> tuple[int, int]:
    """(unix seconds, nanoseconds)."""
    secs, nanos = struct.unpack(">QI", stamp)
    return secs - BASE, nanos


def after(a: bytes, b: bytes) -> bool:
    """a is strictly later than b (big-endian byte order == time order)."""
    return a > b
