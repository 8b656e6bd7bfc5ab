"""The peer range policy core (gateway.peerranges.policy) and its config: pure, no gateway."""

from __future__ import annotations

import ipaddress
import time
from typing import Any

import pytest

from gateway.config import ConfigError, parse
from gateway.peerranges.policy import DEFAULT_MAX_V4, PolicyError, RangePolicy, check, token_cidrs

KUBEADM = [("pod", "10.244.0.0/16"), ("service", "10.96.0.0/12")]
ALLOW = "(peer_ranges.allow: 10.0.0.0/8, 172.16.0.0/12, 192.168.0.0/16, 100.64.0.0/10, fd00::/8)"
BASE: dict[str, Any] = {"cluster_id": "gpu", "pod_cidrs": ["10.244.0.0/16"]}


def test_defaults_accept_private_and_shared_space_and_refuse_public_space() -> None:
    p = RangePolicy()
    for ranges in (KUBEADM, [("pod", "10.42.0.0/16"), ("service", "10.43.0.0/16")],
                   [("pod", "172.16.0.0/16"), ("pod", "192.168.0.0/16"), ("pod", "100.64.0.0/16")],
                   [*KUBEADM, ("pod", "fd00::/48"), ("service", "fd00:96::/112")]):
        v = check(ranges, p)
        assert v.ok and v.accepted == tuple(ranges), v.message()
    v = check([*KUBEADM, ("pod", "8.8.8.0/24"), ("pod", "1.0.0.0/8")], p)
    assert not v.ok and v.accepted == tuple(KUBEADM)
    assert v.message() == (f"pod 8.8.8.0/24: outside the address space this gateway accepts from peers {ALLOW}; "
                           f"pod 1.0.0.0/8: outside the address space this gateway accepts from peers {ALLOW}; "
                           f"ranges: {16777216 + 256 + 65536 + 1048576} IPv4 addresses in all, more than "
                           f"peer_ranges.max_view_addresses.ipv4 (2097152, a /11)")
    # Neighbours of the allowed blocks are public: 11/8, 172.32/12, 100.128/10, fc00::/8, 2001:db8::/32.
    for cidr in ("11.0.0.0/24", "172.32.0.0/16", "100.128.0.0/16", "fc00::/48", "2001:db8::/48", "9.0.0.0/7"):
        v = check([("pod", cidr)], p)
        assert [r.what for r in v.refusals] == [f"pod {cidr}"], cidr
    # A range straddling the edge of an allowed block is not inside it.
    assert not check([("pod", "10.0.0.0/7")], p).ok


def test_quota_of_ranges_refuses_a_flood_at_once() -> None:
    flood = [("pod", f"10.{i // 256}.{i % 256}.0/24") for i in range(1400)]
    t0 = time.perf_counter()
    v = check(flood, RangePolicy())
    assert time.perf_counter() - t0 < 0.05  # judged by its length, not range by range
    assert v.accepted == () and v.message() == "ranges: 1400 ranges, more than peer_ranges.max_ranges (16)"
    assert check(flood[:16], RangePolicy()).ok
    assert check(flood[:16] + flood[:16], RangePolicy()).ok  # duplicates count once
    assert "more than peer_ranges.max_ranges (3)" in check(flood[:4], RangePolicy(max_ranges=3)).message()


def test_quota_of_view_space_per_family() -> None:
    # The pool hog of issue 22: shared space and all of RFC 1918 in one announcement.
    hog = [("pod", "100.64.0.0/10"), ("pod", "172.16.0.0/12"), ("pod", "192.168.0.0/16"), ("pod", "10.0.0.0/9")]
    v = check(hog, RangePolicy())
    assert [str(r) for r in v.refusals] == [
        f"ranges: {(1 << 22) + (1 << 20) + (1 << 16) + (1 << 23)} IPv4 addresses in all, "
        "more than peer_ranges.max_view_addresses.ipv4 (2097152, a /11)"]
    assert check([("pod", "10.0.0.0/11")], RangePolicy()).ok  # exactly the quota
    assert not check([("pod", "10.0.0.0/11"), ("pod", "10.32.0.0/32")], RangePolicy()).ok
    v = check([("pod", "fd00::/39")], RangePolicy())
    assert str(v.refusals[0]) == (f"ranges: {1 << 89} IPv6 addresses in all, more than "
                                  f"peer_ranges.max_view_addresses.ipv6 ({1 << 88}, a /40)")
    assert check([("pod", "fd00::/40"), *KUBEADM], RangePolicy()).ok  # the families are counted apart
    assert not check(KUBEADM, RangePolicy(max_v4=1 << 20)).ok  # an operator can tighten it


def test_token_grant_narrows_and_a_widened_policy_allows_only_what_it_lists() -> None:
    grant = ("10.244.0.0/16", "10.96.0.0/12")
    assert check(KUBEADM, RangePolicy(), grant).ok
    assert check([("pod", "10.244.128.0/17")], RangePolicy(), grant).ok  # inside is fine
    v = check([*KUBEADM, ("pod", "10.245.0.0/16")], RangePolicy(), grant)
    assert v.message() == ("pod 10.245.0.0/16: outside the ranges this peer's token allows "
                           "(10.244.0.0/16, 10.96.0.0/12)")
    wide = RangePolicy(allow=("10.0.0.0/8", "198.18.0.0/15"))
    assert check([("pod", "198.18.5.0/24"), *KUBEADM], wide).ok
    for cidr in ("8.8.8.0/24", "192.168.1.0/24", "198.20.0.0/24", "fd00::/48"):
        assert not check([("pod", cidr)], wide).ok, cidr
    # Tokens narrow the policy and never widen it.
    assert token_cidrs(["10.244.0.0/16", " fd00::/48"], RangePolicy()) == ("10.244.0.0/16", "fd00::/48")
    with pytest.raises(PolicyError, match=r"ranges\[1\]: 8.8.8.0/24 is outside peer_ranges.allow"):
        token_cidrs(["10.244.0.0/16", "8.8.8.0/24"], RangePolicy())
    with pytest.raises(PolicyError, match=r"ranges\[0\]: '10.244.0.1/16' is not a valid CIDR"):
        token_cidrs(["10.244.0.1/16"], RangePolicy())
    assert token_cidrs(["198.18.0.0/16"], wide) == ("198.18.0.0/16",)


def test_config_section_parses_and_bad_values_name_the_key() -> None:
    assert parse(BASE, env={}).peer_ranges == RangePolicy()
    c = parse({**BASE, "peer_ranges": {"allow": ["10.0.0.0/8", "198.18.0.0/15"], "max_ranges": 4,
                                       "max_view_addresses": {"ipv4": "/12", "ipv6": 1 << 80},
                                       "approval": "manual"}}, env={}).peer_ranges
    assert c == RangePolicy(allow=("10.0.0.0/8", "198.18.0.0/15"), max_ranges=4, max_v4=1 << 20,
                            max_v6=1 << 80, approval="manual")
    assert parse({**BASE, "peer_ranges": {"max_view_addresses": {"ipv4": 65536}}}, env={}).peer_ranges.max_v4 == 65536
    assert RangePolicy().max_v4 == DEFAULT_MAX_V4

    def bad(msg: str, section: object) -> None:
        with pytest.raises(ConfigError) as e:
            parse({**BASE, "peer_ranges": section}, env={})
        assert str(e.value) == msg

    bad("peer_ranges: expected a mapping, got list", ["10.0.0.0/8"])
    bad("peer_ranges.colour: unknown key", {"colour": "red"})
    bad("peer_ranges.allow: expected a non-empty list of CIDRs", {"allow": []})
    bad("peer_ranges.allow[1]: '8.8.8.8/24' is not a valid CIDR (no host bits)", {"allow": ["10.0.0.0/8", "8.8.8.8/24"]})
    bad("peer_ranges.max_ranges: 0 is not an integer 1-1024", {"max_ranges": 0})
    bad("peer_ranges.max_ranges: True is not an integer 1-1024", {"max_ranges": True})
    bad("peer_ranges.max_view_addresses: expected a mapping {ipv4, ipv6}", {"max_view_addresses": 5})
    bad("peer_ranges.max_view_addresses.ipv5: unknown key", {"max_view_addresses": {"ipv5": 1}})
    bad("peer_ranges.max_view_addresses.ipv4: /33 is not a prefix length 0-32", {"max_view_addresses": {"ipv4": "/33"}})
    bad("peer_ranges.max_view_addresses.ipv4: 0 is not an address count 1-2^32 or a prefix length like /11",
        {"max_view_addresses": {"ipv4": 0}})
    bad("peer_ranges.max_view_addresses.ipv6: 'lots' is not an address count 1-2^128 or a prefix length like /11",
        {"max_view_addresses": {"ipv6": "lots"}})
    bad("peer_ranges.approval: 'sometimes' is not auto or manual", {"approval": "sometimes"})


def test_every_refusal_names_its_range_and_long_lists_are_cut() -> None:
    ranges = [("pod", f"{n}.0.0.0/24") for n in (1, 2, 3, 4, 5, 6, 7, 8)]
    v = check(ranges, RangePolicy())
    assert len(v.refusals) == 8 and all(r.what == f"pod {c}" for r, (_, c) in zip(v.refusals, ranges, strict=True))
    assert v.message().endswith("; and 3 more") and "pod 6.0.0.0/24" not in v.message()
    # A garbage CIDR (the wire parser normally stops it first) is a refusal, not a crash.
    assert str(check([("pod", "nope")], RangePolicy()).refusals[0]) == "pod nope: not a CIDR"
    assert all(ipaddress.ip_network(c) for _, c in check(KUBEADM, RangePolicy()).accepted)
