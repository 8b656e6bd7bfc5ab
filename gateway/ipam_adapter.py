"""Our views of peers: a thin adapter over :mod:`ipam`'s store (``state_dir/ipam.db``).

The gateway speaks :class:`fabric.model.RangeMap` (kind, real, view), the one
type for a mapping everywhere; this module is the only place that knows IPAM's
classes. Lists come back in allocation order (what goes on the wire);
``ordered`` sorts them where a deterministic order matters (desired state, API).
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any, Protocol

from fabric.model import RangeMap
from ipam import DEFAULT_POOLS, IpamError, IpamStore, LocalRanges, PeerRange, View
from ipam.model import KINDS


def _maps(views: list[View]) -> list[RangeMap]:
    return [RangeMap(v.kind, v.real, v.view) for v in views]


def ordered(maps: Iterable[RangeMap]) -> list[RangeMap]:
    """Sorted by (kind, real, view)."""
    return sorted(maps, key=lambda m: (m.kind, m.real, m.view))


class ViewsError(ValueError):
    """Malformed claimed ranges or exhausted pools (wraps ipam.IpamError)."""


class Views(Protocol):
    def allocate(self, peer: str, ranges: list[tuple[str, str]], *,
                 replace: bool = False, hold: float = 0.0) -> list[RangeMap]: ...
    def views(self, peer: str) -> list[RangeMap]: ...
    def release(self, peer: str, *, hold: float = 0.0) -> None: ...
    def all_views(self) -> dict[str, list[RangeMap]]: ...
    def snapshot(self) -> dict[str, Any]: ...


class IpamViews:
    """Views backed by ipam.IpamStore."""

    def __init__(self, path: str | Path, pod: tuple[str, ...], service: tuple[str, ...],
                 reserved: tuple[str, ...], pools: tuple[str, ...] | None) -> None:
        self.pools = tuple(pools) if pools is not None else DEFAULT_POOLS
        self.local = {"pod": list(pod), "service": list(service), "reserved": list(reserved)}
        try:
            self.store = IpamStore.open(path, LocalRanges(pod, service, reserved), self.pools)
        except IpamError as e:
            raise ViewsError(str(e)) from None

    def allocate(self, peer: str, ranges: list[tuple[str, str]], *,
                 replace: bool = False, hold: float = 0.0) -> list[RangeMap]:
        """All views of ``peer`` after adding ``ranges``; all or nothing.

        With ``replace``, ``ranges`` is the peer's full set: views of ranges it
        no longer has are released in the same IPAM transaction (sparse ones
        held in quarantine for ``hold`` seconds).
        """
        claims = []
        kinds = {k: k for k in KINDS}
        for kind, cidr in ranges:
            if kind not in kinds:
                raise ViewsError(f"range kind {kind!r} is not one of {', '.join(KINDS)}")
            claims.append(PeerRange(kinds[kind], cidr))
        try:
            got = self.store.allocate(peer, claims, replace=replace, hold=hold)
        except IpamError as e:
            raise ViewsError(str(e)) from None
        return _maps(got)

    def views(self, peer: str) -> list[RangeMap]:
        return _maps(self.store.views(peer))

    def release(self, peer: str, *, hold: float = 0.0) -> None:
        self.store.release(peer, hold=hold)

    def all_views(self) -> dict[str, list[RangeMap]]:
        """Every peer's views in one read (the reconcile loop builds the state every second)."""
        return {peer: _maps(views)
                for peer, views in self.store.allocations().items()}

    def close(self) -> None:
        self.store.close()

    def changes(self) -> int:
        return self.store.changes()

    def snapshot(self) -> dict[str, Any]:
        allocs = [{"peer": v.peer, "kind": v.kind, "real": v.real, "view": v.view,
                   "remapped": v.view != v.real}
                  for views in self.store.allocations().values() for v in views]
        conflicts = [{"peer": c.view.peer, "view": c.view.view, "overlaps": c.local}
                     for c in self.store.conflicts()]
        held = [{"peer": v.peer, "kind": v.kind, "real": v.real, "view": v.view, "until": until}
                for v, until in self.store.held()]
        return {"pools": list(self.pools), "local": self.local, "allocations": allocs,
                "conflicts": conflicts, "quarantined": held}
