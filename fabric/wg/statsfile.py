"""The counters file of crosswire-wg: one JSON object, keys sorted, replaced atomically.

The daemon rewrites it every second (and on SIGUSR1) and removes it at exit;
readers (tests, monitoring, an operator's ``cat``) never see a half-written
file because each write goes to ``PATH.tmp`` and is renamed over ``PATH``.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Mapping


def to_json(counters: Mapping[str, int]) -> str:
    return json.dumps(counters, sort_keys=True)


def write(path: str, counters: Mapping[str, int]) -> None:
    """Replace ``path`` with ``counters``; raises OSError."""
    tmp = f"{path}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
    with os.fdopen(fd, "w") as f:
        f.write(to_json(counters))
    os.replace(tmp, path)


def remove(path: str) -> None:
    """Remove the file and any temporary a crash left behind."""
    for p in (path, f"{path}.tmp"):
        with contextlib.suppress(OSError):
            os.unlink(p)
