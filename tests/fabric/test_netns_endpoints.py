"""One peer's bad endpoint hurts only that peer: a real crosswire-wg keeps every other
peer programmed (and takes later changes such as a key rotation) while the bad one is
retried with backoff. Before, one unresolvable endpoint failed every WireGuard sync."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import pytest
from fabric_topo import keypair
from nsutil import Namespaces, sh, uniq

from fabric.model import LocalFabric, PeerFabric, RangeMap
from fabric.wgctl import WgControl
from fabric.wgprocess import WgProcess

pytestmark = pytest.mark.root


@pytest.fixture
def wg_dev(netns: Namespaces) -> Iterator[tuple[str, str]]:
    ns = netns.add("cwe")
    iface = uniq("cwe")
    dp = WgProcess(iface, "userspace", 1420, netns=ns)
    try:
        dp.ensure_up()
        yield ns, iface
    finally:
        with contextlib.suppress(Exception):
            dp.stop()


def test_unresolvable_endpoint_affects_only_its_peer(wg_dev: tuple[str, str]) -> None:
    _, iface = wg_dev
    priv, _ = keypair()
    _, pub_bad = keypair()
    _, pub_good = keypair()
    bad = PeerFabric("rogue", pub_bad, "gw.nonexistent.invalid:51820",
                     remote=(RangeMap("pod", "10.244.0.0/16", "100.64.0.0/16"),))
    good = PeerFabric("good", pub_good, "198.18.0.2:51820",
                      remote=(RangeMap("pod", "10.244.0.0/16", "100.66.0.0/16"),))
    ctl = WgControl(iface)
    ctl.sync(LocalFabric("lab", iface, 51999, private_key=priv), [bad, good], now=100.0)
    shown = ctl.show()
    assert set(shown) == {pub_bad, pub_good}  # both programmed: keys and allowed IPs
    assert shown[pub_good]["endpoint"] == "198.18.0.2:51820"
    assert shown[pub_bad]["endpoint"] is None and shown[pub_bad]["allowed_ips"] == ["100.64.0.0/16"]
    assert set(ctl.endpoint_problems) == {"rogue"}
    assert "cannot resolve 'gw.nonexistent.invalid'" in ctl.endpoint_problems["rogue"]
    assert ctl.retry_at() == 101.0
    # Later changes still reach the device: a key rotation and a moved good peer.
    new_priv, new_pub = keypair()
    moved = PeerFabric("good", pub_good, "198.18.0.9:51820", remote=good.remote)
    ctl.sync(LocalFabric("lab", iface, 51999, private_key=new_priv), [bad, moved], now=100.5)
    assert ctl.show()[pub_good]["endpoint"] == "198.18.0.9:51820"
    assert new_pub in sh("wg", "show", iface, "public-key").stdout
    # A malformed endpoint (it can only come from an older peer) is the same: its peer only.
    worse = PeerFabric("rogue", pub_bad, "1.2.3.4:notaport", remote=bad.remote)
    ctl.sync(LocalFabric("lab", iface, 51999, private_key=new_priv), [worse, moved], now=102.0)
    assert "port 1-65535" in ctl.endpoint_problems["rogue"] and set(ctl.show()) == {pub_bad, pub_good}
