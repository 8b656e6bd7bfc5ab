"""fabric.wgearly with a process gateway.launch started: kept only when its command line
is the one this config gives, stopped otherwise; the record callback gets that line."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from fabric import wgearly


def _sleeper() -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])


def test_launched_process_with_this_configs_command_is_kept(tmp_path: Path) -> None:
    recorded: list[tuple[list[str], str]] = []
    proc = _sleeper()
    try:
        log = str(tmp_path / "dataplane.log")
        expected = wgearly.WgProcess("cwe0", "userspace", log_path=log).command()
        assert wgearly.start_early("cwe0", "userspace", log, launched=(proc, expected),
                                   record=lambda cmd, sock: recorded.append((cmd, sock)))
        assert wgearly._early.pop("cwe0") is proc  # the WgProcess made next takes it over
        assert recorded == [(expected, "/var/run/wireguard/cwe0.sock")]
        assert proc.poll() is None
    finally:
        wgearly._started.pop("cwe0", None)
        proc.kill()
        proc.wait()


def test_launched_process_with_another_command_is_stopped(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(wgearly, "START_TIMEOUT", 0.2)  # it never serves a socket: do not wait 10 s
    proc = _sleeper()
    try:
        log = str(tmp_path / "dataplane.log")
        # no saved configuration here: after stopping it, nothing is started either
        assert not wgearly.start_early("cwe1", "userspace", log, launched=(proc, ["/x/crosswire-wg", "cwe1"]))
        assert proc.wait(timeout=10) is not None
        assert "cwe1" not in wgearly._early and "cwe1" not in wgearly._started
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_no_record_for_other_implementations(tmp_path: Path) -> None:
    recorded: list[object] = []
    assert not wgearly.start_early("cwe2", "wireguard-go", str(tmp_path / "dataplane.log"),
                                   record=lambda cmd, sock: recorded.append(cmd))
    assert recorded == []
