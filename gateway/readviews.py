"""Operator views that stay small with many peers: the query of ``/api/v1/peers``
and ``/api/v1/nat`` (``peer``, ``limit``/``offset``, ``summary``), paging, the
summaries and the change markers. Pure: rows and counters in, JSON out.

Why: with 1,000 peers ``/api/v1/nat`` is ~3 MB and a full NAT report a table
listing, and the operator page polls every 2 s. A page of rows or one peer's
NAT is computed for those peers only (``ReadModel``); a summary is counts and
totals without rows. ``version`` is a digest of what the summary counts and of
each peer's configuration, so a client sees at a glance that the peer set,
a state or a view changed; ``etag`` (the digest of an answer's body) lets it
ask "anything new?" and get a 304 when not.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from gateway.errors import GatewayError

MAX_LIMIT = 1000  # rows per page; more is a whole report, which the plain path serves


@dataclass(frozen=True)
class Query:
    """What a GET of peers or NAT asked for; ``plain``: nothing, the answer of old."""

    peer: str | None = None
    limit: int | None = None
    offset: int | None = None
    summary: bool = False

    @property
    def plain(self) -> bool:
        return self.peer is None and self.limit is None and self.offset is None and not self.summary

    def check(self) -> Query:
        """Refuse combinations that mean nothing (FastAPI already checked types and ranges)."""
        if self.summary and (self.peer is not None or self.limit is not None or self.offset is not None):
            raise GatewayError("summary: cannot be combined with peer, limit or offset "
                               "(a summary has no rows)", 422)
        if self.peer is not None and not self.peer:
            raise GatewayError("peer: must be a cluster ID, not empty", 422)
        return self


def window(ids: Sequence[str], q: Query) -> tuple[list[str], int]:
    """The cluster IDs of the asked page (``ids`` sorted) and the total before paging.
    An unknown ``peer`` is a 404 naming it."""
    if q.peer is not None:
        if q.peer not in ids:
            raise GatewayError(f"peer: no peer {q.peer!r}", 404)
        ids = [q.peer]
    start = q.offset or 0
    end = len(ids) if q.limit is None else start + q.limit
    return list(ids[start:end]), len(ids)


def paged(key: str, rows: list[dict[str, Any]], total: int, q: Query, **extra: Any) -> dict[str, Any]:
    return {**extra, "total": total, "offset": q.offset or 0, "limit": q.limit, key: rows}


def digest(obj: Any) -> str:
    """A short hex digest of canonical JSON: the same content, the same marker (also
    across restarts)."""
    text = json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def etag(body: bytes) -> str:
    return '"' + hashlib.sha256(body).hexdigest()[:20] + '"'


def not_modified(if_none_match: str | None, tag: str) -> bool:
    """Whether the client's If-None-Match names ``tag`` (or is ``*``): RFC 9110 13.1.2,
    weak comparison."""
    if not if_none_match:
        return False
    wanted = {t.strip().removeprefix("W/") for t in if_none_match.split(",")}
    return "*" in wanted or tag in wanted


def peers_summary(states: Mapping[str, str], config: Iterable[Any], rx_tx: tuple[int, int],
                  endpoint_errors: int) -> dict[str, Any]:
    """``/api/v1/peers?summary=true``: ``states`` by cluster ID; ``config`` each peer's
    configuration (what ``version`` follows besides the states); ``rx_tx`` the
    WireGuard byte counters of the programmed peers, summed."""
    by_state: dict[str, int] = {}
    for state in states.values():
        by_state[state] = by_state.get(state, 0) + 1
    # the states as one string first: json.dumps of 1,000 pairs was a third of a summary
    listed = "\n".join(map("\t".join, sorted(states.items())))
    return {"version": digest([listed, list(config)]), "peers": len(states),
            "peers_by_state": dict(sorted(by_state.items())), "rx_bytes": rx_tx[0], "tx_bytes": rx_tx[1],
            "endpoint_errors": endpoint_errors}


def mapping_totals(mappings: Iterable[tuple[str, int, int, int]]) -> tuple[int, int, int, int]:
    """(peers, mappings, NAT rules, host-network elements) summed over ``mappings`` per
    peer (cluster ID, mappings, NAT rules, host-network elements)."""
    rows = list(mappings)
    return len(rows), sum(m[1] for m in rows), sum(m[2] for m in rows), sum(m[3] for m in rows)


def nat_summary(table: str, totals: tuple[int, int, int, int], drops: list[dict[str, Any]],
                denied: Mapping[str, int] | None, exports: int | None,
                version: str) -> dict[str, Any]:
    """``/api/v1/nat?summary=true``: ``totals`` of the mappings (``mapping_totals``: they
    change only with the programmed state); ``denied`` what the policy table dropped of
    every peer (the guard, and with exports what was not given; None: not known)."""
    peers, mappings, rules, hosts = totals
    out: dict[str, Any] = {
        "table": table, "version": version, "peers": peers,
        "mappings": mappings, "rules": rules, "host_network": hosts, "exports": exports,
        "drops": drops,
        "dropped": {"packets": sum(int(d.get("packets") or 0) for d in drops),
                    "bytes": sum(int(d.get("bytes") or 0) for d in drops)},
        "export_denied": None,
    }
    if denied is not None:
        out["export_denied"] = {"packets": int(denied.get("packets", 0)), "bytes": int(denied.get("bytes", 0))}
    return out
