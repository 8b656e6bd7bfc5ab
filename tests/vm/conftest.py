"""The VM tier: one VM (Debian's kernel, WireGuard module included) per test session.

Run alone: ``bash tests/run tests/vm`` (or ``.venv/bin/python -m pytest tests/vm``
as root). Under CI=true a missing kernel image, qemu or virtme-ng fails the
tests instead of skipping them. Each scenario is its own test, run as one
script inside the guest under a hard timeout; the VM is killed at the end of
the session, also when a test failed.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Iterator

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from nsutil import IN_CI
from vmkit import TIMES, Vm, VmError, group_alive, kernel_image, missing_tools


def _unavailable(reason: str) -> None:
    if IN_CI:
        pytest.fail(f"the VM tier needs {reason} (CI=true: failing, not skipping)")
    pytest.skip(reason)


@pytest.fixture(scope="session")
def vm() -> Iterator[Vm]:
    if os.geteuid() != 0:
        _unavailable("root")
    kernel = kernel_image()
    if kernel is None:
        _unavailable("a kernel image in /boot (Debian linux-image-amd64; tests/run installs it)")
    missing = missing_tools()
    if missing:
        _unavailable(f"{', '.join(missing)} (tests/run installs them)")
    assert kernel is not None
    machine = Vm(kernel)
    pgid: int | None = None
    try:
        try:
            machine.start()
        except VmError as e:
            pytest.fail(str(e))
        assert machine.proc is not None
        pgid = machine.proc.pid
        TIMES["boot"] = machine.boot_seconds
        yield machine
    finally:
        machine.stop()
        if pgid is not None:
            deadline = time.monotonic() + 10
            while group_alive(pgid) and time.monotonic() < deadline:
                time.sleep(0.2)
            assert not group_alive(pgid), "qemu left running after the VM tier"


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if TIMES:
        terminalreporter.write_line("VM tier, seconds: " + ", ".join(f"{k} {v:.0f}" for k, v in TIMES.items()))
