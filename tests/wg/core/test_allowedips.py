"""Longest-prefix match, IPv4 and IPv6, single removal, removal by peer;
checked against a brute-force reference on random tables."""

from __future__ import annotations

import ipaddress
import random

import pytest

from fabric.wg.allowedips import AllowedIPs, format_cidr, parse_cidr


def _ins(t: AllowedIPs[str], cidr: str, peer: str) -> None:
    f, n, p = parse_cidr(cidr)
    t.insert(f, n, p, peer)


def _look(t: AllowedIPs[str], addr: str) -> str | None:
    ip = ipaddress.ip_address(addr)
    return t.lookup(ip.version, int(ip))


def test_longest_prefix_wins_v4_v6() -> None:
    t: AllowedIPs[str] = AllowedIPs()
    _ins(t, "0.0.0.0/0", "default")
    _ins(t, "10.0.0.0/8", "a")
    _ins(t, "10.244.0.0/16", "b")
    _ins(t, "10.244.1.5/32", "c")
    _ins(t, "::/0", "default6")
    _ins(t, "fd00::/48", "d")
    _ins(t, "fd00:0:0:1::/64", "e")
    assert _look(t, "10.244.1.5") == "c"
    assert _look(t, "10.244.1.6") == "b"
    assert _look(t, "10.1.1.1") == "a"
    assert _look(t, "192.0.2.1") == "default"
    assert _look(t, "fd00::1:0:0:0:1") == "e"
    assert _look(t, "fd00::2") == "d"
    assert _look(t, "2001:db8::1") == "default6"


def test_remove_one_and_by_peer() -> None:
    t: AllowedIPs[str] = AllowedIPs()
    _ins(t, "10.0.0.0/8", "a")
    _ins(t, "10.1.0.0/16", "b")
    _ins(t, "fd00::/8", "b")
    assert not t.remove(*parse_cidr("10.1.0.0/16"), "a")  # not a's
    assert t.remove(*parse_cidr("10.1.0.0/16"), "b")
    assert _look(t, "10.1.2.3") == "a"
    t.remove_peer("b")
    assert _look(t, "fd00::1") is None
    assert t.entries("b") == []
    assert [format_cidr(*e) for e in t.entries("a")] == ["10.0.0.0/8"]


def test_parse_cidr_rejects_bad_input() -> None:
    for bad in ["10.0.0.0/33", "fd00::/129", "10.0.0.0/x", "nonsense", "10.0.0.0/-1", ""]:
        with pytest.raises(ValueError):
            parse_cidr(bad)
    assert parse_cidr("10.1.2.3/8") == (4, 0x0A000000, 8)


@pytest.mark.parametrize("seed", range(3))
def test_matches_brute_force(seed: int) -> None:
    rnd = random.Random(seed)
    t: AllowedIPs[int] = AllowedIPs()
    ref: dict[ipaddress.IPv4Network | ipaddress.IPv6Network, int] = {}
    for _ in range(300):
        v6 = rnd.random() < 0.5
        bits = 128 if v6 else 32
        plen = rnd.randint(0, bits) if rnd.random() < 0.2 else rnd.randint(bits // 4, bits)
        addr = rnd.getrandbits(bits)
        net = ipaddress.ip_network(
            (ipaddress.IPv6Address(addr) if v6 else ipaddress.IPv4Address(addr), plen), strict=False
        )
        peer = rnd.randint(1, 8)
        if rnd.random() < 0.15 and ref:
            victim = rnd.choice(list(ref))
            t.remove(victim.version, int(victim.network_address), victim.prefixlen, ref.pop(victim))
            continue
        t.insert(net.version, int(net.network_address), plen, peer)
        ref[net] = peer
    for _ in range(2000):
        v6 = rnd.random() < 0.5
        bits = 128 if v6 else 32
        # bias probes towards stored networks
        if ref and rnd.random() < 0.7:
            base = rnd.choice(list(ref))
            if base.version != (6 if v6 else 4):
                continue
            addr = int(base.network_address) | rnd.getrandbits(bits - base.prefixlen)
        else:
            addr = rnd.getrandbits(bits)
        ip = ipaddress.IPv6Address(addr) if v6 else ipaddress.IPv4Address(addr)
        best = max(
            (n for n in ref if n.version == ip.version and ip in n),
            key=lambda n: n.prefixlen,
            default=None,
        )
        assert t.lookup(ip.version, addr) == (ref[best] if best is not None else None)
