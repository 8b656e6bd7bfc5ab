"""Per-keypair state shared by the ``--workers`` processes: send counters and replay
windows in an anonymous shared mapping (fabric/wg/DESIGN.md, "More cores").

``SharedCounters`` is made by the owner before it forks (the mapping and the
locks are inherited); ``use_shared`` makes it the one ``SharedKeypair`` and
``SharedReplay`` use in this process.
"""

from __future__ import annotations

import mmap
import multiprocessing
import struct
from typing import Any

from fabric.wg.constants import REJECT_AFTER_TIME
from fabric.wg.peer import Keypair

SLOTS = 8192  # shared keypair slots; a slot is reused REJECT_AFTER_TIME + 10 s later
LOCKS = 16  # slot i uses lock i % LOCKS: workers on different keypairs rarely wait
_SLOT_LIFE = REJECT_AFTER_TIME + 10.0
_Q = struct.Struct("=Q")
# A slot: send counter, replay counter (one past the newest accepted), 128 words of
# replay bitmap (the kernel's 8192-bit ring, as fabric.wg.replay).
_WORDS = 128
_SLOT_SIZE = 16 + 8 * _WORDS
_WINDOW = 8192 - 64
_REJECT = (1 << 64) - (1 << 13) - 1
_ZERO_SLOT = bytes(_SLOT_SIZE)

class SharedCounters:
    """Per-keypair send counters and replay windows in memory shared by the forked
    workers (create it before forking). Pages are touched only when used."""

    def __init__(self, slots: int = SLOTS) -> None:
        self.mem = mmap.mmap(-1, slots * _SLOT_SIZE)  # MAP_SHARED | MAP_ANONYMOUS
        ctx = multiprocessing.get_context("fork")
        self.locks = [ctx.Lock() for _ in range(LOCKS)]
        self.slots = slots
        self._next = 0
        self._free_at = [float("-inf")] * slots  # owner only

    def allocate(self, now: float) -> int:
        """A slot no live keypair uses, zeroed (the owner, at each new keypair)."""
        for _ in range(self.slots):
            slot = self._next
            self._next = (slot + 1) % self.slots
            if self._free_at[slot] <= now:
                self._free_at[slot] = now + _SLOT_LIFE
                off = slot * _SLOT_SIZE
                with self.locks[slot % LOCKS]:
                    self.mem[off:off + _SLOT_SIZE] = _ZERO_SLOT
                return slot
        raise RuntimeError(f"no free shared keypair slot ({self.slots} keypairs in 190 s)")

    def take(self, slot: int, n: int) -> int:
        """The first of ``n`` fresh send counters of ``slot``."""
        off = slot * _SLOT_SIZE
        with self.locks[slot % LOCKS]:
            c: int = _Q.unpack_from(self.mem, off)[0]
            _Q.pack_into(self.mem, off, c + n)
        return c

    def raise_to(self, slot: int, value: int) -> None:
        off = slot * _SLOT_SIZE
        with self.locks[slot % LOCKS]:
            if _Q.unpack_from(self.mem, off)[0] < value:
                _Q.pack_into(self.mem, off, value)

    def check(self, slot: int, their: int) -> bool:
        """fabric.wg.replay.ReplayWindow.check on the slot's shared window, atomically:
        True (and remembered) if no worker accepted this counter before."""
        with self.locks[slot % LOCKS]:
            return self._check(slot * _SLOT_SIZE + 8, their)

    def check_many(self, slot: int, counters: list[int]) -> list[bool]:
        """``check`` for a batched run's counters, in order, under one lock."""
        base = slot * _SLOT_SIZE + 8
        check = self._check
        with self.locks[slot % LOCKS]:
            return [check(base, c) for c in counters]

    def _check(self, base: int, their: int) -> bool:
        if their >= _REJECT:
            return False
        mem = self.mem
        words = base + 8
        unpack, pack = _Q.unpack_from, _Q.pack_into
        their += 1
        newest: int = unpack(mem, base)[0]
        if newest >= _REJECT + 1 or _WINDOW + their < newest:
            return False
        index = their >> 6
        if their > newest:
            current = newest >> 6
            for i in range(1, min(index - current, _WORDS) + 1):
                pack(mem, words + 8 * ((i + current) & (_WORDS - 1)), 0)
            pack(mem, base, their)
        at = words + 8 * (index & (_WORDS - 1))
        word: int = unpack(mem, at)[0]
        bit = 1 << (their & 63)
        if word & bit:
            return False
        pack(mem, at, word | bit)
        return True


_shared: SharedCounters | None = None


class SharedReplay:
    """A keypair's replay window in ``SharedCounters``. Its ``counter`` is above any
    real counter, so receive.py's inline fast path (which updates a private window
    without a lock) never applies and every datagram goes through ``check``, or
    through ``check_run`` (one lock for a batched run)."""

    __slots__ = ("slot",)
    counter = 1 << 66

    def __init__(self, slot: int) -> None:
        self.slot = slot

    def check(self, their_counter: int) -> bool:
        assert _shared is not None
        return _shared.check(self.slot, their_counter)

    def check_run(self, counters: list[int]) -> list[bool] | None:
        """ReplayWindow.check_run: a batched run's counters under one lock."""
        assert _shared is not None
        results = _shared.check_many(self.slot, counters)
        return None if all(results) else results


class SharedKeypair(Keypair):
    """A keypair whose send counter and replay window live in ``SharedCounters``.
    Reading ``send_counter`` takes a fresh counter (the send paths read it once per
    packet they seal; a read that seals nothing leaves a harmless gap); assigning
    only ever raises it (``_expire_current_keypairs`` sets REJECT_AFTER_MESSAGES)."""

    __slots__ = ("slot",)

    def __init__(self, slot: int, *args: Any, **kwargs: Any) -> None:
        self.slot = slot
        super().__init__(*args, **kwargs)
        self.replay = SharedReplay(slot)  # type: ignore[assignment]

    @property
    def send_counter(self) -> int:
        assert _shared is not None
        return _shared.take(self.slot, 1)

    @send_counter.setter
    def send_counter(self, value: int) -> None:
        assert _shared is not None
        _shared.raise_to(self.slot, value)

    def take_run(self, n: int) -> int:
        """Counters for a batched run of up to ``n`` packets, taken at once (what the
        run leaves unused is a gap, which any window accepts)."""
        assert _shared is not None
        return _shared.take(self.slot, n)

    def end_run(self, counter: int) -> None:
        """Nothing: ``take_run`` already moved the shared counter past the run."""


def use_shared(shared: SharedCounters) -> None:
    global _shared
    _shared = shared




def get() -> SharedCounters:
    assert _shared is not None, "use_shared() first"
    return _shared
