"""Transport-counter replay window, RFC 6479 style, as the kernel's counter.c.

8192 bits of ring kept as 128 words of 64 bits; the newest word is always
being filled, so the guaranteed window is 8192 - 64 = 8128 counters. The
stored ``counter`` is one past the highest accepted value. Call ``check``
only after the packet authenticated (an unauthenticated counter would let
anyone slide the window).
"""

from __future__ import annotations

REJECT_AFTER_MESSAGES = (1 << 64) - (1 << 13) - 1
_WORD_BITS = 64
_BITS_TOTAL = 8192
_WORDS = _BITS_TOTAL // _WORD_BITS
_WORD_MASK = _WORDS - 1
WINDOW_SIZE = _BITS_TOTAL - _WORD_BITS  # 8128
_FULL = (1 << 64) - 1


class ReplayWindow:
    __slots__ = ("backtrack", "counter")

    def __init__(self) -> None:
        self.counter = 0
        self.backtrack = [0] * _WORDS

    def check(self, their_counter: int) -> bool:
        """True (and remembered) if the counter is fresh; False for replays/too old."""
        if self.counter >= REJECT_AFTER_MESSAGES + 1 or their_counter >= REJECT_AFTER_MESSAGES:
            return False
        their_counter += 1
        if WINDOW_SIZE + their_counter < self.counter:
            return False
        index = their_counter >> 6
        if their_counter > self.counter:
            index_current = self.counter >> 6
            top = min(index - index_current, _WORDS)
            bt = self.backtrack
            for i in range(1, top + 1):
                bt[(i + index_current) & _WORD_MASK] = 0
            self.counter = their_counter
        index &= _WORD_MASK
        bit = 1 << (their_counter & 63)
        word = self.backtrack[index]
        if word & bit:
            return False
        self.backtrack[index] = word | bit
        return True

    def check_run(self, counters: list[int]) -> list[bool] | None:
        """``check`` on each of a batched run's counters in order: None when all were
        fresh, else each one's result. A run of consecutive counters above everything
        seen (one sender's GSO burst, the bulk case) is marked a word at a time."""
        first = counters[0]
        last = counters[-1]
        if not (first >= self.counter and last < REJECT_AFTER_MESSAGES
                and last - first + 1 == len(counters)
                and counters == list(range(first, last + 1))):
            results = [self.check(c) for c in counters]
            return None if all(results) else results
        self.check(first)  # fresh: clears the words it passes, as one by one would
        lo, hi = first + 2, last + 1  # the stored form is counter + 1
        bt = self.backtrack
        word = (first + 1) >> 6
        while lo <= hi:
            w = lo >> 6
            top = min(hi, w << 6 | 63)
            mask = ((1 << (top - lo + 1)) - 1) << (lo & 63)
            if w != word:  # entered now: one by one would clear it first
                bt[w & _WORD_MASK] = mask
                word = w
            else:
                bt[w & _WORD_MASK] |= mask
            lo = top + 1
        self.counter = hi
        return None
