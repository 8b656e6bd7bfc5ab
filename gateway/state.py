"""Durable gateway state in ``state_dir`` (SQLite, WAL; directory 0700, files 0600).

Holds the WireGuard private key (generated once; cached in memory, since
every reconcile reads it), issued tokens (only the verifier of each secret,
with their use count), peers (their key, endpoint, real ranges, their views of
us as ``RangeMap``, the per-pair channel key and PSK) and recently seen nonces
(replay protection survives a restart). All SQL of the gateway is here. The views *we* allocate live in the IPAM store
(``ipam.db``, owned by :mod:`ipam`); the admin credential is the plain file
``admin-token`` so the CLI beside the daemon can read it.

Every write is one transaction: a refused request changes nothing.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import os
import secrets
import sqlite3
import threading
from collections.abc import Collection, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from fabric.model import RangeMap
from gateway.tokens import TokenRecord

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS tokens (
    token_id TEXT PRIMARY KEY, verifier BLOB NOT NULL, created REAL NOT NULL,
    expires REAL NOT NULL, reusable INTEGER NOT NULL, uses INTEGER NOT NULL DEFAULT 0);
CREATE TABLE IF NOT EXISTS peers (
    cluster_id TEXT PRIMARY KEY, public_key TEXT NOT NULL UNIQUE, endpoint TEXT,
    url TEXT NOT NULL, gateway_ip TEXT, ranges TEXT NOT NULL, their_views TEXT,
    channel_key BLOB NOT NULL, psk BLOB NOT NULL, created REAL NOT NULL);
CREATE TABLE IF NOT EXISTS nonces (nonce TEXT PRIMARY KEY, expires REAL NOT NULL);
CREATE TABLE IF NOT EXISTS peer_pins (cluster_id TEXT PRIMARY KEY, pins TEXT NOT NULL);
"""


class StateError(RuntimeError):
    pass


def wg_keypair() -> tuple[str, str]:
    """(private, public) WireGuard keys, base64 as `wg genkey | wg pubkey`."""
    k = X25519PrivateKey.generate()
    raw = k.private_bytes(serialization.Encoding.Raw, serialization.PrivateFormat.Raw,
                          serialization.NoEncryption())
    return base64.b64encode(raw).decode(), public_key_of(base64.b64encode(raw).decode())


def public_key_of(private_b64: str) -> str:
    k = X25519PrivateKey.from_private_bytes(base64.b64decode(private_b64))
    pub = k.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return base64.b64encode(pub).decode()


@dataclass(frozen=True)
class PeerRecord:
    cluster_id: str
    public_key: str
    endpoint: str | None
    url: str
    gateway_ip: str | None
    ranges: tuple[tuple[str, str], ...]  # the peer's real (kind, cidr)
    # The peer's views of OUR ranges; None until the peer told us (pending).
    their_views: tuple[RangeMap, ...] | None
    channel_key: bytes = field(repr=False)
    psk: bytes = field(repr=False)
    created: float = 0.0

    @property
    def psk_b64(self) -> str:
        return base64.b64encode(self.psk).decode()


def _secure_file(path: Path) -> None:
    if path.exists():
        os.chmod(path, 0o600)


class StateStore:
    def __init__(self, state_dir: str | Path) -> None:
        self.dir = Path(state_dir)
        old = os.umask(0o077)
        try:
            self.dir.mkdir(parents=True, exist_ok=True, mode=0o700)
            os.chmod(self.dir, 0o700)
            self.path = self.dir / "state.db"
            self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.executescript(SCHEMA)
        finally:
            os.umask(old)
        for suffix in ("", "-wal", "-shm"):
            _secure_file(Path(str(self.path) + suffix))
        self._lock = threading.RLock()
        self._keys: tuple[str, str] | None = None  # (private, public): read on every reconcile
        # peer_index's answer and the changes() it was read at: summaries ask it on every poll
        self._index: tuple[int, tuple[list[tuple[str, str, bool]], str]] | None = None

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def changes(self) -> int:
        """Rows written through this store so far (SQLite's total_changes): equal numbers,
        same content. Only the daemon writes its state, always through this connection."""
        return self._db.total_changes

    @contextlib.contextmanager
    def tx(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    # --- keys ------------------------------------------------------------------------------

    def _meta(self, key: str) -> str | None:
        with self._lock:
            row = self._db.execute("SELECT value FROM meta WHERE key=?", (key,)).fetchone()
        return None if row is None else str(row[0])

    def _key_pair(self) -> tuple[str, str]:
        if self._keys is None:
            with self.tx() as db:
                row = db.execute("SELECT value FROM meta WHERE key='private_key'").fetchone()
                if row is not None:
                    priv = str(row[0])
                else:
                    priv, _ = wg_keypair()
                    db.execute("INSERT INTO meta VALUES ('private_key', ?)", (priv,))
            self._keys = (priv, public_key_of(priv))
        return self._keys

    def private_key(self) -> str:
        """This gateway's WireGuard private key, generated on first use (then cached)."""
        return self._key_pair()[0]

    def public_key(self) -> str:
        return self._key_pair()[1]

    def set_private_key(self, private_b64: str) -> None:
        with self.tx() as db:
            db.execute("INSERT OR REPLACE INTO meta VALUES ('private_key', ?)", (private_b64,))
        self._keys = (private_b64, public_key_of(private_b64))

    def announced(self) -> dict[str, str | None] | None:
        """The WireGuard endpoint and peering URL every peer was last told (None: never recorded)."""
        v = self._meta("announced")
        if v is None:
            return None
        d = json.loads(v)
        return {"endpoint": d.get("endpoint"), "url": d.get("url")}

    def set_announced(self, endpoint: str | None, url: str) -> None:
        with self.tx() as db:
            db.execute("INSERT OR REPLACE INTO meta VALUES ('announced', ?)",
                       (json.dumps({"endpoint": endpoint, "url": url}),))

    def admin_token(self) -> str:
        """The admin credential (file ``admin-token``, 0600), created on first use."""
        path = self.dir / "admin-token"
        if path.exists():
            return path.read_text().strip()
        value = secrets.token_urlsafe(32)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(value + "\n")
        return value

    # --- tokens ----------------------------------------------------------------------------

    def add_token(self, rec: TokenRecord) -> None:
        with self.tx() as db:
            # Tokens expired for a day are of no use, not even for error messages.
            db.execute("DELETE FROM tokens WHERE expires < ?", (rec.created - 86400,))
            db.execute("INSERT INTO tokens VALUES (?,?,?,?,?,?)",
                       (rec.token_id, rec.verifier, rec.created, rec.expires, int(rec.reusable), rec.uses))

    def token(self, token_id: str) -> TokenRecord | None:
        with self._lock:
            row = self._db.execute("SELECT * FROM tokens WHERE token_id=?", (token_id,)).fetchone()
        if row is None:
            return None
        return TokenRecord(token_id=row[0], verifier=bytes(row[1]), created=row[2], expires=row[3],
                           reusable=bool(row[4]), uses=row[5])

    def tokens(self) -> list[TokenRecord]:
        with self._lock:
            ids = [r[0] for r in self._db.execute("SELECT token_id FROM tokens ORDER BY created")]
        return [t for t in (self.token(i) for i in ids) if t is not None]

    def use_token(self, db: sqlite3.Connection, token_id: str) -> bool:
        """Inside a transaction: count one use; False if the token is gone or used up.

        Checked again here because a concurrent join may have used it since
        ``token()`` was read outside the transaction.
        """
        row = db.execute("SELECT uses, reusable FROM tokens WHERE token_id=?", (token_id,)).fetchone()
        if row is None or (not row[1] and row[0] > 0):
            return False
        db.execute("UPDATE tokens SET uses = uses + 1 WHERE token_id=?", (token_id,))
        return True

    def delete_token(self, token_id: str) -> bool:
        with self.tx() as db:
            return db.execute("DELETE FROM tokens WHERE token_id=?", (token_id,)).rowcount > 0

    # --- nonces ----------------------------------------------------------------------------

    def remember_nonce(self, db: sqlite3.Connection, nonce: str, expires: float, now: float) -> bool:
        """Inside a transaction: False if the nonce was already seen (a replay)."""
        db.execute("DELETE FROM nonces WHERE expires < ?", (now,))
        try:
            db.execute("INSERT INTO nonces VALUES (?, ?)", (nonce, expires))
        except sqlite3.IntegrityError:
            return False
        return True

    # --- peers -----------------------------------------------------------------------------

    @staticmethod
    def _peer_row(row: tuple[Any, ...]) -> PeerRecord:
        tv = row[6]
        return PeerRecord(
            cluster_id=str(row[0]), public_key=str(row[1]),
            endpoint=None if row[2] is None else str(row[2]), url=str(row[3]),
            gateway_ip=None if row[4] is None else str(row[4]),
            ranges=tuple((k, c) for k, c in json.loads(str(row[5]))),
            their_views=None if tv is None else tuple(RangeMap(k, r, v) for k, r, v in json.loads(str(tv))),
            channel_key=bytes(row[7]), psk=bytes(row[8]), created=float(row[9]))

    def peers(self, only: Collection[str] | None = None) -> list[PeerRecord]:
        """Every peer by ID; ``only``: just these (a page's rows: one query, not one each)."""
        with self._lock:
            if only is None:
                rows = self._db.execute("SELECT * FROM peers ORDER BY cluster_id").fetchall()
            else:
                ids, rows = sorted(set(only)), []
                for i in range(0, len(ids), 500):  # within any SQLite's limit of bound parameters
                    chunk = ids[i:i + 500]
                    rows += self._db.execute(f"SELECT * FROM peers WHERE cluster_id IN "
                                             f"({','.join('?' * len(chunk))}) ORDER BY cluster_id", chunk).fetchall()
        return [self._peer_row(r) for r in rows]

    def peer_index(self) -> tuple[list[tuple[str, str, bool]], str]:
        """(cluster ID, public key, pending) of every peer, by ID, and a digest of what
        the peers table says of them (secrets left out): the summaries' change marker,
        without parsing every peer's ranges and views. Read again only after a write
        (the caller must not change the list)."""
        with self._lock:
            at = self._db.total_changes
            if self._index is not None and self._index[0] == at:  # nothing written since: the same
                return self._index[1]
            rows = self._db.execute("SELECT cluster_id, public_key, endpoint, url, gateway_ip, ranges, "
                                    "their_views FROM peers ORDER BY cluster_id").fetchall()
        digest = hashlib.sha256(repr(rows).encode()).hexdigest()[:16]
        index = ([(str(r[0]), str(r[1]), r[6] is None) for r in rows], digest)
        self._index = (at, index)
        return index

    def peer(self, cluster_id: str) -> PeerRecord | None:
        with self._lock:
            row = self._db.execute("SELECT * FROM peers WHERE cluster_id=?", (cluster_id,)).fetchone()
        return None if row is None else self._peer_row(row)

    def peer_by_key(self, public_key: str) -> PeerRecord | None:
        with self._lock:
            row = self._db.execute("SELECT * FROM peers WHERE public_key=?", (public_key,)).fetchone()
        return None if row is None else self._peer_row(row)

    def put_peer(self, db: sqlite3.Connection, p: PeerRecord) -> None:
        tv = None if p.their_views is None else json.dumps([[m.kind, m.real, m.view] for m in p.their_views])
        db.execute("INSERT OR REPLACE INTO peers VALUES (?,?,?,?,?,?,?,?,?,?)",
                   (p.cluster_id, p.public_key, p.endpoint, p.url, p.gateway_ip,
                    json.dumps([list(r) for r in p.ranges]), tv, p.channel_key, p.psk, p.created))

    def update_peer(self, cluster_id: str, **changes: object) -> PeerRecord:
        with self.tx() as db:
            row = db.execute("SELECT * FROM peers WHERE cluster_id=?", (cluster_id,)).fetchone()
            if row is None:
                raise StateError(f"no peer {cluster_id}")
            p = replace(self._peer_row(row), **changes)  # type: ignore[arg-type]
            self.put_peer(db, p)
            return p

    def delete_peer(self, cluster_id: str) -> bool:
        with self.tx() as db:
            db.execute("DELETE FROM peer_pins WHERE cluster_id=?", (cluster_id,))
            return db.execute("DELETE FROM peers WHERE cluster_id=?", (cluster_id,)).rowcount > 0

    # --- TLS pins of peers' peering listeners (gateway.tlsid; none: peered before TLS) -------

    def peer_pins(self, cluster_id: str) -> tuple[str, ...]:
        with self._lock:
            row = self._db.execute("SELECT pins FROM peer_pins WHERE cluster_id=?", (cluster_id,)).fetchone()
        return () if row is None else tuple(json.loads(str(row[0])))

    def set_peer_pins(self, cluster_id: str, pins: tuple[str, ...], db: sqlite3.Connection | None = None) -> None:
        if db is None:
            with self.tx() as db2:
                self.set_peer_pins(cluster_id, pins, db2)
            return
        db.execute("INSERT OR REPLACE INTO peer_pins VALUES (?,?)", (cluster_id, json.dumps(list(pins))))
