"""Hypothesis property tests: random local ranges, pools and add/extend/replace/release
sequences over many peers. Invariants are checked by brute force after every step,
and every plan is compared with the plan of a fresh planner (no search hints)."""

from __future__ import annotations

import itertools
import tempfile
from pathlib import Path

from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from ipam import IpamError, IpamStore, LocalRanges, PeerRange, Planner, View
from ipam.cidr import Net, make_net, parse_cidr

# Two small 16-bit universes per family, so that random ranges collide a lot:
# 0 = where clusters live (10.0.0.0/16, fd00::/112), 1 = spare (100.64.0.0/16, fd01::/112).
BASES = {(4, 0): (int(parse_cidr("10.0.0.0/16", "b").first), 16),
         (4, 1): (int(parse_cidr("100.64.0.0/16", "b").first), 16),
         (6, 0): (int(parse_cidr("fd00::/112", "b").first), 112),
         (6, 1): (int(parse_cidr("fd01::/112", "b").first), 112)}


@st.composite
def blocks(draw: st.DrawFn, min_rel: int, max_rel: int, universes: tuple[int, ...] = (0, 1),
           versions: tuple[int, ...] = (4, 6)) -> str:
    version = draw(st.sampled_from(versions))
    universe = draw(st.sampled_from(universes))
    rel = draw(st.integers(min_rel, max_rel))  # prefix length inside the 16-bit universe
    index = draw(st.integers(0, (1 << rel) - 1))
    base, plen = BASES[(version, universe)]
    return str(make_net(version, base + (index << (16 - rel)), plen + rel))


@st.composite
def scenarios(draw: st.DrawFn) -> tuple[LocalRanges, list[str], list[tuple[str, int, list[PeerRange]]]]:
    """Local ranges, pools and steps; peers claim from a small shared set of ranges
    (as real clusters all use 10.244.0.0/16), so collisions and exhaustion are common."""
    vs = draw(st.sampled_from([(4,), (6,), (4, 6)]))
    local = LocalRanges(
        pod=tuple(draw(st.lists(blocks(2, 8, (0,), vs), max_size=2))),
        service=tuple(draw(st.lists(blocks(2, 8, (0,), vs), max_size=2))),
        reserved=tuple(draw(st.lists(blocks(3, 10, (0, 1), vs), max_size=2))),
    )
    pool_list = draw(st.lists(blocks(0, 5, (0, 1), vs), min_size=1, max_size=3))
    shared = draw(st.lists(blocks(3, 10, (0, 0, 1), vs), min_size=1, max_size=4))
    candidates = [*shared, *local.pod, *local.service]
    ranges = st.lists(st.builds(PeerRange, kind=st.sampled_from(("pod", "service")),
                                cidr=st.sampled_from(candidates) | blocks(3, 10, (0, 1), vs)),
                      max_size=3)
    steps = draw(st.lists(st.tuples(st.sampled_from(("add", "add", "add", "replace", "release")),
                                    st.integers(0, 15), ranges), min_size=1, max_size=40))
    return local, pool_list, steps


Scenario = tuple[LocalRanges, list[str], list[tuple[str, int, list[PeerRange]]]]


def net(c: str) -> Net:
    return parse_cidr(c, "test")


def check_invariants(p: Planner, local: LocalRanges, pool_nets: list[Net]) -> None:
    views = [v for vs in p.allocations().values() for v in vs]
    vnets = [net(v.view) for v in views]
    for a, b in itertools.combinations(vnets, 2):
        assert not a.overlaps(b), (a, b)
    local_nets = [net(c) for c in (*local.pod, *local.service, *local.reserved)]
    for v, vn in zip(views, vnets, strict=True):
        rn = net(v.real)
        assert (vn.version, vn.plen) == (rn.version, rn.plen)
        assert not any(vn.overlaps(ln) for ln in local_nets), v
        assert v.view == v.real or any(pn.first <= vn.first and vn.last <= pn.last
                                       for pn in pool_nets), v
    for peer, vs in p.allocations().items():
        assert all(v.peer == peer for v in vs)
        for a, b in itertools.combinations(vs, 2):
            assert not net(a.real).overlaps(net(b.real))


def fresh_copy(p: Planner, local: LocalRanges, pool_list: list[str]) -> Planner:
    q = Planner(local, pool_list)
    q.load(p._by_first.values())
    return q


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(scenarios())
def test_planner_invariants(scenario: Scenario) -> None:
    local, pool_list, steps = scenario
    p = Planner(local, pool_list)
    pool_nets = [net(c) for c in pool_list]
    for op, idx, ranges in steps:
        peer = f"peer{idx}"
        before_all = p.allocations()
        before = p.views(peer)
        if op == "release":
            assert p.release(peer) == before
            assert p.views(peer) == []
            check_invariants(p, local, pool_nets)
            continue
        replace = op == "replace"
        oracle = fresh_copy(p, local, pool_list)
        try:
            expected: list[View] | str = list(oracle.plan(peer, ranges, replace=replace).views)
        except IpamError as e:
            expected = str(e)
        try:
            pl = p.plan(peer, ranges, replace=replace)
        except IpamError as e:
            event("refused: " + ("exhausted" if "exhausted" in str(e) else "other"))
            assert expected == str(e)  # hints never make a search fail that a full scan passes
            assert p.allocations() == before_all  # all or nothing
            continue
        assert list(pl.views) == expected  # ... nor pick a different block
        p.commit(pl)
        event(f"placed; remapped views: {sum(v.remapped for v in pl.views) > 0}")
        after = p.views(peer)
        assert after == list(pl.views)
        claimed = {net(r.cidr) for r in ranges}
        # stable: views of ranges still claimed (or all, when adding) are unchanged
        kept = [v for v in before if not replace or net(v.real) in claimed]
        assert after[:len(kept)] == kept
        assert {net(v.real) for v in after} == ({net(v.real) for v in kept} | claimed)
        # a new view is remapped only if its real prefix was not free
        taken = [net(v.view) for vs in before_all.values() for v in vs]
        identity = [net(v.view) for v in after[len(kept):] if not v.remapped]
        blocked = [net(c) for c in (*local.pod, *local.service, *local.reserved)]
        for v in after[len(kept):]:
            if v.remapped:
                rn = net(v.real)
                assert any(rn.overlaps(x) for x in (*blocked, *taken, *identity)), v
        # idempotent
        assert not p.plan(peer, ranges).changes
        check_invariants(p, local, pool_nets)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(scenarios(), st.lists(st.booleans(), min_size=40, max_size=40))
def test_two_stores_on_one_file_match_the_planner_and_survive_reopen(
        scenario: Scenario, which: list[bool]) -> None:
    """Two connections (as two processes would) take random turns on one file;
    the result must equal a single in-memory Planner given the same steps."""
    local, pool_list, steps = scenario
    model = Planner(local, pool_list)
    with tempfile.TemporaryDirectory() as d:
        db = Path(d) / "ipam.db"
        with IpamStore.open(db, local, pool_list) as s1, IpamStore.open(db, local, pool_list) as s2:
            for (op, idx, ranges), first in zip(steps, which, strict=False):
                s = s1 if first else s2
                peer = f"peer{idx}"
                if op == "release":
                    s.release(peer)
                    model.release(peer)
                    continue
                try:
                    pl = model.plan(peer, ranges, replace=op == "replace")
                except IpamError as e:
                    try:
                        s.allocate(peer, ranges, replace=op == "replace")
                    except IpamError as e2:
                        assert str(e2) == str(e)
                    else:
                        raise AssertionError("store accepted what the model refused")
                    continue
                model.commit(pl)
                assert s.allocate(peer, ranges, replace=op == "replace") == list(pl.views)
            assert s1.allocations() == model.allocations() == s2.allocations()
        with IpamStore.open(db, local, pool_list) as s:
            assert s.allocations() == model.allocations()
