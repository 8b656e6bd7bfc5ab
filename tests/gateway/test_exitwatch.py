"""The reconcile loop restarts a data plane the moment its process exits (pidfd), not at
its next poll: with a 60 s poll interval the restart still comes within seconds."""

from __future__ import annotations

import asyncio
import subprocess
import time
from typing import Any

import pytest

from gateway import reconciler as reconciler_mod
from gateway.exitwatch import ExitWatch


def test_exit_watch_fires_on_exit() -> None:
    async def go() -> None:
        proc = subprocess.Popen(["sleep", "30"])
        watch = ExitWatch(asyncio.get_running_loop())
        try:
            watch.follow(proc.pid)
            watch.follow(proc.pid)  # the same pid again: nothing new
            assert watch.pid == proc.pid and not watch.exited.is_set()
            proc.kill()
            await asyncio.wait_for(watch.exited.wait(), 5)
            assert watch.pid is None  # one notice per process
            watch.follow(None)
        finally:
            proc.kill()
            proc.wait()
            watch.close()

    asyncio.run(go())


def test_loop_restarts_an_exited_data_plane_at_once(clusters: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(reconciler_mod, "CHECK_INTERVAL", 60.0)
    lab = clusters("lab")

    async def go() -> None:
        rec = lab.gw.reconciler
        assert await rec.reconcile()
        proc = subprocess.Popen(["sleep", "30"])  # stands in for crosswire-wg
        lab.fabric.pid = proc.pid
        stop = asyncio.Event()
        task = asyncio.create_task(rec.run(stop))
        try:
            await asyncio.sleep(0.3)  # the loop follows the pid
            before = lab.fabric.ensure_calls
            t0 = time.monotonic()
            lab.fabric.up = False  # what alive() sees once the process is gone
            lab.fabric.pid = None
            proc.kill()
            while lab.fabric.ensure_calls == before:
                assert time.monotonic() - t0 < 10, "not restarted: the loop waited for its 60 s poll"
                await asyncio.sleep(0.05)
            assert rec.stats.restarts == 1
        finally:
            stop.set()
            await asyncio.wait_for(task, 10)
            proc.kill()
            proc.wait()

    asyncio.run(go())


def test_exit_with_the_standby_serving_counts_as_a_restart(clusters: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    # Issue 20: the followed process exits but a data plane answers at once (its standby
    # took over). No start of our own, but a restart all the same: counted, re-applied.
    monkeypatch.setattr(reconciler_mod, "CHECK_INTERVAL", 60.0)
    lab = clusters("lab")

    async def go() -> None:
        rec = lab.gw.reconciler
        assert await rec.reconcile()
        first = subprocess.Popen(["sleep", "30"])  # the active crosswire-wg
        standby = subprocess.Popen(["sleep", "30"])  # the standby that takes over
        lab.fabric.pid = first.pid
        stop = asyncio.Event()
        task = asyncio.create_task(rec.run(stop))
        try:
            await asyncio.sleep(0.3)
            ensures, applies = lab.fabric.ensure_calls, len(lab.fabric.applied)
            lab.fabric.pid = standby.pid  # alive() stays True throughout
            t0 = time.monotonic()
            first.kill()
            while rec.stats.restarts == 0:
                assert time.monotonic() - t0 < 10, "the takeover went unnoticed"
                await asyncio.sleep(0.05)
            assert lab.fabric.ensure_calls == ensures  # nothing of ours was started
            assert len(lab.fabric.applied) == applies + 1
            await asyncio.sleep(0.3)  # and the loop now follows the standby
            standby.kill()
            while rec.stats.restarts == 1:
                assert time.monotonic() - t0 < 10, "the new process is not followed"
                await asyncio.sleep(0.05)
        finally:
            stop.set()
            await asyncio.wait_for(task, 10)
            for p in (first, standby):
                p.kill()
                p.wait()

    asyncio.run(go())
