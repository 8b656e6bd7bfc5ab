"""crosswire-wg as a hub with two wireguard-go peers: cryptokey routing and forwarding.

The gateway case: packets arrive from one peer and leave to another through the
same crosswire-wg interface, so coalesced (GRO) writes are forwarded by the
kernel back into the TUN and must come out as valid single packets again.
"""

from __future__ import annotations

import contextlib
import os
import signal
import tempfile
import time
from collections.abc import Iterator

import pytest
from nsutil import Namespaces, require_root, sh, uniq
from wgpair import Side, Transfer, genkey

pytestmark = pytest.mark.root
MB = 1_000_000


@pytest.fixture
def hub() -> Iterator[tuple[Side, Side, Side]]:
    require_root("wg", "wireguard-go", "ping")
    nss = Namespaces()
    sides: list[Side] = []
    with tempfile.TemporaryDirectory(prefix="cwhub") as workdir:
        try:
            h, p1, p2 = nss.add("cwh"), nss.add("cwp"), nss.add("cwq")
            nss.veth(h, p1, "192.0.2.1/24", "192.0.2.2/24")
            nss.veth(h, p2, "198.51.100.1/24", "198.51.100.2/24")
            sh("sysctl", "-qw", "net.ipv4.ip_forward=1", ns=h)
            spec = [(h, "crosswire", 51820, "192.0.2.1", "10.77.0.1"),
                    (p1, "wggo", 51821, "192.0.2.2", "10.77.0.2"),
                    (p2, "wggo", 51822, "198.51.100.2", "10.77.0.3")]
            for ns, impl, port, outer, inner in spec:
                priv, pub = genkey()
                iface = uniq("cwg")
                sides.append(Side(ns=ns, iface=iface, impl=impl, priv=priv, pub=pub, port=port,
                                  outer4=outer, outer6="", inner4=inner, inner6="",
                                  keydir=workdir, log_path=os.path.join(workdir, f"{iface}.log"),
                                  stats_path=os.path.join(workdir, f"{iface}.stats")))
            for s in sides:
                s.start()
                s.sh("ip", "addr", "add", f"{s.inner4}/24", "dev", s.iface)
            hs, s1, s2 = sides
            hs.wg("set", hs.iface, "private-key", hs.keyfile(hs.priv), "listen-port", str(hs.port),
                  "peer", s1.pub, "allowed-ips", "10.77.0.2/32",
                  "peer", s2.pub, "allowed-ips", "10.77.0.3/32")
            for s, hub_outer in ((s1, "192.0.2.1"), (s2, "198.51.100.1")):
                # Each spoke reaches the whole /24 through the hub.
                s.wg("set", s.iface, "private-key", s.keyfile(s.priv), "listen-port", str(s.port),
                     "peer", hs.pub, "allowed-ips", "10.77.0.0/24",
                     "endpoint", f"{hub_outer}:{hs.port}", "persistent-keepalive", "25")
            yield hs, s1, s2
        finally:
            for s in sides:
                s.kill(signal.SIGTERM)
            for s in sides:
                if not s.wait_gone(3):
                    s.kill(signal.SIGKILL)
            nss.cleanup()
            for s in sides:
                with contextlib.suppress(OSError):
                    os.unlink(s.sock)


def _ping(src: Side, dst: str) -> str:
    return src.sh("ping", "-c", "2", "-i", "0.2", "-W", "2", "-w", "15", dst, timeout=20).stdout


def test_hub_routes_by_allowed_ips_and_forwards(hub: tuple[Side, Side, Side]) -> None:
    hs, s1, s2 = hub
    assert " 0% packet loss" in _ping(hs, s1.inner4)
    assert " 0% packet loss" in _ping(hs, s2.inner4)
    # Spoke to spoke, forwarded by the hub's kernel back into the same interface.
    assert " 0% packet loss" in _ping(s1, s2.inner4)
    t = Transfer(s1, s2, s2.inner4, 20 * MB)
    sent, received = t.wait(120)
    assert sent == received
    # Every byte has left the hub: a stats file written from now on holds all its writes.
    done = time.time()
    shown = hs.wg("show", hs.iface, "transfer").stdout.split()
    # Both peers carried the forwarded bulk: rx from s1, tx to s2.
    per_peer = {shown[i]: (int(shown[i + 1]), int(shown[i + 2])) for i in range(0, len(shown), 3)}
    assert per_peer[s1.pub][0] > 20 * MB and per_peer[s2.pub][1] > 20 * MB
    stats = hs.stats_after(done)
    assert stats.get("io_gro_writes", 0) > 0  # the coalesced path really carried it
