"""The sans-IO allocator: which view each peer range gets. No files, no clocks.

``Planner`` holds the local ranges, the pools and the committed views, indexed
as sorted interval sets per address family. ``plan()`` computes a peer's views
without changing anything; ``commit()`` applies a plan (the store calls it only
after its SQLite transaction committed). See DESIGN.md for the rules.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

from .cidr import SPECIAL, Net, canonical, parse_cidr, special_overlap
from .errors import IpamError
from .intervals import IntervalSet
from .model import FULL_KINDS, KINDS, SPARSE_KINDS, Conflict, LocalRanges, PeerRange, View

MAX_PEER_NAME = 253


class Rec(NamedTuple):
    """A committed view with its parsed networks."""

    view: View
    vnet: Net
    rnet: Net


@dataclass(frozen=True)
class Plan:
    """The outcome of ``Planner.plan``: what to store and what to delete."""

    peer: str
    views: tuple[View, ...]  # every view of the peer once this plan is applied
    new: tuple[Rec, ...]
    dropped: tuple[Rec, ...]
    generation: int = field(repr=False)  # Planner state this plan was made against
    # Quarantine (sparse kinds): dropped views held until the given time, and
    # held views given back to the same (peer, real).
    held: tuple[tuple[Rec, float], ...] = ()
    unheld: tuple[Rec, ...] = ()

    @property
    def changes(self) -> bool:
        return bool(self.new or self.dropped or self.held or self.unheld)


def check_peer_name(peer: object) -> str:
    """A peer (cluster) name: 1-253 printable characters without whitespace."""
    if not isinstance(peer, str) or not peer:
        raise IpamError(f"peer name {peer!r}: must be a non-empty string")
    if len(peer) > MAX_PEER_NAME:
        raise IpamError(f"peer name {peer[:40]!r}...: longer than {MAX_PEER_NAME} characters")
    # isprintable() is False for every whitespace character except " "
    if not peer.isprintable() or " " in peer:
        raise IpamError(f"peer name {peer!r}: contains whitespace or control characters")
    return peer


def _align_up(x: int, size: int) -> int:
    return -(-x // size) * size


class Planner:
    """Views of all peers, and the search for free prefixes.

    Invariant: committed views are pairwise disjoint (enforced by the interval
    sets); every view either equals its real range or lies inside a pool; a
    new view never overlaps a local, reserved or special range (a stored one
    may after a config change: see ``conflicts()``).

    Not thread-safe on its own; IpamStore serializes access with its lock.
    """

    def __init__(self, local: LocalRanges, pools: Sequence[str]) -> None:
        if not isinstance(local, LocalRanges):
            raise IpamError(f"local ranges {local!r}: not a LocalRanges")
        self.local = local
        self._local: list[tuple[Net, str]] = []
        for label, cidrs in (("pod", local.pod), ("service", local.service),
                             ("reserved", local.reserved)):
            if isinstance(cidrs, str) or not isinstance(cidrs, Sequence):
                raise IpamError(f"local {label} ranges {cidrs!r}: must be a list of CIDRs")
            for c in cidrs:
                net = parse_cidr(c, f"local {label} range")
                self._local.append((net, f"local {label} range {net}"))
        if isinstance(pools, str) or not isinstance(pools, Sequence):
            raise IpamError(f"IPAM pools {pools!r}: must be a list of CIDRs")
        self.pools: tuple[Net, ...] = tuple(parse_cidr(p, "IPAM pool") for p in pools)
        blocking = [*self._local, *((n, f"special range {n} ({why})") for n, why in SPECIAL)]
        self._blocking = blocking
        self._blocked = {
            v: IntervalSet.merged((n.first, n.last) for n, _ in blocking if n.version == v)
            for v in (4, 6)
        }
        self._views = {4: IntervalSet(), 6: IntervalSet()}
        self._by_first: dict[tuple[int, int], Rec] = {}
        self._by_peer: dict[str, list[Rec]] = {}
        # (pool index, prefix length) -> an address below which that pool has
        # no free aligned block of that size. Valid while views only grow;
        # lowered on release. Turns repeated first-fit into amortized O(log n).
        self._hints: dict[tuple[int, int], int] = {}
        self._fitting: dict[tuple[int, int], list[tuple[int, Net]]] = {}
        self._checked: dict[tuple[PeerRange, ...], tuple[tuple[PeerRange, Net], ...]] = {}
        self._generation = 0
        self._conflicts: list[Conflict] | None = None
        # Released sparse views in quarantine, by (peer, real): they stay in the
        # view index (nobody else gets them) but belong to no live allocation.
        self._held: dict[tuple[str, Net], tuple[Rec, float]] = {}

    # -- queries ---------------------------------------------------------

    def views(self, peer: str) -> list[View]:
        return [r.view for r in self._by_peer.get(peer, ())]

    def allocations(self) -> dict[str, list[View]]:
        return {p: [r.view for r in recs] for p, recs in self._by_peer.items()}

    def held(self) -> list[tuple[View, float]]:
        """Views in quarantine and the time their hold ends."""
        return [(r.view, until) for r, until in self._held.values()]

    def _is_held(self, r: Rec) -> bool:
        h = self._held.get((r.view.peer, r.rnet))
        return h is not None and h[0] is r

    def __len__(self) -> int:
        return len(self._by_first)

    def conflicts(self) -> list[Conflict]:
        """Stored views that overlap a local/reserved range of the current config."""
        if self._conflicts is None:
            # Few local ranges, many views: probe the view index per local range.
            out: list[Conflict] = []
            for n, label in self._blocking:
                for lo, _ in self._views[n.version].overlapping(n.first, n.last):
                    r = self._by_first[(n.version, lo)]
                    if self._is_held(r):
                        continue
                    out.append(Conflict(r.view, label.removeprefix("local ")))
            self._conflicts = out
        return list(self._conflicts)

    def check(self, ranges: Sequence[PeerRange]) -> tuple[tuple[PeerRange, Net], ...]:
        """Validate a peer's claimed ranges; returns them parsed, duplicates removed."""
        if isinstance(ranges, str | bytes) or not isinstance(ranges, Sequence):
            raise IpamError(f"peer ranges {ranges!r}: must be a list of PeerRange")
        # Peers mostly claim the same few range sets: remember accepted ones.
        try:
            key = tuple(ranges)
            hit = self._checked.get(key)
        except TypeError:  # unhashable junk: let the checks below name it
            key, hit = None, None
        if hit is not None:
            return hit
        result = self._check(ranges)
        if key is not None:
            if len(self._checked) >= 1024:
                self._checked.clear()
            self._checked[key] = result
        return result

    def _check(self, ranges: Sequence[PeerRange]) -> tuple[tuple[PeerRange, Net], ...]:
        out: list[tuple[PeerRange, Net]] = []
        for pr in ranges:
            if not isinstance(pr, PeerRange):
                raise IpamError(f"peer range {pr!r}: not a PeerRange")
            if pr.kind not in KINDS:
                raise IpamError(f"peer range {pr.cidr!r}: kind {pr.kind!r} is not one of {', '.join(KINDS)}")
            net = parse_cidr(pr.cidr, f"peer {pr.kind} range")
            if pr.kind == "egress":
                # Not an address of the peer's: only the block's family and size.
                if net.first != 0:
                    raise IpamError(f"peer egress range {pr.cidr!r}: must be 0.0.0.0/N or ::/N "
                                    "(it gives only the size of the block)")
            else:
                special = special_overlap(net)
                if special is not None:
                    raise IpamError(f"peer {pr.kind} range {pr.cidr!r}: overlaps special-purpose range {special}")
            dup = False
            for other, onet in out:  # a peer claims a handful of ranges: pairwise is fine
                if onet == net and other.kind == pr.kind:
                    dup = True
                elif onet.overlaps(net):
                    raise IpamError(f"peer {pr.kind} range {pr.cidr!r}: overlaps the peer's "
                                    f"{other.kind} range {other.cidr!r} (a peer's ranges must be disjoint)")
            if not dup:
                out.append((PeerRange(pr.kind, canonical(net)), net))
        return tuple(out)

    # -- planning --------------------------------------------------------

    def plan(self, peer: str, ranges: Sequence[PeerRange], *, replace: bool = False,
             now: float = 0.0, hold: float = 0.0) -> Plan:
        """The peer's views with ``ranges`` added (or, with ``replace``, set to exactly them).

        All or nothing: raises IpamError if any range cannot be placed.
        Existing views of the peer are kept as they are. Changes nothing.
        Sparse views dropped by ``replace`` are held until ``now + hold``: no
        other allocation gets them meanwhile (a DNS answer may still name
        them), and the same (peer, real) asking again gets its view back.
        """
        check_peer_name(peer)
        return self.plan_checked(peer, self.check(ranges), replace=replace, now=now, hold=hold)

    def plan_checked(self, peer: str, claims: Sequence[tuple[PeerRange, Net]], *,
                     replace: bool = False, now: float = 0.0, hold: float = 0.0) -> Plan:
        """``plan`` for claims that already went through ``check``."""
        existing = self._by_peer.get(peer)
        kept: list[Rec] = []
        dropped: tuple[Rec, ...] = ()
        unheld: list[Rec] = []
        if not existing:  # the common case: a new peer
            todo = list(claims)
        else:
            by_real = {r.rnet: r for r in existing}
            todo = []
            for pr, net in claims:
                rec = by_real.get(net)
                if rec is None:
                    todo.append((pr, net))
                elif rec.view.kind != pr.kind:
                    raise IpamError(f"peer {pr.kind} range {pr.cidr!r}: already allocated to peer "
                                    f"{peer!r} as a {rec.view.kind} range")
            if replace:
                claimed = {net for _, net in claims}
                kept = [r for r in existing if r.rnet in claimed]
                dropped = tuple(r for r in existing if r.rnet not in claimed)
            else:
                kept = existing
            for pr, net in todo:
                for r in kept:
                    if r.rnet.overlaps(net):
                        raise IpamError(f"peer {pr.kind} range {pr.cidr!r}: overlaps the peer's "
                                        f"{r.view.kind} range {r.view.real} (a peer's ranges must be disjoint)")
        held: tuple[tuple[Rec, float], ...] = ()
        if hold > 0 and dropped:
            held = tuple((r, now + hold) for r in dropped if r.view.kind in SPARSE_KINDS)
            dropped = tuple(r for r in dropped if r.view.kind not in SPARSE_KINDS)
        if self._held and todo:
            # A view in quarantine goes back to the same peer's same range.
            rest = []
            for pr, net in todo:
                h = self._held.get((peer, net))
                if h is not None and h[0].view.kind == pr.kind:
                    unheld.append(h[0])
                else:
                    rest.append((pr, net))
            todo = rest

        # Pass 1 keeps every free real prefix as its own view before pass 2
        # takes pool space, so a remap never steals a range that could have
        # stayed unchanged. Dropped views stay blocked until committed.
        tentative: list[Net] = []
        chosen: list[Net | None] = []
        for pr, net in todo:
            if pr.kind in FULL_KINDS and self._is_free(net, tentative):
                chosen.append(net)
                tentative.append(net)
            else:
                chosen.append(None)
        for i, (pr, net) in enumerate(todo):
            if chosen[i] is not None:
                continue
            found = self._first_fit(net.version, net.plen, tentative)
            if isinstance(found, str) and pr.kind in SPARSE_KINDS:
                what = "block" if pr.kind == "egress" else f"range {pr.cidr!r}"
                raise IpamError(f"peer {pr.kind} {what} of {peer!r}: no free /{net.plen} for its view: {found}")
            if isinstance(found, str):
                raise IpamError(f"peer {pr.kind} range {pr.cidr!r} of {peer!r}: overlaps "
                                f"{self._collision(net, tentative)} and cannot be remapped: {found}")
            chosen[i] = found
            tentative.append(found)
        new = tuple([Rec(View(peer, pr.kind, pr.cidr, str(v)), v, net)
                     for (pr, net), v in zip(todo, chosen, strict=True) if v is not None])
        views = tuple([r.view for r in kept] + [r.view for r in unheld] + [r.view for r in new])
        return Plan(peer, views, new, dropped, self._generation, held, tuple(unheld))

    def _is_free(self, net: Net, tentative: Sequence[Net]) -> bool:
        v, lo, hi = net.version, net.first, net.last
        return (self._blocked[v].reach(lo, hi) is None
                and self._views[v].reach(lo, hi) is None
                and not any(t.overlaps(net) for t in tentative))

    def _collision(self, net: Net, tentative: Sequence[Net]) -> str | None:
        """What ``net`` overlaps among local/special ranges, views and ``tentative``."""
        v = net.version
        if self._blocked[v].reach(net.first, net.last) is not None:
            for n, label in self._blocking:
                if n.overlaps(net):
                    return label
        hits = self._views[v].overlapping(net.first, net.last)
        if hits:
            r = self._by_first[(v, hits[0][0])]
            return f"view {r.view.view} of peer {r.view.peer!r}"
        for t in tentative:
            if t.overlaps(net):
                return f"view {t} of the same peer"
        return None

    def _first_fit(self, version: int, plen: int, tentative: Sequence[Net]) -> Net | str:
        """The lowest free aligned /plen in the first pool that has one, else why not."""
        fitting = self._fitting.get((version, plen))
        if fitting is None:
            fitting = self._fitting[(version, plen)] = [
                (i, p) for i, p in enumerate(self.pools) if p.version == version and p.plen <= plen]
        if not fitting:
            fam = [p for p in self.pools if p.version == version]
            if not fam:
                return f"no IPv{version} pool configured"
            widest = min(p.plen for p in fam)
            return f"a /{plen} is larger than every IPv{version} pool (the largest is a /{widest})"
        size = 1 << ((32 if version == 4 else 128) - plen)
        blocked, views = self._blocked[version], self._views[version]
        for idx, pool in fitting:
            key = (idx, plen)
            c = self._hints.get(key, pool.first)
            advance = True  # only committed occupancy may move the hint
            while c + size - 1 <= pool.last:
                e = c + size - 1
                r = blocked.reach(c, e)
                if r is None:
                    r = views.reach(c, e)
                if r is not None:
                    c = _align_up(r + 1, size)
                    if advance:
                        self._hints[key] = c
                    continue
                t_end = max((t.last for t in tentative
                             if t.version == version and t.first <= e and c <= t.last),
                            default=None) if tentative else None
                if t_end is not None:
                    c = _align_up(t_end + 1, size)
                    advance = False
                    continue
                return Net(version, c, plen, e)
        names = ", ".join(str(p) for _, p in fitting)
        return f"IPv{version} pools exhausted (no free /{plen} left in {names})"

    # -- changes ---------------------------------------------------------

    def commit(self, plan: Plan) -> None:
        if plan.generation != self._generation:
            raise RuntimeError("plan was made against an older planner state")
        for r in plan.dropped:
            self._remove(r)
        gone = set(plan.dropped)
        for r, until in plan.held:
            self._held[(plan.peer, r.rnet)] = (r, until)
            gone.add(r)
            self._conflicts = None
        if gone:
            self._by_peer[plan.peer] = [r for r in self._by_peer[plan.peer] if r not in gone]
            if not self._by_peer[plan.peer]:
                del self._by_peer[plan.peer]
        for r in plan.unheld:
            del self._held[(plan.peer, r.rnet)]
            self._by_peer.setdefault(plan.peer, []).append(r)
            self._conflicts = None
        for r in plan.new:
            self._add(r)
        self._generation += 1

    def expire(self, now: float) -> list[Rec]:
        """End the holds that ran out by ``now``: those views are free again."""
        done = [r for r, until in self._held.values() if until <= now]
        for r in done:
            del self._held[(r.view.peer, r.rnet)]
            self._remove(r)
        if done:
            self._generation += 1
        return done

    def release(self, peer: str, *, now: float = 0.0, hold: float = 0.0) -> list[View]:
        """Forget the peer's views (sparse ones held until ``now + hold``); returns them."""
        recs = self._by_peer.pop(peer, [])
        for r in recs:
            if hold > 0 and r.view.kind in SPARSE_KINDS:
                self._held[(peer, r.rnet)] = (r, now + hold)
                self._conflicts = None
            else:
                self._remove(r)
        self._generation += 1
        return [r.view for r in recs]

    def load(self, recs: Iterable[Rec], held: Iterable[tuple[Rec, float]] = ()) -> None:
        """Add views (from the store, or ``plan()``'s taken list) to an empty planner,
        and ``held``: views in quarantine with the end of their hold.

        Raises IpamError if two of them overlap or a peer has a real range twice.
        """
        if self._by_first:
            raise RuntimeError("load() needs an empty planner")
        by_first = self._by_first
        by_peer = self._by_peer
        spans: dict[int, list[tuple[int, int]]] = {4: [], 6: []}
        for r, until in held:
            key = (r.vnet.version, r.vnet.first)
            if key in by_first:
                self._corrupt(r, by_first[key])
            by_first[key] = r
            spans[r.vnet.version].append((r.vnet.first, r.vnet.last))
            self._held[(r.view.peer, r.rnet)] = (r, until)
        for r in recs:
            version, first, _, last = r.vnet
            key = (version, first)
            if key in by_first:
                self._corrupt(r, by_first[key])
            by_first[key] = r
            spans[version].append((first, last))
            peer_recs = by_peer.get(r.view.peer)
            if peer_recs is None:
                by_peer[r.view.peer] = [r]
            else:
                peer_recs.append(r)
        for version in (4, 6):
            try:
                self._views[version] = IntervalSet.disjoint(spans[version])
            except ValueError:
                ordered = sorted((x for x in by_first.values() if x.vnet.version == version),
                                 key=lambda x: x.vnet.first)
                for x, y in itertools.pairwise(ordered):
                    if x.vnet.overlaps(y.vnet):
                        self._corrupt(y, x)
                raise  # pragma: no cover - disjoint() and pairwise agree
        for peer, peer_recs in by_peer.items():
            if len(peer_recs) < 2:
                continue
            for x, y in itertools.combinations(peer_recs, 2):  # a handful per peer
                if x.rnet.overlaps(y.rnet):
                    raise IpamError(f"peer {peer!r} has overlapping real ranges {x.view.real} and "
                                    f"{y.view.real} stored: the store is inconsistent")
        self._conflicts = None
        self._generation += 1

    @staticmethod
    def _corrupt(r: Rec, other: Rec) -> None:
        raise IpamError(f"view {r.view.view} of peer {r.view.peer!r} overlaps view {other.view.view} "
                        f"of peer {other.view.peer!r}: the store is inconsistent")

    def _add(self, r: Rec) -> None:
        v = r.vnet
        self._views[v.version].add(v.first, v.last)
        self._by_first[(v.version, v.first)] = r
        self._by_peer.setdefault(r.view.peer, []).append(r)
        self._conflicts = None
        # A hint that now points into this view can skip past it.
        for key, hint in self._hints.items():
            if v.first <= hint <= v.last and self.pools[key[0]].version == v.version:
                size = 1 << (v.bits - key[1])
                self._hints[key] = _align_up(v.last + 1, size)

    def _remove(self, r: Rec) -> None:
        v = r.vnet
        self._views[v.version].remove(v.first, v.last)
        del self._by_first[(v.version, v.first)]
        self._conflicts = None
        for (idx, plen), hint in self._hints.items():
            pool = self.pools[idx]
            if pool.version != v.version or v.last < pool.first or v.first > pool.last:
                continue  # a view outside this pool frees nothing in it
            size = 1 << (v.bits - plen)
            lowest = max(pool.first, v.first // size * size)
            if lowest < hint:
                self._hints[(idx, plen)] = lowest


def rec_from_view(view: View) -> Rec:
    """Parse a View given by a caller (as ``plan()``'s taken list) into a Rec."""
    if not isinstance(view, View):
        raise IpamError(f"taken view {view!r}: not a View")
    check_peer_name(view.peer)
    if view.kind not in KINDS:
        raise IpamError(f"taken view {view!r}: kind {view.kind!r} is not one of {', '.join(KINDS)}")
    rnet = parse_cidr(view.real, "taken view's real range")
    vnet = parse_cidr(view.view, "taken view")
    if rnet.version != vnet.version or rnet.plen != vnet.plen:
        raise IpamError(f"taken view {view.view!r} of {view.real!r}: family or prefix length differ")
    return Rec(View(view.peer, view.kind, str(rnet), str(vnet)), vnet, rnet)


def plan(local: LocalRanges, pools: Sequence[str], taken: Iterable[View], peer: str,
         ranges: Sequence[PeerRange]) -> list[View]:
    """Pure: the views ``peer`` gets for ``ranges`` given the ``taken`` views.

    Returns every view of the peer (those already in ``taken`` first). Raises
    IpamError naming the range and reason when any range cannot be placed.
    """
    p = Planner(local, pools)
    p.load(rec_from_view(v) for v in taken)
    return list(p.plan(peer, ranges).views)
