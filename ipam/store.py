"""The persistent IPAM: the Planner behind a SQLite file (WAL, mode 0600).

Every peer operation is one ``BEGIN IMMEDIATE`` transaction: it takes the
database's write lock first, then refreshes the in-memory Planner if another
connection committed since we last looked (``PRAGMA data_version``), plans,
writes, commits, and only then applies the plan in memory. So two processes
sharing the file serialize and always plan against the latest views, and a
crash at any point leaves either the old or the new state of that peer.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from types import TracebackType

from .cidr import Net, net_from_bytes, parse_cidr
from .errors import IpamError
from .model import DEFAULT_POOLS, KINDS, SPARSE_KINDS, Conflict, Kind, LocalRanges, PeerRange, View
from .planner import Plan, Planner, Rec, check_peer_name

log = logging.getLogger(__name__)

SCHEMA_VERSION = 2

_PlanFn = Callable[[Planner], Plan]

# One b-tree (WITHOUT ROWID, keyed by peer and real range): every extra index
# costs ~40% of the per-peer commit time. View uniqueness is the Planner's
# job, and a load re-checks that stored views are pairwise disjoint (a
# stronger check than a UNIQUE index). vfirst duplicates the view's address
# as big-endian bytes so a reopen builds its index without parsing text (the
# prefix length comes from the real range, which repeats across peers and is
# parsed once per distinct value); seq keeps each peer's views in allocation
# order. held is NULL for a live view, else the time (epoch seconds) until
# which a released sparse view stays in quarantine. The kind is checked by
# the Planner when the rows are loaded.
_VIEWS = """
CREATE TABLE IF NOT EXISTS {name} (
    peer   TEXT NOT NULL,
    real   TEXT NOT NULL,
    seq    INTEGER NOT NULL,
    kind   TEXT NOT NULL,
    view   TEXT NOT NULL,
    vfirst BLOB NOT NULL,
    held   REAL,
    PRIMARY KEY (peer, real)
) WITHOUT ROWID
"""
_SCHEMA = ("CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
           _VIEWS.format(name="views"))
# Version 1 (before sparse views) had a CHECK limiting kind to pod/service and
# no held column: SQLite cannot alter a CHECK, so the table is copied.
_MIGRATE_1 = (_VIEWS.format(name="views_v2"),
              "INSERT INTO views_v2 (peer, real, seq, kind, view, vfirst)"
              " SELECT peer, real, seq, kind, view, vfirst FROM views",
              "DROP TABLE views",
              "ALTER TABLE views_v2 RENAME TO views")


class IpamStore:
    """Allocations of views per peer, persisted in SQLite.

    Thread-safe (one lock around the connection). Open with ``IpamStore.open``.
    """

    def changes(self) -> int:
        """Rows written through this store so far: equal numbers, same allocations."""
        return self._conn.total_changes

    def __init__(self, conn: sqlite3.Connection, planner: Planner, path: Path) -> None:
        self._conn = conn
        self._planner = planner
        self.path = path
        self._lock = threading.RLock()
        self._data_version: int | None = None  # None: in-memory state must be reloaded
        self._closed = False
        self._next_seq = 0

    @classmethod
    def open(cls, path: str | Path, local: LocalRanges,
             pools: Sequence[str] = DEFAULT_POOLS) -> IpamStore:
        """Open (or create) the store at ``path``; config errors raise IpamError first."""
        planner = Planner(local, pools)  # validates the config before touching files
        path = Path(path)
        try:
            path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            # Create the file ourselves with 0600 so it never exists with a wider
            # mode; SQLite gives the -wal/-shm files the database file's mode.
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            try:
                os.fchmod(fd, 0o600)
            finally:
                os.close(fd)
        except OSError as e:
            raise IpamError(f"IPAM store {path}: {e.strerror or e}") from None
        conn = sqlite3.connect(path, timeout=60.0, isolation_level=None, check_same_thread=False)
        try:
            mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
            if str(mode).lower() != "wal":
                raise IpamError(f"IPAM store {path}: cannot switch to WAL (journal_mode={mode})")
            # WAL + NORMAL: a commit is atomic and survives a process crash
            # (kill -9); only an OS crash may lose the last commits, never
            # consistency.
            conn.execute("PRAGMA synchronous=NORMAL")
            store = cls(conn, planner, path)
            with store._lock:
                store._begin()
                try:
                    has_meta = conn.execute("SELECT 1 FROM sqlite_master WHERE name='meta'").fetchone()
                    row = conn.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone() \
                        if has_meta else None
                    if row is not None and row[0] == "1":
                        for stmt in _MIGRATE_1:
                            conn.execute(stmt)
                        conn.execute("UPDATE meta SET value=? WHERE key='schema_version'", (str(SCHEMA_VERSION),))
                        row = (str(SCHEMA_VERSION),)
                        log.info("IPAM store %s: upgraded to schema version %d", path, SCHEMA_VERSION)
                    for stmt in _SCHEMA:
                        conn.execute(stmt)
                    if row is None:
                        conn.execute("INSERT INTO meta VALUES ('schema_version', ?)",
                                     (str(SCHEMA_VERSION),))
                    elif row[0] != str(SCHEMA_VERSION):
                        raise IpamError(f"IPAM store {path}: schema version {row[0]}, "
                                        f"this crosswire reads {SCHEMA_VERSION}")
                    conn.execute("COMMIT")
                except BaseException:
                    store._rollback()
                    raise
                store._refresh()
        except sqlite3.DatabaseError as e:
            conn.close()
            raise IpamError(f"IPAM store {path}: {e}") from None
        except BaseException:
            conn.close()
            raise
        for c in store.conflicts():
            log.warning("IPAM: view %s of peer %r (%s) overlaps %s after a config change; "
                        "re-peer to move it", c.view.view, c.view.peer, c.view.real, c.local)
        return store

    # -- transactions ----------------------------------------------------

    def _begin(self) -> None:
        self._conn.execute("BEGIN IMMEDIATE")

    def _rollback(self) -> None:
        if self._conn.in_transaction:
            self._conn.execute("ROLLBACK")

    def _sync_in_txn(self) -> None:
        """Inside a transaction: reload if anyone else committed since our last look."""
        dv = self._conn.execute("PRAGMA data_version").fetchone()[0]
        if dv != self._data_version:
            self._load()
            self._data_version = dv

    def _refresh(self) -> None:
        """Outside a transaction: bring memory up to date for a read."""
        with self._lock:
            self._check_open()
            dv = self._conn.execute("PRAGMA data_version").fetchone()[0]
            if dv == self._data_version:
                return
            self._conn.execute("BEGIN")
            try:
                self._sync_in_txn()
            finally:
                self._rollback()

    def _load(self) -> None:
        planner = Planner(self._planner.local, [str(p) for p in self._planner.pools])
        # Sorting the rows in Python (by their unique leading seq) is cheaper
        # than an ORDER BY, which SQLite would do with a temporary b-tree.
        rows = self._conn.execute(
            "SELECT seq, peer, kind, real, view, vfirst, held FROM views").fetchall()
        kinds: dict[str, Kind] = {k: k for k in KINDS}
        new_tuple = tuple.__new__  # skips NamedTuple's Python-level __new__ (20k calls)
        try:
            rows.sort()
            self._next_seq = rows[-1][0] + 1 if rows else 0
            reals: dict[str, Net] = {}  # peers share real ranges: parse each once
            recs: list[Rec] = []
            held: list[tuple[Rec, float]] = []
            for _, peer, kind, real, view, vf, until in rows:
                rnet = reals.get(real)
                if rnet is None:
                    rnet = reals[real] = parse_cidr(real, "stored real range")
                vnet = net_from_bytes(vf, rnet.plen)
                if vnet.version != rnet.version:
                    raise ValueError(f"view {view} of {real}: address family differs")
                rec = new_tuple(Rec, (View(peer, kinds[kind], real, view), vnet, rnet))
                if until is None:
                    recs.append(rec)
                else:
                    held.append((rec, float(until)))
        except (KeyError, TypeError, ValueError) as e:
            raise IpamError(f"IPAM store {self.path}: malformed row ({e})") from None
        planner.load(recs, held)
        self._planner = planner

    def _check_open(self) -> None:
        if self._closed:
            raise IpamError("IPAM store is closed")

    def _write(self, make_plan: _PlanFn, now: float) -> Plan:
        with self._lock:
            self._check_open()
            self._begin()
            try:
                self._sync_in_txn()
                expired = self._planner.expire(now)
                if expired:
                    self._data_version = None  # memory ran ahead: reload if this rolls back
                    self._conn.executemany("DELETE FROM views WHERE peer=? AND real=?",
                                           [(r.view.peer, r.view.real) for r in expired])
                p = make_plan(self._planner)
                if p.dropped:
                    self._conn.executemany("DELETE FROM views WHERE peer=? AND real=?",
                                           [(r.view.peer, r.view.real) for r in p.dropped])
                if p.held or p.unheld:
                    self._conn.executemany("UPDATE views SET held=? WHERE peer=? AND real=?",
                                           [(until, r.view.peer, r.view.real) for r, until in p.held]
                                           + [(None, r.view.peer, r.view.real) for r in p.unheld])
                seq = self._next_seq
                if p.new:
                    self._conn.executemany(
                        "INSERT INTO views (seq, peer, kind, real, view, vfirst)"
                        " VALUES (?,?,?,?,?,?)",
                        [(seq + i, r.view.peer, r.view.kind, r.view.real, r.view.view,
                          r.vnet.to_bytes())
                         for i, r in enumerate(p.new)])
                self._conn.execute("COMMIT")
                self._next_seq = seq + len(p.new)
                if expired:
                    self._data_version = self._conn.execute("PRAGMA data_version").fetchone()[0]
            except BaseException:
                self._rollback()
                raise
            try:
                self._planner.commit(p)
            except BaseException:
                self._data_version = None  # memory unsure: reload next time
                raise
            return p

    # -- API -------------------------------------------------------------

    def allocate(self, peer: str, ranges: Sequence[PeerRange], *, replace: bool = False,
                 hold: float = 0.0, now: float | None = None) -> list[View]:
        """Views for ``ranges`` of ``peer``; all or nothing, idempotent.

        Existing views of the peer are kept; with ``replace`` the peer's views
        of ranges not in ``ranges`` are released in the same transaction
        (sparse ones into quarantine for ``hold`` seconds).
        Returns every view of the peer.
        """
        check_peer_name(peer)
        claims = self._planner.check(ranges)  # bad input is rejected before taking the lock
        t = time.time() if now is None else now
        with self._lock:
            self._refresh()
            if self._planner.views(peer):
                # A known peer asking again (every re-peer does) usually needs no
                # change: answer from the refreshed state without the write lock.
                p = self._planner.plan_checked(peer, claims, replace=replace, now=t, hold=hold)
                if not p.changes:
                    return list(p.views)
        p = self._write(lambda pl: pl.plan_checked(peer, claims, replace=replace, now=t, hold=hold), t)
        return list(p.views)

    def release(self, peer: str, *, hold: float = 0.0, now: float | None = None) -> None:
        """Free every view of ``peer`` (no error if it has none); sparse views are
        held in quarantine for ``hold`` seconds first."""
        check_peer_name(peer)
        t = time.time() if now is None else now
        with self._lock:
            self._check_open()
            self._begin()
            try:
                self._sync_in_txn()
                if hold > 0:
                    self._conn.execute(
                        f"UPDATE views SET held=? WHERE peer=? AND held IS NULL AND kind IN "
                        f"({','.join('?' * len(SPARSE_KINDS))})", (t + hold, peer, *SPARSE_KINDS))
                self._conn.execute("DELETE FROM views WHERE peer=? AND held IS NULL", (peer,))
                self._conn.execute("COMMIT")
            except BaseException:
                self._rollback()
                raise
            self._planner.release(peer, now=t, hold=hold)

    def held(self) -> list[tuple[View, float]]:
        """Views in quarantine and when their hold ends."""
        with self._lock:
            self._refresh()
            return self._planner.held()

    def check(self, ranges: Sequence[PeerRange]) -> None:
        """Validate peer-claimed ranges without allocating (IpamError if malformed)."""
        self._planner.check(ranges)

    def views(self, peer: str) -> list[View]:
        """The peer's views in allocation order ([] for an unknown peer)."""
        with self._lock:  # the lock also keeps other threads' commits out of the read
            self._refresh()
            return self._planner.views(peer)

    def allocations(self) -> dict[str, list[View]]:
        with self._lock:
            self._refresh()
            return self._planner.allocations()

    def conflicts(self) -> list[Conflict]:
        """Stored views overlapping a local/reserved range of the current config."""
        with self._lock:
            self._refresh()
            return self._planner.conflicts()

    @property
    def local(self) -> LocalRanges:
        return self._planner.local

    @property
    def pools(self) -> tuple[str, ...]:
        return tuple(str(p) for p in self._planner.pools)

    def close(self) -> None:
        with self._lock:
            if not self._closed:
                self._closed = True
                self._conn.close()

    def __enter__(self) -> IpamStore:
        return self

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"IpamStore({str(self.path)!r}, {len(self._planner)} views)"

