"""The launch record: a restarted gateway starts its data plane before its own slow
start-up (``crosswire``'s entry point, gateway/entry.py, calls ``launch_early``).

A container restart kills crosswire-wg with the daemon. ``fabric.wgearly`` starts
it again right after the config is read, but that is one whole Python start
(imports, YAML, validation) after the kill, and crosswire-wg's own start comes on
top. So a running gateway writes ``launch.json`` into its state directory (the
volume a container restart keeps): the exact crosswire-wg argv, and a key of what
it was derived from (SHA-256 of the config file's bytes, the ``CROSSWIRE_*``
environment, the arguments, the working directory and the interpreter). The next
``crosswire gateway run`` computes that key before importing anything but the
stdlib; if it matches, and the data plane's socket refuses, it starts
crosswire-wg at once, so the two Python starts overlap. Any other case (no
record, stale, damaged, not 0600 or not ours, a config or environment that
changed) is the normal path; ``fabric.wgearly`` then adopts or stops what was
started here exactly as for its own early start.

The state directory is named in the config, which is not parsed here: the record
is looked for in ``$CROSSWIRE_STATE_DIR``, in a top-level ``state_dir:`` line of
the config's bytes, and in the default. These are only places to look: a record
is used only when its key matches, so a wrong guess costs the head start, never
a wrong process. The record holds no secret (environment values whose names say
TOKEN, SECRET, PASSWORD or PRIVATE enter the key by name only).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import socket
import stat
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence

from fabric.wgspawn import spawn

FORMAT = 1
RECORD = "launch.json"
DEFAULT_STATE_DIR = "/var/lib/crosswire"  # gateway.config's default (a place to look only)
MAX_SIZE = 16384
WAIT_UP = 2.0  # seconds the gateway's own start waits for the data plane it started
_SECRET_WORDS = ("TOKEN", "SECRET", "PASSWORD", "PRIVATE")


class Early:
    """A crosswire-wg started from a matching launch record."""

    __slots__ = ("argv", "interface", "log", "proc", "socket")

    def __init__(self, proc: subprocess.Popen[bytes], argv: list[str], interface: str, socket_path: str,
                 log: str | None) -> None:
        self.proc, self.argv, self.interface, self.socket, self.log = proc, argv, interface, socket_path, log


_early: Early | None = None


def config_path(argv: Sequence[str]) -> str | None:
    """The ``--config`` of ``gateway run ...`` (argparse's rule: the last one wins)."""
    path = None
    rest = list(argv[2:])
    for i, a in enumerate(rest):
        if a == "--config" and i + 1 < len(rest):
            path = rest[i + 1]
        elif a.startswith("--config="):
            path = a.removeprefix("--config=")
    return path


def key(argv: Sequence[str], config: bytes, env: Mapping[str, str]) -> str:
    """What a crosswire-wg argv was derived from, as one hash."""
    envs = sorted((k, "" if any(w in k for w in _SECRET_WORDS) else v)
                  for k, v in env.items() if k.startswith("CROSSWIRE_"))
    h = hashlib.sha256(json.dumps([FORMAT, sys.executable, os.getcwd(), list(argv), envs]).encode())
    h.update(b"\0")
    h.update(config)
    return h.hexdigest()


def current_key(argv: Sequence[str], env: Mapping[str, str]) -> tuple[str, bytes] | None:
    """The key for this start, and the config's bytes; None if the config is unreadable."""
    path = config_path(argv)
    if path is None:
        return None
    try:
        with open(path, "rb") as f:
            config = f.read()
    except OSError:
        return None
    return key(argv, config, env), config


def state_dirs(config: bytes, env: Mapping[str, str]) -> list[str]:
    """Where to look for the record (see the module's doc: places to look, not the truth)."""
    dirs = [env["CROSSWIRE_STATE_DIR"]] if env.get("CROSSWIRE_STATE_DIR") else []
    for line in config.decode("utf-8", "replace").splitlines():
        if line.startswith("state_dir:"):
            value = line.removeprefix("state_dir:").split(" #")[0].strip().strip("'\"")
            if value:
                dirs.append(value)
    dirs.append(DEFAULT_STATE_DIR)
    return list(dict.fromkeys(dirs))


def read(path: str, want: str) -> dict[str, object] | None:
    """The record at ``path`` if it is intact, ours (owner, 0600), and its key is ``want``."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_uid != os.geteuid() or st.st_mode & 0o077 \
                or st.st_size > MAX_SIZE:
            return None
        data = os.read(fd, MAX_SIZE + 1)
    except OSError:
        return None
    finally:
        os.close(fd)
    try:
        rec = json.loads(data)
    except ValueError:
        return None
    if not isinstance(rec, dict) or rec.get("format") != FORMAT or rec.get("key") != want:
        return None
    argv, iface, sock, log = rec.get("argv"), rec.get("interface"), rec.get("socket"), rec.get("log")
    if not (isinstance(argv, list) and argv and all(isinstance(a, str) for a in argv)
            and os.path.isabs(argv[0]) and os.path.basename(argv[0]) == "crosswire-wg"
            and isinstance(iface, str) and argv[-1] == iface
            and isinstance(sock, str) and os.path.isabs(sock)
            and (log is None or isinstance(log, str))
            and "--saved-config" in argv[:-1]):
        return None
    return rec


def _connect(path: str) -> bool | None:
    """True: a listener accepts on the UAPI socket. False: none (no socket, or
    refusing: its process died). None: could not tell."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(0.5)
    try:
        s.connect(path)
    except (FileNotFoundError, ConnectionRefusedError):
        return False
    except OSError:
        return None
    finally:
        s.close()
    return True


def _wait_up(proc: subprocess.Popen[bytes], path: str, timeout: float) -> None:
    """Wait until ``proc`` serves its socket (or exits, or ``timeout``): our own start
    would take the CPU it needs, and only its start is on the packets' path."""
    deadline = time.monotonic() + timeout
    while proc.poll() is None and time.monotonic() < deadline and not _connect(path):
        time.sleep(0.005)


def launch_early(argv: Sequence[str], env: Mapping[str, str]) -> Early | None:
    """Start crosswire-wg now if a launch record matches this start and the data plane
    is down with a saved configuration to restore. The started process is kept for
    ``take_early``."""
    global _early
    current = current_key(argv, env)
    if current is None:
        return None
    want, config = current
    for d in state_dirs(config, env):
        rec = read(os.path.join(d, RECORD), want)
        if rec is not None:
            break
    else:
        return None
    cmd, iface, sock, log = rec["argv"], rec["interface"], rec["socket"], rec["log"]
    assert isinstance(cmd, list) and isinstance(iface, str) and isinstance(sock, str)
    assert log is None or isinstance(log, str)
    saved = cmd[cmd.index("--saved-config") + 1]
    if not os.path.exists(saved) or _connect(sock) is not False:
        return None  # nothing to restore, or running (a daemon-only restart): the normal path
    try:
        proc = spawn(cmd, log, sock)
    except OSError:
        return None  # the normal path starts it and reports why it cannot
    _early = Early(proc, cmd, iface, sock, log)
    _wait_up(proc, sock, WAIT_UP)
    return _early


def take_early() -> Early | None:
    """What ``launch_early`` started in this process (once)."""
    global _early
    early, _early = _early, None
    return early


def write(state_dir: str, want: str, argv: Sequence[str], interface: str, socket_path: str,
          log: str | None) -> bool:
    """Write the record (0600, atomically). Best effort: without it the next start is
    only slower. False if it could not be written (no state directory yet)."""
    path = os.path.join(state_dir, RECORD)
    body = json.dumps({"format": FORMAT, "key": want, "argv": list(argv), "interface": interface,
                       "socket": socket_path, "log": log}, indent=1).encode()
    tmp = f"{path}.{os.getpid()}.tmp"
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        try:
            view = memoryview(body)
            while view:
                view = view[os.write(fd, view):]
            os.fchmod(fd, 0o600)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except OSError:
        remove(state_dir)
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        return False
    return True


def remove(state_dir: str) -> None:
    with contextlib.suppress(OSError):
        os.unlink(os.path.join(state_dir, RECORD))
