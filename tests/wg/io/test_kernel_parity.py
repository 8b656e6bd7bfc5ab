"""crosswire-wg behaves as the kernel's WireGuard (wireguard-go as the control), issue 9 item 12.

Side a runs crosswire-wg, side b wireguard-go, both configured only with wg(8).

- `wg show` transfer bytes: every authenticated message counts for its peer,
  so our rx/tx equal wireguard-go's tx/rx exactly.
- Sticky source: a peer that writes to our secondary address (or to one on
  another interface) gets its answers from that address, so it does not roam
  away from it; when the address disappears we answer from the kernel's choice.
- An MTU change applies to the very next packet.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest
from wgpair import Pair, Side

PairFactory = Callable[[str, str], Pair]

pytestmark = pytest.mark.root


def _transfer(s: Side) -> tuple[int, int]:
    """(rx, tx) bytes `wg show` reports for the one peer of ``s``."""
    fields = s.wg("show", s.iface, "transfer").stdout.split()
    assert len(fields) == 3, fields
    return int(fields[1]), int(fields[2])


def _endpoint(s: Side) -> str:
    fields = s.wg("show", s.iface, "endpoints").stdout.split()
    assert len(fields) == 2, fields
    return fields[1]


def _lossless(out: str) -> None:
    assert " 0% packet loss" in out, out


@pytest.mark.parametrize("initiator", ["crosswire", "wggo"])
def test_transfer_bytes_equal_wireguard_go_mirror(pair_factory: PairFactory, initiator: str) -> None:
    p = pair_factory("crosswire", "wggo")
    init, resp = (p.a, p.b) if initiator == "crosswire" else (p.b, p.a)
    p.up(endpoint_on="a" if init is p.a else "b")
    try:
        _lossless(p.ping(init, resp.inner4, count=4))
        _lossless(p.ping(resp, init.inner4, count=3))
        # Counters settle once nothing is in flight (the pings returned: a few ms).
        deadline = time.monotonic() + 3
        while True:
            ours, theirs = _transfer(p.a), _transfer(p.b)
            if ours == (theirs[1], theirs[0]) or time.monotonic() > deadline:
                break
            time.sleep(0.1)
    except BaseException:
        print(p.debug_dump())
        raise
    # Our rx is their tx and our tx their rx, handshake messages included (the
    # initiator receives a 92-byte response, the responder a 148-byte initiation).
    assert ours == (theirs[1], theirs[0]), f"crosswire rx/tx {ours}, wireguard-go rx/tx {theirs}"
    assert ours[0] > 0 and ours[1] > 0


# where: "secondary" = a second address on the underlay veth; "lo" = an address
# on another interface, routed to by the wireguard-go side.
_EXTRA = {
    ("v4", "secondary"): "192.0.2.11",
    ("v6", "secondary"): "fd00:cc::11",
    ("v4", "lo"): "198.51.100.1",
    ("v6", "lo"): "fd00:dd::1",
}


def _add_extra(p: Pair, family: str, where: str) -> str:
    addr = _EXTRA[(family, where)]
    if where == "secondary":
        plen = "/24" if family == "v4" else "/64"
        # IPv6 would pick the newer of two equal /64 addresses as source: deprecate
        # the extra one (still ours, still usable when asked for) so it never does.
        v6 = ["nodad", "preferred_lft", "0"] if family == "v6" else []
        p.a.sh("ip", "addr", "add", addr + plen, "dev", p.veth[0], *v6)
    else:
        plen = "/32" if family == "v4" else "/128"
        p.a.sh("ip", "addr", "add", addr + plen, "dev", "lo", *(["nodad"] if family == "v6" else []))
        via = p.a.outer4 if family == "v4" else p.a.outer6
        p.b.sh("ip", "route", "add", addr + plen, "via", via)
    return addr


@pytest.mark.parametrize("where", ["secondary", "lo"])
@pytest.mark.parametrize("family", ["v4", "v6"])
def test_answers_leave_from_the_address_the_peer_wrote_to(
    pair_factory: PairFactory, family: str, where: str
) -> None:
    p = pair_factory("crosswire", "wggo")
    primary = p.a.outer4 if family == "v4" else p.a.outer6
    extra = _add_extra(p, family, where)
    # wireguard-go knows us by the extra address; we learn its endpoint from its initiation.
    if family == "v4":
        p.a.outer4 = extra
    else:
        p.a.outer6 = extra
    peer_outer = p.b.outer4 if family == "v4" else p.b.outer6
    # The premise: left to itself, the kernel answers from the primary address.
    assert f" src {primary} " in p.a.sh("ip", "route", "get", peer_outer).stdout
    p.up(endpoint_on="b", outer6=family == "v6")

    def shown(addr: str) -> str:
        return f"{addr}:{p.a.port}" if family == "v4" else f"[{addr}]:{p.a.port}"

    try:
        _lossless(p.ping(p.b, p.a.inner4, count=3))  # wireguard-go initiates
        _lossless(p.ping(p.a, p.b.inner4, count=3))  # and we send on our own
        _lossless(p.ping(p.b, p.a.inner6, count=2))
        # Had we answered from the primary address, wireguard-go would have roamed there.
        assert _endpoint(p.b) == shown(extra)
        # The address goes away: we answer from the kernel's choice, the peer roams to it.
        plen = {"v4": "/24", "v6": "/64"}[family] if where == "secondary" else \
            {"v4": "/32", "v6": "/128"}[family]
        p.a.sh("ip", "addr", "del", extra + plen, "dev", p.veth[0] if where == "secondary" else "lo")
        _lossless(p.ping(p.a, p.b.inner4, count=3))
        assert _endpoint(p.b) == shown(primary)
    except BaseException:
        print(p.debug_dump())
        raise


def test_mtu_change_applies_to_the_next_packet(pair_factory: PairFactory) -> None:
    """A 1409-byte packet pads to min(1424, MTU): 1410 and 1420 give different
    datagrams (32 + MTU bytes); our tx bytes grow by exactly one datagram per ping."""
    p = pair_factory("crosswire", "wggo")
    p.up(endpoint_on="a")
    try:
        _lossless(p.ping(p.a, p.b.inner4, count=1))
        for mtu in (1410, 1420, 1410, 1420):
            p.a.sh("ip", "link", "set", "dev", p.a.iface, "mtu", str(mtu))
            before = _transfer(p.a)[1]
            # Right after the change: the old loop only re-read the MTU once a second.
            out = p.a.sh("ping", "-c", "1", "-W", "2", "-M", "do", "-s", str(1409 - 28),
                         p.b.inner4).stdout
            _lossless(out)
            sent = _transfer(p.a)[1] - before
            assert sent == 32 + mtu, f"MTU {mtu}: sent a {sent}-byte datagram"
    except BaseException:
        print(p.debug_dump())
        raise
