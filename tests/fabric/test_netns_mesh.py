"""Three clusters in full mesh, all on 10.244.0.0/16, over real WireGuard.

Views (each cluster's own IPAM): a sees b as 100.64/16 and c as 100.66/16;
b sees a as 100.64/16 too (the same number for a different thing) and c as
100.66/16; c sees a as 100.70/16 and b as 100.72/16. One wg interface and one
port per gateway serve both peers.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import pytest
from fabric_topo import Side, add_pod, ask, make_side, start_echo
from nsutil import Namespaces, require_root

from fabric.apply import apply
from fabric.model import FabricState, LocalFabric, PeerFabric, RangeMap

pytestmark = pytest.mark.root

POD = "10.244.0.0/16"
VIEWS = {("a", "b"): "100.64.0.0/16", ("a", "c"): "100.66.0.0/16",
         ("b", "a"): "100.64.0.0/16", ("b", "c"): "100.66.0.0/16",
         ("c", "a"): "100.70.0.0/16", ("c", "b"): "100.72.0.0/16"}
UNDERLAY = {("a", "b"): ("198.18.1.1", "198.18.1.2"), ("a", "c"): ("198.18.2.1", "198.18.2.2"),
            ("b", "c"): ("198.18.3.1", "198.18.3.2")}
POD_IP = {"a": "10.244.1.1", "b": "10.244.2.2", "c": "10.244.3.3"}


def _endpoint(me: str, peer: str) -> str:
    """Where ``me`` reaches ``peer`` on the point-to-point underlay."""
    pair = (me, peer) if (me, peer) in UNDERLAY else (peer, me)
    ips = UNDERLAY[pair]
    return f"{ips[1] if pair[0] == me else ips[0]}:51820"


@pytest.fixture(scope="module")
def mesh() -> Iterator[dict[str, Side]]:
    require_root("wireguard-go", "nft")
    n = Namespaces()
    sides: dict[str, Side] = {}
    try:
        for cid, gw_ip in (("a", "10.244.0.1"), ("b", "10.244.0.1"), ("c", "10.244.0.1")):
            sides[cid] = make_side(n, cid, "", gw_ip, "wireguard-go")
        for (x, y), (ix, iy) in UNDERLAY.items():
            n.veth(sides[x].gw, sides[y].gw, f"{ix}/24", f"{iy}/24", name="m")
        for cid, side in sides.items():
            side.pods["p"] = add_pod(n, side.gw, POD_IP[cid], side.gateway_ip)
            start_echo(side.pods["p"], cid)
            side.dataplane.ensure_up()
        for cid, side in sides.items():
            peers = tuple(
                PeerFabric(cluster_id=o, public_key=sides[o].pub, endpoint=_endpoint(cid, o),
                           remote=(RangeMap("pod", POD, VIEWS[(cid, o)]),),
                           local=(RangeMap("pod", POD, VIEWS[(o, cid)]),), persistent_keepalive=0)
                for o in sides if o != cid)
            local = LocalFabric(cluster_id=cid, interface=side.wg, listen_port=51820, private_key=side.priv,
                                pod_cidrs=(POD,), gateway_ip=side.gateway_ip)
            side.state = FabricState(local, peers)
            apply(side.state, netns=side.gw)
        yield sides
    finally:
        for side in sides.values():
            with contextlib.suppress(Exception):
                side.dataplane.stop()
        n.cleanup()


def _in_view(view: str, real_ip: str) -> str:
    # /16 on both sides: keep the last two octets.
    return ".".join(view.split(".")[:2] + real_ip.split(".")[2:])


@pytest.mark.parametrize("src, dst", [(s, d) for s in "abc" for d in "abc" if s != d])
def test_full_mesh_each_sees_its_own_view(mesh: dict[str, Side], src: str, dst: str) -> None:
    target = _in_view(VIEWS[(src, dst)], POD_IP[dst])
    name, seen_as = ask(mesh[src].pods["p"], "udp", target)[:2]
    assert name == dst
    # The receiver sees the sender under the receiver's own view of the sender.
    assert seen_as == _in_view(VIEWS[(dst, src)], POD_IP[src])
