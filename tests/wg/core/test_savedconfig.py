"""fabric.wg.savedconfig: what crosswire-wg saves after each set and restores at start."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
from wg.core.wgsim import Pair, uapi

from fabric.wg import savedconfig
from fabric.wg.device import Device


def _config_lines(dev: Device) -> list[str]:
    """`wg showconf`'s part of a get: everything but handshake times and byte counts."""
    skip = ("last_handshake", "tx_bytes", "rx_bytes", "protocol_version")
    return [x for x in uapi(dev, "get=1\n\n", 0.0).splitlines() if x and not x.startswith(skip)]


def test_render_then_restore_rebuilds_the_configuration(tmp_path: Path) -> None:
    pair = Pair(psk=bytes(range(32)))
    uapi(pair.a, "set=1\nfwmark=7\npublic_key=" + "11" * 32 + "\npersistent_keepalive_interval=25\n"
         "allowed_ip=10.9.0.0/16\n\n", pair.clock.now)
    path = str(tmp_path / "wg.conf")
    savedconfig.save(path, savedconfig.render(pair.a))
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    text = savedconfig.load(path)
    assert text is not None
    fresh = Device()
    # something stale the restore must drop (replace_peers)
    assert uapi(fresh, "set=1\npublic_key=" + "22" * 32 + "\nallowed_ip=10.1.0.0/16\n\n", 0.0) == "errno=0\n\n"
    assert uapi(fresh, "set=1\n" + text + "\n", 0.0) == "errno=0\n\n"
    assert _config_lines(fresh) == _config_lines(pair.a)


def test_save_replaces_atomically_and_tightens_the_mode(tmp_path: Path) -> None:
    path = tmp_path / "wg.conf"
    path.write_text("old")
    os.chmod(path, 0o644)
    savedconfig.save(str(path), "listen_port=1\n")
    assert path.read_text() == "listen_port=1\n" and stat.S_IMODE(path.stat().st_mode) == 0o600
    assert [p.name for p in tmp_path.iterdir()] == ["wg.conf"]  # no temporary file left


def test_load_refuses_what_others_may_read_or_is_not_a_file(tmp_path: Path) -> None:
    assert savedconfig.load(str(tmp_path / "missing")) is None
    path = tmp_path / "wg.conf"
    savedconfig.save(str(path), "private_key=" + "ab" * 32 + "\n")
    os.chmod(path, 0o640)
    with pytest.raises(savedconfig.SavedConfigError) as e:
        savedconfig.load(str(path))
    assert "ab" * 8 not in str(e.value)  # never the content
    link = tmp_path / "link"
    link.symlink_to(path)
    os.chmod(path, 0o600)
    with pytest.raises(savedconfig.SavedConfigError):
        savedconfig.load(str(link))
    with pytest.raises(savedconfig.SavedConfigError):
        savedconfig.load(str(tmp_path))


def test_saver_writes_only_what_changed(tmp_path: Path) -> None:
    pair = Pair()
    path = tmp_path / "wg.conf"
    saver = savedconfig.Saver(str(path), pair.a)
    saver()
    first = path.stat().st_mtime_ns
    os.utime(path, ns=(1, 1))
    saver()  # the same configuration: not written again
    assert path.stat().st_mtime_ns == 1
    uapi(pair.a, "set=1\nlisten_port=4242\n\n", pair.clock.now)
    saver()
    assert "listen_port=4242" in path.read_text() and path.stat().st_mtime_ns != 1 and first
