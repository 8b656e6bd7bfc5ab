"""Start a userspace WireGuard process: the one way crosswire starts one.

Stdlib only: ``gateway.launch`` uses it before the gateway's slow imports (a
container restart), and ``WgProcess`` for every other start.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
from collections.abc import Sequence

# wireguard-go refuses to run without it; crosswire-wg ignores it.
_ENV = {"WG_I_PREFER_BUGGY_USERSPACE_TO_POLISHED_KMOD": "1"}


def spawn(argv: Sequence[str], log_path: str | None, socket_path: str | None = None,
          inherit_output: bool = False) -> subprocess.Popen[bytes]:
    """Start ``argv`` in a session of its own, its output appended to ``log_path``
    (or inherited, or discarded). ``socket_path``: a stale UAPI socket removed first
    (never for a standby: the socket is the running process's). Raises OSError."""
    if socket_path is not None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(socket_path)
    env = dict(os.environ)
    env.update(_ENV)
    # (no typing import: this runs before the gateway's imports, every ms counts)
    out = None if inherit_output else (open(log_path, "ab") if log_path else subprocess.DEVNULL)  # noqa: SIM115
    try:
        return subprocess.Popen(list(argv), stdin=subprocess.DEVNULL, stdout=out, stderr=out, env=env,
                                start_new_session=True)
    finally:
        if out is not None and not isinstance(out, int):
            out.close()
