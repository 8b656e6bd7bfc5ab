"""crosswire-wg --workers 2 (fabric/wg/workers.py) in namespaces.

The steering program against the kernel, interop with wireguard-go both ways
with checksummed transfers, `wg show` transfer counters, a replayed datagram,
key rotation and roaming under load, a worker's death.
"""

from __future__ import annotations

import os
import signal
import socket
import struct
import subprocess
import time
from collections.abc import Callable

import pytest
from nsutil import Namespaces, require_root, sh
from wgpair import Pair, Transfer, genkey

from fabric.wg import steer

MB = 1_000_000
PairFactory = Callable[[str, str], Pair]

pytestmark = pytest.mark.root

STEER_PROBE = r"""
import select, socket, struct, sys
from fabric.wg import steer
n, family, block = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
host = "127.0.0.1" if family == socket.AF_INET else "::1"
socks, port = [], 0
for i in range(n):
    s = socket.socket(family, socket.SOCK_DGRAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    s.bind((host, port))
    port = s.getsockname()[1]
    socks.append(s)
steer.attach(socks[0], n, max(block, 0))
c = socket.socket(family, socket.SOCK_DGRAM)
got = []
if block < 0:  # one GSO super-datagram of 8 segments, counters 0..7
    segs = [struct.pack("<IIQ", 4, 1, i) + bytes(84) for i in range(8)]
    c.sendmsg([b"".join(segs)], [(17, 103, struct.pack("H", 100))], 0, (host, port))
    for s in socks:
        r, _, _ = select.select([s], [], [], 0.5)
        while r:
            got.append(socks.index(s))
            s.recv(2000)
            r, _, _ = select.select([s], [], [], 0.1)
    print(" ".join(map(str, got)))
    sys.exit(0)
for payload in sys.stdin.buffer.read().split(b"\n\n\n"):
    c.sendto(bytes.fromhex(payload.decode()), (host, port))
    r, _, _ = select.select(socks, [], [], 2)
    got.append(socks.index(r[0]) if r else -1)
    if r:
        r[0].recv(2000)
print(" ".join(map(str, got)))
"""


def _probe_payloads() -> list[bytes]:
    out = []
    for ctr in [*range(12), 255, 256, 257, 2**32 - 1, 2**32, 2**40 + 3, 2**63 + 11, 2**64 - 2**13 - 2]:
        out.append(struct.pack("<IIQ", 4, 7, ctr) + bytes(16))
    out += [struct.pack("<I", t) + bytes(144) for t in (1, 2, 3)]  # handshake, cookie: worker 0
    out += [b"\x04", b"\x04\0\0\0\1\0\0\0\5"]  # short: the load fails, socket 0
    return out


def _probe(n: int, family: int, block: int, payloads: list[bytes]) -> list[int]:
    nss = Namespaces()
    try:
        ns = nss.add("cwst")
        sh("ip", "link", "set", "lo", "up", ns=ns)
        repo = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(
            os.path.abspath(__file__)))))
        proc = subprocess.run(
            ["ip", "netns", "exec", ns, os.path.join(repo, ".venv", "bin", "python"), "-c",
             STEER_PROBE, str(n), str(int(family)), str(block)],
            input=b"\n\n\n".join(p.hex().encode() for p in payloads),
            capture_output=True, timeout=60)
        assert proc.returncode == 0, proc.stderr.decode()
        return [int(x) for x in proc.stdout.split()]
    finally:
        nss.cleanup()


@pytest.mark.parametrize(("n", "block"), [(2, 0), (3, 0), (2, 6)])
@pytest.mark.parametrize("family", [socket.AF_INET, socket.AF_INET6])
def test_steering_program_in_the_kernel(n: int, block: int, family: int) -> None:
    """The kernel runs the program on the UDP payload (the header already pulled):
    transport data goes to socket (counter >> block) mod n, everything else to
    socket 0; the Python interpreter of the program agrees."""
    require_root()
    payloads = _probe_payloads()
    expect = [steer.run(steer.program(n, block), p) for p in payloads]
    if block == 0:
        assert expect[:12] == [c % n for c in range(12)]
    else:
        assert expect[12:15] == [(c >> block) % n for c in (255, 256, 257)]
    assert expect[-5:] == [0] * 5
    assert _probe(n, family, block, payloads) == expect


def test_a_gso_super_datagram_is_steered_whole() -> None:
    """Why the replay windows are shared: the kernel picks the socket once for a
    super-datagram (here a local GSO send, as over a veth), by its first segment,
    so counters 1, 3, 5, 7 reach socket 0 too."""
    require_root()
    assert _probe(2, socket.AF_INET, -1, []) == [0] * 8


def _verified(t: Transfer, nbytes: int, timeout: float = 120) -> None:
    sent, received = t.wait(timeout)
    assert sent == received, f"sent {sent} but received {received}"
    assert sent.split()[0] == str(nbytes)


def _workers(p: Pair) -> None:
    p.a.extra_args = ["--workers", "2"]


def _udp_rcvbuf_errors(ns: str) -> int:
    lines = [ln.split() for ln in sh("cat", "/proc/net/snmp", ns=ns).stdout.splitlines()
             if ln.startswith("Udp:")]
    return int(dict(zip(lines[0], lines[1], strict=True))["RcvbufErrors"])


def _transfer(s: Pair, side: str) -> tuple[int, int]:
    side_obj = s.a if side == "a" else s.b
    out = side_obj.wg("show", side_obj.iface, "transfer").stdout.split()
    return int(out[1]), int(out[2])


@pytest.mark.parametrize("initiator", ["crosswire", "wggo"])
def test_interop_both_ways_and_counters(pair_factory: PairFactory, initiator: str) -> None:
    p = pair_factory("crosswire", "wggo")
    _workers(p)
    p.up(endpoint_on="a" if initiator == "crosswire" else "b")
    try:
        assert len(p.a.pids()) == 2, p.a.pids()
        init, resp = (p.a, p.b) if initiator == "crosswire" else (p.b, p.a)
        assert " 0% packet loss" in p.ping(init, resp.inner4, count=3)
        _verified(Transfer(p.a, p.b, p.b.inner4, 20 * MB), 20 * MB)
        _verified(Transfer(p.b, p.a, p.a.inner4, 20 * MB, port=5202), 20 * MB)
        time.sleep(0.5)  # workers report every 0.1 s
        a_rx, a_tx = _transfer(p, "a")
        b_rx, b_tx = _transfer(p, "b")
    except BaseException:
        print(p.debug_dump())
        raise
    # Each end's received bytes are the other's sent bytes (keepalives in flight aside),
    # less what b's kernel dropped for a full socket buffer (two senders, one reader).
    lost = _udp_rcvbuf_errors(p.b.ns)
    assert a_rx > 20 * MB and a_tx > 20 * MB
    assert abs(a_rx - b_tx) < 2000, (a_rx, b_tx)
    assert -2000 < a_tx - b_rx < 2000 + lost * 1500, (a_tx, b_rx, lost)
    # Both workers carried data both ways; worker 1's counters reach the stats file
    # within about 2 s (reported each second, written each second).
    end = time.monotonic() + 5
    while True:
        stats = p.a.stats()
        if stats.get("worker1_rx_datagrams", 0) + stats["worker0_rx_datagrams"] \
                >= stats["rx_datagrams"] > 20 * MB // 1500 or time.monotonic() > end:
            break
        time.sleep(0.2)
    for w in ("worker0", "worker1"):
        assert stats[f"{w}_rx_datagrams"] > 1000 and stats[f"{w}_tx_datagrams"] > 1000, stats
    assert stats["rx_packets"] > 20 * MB // 1500 and stats["drop_replay"] == 0, stats


def test_crosswire_both_ends_with_workers(pair_factory: PairFactory) -> None:
    p = pair_factory("crosswire", "crosswire")
    for side in p.sides:
        side.extra_args = ["--workers", "2"]
    p.up(endpoint_on="both")
    try:
        assert " 0% packet loss" in p.ping(p.a, p.b.inner6, count=3)
        ts = [Transfer(p.a, p.b, p.b.inner4, 20 * MB, port=5220 + i) for i in range(2)]
        ts += [Transfer(p.b, p.a, p.a.inner4, 20 * MB, port=5230 + i) for i in range(2)]
        for t in ts:
            _verified(t, 20 * MB)
        time.sleep(0.5)
    except BaseException:
        print(p.debug_dump())
        raise
    a_rx, a_tx = _transfer(p, "a")
    b_rx, b_tx = _transfer(p, "b")
    assert a_rx > 40 * MB and b_rx > 40 * MB
    assert -2000 < a_tx - b_rx < 2000 + _udp_rcvbuf_errors(p.b.ns) * 1500, (a_tx, b_rx)
    assert -2000 < b_tx - a_rx < 2000 + _udp_rcvbuf_errors(p.a.ns) * 1500, (b_tx, a_rx)


def test_replayed_datagram_refused(pair_factory: PairFactory) -> None:
    """Transport datagrams captured on the wire and sent again (to the same port,
    so the kernel steers each to the worker that saw it) are all refused."""
    p = pair_factory("crosswire", "wggo")
    _workers(p)
    p.up(endpoint_on="both")
    assert " 0% packet loss" in p.ping(p.b, p.a.inner4, count=2)
    cap = subprocess.Popen(
        ["ip", "netns", "exec", p.a.ns, "python3", "-c", CAPTURE, str(p.a.port)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        time.sleep(0.5)
        p.ping(p.b, p.a.inner4, count=6)
        out, err = cap.communicate(timeout=20)
    finally:
        if cap.poll() is None:
            cap.kill()
            cap.wait()
    dgrams = [bytes.fromhex(h) for h in out.decode().split()]
    counters = {struct.unpack_from("<Q", d, 8)[0] for d in dgrams}
    assert len(dgrams) >= 4 and {c % 2 for c in counters} == {0, 1}, (counters, err)
    before = p.a.stats()
    rx_before = int(p.a.wg("show", p.a.iface, "transfer").stdout.split()[1])
    # Replay from b's namespace, from b's address and port (its own socket is busy: raw send).
    p.b.sh("python3", "-c", REPLAY, p.b.outer4, str(p.b.port), p.a.outer4, str(p.a.port),
           *[d.hex() for d in dgrams])
    time.sleep(1.5)
    after = p.a.stats()
    assert after.get("drop_replay", 0) - before.get("drop_replay", 0) == len(dgrams), (before, after)
    assert after["rx_packets"] == before["rx_packets"]
    assert int(p.a.wg("show", p.a.iface, "transfer").stdout.split()[1]) == rx_before


# Copies of the transport datagrams arriving at a's port (a raw socket sees them too).
CAPTURE = r"""
import socket, struct, sys, time
port = int(sys.argv[1])
s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_UDP)
s.settimeout(0.5)
got, end = [], time.monotonic() + 4
while time.monotonic() < end and len(got) < 8:
    try:
        pkt = s.recv(4000)
    except TimeoutError:
        continue
    ihl = (pkt[0] & 15) * 4
    dport = struct.unpack_from("!H", pkt, ihl + 2)[0]
    payload = pkt[ihl + 8:]
    if dport == port and payload[:1] == b"\x04" and len(payload) > 32:
        got.append(payload.hex())
print(" ".join(got))
"""

REPLAY = r"""
import socket, struct, sys
src, sport, dst, dport = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4])
s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
for h in sys.argv[5:]:
    payload = bytes.fromhex(h)
    udp = struct.pack("!HHHH", sport, dport, 8 + len(payload), 0) + payload
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), 0, 0, 64, 17, 0,
                     socket.inet_aton(src), socket.inet_aton(dst))
    s.sendto(ip + udp, (dst, 0))
"""


def test_key_rotation_and_roaming_under_load(pair_factory: PairFactory) -> None:
    """Our private key changes, then wireguard-go's address, both in the middle of
    an unthrottled transfer through both workers (four streams): every stream
    completes intact and a follows the roam."""
    p = pair_factory("crosswire", "wggo")
    _workers(p)
    p.up(endpoint_on="both")
    assert " 0% packet loss" in p.ping(p.a, p.b.inner4, count=2)
    new_priv, new_pub = genkey()
    # As fast as it goes; sized to last a few seconds on a loaded 2-core machine.
    ts = [Transfer(p.b, p.a, p.a.inner4, 100 * MB, port=5210 + i) for i in range(4)]
    new_addr = "192.0.2.3"
    try:
        time.sleep(1.0)
        assert all(t.running() for t in ts), "transfers finished before the key change"
        p.a.wg("set", p.a.iface, "private-key", p.a.keyfile(new_priv))
        p.b.wg("set", p.b.iface, "peer", p.a.pub, "remove",
               "peer", new_pub, "allowed-ips", f"{p.a.inner4}/32,{p.a.inner6}/128",
               "endpoint", f"{p.a.outer4}:{p.a.port}")
        time.sleep(1.0)
        sh("ip", "addr", "add", f"{new_addr}/24", "dev", p.veth[1], ns=p.b.ns)
        subprocess.run(["ip", "netns", "exec", p.b.ns, "nft", "-f", "-"], check=True, text=True,
                       input=ROAM_NFT % {"old": p.b.outer4, "new": new_addr, "port": p.b.port})
        assert any(t.running() for t in ts), "transfers finished before the roam"
        for t in ts:
            _verified(t, 100 * MB)
        time.sleep(0.5)
    except BaseException:
        print(p.debug_dump())
        raise
    finally:
        for t in ts:
            t.kill()
    peers = p.b.wg("show", p.b.iface, "latest-handshakes").stdout.split()
    assert peers[0] == new_pub and int(peers[1]) > 0, peers
    ep = p.a.wg("show", p.a.iface, "endpoints").stdout.split()[1]
    assert ep == f"{new_addr}:{p.b.port}", ep


ROAM_NFT = """
table ip cwroam {
    chain post {
        type filter hook postrouting priority 0; policy accept;
        ip saddr %(old)s udp sport %(port)d ip saddr set %(new)s
    }
}
"""


def test_worker_death_takes_the_device_down(pair_factory: PairFactory) -> None:
    p = pair_factory("crosswire", "wggo")
    _workers(p)
    p.up(endpoint_on="both")
    pids = p.a.pids()
    assert len(pids) == 2
    worker = max(pids)  # forked after the owner
    os.kill(worker, signal.SIGKILL)
    assert p.a.wait_gone(5), "the owner outlived its worker"
    assert not p.a.iface_exists()
    assert not os.path.exists(p.a.sock)


def test_owner_stop_ends_workers(pair_factory: PairFactory) -> None:
    p = pair_factory("crosswire", "wggo")
    _workers(p)
    p.up(endpoint_on="both")
    pids = p.a.pids()
    assert len(pids) == 2
    os.kill(min(pids), signal.SIGTERM)  # the owner
    assert p.a.wait_gone(5), "a worker outlived its owner"
    assert not p.a.iface_exists()
    assert not os.path.exists(p.a.sock) and not os.path.exists(p.a.stats_path)


def test_refused_with_persist() -> None:
    require_root()
    proc = subprocess.run([os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(
        os.path.dirname(os.path.abspath(__file__))))), ".venv", "bin", "crosswire-wg"),
        "--workers", "2", "--persist", "cwnotcreated0"], capture_output=True, text=True, timeout=30)
    assert proc.returncode == 2 and "--persist" in proc.stderr

