"""A damaged state directory stops the daemon, naming the file; a fresh one starts anew."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from gateway.config import parse
from gateway.daemon import StartupError, build
from gateway.statedir import StateDirError, check

BASE = {"cluster_id": "gpu", "pod_cidrs": ["10.244.0.0/16"], "service_cidrs": ["10.96.0.0/12"]}


def started(tmp_path: Path) -> Path:
    """A state directory as a gateway leaves it: both stores created, a key made."""
    sd = tmp_path / "sd"
    gw = build(parse({**BASE, "state_dir": str(sd)}, env={}), None)
    gw.store.private_key()
    # Both stores closed, as a stopping gateway does: a connection left to the garbage
    # collector may write into a file the test has emptied since (seen: 1 run in ~10).
    gw.store.close()
    gw.views.close()
    return sd


def test_fresh_and_intact_directories_pass(tmp_path: Path) -> None:
    check(tmp_path / "absent")
    (tmp_path / "empty").mkdir()
    check(tmp_path / "empty")
    check(started(tmp_path))


@pytest.mark.parametrize("name", ["state.db", "ipam.db"])
def test_empty_store_refused(tmp_path: Path, name: str) -> None:
    sd = started(tmp_path)
    (sd / name).write_bytes(b"")
    for suffix in ("-wal", "-shm"):
        (sd / (name + suffix)).unlink(missing_ok=True)
    with pytest.raises(StateDirError, match=rf"/sd/{name}: is empty: not an intact crosswire store"):
        check(sd)
    with pytest.raises(StartupError, match=rf"/sd/{name}: is empty"):
        build(parse({**BASE, "state_dir": str(sd)}, env={}), None)


def test_garbage_missing_and_schema_less_stores_refused(tmp_path: Path) -> None:
    sd = started(tmp_path)
    (sd / "state.db").write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(StateDirError, match=r"/sd/state.db: unreadable: file is not a database"):
        check(sd)
    sd = started(tmp_path / "2")
    (sd / "ipam.db").unlink()
    with pytest.raises(StateDirError, match=r"/sd/ipam.db: missing while .*/sd/state.db holds state"):
        check(sd)
    sd = started(tmp_path / "3")
    import sqlite3

    with sqlite3.connect(sd / "state.db") as db:
        db.execute("DROP TABLE peers")
    with pytest.raises(StateDirError, match=r"/sd/state.db: lacks the tables peers"):
        check(sd)


def test_daemon_exits_naming_the_file_without_traceback(tmp_path: Path) -> None:
    sd = started(tmp_path)
    (sd / "state.db").write_bytes(b"")
    cfg = tmp_path / "gw.yaml"
    cfg.write_text(f"cluster_id: gpu\npod_cidrs: [10.244.0.0/16]\nstate_dir: {sd}\n"
                   "api: {listen: '127.0.0.1:1'}\n")
    p = subprocess.run([sys.executable, "-m", "gateway.cli", "gateway", "run", "--config", str(cfg)],
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 1, p.stderr
    assert "crosswire: cannot start: " in p.stderr and "/sd/state.db: is empty" in p.stderr
    assert "Traceback" not in p.stderr
    assert (sd / "state.db").stat().st_size == 0  # nothing was recreated over it
