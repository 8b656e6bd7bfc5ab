"""crosswire-wg <-> wireguard-go (Debian) in namespaces, configured only with wg(8).

Side a runs crosswire-wg, side b the reference wireguard-go, unless a test says
otherwise. Every TCP transfer's content is checked by sha256 on both ends.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from collections.abc import Callable

import pytest
from nsutil import sh
from wgpair import Pair, Side, Transfer, genkey

MB = 1_000_000
PairFactory = Callable[[str, str], Pair]

pytestmark = pytest.mark.root


def _verified(t: Transfer, nbytes: int, timeout: float = 120) -> None:
    sent, received = t.wait(timeout)
    assert sent == received, f"sent {sent} but received {received}"
    assert sent.split()[0] == str(nbytes)


@pytest.mark.slow
@pytest.mark.parametrize("family", ["v4", "v6"])
@pytest.mark.parametrize("initiator", ["crosswire", "wggo"])
def test_ping_and_50mb_transfer(pair_factory: PairFactory, initiator: str, family: str) -> None:
    """Each side initiates once; v6 runs IPv6 inside *and* outside the tunnel."""
    p = pair_factory("crosswire", "wggo")
    init, resp = (p.a, p.b) if initiator == "crosswire" else (p.b, p.a)
    # Only the initiator knows an endpoint: the responder learns it from the handshake.
    p.up(endpoint_on="a" if init is p.a else "b", outer6=family == "v6")

    def inner(s: Side) -> str:
        return s.inner4 if family == "v4" else s.inner6

    try:
        out = p.ping(init, inner(resp), count=3)
        assert " 0% packet loss" in out, out
        # Data both ways: from the responder to the initiator, then back.
        _verified(Transfer(resp, init, inner(init), 50 * MB), 50 * MB)
        p.ping(resp, inner(init), count=2)
    except BaseException:
        print(p.debug_dump())
        raise
    shown = init.wg("show", init.iface, "latest-handshakes").stdout.split()
    assert len(shown) == 2 and int(shown[1]) > 0, shown
    # The responder learnt the initiator's outer address from the handshake.
    ep = resp.wg("show", resp.iface, "endpoints").stdout.split()[1]
    assert (init.outer4 if family == "v4" else f"[{init.outer6}]") in ep, ep


@pytest.mark.slow
def test_private_key_change_during_transfer(pair_factory: PairFactory) -> None:
    p = pair_factory("crosswire", "wggo")
    p.up(endpoint_on="both")
    assert " 0% packet loss" in p.ping(p.a, p.b.inner4, count=2)
    new_priv, new_pub = genkey()
    t = Transfer(p.a, p.b, p.b.inner4, 50 * MB, rate=12 * MB)  # ~4 s
    try:
        time.sleep(1.0)
        assert t.running(), "transfer finished before the key change"
        p.a.wg("set", p.a.iface, "private-key", p.a.keyfile(new_priv))
        p.b.wg("set", p.b.iface, "peer", p.a.pub, "remove",
               "peer", new_pub, "allowed-ips", f"{p.a.inner4}/32,{p.a.inner6}/128",
               "endpoint", f"{p.a.outer4}:{p.a.port}")
        assert t.running(), "transfer finished during the key change"
        _verified(t, 50 * MB)
    except BaseException:
        print(p.debug_dump())
        raise
    finally:
        t.kill()
    assert p.a.wg("show", p.a.iface, "public-key").stdout.strip() == new_pub
    peers = p.b.wg("show", p.b.iface, "latest-handshakes").stdout.split()
    assert peers[0] == new_pub and int(peers[1]) > 0, peers


ROAM_NFT = """
table ip cwroam {
    chain post {
        type filter hook postrouting priority 0; policy accept;
        ip saddr %(old)s udp sport %(port)d ip saddr set %(new)s
    }
}
"""


@pytest.mark.slow
def test_peer_roams_mid_transfer(pair_factory: PairFactory) -> None:
    """wireguard-go's outer address changes (a NAT rebinding); crosswire-wg follows it.

    From the middle of the transfer on, every datagram wireguard-go sends leaves
    from a new address (rewritten by nftables in its namespace, which also owns
    the new address); crosswire-wg must switch to it on the first authenticated
    packet from there. (Deleting wireguard-go's address instead would test
    wireguard-go's sticky-source recovery, which takes 15 s.)
    """
    p = pair_factory("crosswire", "wggo")
    p.up(endpoint_on="both")
    assert " 0% packet loss" in p.ping(p.b, p.a.inner4, count=2)
    t = Transfer(p.b, p.a, p.a.inner4, 50 * MB, rate=12 * MB)
    new_addr = "192.0.2.3"
    try:
        time.sleep(1.0)
        assert t.running()
        sh("ip", "addr", "add", f"{new_addr}/24", "dev", p.veth[1], ns=p.b.ns)
        subprocess.run(["ip", "netns", "exec", p.b.ns, "nft", "-f", "-"], check=True, text=True,
                       input=ROAM_NFT % {"old": p.b.outer4, "new": new_addr, "port": p.b.port})
        assert t.running(), "transfer finished during the address change"
        start = time.monotonic()
        _verified(t, 50 * MB)
        # 50 MB at 12 MB/s is ~4 s; a stall of TCP backoff + re-handshake would show up here.
        assert time.monotonic() - start < 10
    except BaseException:
        print(p.debug_dump())
        raise
    finally:
        t.kill()
    ep = p.a.wg("show", p.a.iface, "endpoints").stdout.split()[1]
    assert ep == f"{new_addr}:{p.b.port}", ep


def test_sigkill_restart_rehandshakes(pair_factory: PairFactory) -> None:
    p = pair_factory("crosswire", "wggo")
    p.up(endpoint_on="both")
    assert " 0% packet loss" in p.ping(p.a, p.b.inner4, count=2)
    first = int(p.b.wg("show", p.b.iface, "latest-handshakes").stdout.split()[1])
    p.a.kill(signal.SIGKILL)
    assert p.a.wait_gone(5)
    deadline = time.monotonic() + 3  # netdev teardown finishes shortly after the fd closes
    while p.a.iface_exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not p.a.iface_exists(), "the kernel removes a TUN when its last fd closes"
    time.sleep(1.1)  # latest-handshake has 1 s resolution
    p.a.start()  # same interface name: the stale UAPI socket is replaced
    p.configure(p.a, p.b, with_endpoint=True)
    p.a.address()
    try:
        assert " 0% packet loss" in p.ping(p.a, p.b.inner4, count=3)
        # And the other direction uses the new session too.
        assert " 0% packet loss" in p.ping(p.b, p.a.inner6, count=2)
    except BaseException:
        print(p.debug_dump())
        raise
    second = int(p.b.wg("show", p.b.iface, "latest-handshakes").stdout.split()[1])
    assert second > first


@pytest.mark.parametrize("mode", ["default", "--tso", "--no-offload"])
def test_crosswire_both_sides_and_wg_show(pair_factory: PairFactory, mode: str) -> None:
    """crosswire-wg <-> crosswire-wg in each offload mode, and wg's views of the device."""
    p = pair_factory("crosswire", "crosswire")
    if mode != "default":
        for s in p.sides:
            s.extra_args = [mode]
    outer6 = mode == "default"  # GSO/GRO over IPv6 sockets too
    p.up(endpoint_on="a", keepalive=25, outer6=outer6)
    p.warm_up(p.a, p.b.inner6)
    assert " 0% packet loss" in p.ping(p.a, p.b.inner6, count=2)
    if mode == "default":
        _wait_tso_on(p.a)
    _verified(Transfer(p.a, p.b, p.b.inner4, 5 * MB), 5 * MB)
    conf = p.a.wg("showconf", p.a.iface).stdout
    assert f"PublicKey = {p.b.pub}" in conf
    assert "PersistentKeepalive = 25" in conf
    assert f"ListenPort = {p.a.port}" in conf
    dump = p.b.wg("show", p.b.iface, "dump").stdout.splitlines()
    peer = dump[1].split("\t")
    outer = f"[{p.a.outer6}]" if outer6 else p.a.outer4
    assert peer[0] == p.a.pub and peer[2] == f"{outer}:{p.a.port}"
    assert int(peer[5]) > 5 * MB and int(peer[6]) > 0  # rx, tx bytes
    io = p.a.stats_after(time.time())
    # By default TSO reads follow the traffic (tsopolicy).
    if mode in ("default", "--tso"):
        assert io.get("io_tso_reads", 0) > 0
        assert not io.get("io_tso_off")  # TCP bulk: they pay, they stay on
    else:
        assert not io.get("io_gso_sends") and not io.get("io_gro_writes")


# A UDP sender in a's namespace: 1300-byte datagrams for SECONDS, as fast as it can.
_UDP_FLOOD = """
import socket, sys, time
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
end, data, n = time.monotonic() + float(sys.argv[2]), b"u" * 1300, 0
while time.monotonic() < end:
    s.sendto(data, (sys.argv[1], 9))
    n += 1
print(n)
"""


def _wait_tso_on(side: Side) -> None:
    """By default TSO reads start off and go on by themselves once numpy is loaded
    after start-up (offload.preload_numpy, tsopolicy): within a few seconds."""
    deadline = time.monotonic() + 15
    while not side.stats_after(time.time()).get("io_tso_on"):
        assert time.monotonic() < deadline, "TSO reads never turned on"


def test_udp_bulk_turns_tso_reads_off(pair_factory: PairFactory) -> None:
    """Default mode: a UDP flood arrives with partial checksums only, so the TSO
    offload goes off within a second or two (tsopolicy) and the flood still passes."""
    p = pair_factory("crosswire", "crosswire")
    p.up(endpoint_on="a")
    p.warm_up(p.a, p.b.inner4)
    _wait_tso_on(p.a)
    sent = int(p.a.sh(sys.executable, "-c", _UDP_FLOOD, p.b.inner4, "3", timeout=30).stdout)
    io = p.a.stats_after(time.time())
    assert io.get("io_tso_off", 0) >= 1, io
    assert io.get("io_csum_reads", 0) >= 1000
    # It got through (a CPU-bound tunnel drops part of a flood at the sender's TUN).
    assert sent > 1000 and p.b.stats_after(time.time()).get("rx_packets", 0) > 1000


def test_wg_syncconf_and_listen_port_change(pair_factory: PairFactory) -> None:
    """`wg syncconf` leaves the running session alone; a new listen-port rebinds the socket."""
    p = pair_factory("crosswire", "wggo")
    p.up(endpoint_on="both")
    assert " 0% packet loss" in p.ping(p.a, p.b.inner4, count=2)
    conf = p.a.wg("showconf", p.a.iface).stdout
    proc = subprocess.run(["ip", "netns", "exec", p.a.ns, "wg", "syncconf", p.a.iface, "/dev/stdin"],
                          input=conf, capture_output=True, text=True, timeout=10)
    assert proc.returncode == 0, proc.stderr
    new_port = 41999
    p.a.wg("set", p.a.iface, "listen-port", str(new_port))
    assert p.a.wg("show", p.a.iface, "listen-port").stdout.strip() == str(new_port)
    socks = p.a.sh("ss", "-Hlun").stdout
    assert f":{new_port}" in socks and f":{p.a.port} " not in socks, socks
    # b still has the old port: a's next packet (from the new port) moves b's endpoint.
    assert " 0% packet loss" in p.ping(p.a, p.b.inner4, count=3)
    ep = p.b.wg("show", p.b.iface, "endpoints").stdout.split()[1]
    assert ep == f"{p.a.outer4}:{new_port}", ep
    # fwmark reaches the sockets (SO_MARK), as wg-quick's policy routing expects.
    p.a.wg("set", p.a.iface, "fwmark", "0x4d2")
    assert p.a.wg("show", p.a.iface, "fwmark").stdout.strip() == "0x4d2"
    marks = p.a.sh("ss", "-Huane", "sport", f"= :{new_port}").stdout
    assert "fwmark:0x4d2" in marks, marks
    assert " 0% packet loss" in p.ping(p.a, p.b.inner6, count=2)
