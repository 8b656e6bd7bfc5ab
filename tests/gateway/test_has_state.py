"""statedir.has_state: what the data plane's upgrade path (adopt unmarked links/tables) keys on."""

from __future__ import annotations

from pathlib import Path

from gateway.statedir import has_state


def test_has_state(tmp_path: Path) -> None:
    assert not has_state(tmp_path / "absent")
    (tmp_path / "empty").mkdir()
    assert not has_state(tmp_path / "empty")
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "dataplane.log").write_text("a log is not state\n")
    assert not has_state(tmp_path / "other")
    for name in ("state.db", "ipam.db"):
        d = tmp_path / name
        d.mkdir()
        (d / name).write_bytes(b"")  # present: check() judges whether it is intact
        assert has_state(d)
