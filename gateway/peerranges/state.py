"""Per-token range grants and pending range changes in ``state.db``; the one gate peer ranges pass.

Tables beside :mod:`gateway.state`'s (created if missing, so older state
directories just gain them):

- ``range_tokens``: the CIDRs a token lets its peer announce (``token create --ranges``);
- ``range_grants``: copied from the token at the join; the peer's later
  ``ranges`` messages stay inside them. No row: only the policy applies;
- ``pending_ranges``: a range change waiting for the operator (``approval: manual``).

``PeerRanges.require`` is what the exchange calls where a peer's ranges enter
(the join, ``peer add``, the ``ranges`` message): a refusal is a
:class:`GatewayError` (403) naming the range and the limit, logged as a warning
naming the peer, before anything is stored.
"""

from __future__ import annotations

import json
import logging
import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from gateway.errors import GatewayError
from gateway.peerranges.policy import PolicyError, RangePolicy, Verdict, check, token_cidrs
from gateway.state import StateStore

log = logging.getLogger("crosswire.gateway")

SCHEMA = """
CREATE TABLE IF NOT EXISTS range_tokens (token_id TEXT PRIMARY KEY, cidrs TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS range_grants (cluster_id TEXT PRIMARY KEY, cidrs TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS pending_ranges (cluster_id TEXT PRIMARY KEY, ranges TEXT NOT NULL,
                                           gateway_ip TEXT, received REAL NOT NULL);
"""

REFUSED = 403


@dataclass(frozen=True)
class Pending:
    ranges: tuple[tuple[str, str], ...]
    gateway_ip: str | None
    received: float


@dataclass
class PeerRanges:
    policy: RangePolicy
    store: StateStore

    def __post_init__(self) -> None:
        with self.store.tx() as db:
            for stmt in SCHEMA.strip().split(";"):
                if stmt.strip():
                    db.execute(stmt)

    def _rows(self, sql: str, *args: object) -> list[tuple[Any, ...]]:
        with self.store.tx() as db:
            return list(db.execute(sql, args).fetchall())

    # --- the gate ---------------------------------------------------------------------------

    def verdict(self, ranges: Sequence[tuple[str, str]], grant: Sequence[str] | None) -> Verdict:
        return check(ranges, self.policy, grant)

    def require(self, peer: str, ranges: Sequence[tuple[str, str]], grant: Sequence[str] | None,
                when: str) -> None:
        """Refuse (403, warning naming the peer) unless every range is within policy and quota."""
        v = self.verdict(ranges, grant)
        if not v.ok:
            log.warning("peer %s: %s refused: %s", peer, when, v.message())
            raise GatewayError(f"{when} refused by the peer range policy: {v.message()}", REFUSED)

    # --- tokens and grants ------------------------------------------------------------------

    def token_cidrs(self, cidrs: Sequence[str]) -> tuple[str, ...]:
        try:
            return token_cidrs(cidrs, self.policy)
        except PolicyError as e:
            raise GatewayError(str(e), 400) from None

    def set_token_cidrs(self, token_id: str, cidrs: tuple[str, ...]) -> None:
        with self.store.tx() as db:
            db.execute("INSERT OR REPLACE INTO range_tokens VALUES (?, ?)", (token_id, json.dumps(cidrs)))

    def token_grant(self, token_id: str) -> tuple[str, ...] | None:
        rows = self._rows("SELECT cidrs FROM range_tokens WHERE token_id=?", token_id)
        return tuple(json.loads(rows[0][0])) if rows else None

    def grant_from_token(self, db: sqlite3.Connection, token_id: str, cluster_id: str) -> None:
        """Inside the join's transaction: the joining peer keeps its token's ranges."""
        db.execute("DELETE FROM range_grants WHERE cluster_id=?", (cluster_id,))
        db.execute("DELETE FROM pending_ranges WHERE cluster_id=?", (cluster_id,))
        row = db.execute("SELECT cidrs FROM range_tokens WHERE token_id=?", (token_id,)).fetchone()
        if row is not None:
            db.execute("INSERT INTO range_grants VALUES (?, ?)", (cluster_id, row[0]))

    def grant(self, cluster_id: str) -> tuple[str, ...] | None:
        rows = self._rows("SELECT cidrs FROM range_grants WHERE cluster_id=?", cluster_id)
        return tuple(json.loads(rows[0][0])) if rows else None

    # --- pending changes (approval: manual) -------------------------------------------------

    def set_pending(self, cluster_id: str, ranges: Sequence[tuple[str, str]], gateway_ip: str | None,
                    now: float) -> None:
        with self.store.tx() as db:
            db.execute("INSERT OR REPLACE INTO pending_ranges VALUES (?, ?, ?, ?)",
                       (cluster_id, json.dumps([list(r) for r in ranges]), gateway_ip, now))

    def pending(self, cluster_id: str) -> Pending | None:
        rows = self._rows("SELECT ranges, gateway_ip, received FROM pending_ranges WHERE cluster_id=?", cluster_id)
        if not rows:
            return None
        ranges, gw, received = rows[0]
        return Pending(tuple((str(k), str(c)) for k, c in json.loads(ranges)),
                       None if gw is None else str(gw), float(received))

    def clear_pending(self, cluster_id: str) -> None:
        with self.store.tx() as db:
            db.execute("DELETE FROM pending_ranges WHERE cluster_id=?", (cluster_id,))

    def forget(self, cluster_id: str) -> None:
        """A removed peer leaves nothing behind (a later peering starts afresh)."""
        with self.store.tx() as db:
            db.execute("DELETE FROM range_grants WHERE cluster_id=?", (cluster_id,))
            db.execute("DELETE FROM pending_ranges WHERE cluster_id=?", (cluster_id,))
