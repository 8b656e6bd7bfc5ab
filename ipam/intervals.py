"""Sorted sets of disjoint closed integer intervals, searched with bisect.

Members live in sorted chunks of at most ``CHUNK`` intervals (the layout of
``sortedcontainers.SortedList``, written out here): a query is two bisects,
an insert or delete moves at most one chunk's worth of pointers, so a set of
100,000 views stays as fast as one of 1,000.
"""

from __future__ import annotations

import itertools
from bisect import bisect_left, bisect_right
from collections.abc import Iterable, Iterator

CHUNK = 512


class IntervalSet:
    """Disjoint closed intervals [lo, hi], kept sorted by ``lo``.

    Because they are disjoint, sorting by start also sorts the ends, so the
    last interval starting at or before ``hi`` is the only one that can reach
    furthest into [lo, hi].
    """

    __slots__ = ("_ends", "_heads", "_starts")

    def __init__(self) -> None:
        self._starts: list[list[int]] = []  # chunks of starts, each sorted, non-empty
        self._ends: list[list[int]] = []  # the matching ends
        self._heads: list[int] = []  # first start of each chunk, for the outer bisect

    @classmethod
    def merged(cls, intervals: Iterable[tuple[int, int]]) -> IntervalSet:
        """The union of possibly overlapping intervals (adjacent ones are joined)."""
        starts: list[int] = []
        ends: list[int] = []
        for lo, hi in sorted(intervals):
            if ends and lo <= ends[-1] + 1:
                ends[-1] = max(ends[-1], hi)
            else:
                starts.append(lo)
                ends.append(hi)
        return cls._from_sorted(starts, ends)

    @classmethod
    def disjoint(cls, intervals: Iterable[tuple[int, int]]) -> IntervalSet:
        """Bulk-build from intervals that must not overlap; ValueError if two do."""
        pairs = sorted(intervals)
        for (_, hi), (lo, _) in itertools.pairwise(pairs):
            if lo <= hi:
                raise ValueError("intervals overlap")
        return cls._from_sorted([p[0] for p in pairs], [p[1] for p in pairs])

    @classmethod
    def _from_sorted(cls, starts: list[int], ends: list[int]) -> IntervalSet:
        s = cls()
        half = CHUNK // 2  # room to grow before the first split
        for i in range(0, len(starts), half):
            s._starts.append(starts[i:i + half])
            s._ends.append(ends[i:i + half])
            s._heads.append(starts[i])
        return s

    def __len__(self) -> int:
        return sum(len(c) for c in self._starts)

    def __iter__(self) -> Iterator[tuple[int, int]]:
        for st, en in zip(self._starts, self._ends, strict=True):
            yield from zip(st, en, strict=True)

    def _last_at_or_before(self, x: int) -> tuple[int, int]:
        """(chunk, index) of the last member starting <= x; chunk -1 if none."""
        c = bisect_right(self._heads, x) - 1
        if c < 0:
            return -1, -1
        return c, bisect_right(self._starts[c], x) - 1

    def reach(self, lo: int, hi: int) -> int | None:
        """If some interval overlaps [lo, hi], the largest end among them, else None.

        Searches that skip an occupied block jump to ``reach + 1``.
        """
        c, i = self._last_at_or_before(hi)
        if c >= 0:
            end = self._ends[c][i]
            if end >= lo:
                return end
        return None

    def overlapping(self, lo: int, hi: int) -> list[tuple[int, int]]:
        """All intervals overlapping [lo, hi], in order."""
        c, i = self._last_at_or_before(hi)
        out: list[tuple[int, int]] = []
        while c >= 0:
            if self._ends[c][i] < lo:
                break
            out.append((self._starts[c][i], self._ends[c][i]))
            i -= 1
            if i < 0:
                c -= 1
                i = len(self._starts[c]) - 1 if c >= 0 else -1
        out.reverse()
        return out

    def add(self, lo: int, hi: int) -> None:
        """Insert [lo, hi]; ValueError if it overlaps a member (they must stay disjoint)."""
        if lo > hi:
            raise ValueError(f"empty interval [{lo}, {hi}]")
        if self.reach(lo, hi) is not None:
            raise ValueError(f"interval [{lo}, {hi}] overlaps a member")
        if not self._heads:
            self._starts.append([lo])
            self._ends.append([hi])
            self._heads.append(lo)
            return
        c = max(bisect_right(self._heads, lo) - 1, 0)
        st, en = self._starts[c], self._ends[c]
        i = bisect_left(st, lo)
        st.insert(i, lo)
        en.insert(i, hi)
        self._heads[c] = st[0]
        if len(st) > CHUNK:
            half = len(st) // 2
            self._starts[c + 1:c + 1] = [st[half:]]
            self._ends[c + 1:c + 1] = [en[half:]]
            self._heads.insert(c + 1, st[half])
            del st[half:]
            del en[half:]

    def remove(self, lo: int, hi: int) -> None:
        """Delete exactly the member [lo, hi]; KeyError if absent."""
        c, i = self._last_at_or_before(lo)
        if c < 0 or self._starts[c][i] != lo or self._ends[c][i] != hi:
            raise KeyError((lo, hi))
        st, en = self._starts[c], self._ends[c]
        del st[i]
        del en[i]
        if st:
            self._heads[c] = st[0]
        else:
            del self._starts[c]
            del self._ends[c]
            del self._heads[c]
