"""ReplayWindow.check_run (a batched run's counters at once, receive.py) leaves exactly
the state and answers that check() on each counter in order leaves, for the fast case
(consecutive counters above the window, marked a word at a time) and every other; the
shared window's check_run answers as the private one."""

from __future__ import annotations

import copy
import random

from fabric.wg.replay import REJECT_AFTER_MESSAGES, ReplayWindow
from fabric.wg.shared import SharedCounters, SharedReplay, use_shared


def _one_by_one(w: ReplayWindow, run: list[int]) -> list[bool] | None:
    results = [w.check(c) for c in run]
    return None if all(results) else results


def _history(rng: random.Random, base: int) -> ReplayWindow:
    w = ReplayWindow()
    for _ in range(rng.randrange(0, 6)):
        w.check(max(0, base + rng.randrange(-300, 300)))
    return w


def _run(rng: random.Random, w: ReplayWindow) -> list[int]:
    n = rng.randrange(1, 150)
    start = max(0, w.counter + rng.randrange(-5, 200))
    kind = rng.randrange(4)
    if kind == 0:
        return list(range(start, start + n))  # the bulk case
    if kind == 1:  # a jump past the whole ring
        return list(range(start + 9000, start + 9000 + n))
    run = list(range(start, start + n))
    if kind == 2 and n > 1:  # one duplicate or one missing
        i = rng.randrange(1, n)
        run[i] = run[i - 1] if rng.random() < 0.5 else run[i] + 1
        return run
    return [max(0, start + rng.randrange(-80, 80)) for _ in range(n)]


def test_check_run_equals_check_in_order() -> None:
    rng = random.Random(19)
    fast = 0
    for base in (0, 1, 62, 63, 64, 127, 8190, 8191, 1 << 40):
        for _ in range(1500):
            a = _history(rng, base)
            b = copy.deepcopy(a)
            run = _run(rng, a)
            expect = _one_by_one(a, run)
            fast += expect is None
            assert b.check_run(run) == expect, run
            assert (b.counter, b.backtrack) == (a.counter, a.backtrack), run
    assert fast > 1000  # the word-at-a-time path was exercised


def test_check_run_at_the_end_of_the_counter_space() -> None:
    top = REJECT_AFTER_MESSAGES
    for start in (top - 70, top - 3, top - 1, top):
        a = ReplayWindow()
        a.check(start - 100)
        b = copy.deepcopy(a)
        run = list(range(start, start + 5))
        expect = _one_by_one(a, run)
        if start + 4 >= top:
            assert expect is not None and expect[-1] is False  # past the limit: refused
        assert b.check_run(run) == expect
        assert (b.counter, b.backtrack) == (a.counter, a.backtrack)


def test_shared_check_run_answers_as_the_private_window() -> None:
    rng = random.Random(20)
    shared = SharedCounters(slots=4)
    use_shared(shared)
    for t in range(300):
        slot = shared.allocate(1000.0 * t)  # each slot free again after its 190 s
        private, common = ReplayWindow(), SharedReplay(slot)
        for _ in range(4):
            run = _run(rng, private)
            assert common.check_run(run) == private.check_run(run), run
