"""The launch record (gateway/launch.py): what it is keyed on, when it is trusted, what
it starts. A fake crosswire-wg (a script that notes its argv and exits) stands in for
the data plane; tests/gateway/test_netns_launch.py runs the real one."""

from __future__ import annotations

import json
import os
import stat
import sys
from pathlib import Path

import pytest

from gateway import launch

SECRET = "s3cr3t-admin-token-value"


@pytest.fixture
def setup(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, object]:
    """A config, a state dir with a saved data-plane configuration, and a fake crosswire-wg."""
    for k in list(os.environ):
        if k.startswith("CROSSWIRE_"):
            monkeypatch.delenv(k)
    sd = tmp_path / "sd"
    sd.mkdir(mode=0o700)
    saved = sd / "wg-cwx0.conf"
    saved.write_text("private_key=" + "11" * 32 + "\n")
    cfg = tmp_path / "gw.yaml"
    cfg.write_text(f"cluster_id: t1\nstate_dir: {sd}  # here\n")
    bindir = tmp_path / "bin"
    bindir.mkdir()
    fake = bindir / "crosswire-wg"
    marker = tmp_path / "started"
    fake.write_text(f"#!{sys.executable}\nimport sys\nopen({str(marker)!r}, 'a').write(' '.join(sys.argv[1:]) + '\\n')\n")
    fake.chmod(0o755)
    argv = ["gateway", "run", "--config", str(cfg)]
    cmd = [str(fake), "-f", "--persist", "--saved-config", str(saved), "cwx0"]
    env = {"CROSSWIRE_ADMIN_TOKEN": SECRET, "PATH": os.environ.get("PATH", "")}
    return {"sd": sd, "cfg": cfg, "marker": marker, "argv": argv, "cmd": cmd, "env": env,
            "sock": str(tmp_path / "no.sock"), "log": str(sd / "dataplane.log")}


def _record(s: dict[str, object], env: dict[str, str] | None = None) -> None:
    argv, env_ = s["argv"], env if env is not None else s["env"]
    assert isinstance(argv, list) and isinstance(env_, dict)
    current = launch.current_key(argv, env_)
    assert current is not None
    cmd, sd, sock, log = s["cmd"], s["sd"], s["sock"], s["log"]
    assert isinstance(cmd, list) and isinstance(sd, Path) and isinstance(sock, str) and isinstance(log, str)
    assert launch.write(str(sd), current[0], cmd, "cwx0", sock, log)


def _launch(s: dict[str, object], env: dict[str, str] | None = None) -> launch.Early | None:
    argv, env_ = s["argv"], env if env is not None else s["env"]
    assert isinstance(argv, list) and isinstance(env_, dict)
    early = launch.launch_early(argv, env_)
    assert launch.take_early() is early
    if early is not None:
        early.proc.wait(timeout=10)
    return early


def _started(s: dict[str, object]) -> list[str]:
    marker = s["marker"]
    assert isinstance(marker, Path)
    return marker.read_text().splitlines() if marker.exists() else []


def test_matching_record_starts_the_data_plane_at_once(setup: dict[str, object]) -> None:
    _record(setup)
    early = _launch(setup)
    assert early is not None and early.interface == "cwx0" and early.argv == setup["cmd"]
    cmd = setup["cmd"]
    assert isinstance(cmd, list)
    assert _started(setup) == [" ".join(cmd[1:])]
    log = setup["log"]
    assert isinstance(log, str) and Path(log).exists()  # its output goes to the data plane's log


def test_changed_config_env_or_arguments_start_nothing(setup: dict[str, object]) -> None:
    _record(setup)
    env = setup["env"]
    assert isinstance(env, dict)
    assert _launch(setup, {**env, "CROSSWIRE_WIREGUARD_INTERFACE": "other0"}) is None
    assert _launch({**setup, "argv": [*setup["argv"], "--log-level", "debug"]}) is None  # type: ignore[list-item]
    cfg = setup["cfg"]
    assert isinstance(cfg, Path)
    cfg.write_text(cfg.read_text() + "masquerade: false\n")
    assert _launch(setup) is None
    assert _started(setup) == []


def test_damaged_foreign_or_open_records_are_ignored(setup: dict[str, object]) -> None:
    sd = setup["sd"]
    assert isinstance(sd, Path)
    path = sd / launch.RECORD
    _record(setup)
    good = path.read_text()
    for damage in (good[: len(good) // 2], "[]", good.replace('"format": 1', '"format": 99'),
                   good.replace('"argv": [\n  "', '"argv": [\n  "/bin/sh", "')):
        path.write_text(damage)
        assert _launch(setup) is None, damage
    path.write_text(good)
    path.chmod(0o644)  # readable by others: not one we wrote
    assert _launch(setup) is None
    path.unlink()
    (sd / "elsewhere.json").write_text(good)
    (sd / "elsewhere.json").chmod(0o600)
    path.symlink_to(sd / "elsewhere.json")
    assert _launch(setup) is None
    assert _started(setup) == []


def test_nothing_to_restore_or_a_serving_socket_starts_nothing(setup: dict[str, object], tmp_path: Path) -> None:
    import socket

    _record(setup)
    sd = setup["sd"]
    assert isinstance(sd, Path)
    (sd / "wg-cwx0.conf").rename(sd / "moved.conf")
    assert _launch(setup) is None
    (sd / "moved.conf").rename(sd / "wg-cwx0.conf")
    # A data plane serving its socket (a daemon-only restart): never a second one.
    sock = setup["sock"]
    assert isinstance(sock, str)
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        srv.bind(sock)
        srv.listen()
        assert _launch(setup) is None
    finally:
        srv.close()
    assert _started(setup) == []


def test_record_is_0600_and_holds_no_secret(setup: dict[str, object]) -> None:
    _record(setup)
    sd = setup["sd"]
    assert isinstance(sd, Path)
    path = sd / launch.RECORD
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    text = path.read_text()
    assert SECRET not in text and "11" * 32 not in text
    assert set(json.loads(text)) == {"format", "key", "argv", "interface", "socket", "log"}
    # A secret's value does not enter the key (its name does): no hash of it stored either.
    env = setup["env"]
    argv = setup["argv"]
    assert isinstance(env, dict) and isinstance(argv, list)
    k1 = launch.current_key(argv, env)
    k2 = launch.current_key(argv, {**env, "CROSSWIRE_ADMIN_TOKEN": "another"})
    k3 = launch.current_key(argv, {k: v for k, v in env.items() if k != "CROSSWIRE_ADMIN_TOKEN"})
    assert k1 is not None and k2 is not None and k3 is not None
    assert k1[0] == k2[0] != k3[0]


def test_record_found_through_the_environment_or_the_default(setup: dict[str, object], tmp_path: Path) -> None:
    cfg = setup["cfg"]
    assert isinstance(cfg, Path)
    assert launch.state_dirs(cfg.read_bytes(), {}) == [str(setup["sd"]), launch.DEFAULT_STATE_DIR]
    assert launch.state_dirs(b"state_dir: '/x'\n", {"CROSSWIRE_STATE_DIR": "/e"}) == \
        ["/e", "/x", launch.DEFAULT_STATE_DIR]
    assert launch.state_dirs(b"cluster_id: a\n", {}) == [launch.DEFAULT_STATE_DIR]
    assert launch.config_path(["gateway", "run", "--config=/a", "--config", "/b"]) == "/b"
    assert launch.config_path(["gateway", "run"]) is None
