"""Our views of peers: a thin adapter over :mod:`ipam`'s store (``state_dir/ipam.db``).

The controller speaks plain tuples ``(kind, real, view)`` so it (and its tests)
do not depend on IPAM's classes; this module is the only place that does.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol

from ipam import DEFAULT_POOLS, IpamError, IpamStore, LocalRanges, PeerRange

ViewTuple = tuple[str, str, str]  # (kind, real, view)


class ViewsError(ValueError):
    """Malformed claimed ranges or exhausted pools (wraps ipam.IpamError)."""


class Views(Protocol):
    def allocate(self, peer: str, ranges: list[tuple[str, str]], *,
                 replace: bool = False) -> list[ViewTuple]: ...
    def views(self, peer: str) -> list[ViewTuple]: ...
    def release(self, peer: str) -> None: ...
    def all_views(self) -> dict[str, list[ViewTuple]]: ...
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
                 replace: bool = False) -> list[ViewTuple]:
        """All views of ``peer`` after adding ``ranges``; all or nothing.

        With ``replace``, ``ranges`` is the peer's full set: views of ranges it
        no longer has are released in the same IPAM transaction.
        """
        claims = []
        for kind, cidr in ranges:
            if kind not in ("pod", "service"):
                raise ViewsError(f"range kind {kind!r} is not pod or service")
            claims.append(PeerRange("pod" if kind == "pod" else "service", cidr))
        try:
            got = self.store.allocate(peer, claims, replace=replace)
        except IpamError as e:
            raise ViewsError(str(e)) from None
        return [(v.kind, v.real, v.view) for v in got]

    def views(self, peer: str) -> list[ViewTuple]:
        return [(v.kind, v.real, v.view) for v in self.store.views(peer)]

    def release(self, peer: str) -> None:
        self.store.release(peer)

    def all_views(self) -> dict[str, list[ViewTuple]]:
        """Every peer's views in one read (the reconcile loop builds the state every second)."""
        return {peer: [(v.kind, v.real, v.view) for v in views]
                for peer, views in self.store.allocations().items()}

    def close(self) -> None:
        self.store.close()

    def snapshot(self) -> dict[str, Any]:
        allocs = [{"peer": v.peer, "kind": v.kind, "real": v.real, "view": v.view,
                   "remapped": v.view != v.real}
                  for views in self.store.allocations().values() for v in views]
        conflicts = [{"peer": c.view.peer, "view": c.view.view, "overlaps": c.local}
                     for c in self.store.conflicts()]
        return {"pools": list(self.pools), "local": self.local, "allocations": allocs,
                "conflicts": conflicts}
