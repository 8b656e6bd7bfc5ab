"""IntervalSet against a brute-force model, with tiny chunks so that splits happen."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ipam import intervals
from ipam.intervals import IntervalSet

pairs = st.tuples(st.integers(0, 200), st.integers(0, 12)).map(lambda t: (t[0], t[0] + t[1]))


def model_reach(model: set[tuple[int, int]], lo: int, hi: int) -> int | None:
    ends = [h for (l_, h) in model if l_ <= hi and lo <= h]
    return max(ends) if ends else None


@settings(max_examples=100, deadline=None)
@given(ops=st.lists(st.tuples(st.booleans(), pairs), max_size=50), probes=st.lists(pairs, max_size=20))
def test_matches_a_brute_force_model(ops: list[tuple[bool, tuple[int, int]]],
                                     probes: list[tuple[int, int]]) -> None:
    old = intervals.CHUNK
    intervals.CHUNK = 4
    try:
        s = IntervalSet()
        model: set[tuple[int, int]] = set()
        for insert, (lo, hi) in ops:
            if insert:
                if model_reach(model, lo, hi) is None:
                    s.add(lo, hi)
                    model.add((lo, hi))
                else:
                    with pytest.raises(ValueError):
                        s.add(lo, hi)
            elif (lo, hi) in model:
                s.remove(lo, hi)
                model.remove((lo, hi))
            else:
                with pytest.raises(KeyError):
                    s.remove(lo, hi)
            assert list(s) == sorted(model)
            assert len(s) == len(model)
        for lo, hi in probes:
            assert s.reach(lo, hi) == model_reach(model, lo, hi)
            assert s.overlapping(lo, hi) == sorted(x for x in model if x[0] <= hi and lo <= x[1])
        rebuilt = IntervalSet.disjoint(model)
        assert list(rebuilt) == sorted(model)
    finally:
        intervals.CHUNK = old


@given(st.lists(pairs, max_size=30))
def test_merged_is_the_union(items: list[tuple[int, int]]) -> None:
    s = IntervalSet.merged(items)
    covered = {x for lo, hi in items for x in range(lo, hi + 1)}
    got = {x for lo, hi in s for x in range(lo, hi + 1)}
    assert got == covered
    spans = list(s)
    assert all(a[1] + 1 < b[0] for a, b in itertools.pairwise(spans))  # joined


def test_disjoint_rejects_overlaps() -> None:
    with pytest.raises(ValueError):
        IntervalSet.disjoint([(0, 10), (10, 20)])
    with pytest.raises(ValueError):
        IntervalSet().add(5, 4)
