"""One device, several peers: cryptokey routing picks the peer by longest
prefix, and a peer cannot inject packets with another peer's source."""

from __future__ import annotations

from wg.core.wgsim import Clock, Net, ipv4_packet, make_key, uapi

from fabric.wg.crypto import public_key
from fabric.wg.device import Device


def _dev(clock: Clock, priv: bytes, port: int, peers: list[tuple[bytes, str, list[str]]]) -> Device:
    dev = Device(wallclock=clock.wall)
    req = f"set=1\nprivate_key={priv.hex()}\nlisten_port={port}\n"
    for pub, ep, ips in peers:
        req += f"public_key={pub.hex()}\nendpoint={ep}\n" + "".join(f"allowed_ip={i}\n" for i in ips)
    assert uapi(dev, req + "\n", clock.now) == "errno=0\n\n"
    return dev


def test_routing_between_three_peers_and_cross_peer_spoofing() -> None:
    clock = Clock()
    net = Net(clock)
    ka, kb, kc = make_key(), make_key(), make_key()
    pa, pb, pc = public_key(ka), public_key(kb), public_key(kc)
    # A (hub) routes 10.1/16 to B, but 10.1.5/24 (more specific) to C.
    a = _dev(clock, ka, 1, [(pb, "192.0.2.2:2", ["10.1.0.0/16"]), (pc, "192.0.2.3:3", ["10.1.5.0/24"])])
    b = _dev(clock, kb, 2, [(pa, "192.0.2.1:1", ["10.0.0.0/16", "10.1.5.0/24"])])
    c = _dev(clock, kc, 3, [(pa, "192.0.2.1:1", ["10.0.0.0/16"])])
    for dev, ep in ((a, ("192.0.2.1", 1)), (b, ("192.0.2.2", 2)), (c, ("192.0.2.3", 3))):
        net.add(dev, ep)
    to_b = ipv4_packet("10.0.0.1", "10.1.9.9", b"to b")
    to_c = ipv4_packet("10.0.0.1", "10.1.5.9", b"to c")
    a.on_packet(to_b, clock.now)
    a.on_packet(to_c, clock.now)
    net.flush()
    assert list(b.inbox) == [to_b]
    assert list(c.inbox) == [to_c]
    # B sends with a source that belongs to C (B may route it: its own allowed IPs
    # for A include 10.1.5/24 as a destination only by mistake) -> A drops it.
    spoof = ipv4_packet("10.1.5.7", "10.0.0.1", b"spoof")
    b.on_packet(spoof, clock.now)
    net.flush()
    assert a.counters["drop_not_allowed_src"] == 1
    assert not a.inbox
    # Legit answers from both arrive.
    ok_b = ipv4_packet("10.1.9.9", "10.0.0.1", b"from b")
    ok_c = ipv4_packet("10.1.5.9", "10.0.0.1", b"from c")
    b.on_packet(ok_b, clock.now)
    c.on_packet(ok_c, clock.now)
    net.flush()
    assert sorted(a.inbox) == sorted([ok_b, ok_c])
    # Removing C sends its range back to B's /16.
    assert uapi(a, f"set=1\npublic_key={pc.hex()}\nremove=true\n\n", clock.now) == "errno=0\n\n"
    b.inbox.clear()
    a.on_packet(to_c, clock.now)
    net.flush()
    assert list(b.inbox) == [to_c]
