"""Durable per-peer export state in ``state.db`` and the policy built from it.

Three tables beside :mod:`gateway.state`'s (created if missing, so older
state directories just gain them):

- ``export_tokens``: the export names a token grants (``token create --exports``);
- ``export_grants``: the names each peer may reach; no row = every export
  (also what a peer gets that redeemed a token without ``--exports``, or that
  we peered with through its token);
- ``imports``: what each peer exports to us, as its last ``exports`` message said.

``ExportState`` also holds the ``Resolver`` and builds the data plane's
``ExportPolicy`` (None when ``exports`` is not configured).
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from fabric.exports.model import ExportPolicy
from fabric.exports.policy import table_name
from fabric.model import PeerFabric
from gateway.config import Config
from gateway.exports.config import Export, Resolver, policy, shared
from gateway.state import StateStore

SCHEMA = """
CREATE TABLE IF NOT EXISTS export_tokens (token_id TEXT PRIMARY KEY, names TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS export_grants (cluster_id TEXT PRIMARY KEY, names TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS imports (cluster_id TEXT PRIMARY KEY, body TEXT NOT NULL, received REAL NOT NULL);
"""


@dataclass
class ExportState:
    config: Config
    store: StateStore
    resolver: Resolver

    def __post_init__(self) -> None:
        # desired() runs every second: the policy is rebuilt only when an input changed.
        self._memo: tuple[Any, ExportPolicy] | None = None
        with self.store.tx() as db:
            for stmt in SCHEMA.strip().split(";"):
                if stmt.strip():
                    db.execute(stmt)

    @property
    def exports(self) -> tuple[Export, ...] | None:
        return self.config.exports

    def _rows(self, sql: str, *args: object) -> list[tuple[Any, ...]]:
        with self.store.tx() as db:
            return list(db.execute(sql, args).fetchall())

    # --- tokens and grants ------------------------------------------------------------------

    def set_token_names(self, token_id: str, names: tuple[str, ...]) -> None:
        with self.store.tx() as db:
            db.execute("INSERT OR REPLACE INTO export_tokens VALUES (?, ?)", (token_id, json.dumps(names)))

    def token_names(self, token_id: str) -> tuple[str, ...] | None:
        rows = self._rows("SELECT names FROM export_tokens WHERE token_id=?", token_id)
        return tuple(json.loads(rows[0][0])) if rows else None

    def grant_from_token(self, db: sqlite3.Connection, token_id: str, cluster_id: str) -> None:
        """Inside the join's transaction: the joining peer gets the token's share."""
        db.execute("DELETE FROM export_grants WHERE cluster_id=?", (cluster_id,))
        db.execute("DELETE FROM imports WHERE cluster_id=?", (cluster_id,))
        row = db.execute("SELECT names FROM export_tokens WHERE token_id=?", (token_id,)).fetchone()
        if row is not None:
            db.execute("INSERT INTO export_grants VALUES (?, ?)", (cluster_id, row[0]))

    def grant(self, cluster_id: str) -> tuple[str, ...] | None:
        rows = self._rows("SELECT names FROM export_grants WHERE cluster_id=?", cluster_id)
        return tuple(json.loads(rows[0][0])) if rows else None

    def grants(self) -> dict[str, tuple[str, ...] | None]:
        return {str(c): tuple(json.loads(n)) for c, n in self._rows("SELECT cluster_id, names FROM export_grants")}

    def set_grant(self, cluster_id: str, names: tuple[str, ...] | None) -> None:
        with self.store.tx() as db:
            db.execute("DELETE FROM export_grants WHERE cluster_id=?", (cluster_id,))
            if names is not None:
                db.execute("INSERT INTO export_grants VALUES (?, ?)", (cluster_id, json.dumps(names)))

    def forget(self, cluster_id: str) -> None:
        """A removed peer leaves nothing behind (a later peering starts afresh)."""
        with self.store.tx() as db:
            db.execute("DELETE FROM export_grants WHERE cluster_id=?", (cluster_id,))
            db.execute("DELETE FROM imports WHERE cluster_id=?", (cluster_id,))

    # --- what we share ----------------------------------------------------------------------

    def shared_with(self, cluster_id: str, grants: dict[str, tuple[str, ...] | None] | None = None) -> list[Export]:
        """What we share with one peer; ``grants``: every peer's, read once by a caller
        going through many peers (a query each was most of /api/v1/exports at 1,000)."""
        return shared(self.exports or (), self.grant(cluster_id) if grants is None else grants.get(cluster_id))

    def body_for(self, cluster_id: str, grants: dict[str, tuple[str, ...] | None] | None = None) -> list[dict[str, Any]]:
        """Our exports for one peer, as the peering channel carries them (real addresses);
        ``grants``: every peer's, read once by a caller going through many peers."""
        grant = self.grant(cluster_id) if grants is None else grants.get(cluster_id)
        return [e.to_body(self.resolver.addresses(e)) for e in shared(self.exports or (), grant)]

    def policy(self, peers: Sequence[PeerFabric]) -> ExportPolicy | None:
        if self.exports is None:
            return None
        c = self.config
        # A peer's sources: its pods (full views), or every sparse view of it (its egress
        # block, and its exported addresses, which leave it under their views).
        sources = [(p.cluster_id, tuple(m.view for m in p.remote if m.kind != "service")) for p in peers]
        grants = self.grants()
        key = (tuple(sources), tuple(sorted(grants.items())),
               tuple(self.resolver.addresses(e) for e in self.exports))
        if self._memo is None or self._memo[0] != key:
            self._memo = (key, policy(c.wireguard.interface, table_name(c.nft_table), self.exports, sources,
                                      grants, self.resolver.addresses))
        return self._memo[1]

    # --- what peers share with us -----------------------------------------------------------

    def set_imports(self, cluster_id: str, body: list[dict[str, Any]], now: float) -> None:
        with self.store.tx() as db:
            db.execute("INSERT OR REPLACE INTO imports VALUES (?, ?, ?)", (cluster_id, json.dumps(body), now))

    def imports(self) -> dict[str, tuple[list[dict[str, Any]], float]]:
        return {str(c): (json.loads(b), float(t)) for c, b, t in
                self._rows("SELECT cluster_id, body, received FROM imports ORDER BY cluster_id")}
