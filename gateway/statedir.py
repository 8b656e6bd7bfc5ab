"""Refuse to start on a damaged state directory instead of silently starting anew.

The state directory holds the gateway's identity and everything it agreed with
its peers: ``state.db`` (WireGuard key, peers, tokens) and ``ipam.db`` (our
views of each peer). SQLite opens an empty or truncated file as an empty
database, so without this check a 0-byte ``state.db`` made a brand-new gateway
(new key, no peers) that reported ready, and a 0-byte ``ipam.db`` gave
connected peers without views. A new identity comes only from an empty (or
absent) state directory: emptying it is the operator's explicit command.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

# Each store's file and the tables it must hold once it has been created.
STORES: dict[str, frozenset[str]] = {
    "state.db": frozenset({"meta", "tokens", "peers", "nonces"}),
    "ipam.db": frozenset({"meta", "views"}),
}
_START_OVER = "to start over as a new gateway (new key, no peers), empty the state directory"


class StateDirError(RuntimeError):
    """The state directory holds state that cannot be used; the message names the file."""


def has_state(state_dir: str | Path) -> bool:
    """Whether ``state_dir`` already holds a gateway's state (any store exists).

    Meaningful after ``check``: then a store that exists is intact. The data
    plane uses it to adopt what an earlier version of this gateway left running
    without crosswire's ownership mark (fabric.dataplane.Dataplane.claim).
    """
    d = Path(state_dir)
    return any((d / name).exists() for name in STORES)


def check(state_dir: str | Path) -> None:
    """Raise StateDirError unless ``state_dir`` is fresh or holds every store intact."""
    d = Path(state_dir)
    present = [name for name in STORES if (d / name).exists()]
    if not present:
        return  # fresh: the stores are created on start
    for name in present:
        path = d / name
        found = _tables(path)
        missing = sorted(STORES[name] - found)
        if missing:
            what = "is empty" if not found else f"lacks the tables {', '.join(missing)}"
            raise StateDirError(f"{path}: {what}: not an intact crosswire store ({_START_OVER})")
    for name in STORES:
        if name not in present:
            raise StateDirError(f"{d / name}: missing while {d / present[0]} holds state ({_START_OVER})")


def _tables(path: Path) -> set[str]:
    try:
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    except sqlite3.Error as e:
        raise StateDirError(f"{path}: cannot open: {e}") from None
    try:
        rows = conn.execute("SELECT name FROM sqlite_master WHERE type='table'").fetchall()
    except sqlite3.Error as e:
        raise StateDirError(f"{path}: unreadable: {e} ({_START_OVER})") from None
    finally:
        conn.close()
    return {str(r[0]) for r in rows}
