"""The packet walk end to end: two gateways in namespaces joined by real WireGuard.

Both clusters use 10.244.0.0/16 pods, 10.96.0.0/12 services and fd00::/48.
lab views gpu as 100.64.0.0/16 / 100.80.0.0/12 / fd64::/48; gpu views lab as
100.65.0.0/16 / 100.112.0.0/12 / fd65::/48 (the two IPAMs picked different
numbers). gpu's pod g0 has 10.244.0.1, the lab gateway's own pod address.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import pytest
from fabric_topo import (
    ECHO,
    PORT,
    Side,
    add_pod,
    ask,
    forwarding,
    make_side,
    make_state,
    program,
    start_echo,
    summed,
)
from nsutil import Namespaces, require_root, sh

from fabric import nat, nftdump
from fabric.apply import ApplyError, apply, nat_listing, verify
from fabric.model import RangeMap
from fabric.nft import Nft, NftError, in_netns
from fabric.routes import ROUTE_PROTO
from fabric.wgctl import WgControl

pytestmark = pytest.mark.root

LAB_VIEWS_OF_GPU = ("100.64.0.0/16", "100.80.0.0/12", "fd64::/48")
GPU_VIEWS_OF_LAB = ("100.65.0.0/16", "100.112.0.0/12", "fd65::/48")


@dataclasses.dataclass
class Lab:
    lab: Side
    gpu: Side
    node: str


# lab on crosswire-wg against gpu on wireguard-go is the interop run; both on
# wireguard-go is the reference.
@pytest.fixture(scope="module", params=[("wireguard-go", "wireguard-go"), ("userspace", "wireguard-go")],
                ids=["wireguard-go", "crosswire-wg"])
def fab(request: pytest.FixtureRequest) -> Iterator[Lab]:
    require_root("wireguard-go", "nft", "conntrack")
    lab_impl, gpu_impl = request.param
    n = Namespaces()
    sides: list[Side] = []
    try:
        lab = make_side(n, "lab", "198.18.0.1", "10.244.0.1", lab_impl)
        sides.append(lab)
        gpu = make_side(n, "gpu", "198.18.0.2", "10.244.0.2", gpu_impl)
        sides.append(gpu)
        n.veth(lab.gw, gpu.gw, "198.18.0.1/24", "198.18.0.2/24", name="u")
        lab.pods["l1"] = add_pod(n, lab.gw, "10.244.1.5", "10.244.0.1", "fd00::1:5", "fd00::ff")
        lab.pods["l2"] = add_pod(n, lab.gw, "10.244.1.6", "10.244.0.1")
        gpu.pods["g1"] = add_pod(n, gpu.gw, "10.244.2.7", "10.244.0.2", "fd00::2:7", "fd00::ff")
        gpu.pods["g0"] = add_pod(n, gpu.gw, "10.244.0.1", "10.244.0.2")
        # gpu node with a pod behind it and a kube-proxy stand-in.
        node = n.add("cwn")
        forwarding(node)
        n.veth(gpu.gw, node, "172.31.0.1/24", "172.31.0.2/24", name="n")
        sh("ip", "route", "add", "10.96.0.0/12", "via", "172.31.0.2", ns=gpu.gw)
        sh("ip", "route", "add", "10.244.3.0/24", "via", "172.31.0.2", ns=gpu.gw)
        sh("ip", "route", "add", "default", "via", "172.31.0.1", ns=node)
        gpu.pods["g3"] = add_pod(n, node, "10.244.3.7", "10.244.3.1")
        sh("nft", "-f", "-", ns=node, input=(
            "table ip kubeproxy {\n chain pre {\n type nat hook prerouting priority dstnat;\n"
            " ip daddr 10.96.0.10 dnat to 10.244.3.7\n }\n}\n"))
        for side in (lab, gpu):
            for name, pod in side.pods.items():
                start_echo(pod, name)
            side.dataplane.ensure_up()
        program(lab, make_state(lab, gpu, LAB_VIEWS_OF_GPU, GPU_VIEWS_OF_LAB))
        program(gpu, make_state(gpu, lab, GPU_VIEWS_OF_LAB, LAB_VIEWS_OF_GPU))
        yield Lab(lab, gpu, node)
    finally:
        for side in sides:
            with contextlib.suppress(Exception):
                side.dataplane.stop()
        n.cleanup()


def test_pod_to_pod_lab_to_gpu_sees_view(fab: Lab) -> None:
    l1 = fab.lab.pods["l1"]
    assert ask(l1, "udp", "100.64.2.7")[:2] == ["g1", "100.65.1.5"]
    assert ask(l1, "tcp", "100.64.2.7")[:2] == ["g1", "100.65.1.5"]
    # A second pod maps prefix-for-prefix, not to one address.
    assert ask(fab.lab.pods["l2"], "udp", "100.64.2.7")[:2] == ["g1", "100.65.1.6"]


def test_pod_to_pod_gpu_to_lab_sees_view(fab: Lab) -> None:
    g1 = fab.gpu.pods["g1"]
    assert ask(g1, "udp", "100.65.1.5")[:2] == ["l1", "100.64.2.7"]
    assert ask(g1, "tcp", "100.65.1.6")[:2] == ["l2", "100.64.2.7"]


def test_remote_pod_with_local_gateway_address(fab: Lab) -> None:
    # 100.64.0.1 is gpu's pod 10.244.0.1, not the lab gateway (also 10.244.0.1).
    assert ask(fab.lab.pods["l1"], "tcp", "100.64.0.1")[:2] == ["g0", "100.65.1.5"]
    assert ask(fab.gpu.pods["g0"], "udp", "100.65.1.6")[:2] == ["l2", "100.64.0.1"]


def test_remote_service_through_kube_proxy(fab: Lab) -> None:
    # 100.80.0.10 = gpu service 10.96.0.10; gpu's node DNATs it to pod g3.
    assert ask(fab.lab.pods["l1"], "tcp", "100.80.0.10")[:2] == ["g3", "100.65.1.5"]
    assert ask(fab.lab.pods["l1"], "udp", "100.80.0.10")[:2] == ["g3", "100.65.1.5"]


def test_host_network_sources(fab: Lab) -> None:
    # From the gpu node's host network: SNAT to gpu's gateway pod IP as lab sees it.
    assert ask(fab.node, "tcp", "100.65.1.5")[:2] == ["l1", "100.64.0.2"]
    # From the gateway itself.
    assert ask(fab.gpu.gw, "udp", "100.65.1.5")[:2] == ["l1", "100.64.0.2"]
    # Counted on the host-network map element of lab's pod view, read from the kernel.
    assert fab.gpu.state is not None
    rows = nat.with_counters(nat.mappings(fab.gpu.state), Nft(fab.gpu.gw).list_table("inet", "crosswire"))
    host = {h["key"]: h for h in rows[0]["host_network"]}
    assert host["100.65.0.0/16"]["present"] and host["100.65.0.0/16"]["packets"] >= 2
    # The peer's own chains and the host maps it has elements in (/api/v1/nat?peer=): the same rows.
    cid = fab.gpu.state.peers[0].cluster_id
    chains, sets, maps = nat.listed_objects(fab.gpu.state, {cid})
    assert list(maps) == ["host_v4"] and len(maps["host_v4"]) == 2, maps
    alone = Nft(fab.gpu.gw).list_objects("inet", "crosswire", chains, sets, maps)
    assert nat.with_counters(nat.mappings(fab.gpu.state, {cid}), alone) == rows
    dumped = in_netns(fab.gpu.gw, lambda: nftdump.listing("inet", "crosswire", chains, sets, maps))
    assert nat.with_counters(nat.mappings(fab.gpu.state, {cid}), dumped) == rows
    everything = in_netns(fab.gpu.gw, lambda: {"nftables": nftdump.rules("inet", "crosswire", None) + nftdump.listing(
        "inet", "crosswire", (), sets, maps)["nftables"]})  # one table-wide rule dump: the same rows
    assert nat.with_counters(nat.mappings(fab.gpu.state), everything) == rows
    per, _ = nat.totals(fab.gpu.state, everything, {})  # /metrics' sums, without the rows
    assert per == summed(rows) and len(per) == 2
    assert in_netns(fab.gpu.gw, lambda: nat_listing(fab.gpu.state)) == everything  # what verify reads
    # A host-network element gone (the kernel refuses the dump's GET): verify still sees it.
    assert verify(fab.gpu.state, netns=fab.gpu.gw) == []
    sh("nft", "delete", "element", "inet", "crosswire", "host_v4", "{ 100.65.0.0/16 }", ns=fab.gpu.gw)
    assert any("1 mapping rules/elements missing" in p for p in verify(fab.gpu.state, netns=fab.gpu.gw))
    apply(fab.gpu.state, fab.gpu.state, netns=fab.gpu.gw)
    assert verify(fab.gpu.state, netns=fab.gpu.gw) == []


def test_ipv6(fab: Lab) -> None:
    assert ask(fab.lab.pods["l1"], "tcp", "fd64::2:7")[:2] == ["g1", "fd65::1:5"]
    assert ask(fab.gpu.pods["g1"], "udp", "fd65::1:5")[:2] == ["l1", "fd64::2:7"]


def test_mss_clamped_and_bulk_tcp(fab: Lab) -> None:
    reply = ask(fab.lab.pods["l1"], "tcp", "100.64.2.7", nbytes=4_000_000)
    assert reply[0] == "g1" and int(reply[3]) == 4_000_000
    # The SYN left l1 with MSS 1460 (veth MTU 1500); the tunnel clamps it to 1380.
    assert 0 < int(reply[4]) <= 1380
    reply6 = ask(fab.gpu.pods["g1"], "tcp", "fd65::1:5", nbytes=1_000_000)
    assert int(reply6[3]) == 1_000_000 and 0 < int(reply6[4]) <= 1360


def test_counters_per_mapping_from_kernel(fab: Lab) -> None:
    ask(fab.lab.pods["l1"], "udp", "100.64.2.7")
    state = fab.lab.state
    assert state is not None
    rows = nat.with_counters(nat.mappings(state), Nft(fab.lab.gw).list_table("inet", "crosswire"))
    by_comment = {r["comment"]: r for r in rows[0]["rules"]}
    egress = by_comment["gpu: egress pod src 10.244.0.0/16 -> 100.65.0.0/16"]
    assert egress["handle"] is not None and egress["packets"] >= 1 and egress["bytes"] > 0
    assert all(r["handle"] is not None for r in rows[0]["rules"])
    assert verify(state, netns=fab.lab.gw) == []


def _mapping_row(side: Side, direction: str) -> dict[str, Any]:
    """The IPv4 pod mapping's row (egress or ingress) with its kernel counters."""
    assert side.state is not None
    rows = nat.with_counters(nat.mappings(side.state), Nft(side.gw).list_table("inet", "crosswire"))
    return next(r for r in rows[0]["rules"] if f" {direction} pod " in r["comment"] and "10.244.0.0/16" in r["comment"])


def test_counters_count_every_packet_not_connections(fab: Lab) -> None:
    before_out, before_in = _mapping_row(fab.lab, "egress"), _mapping_row(fab.gpu, "ingress")
    nbytes = 4_000_000
    reply = ask(fab.lab.pods["l1"], "tcp", "100.64.2.7", nbytes=nbytes)
    assert int(reply[3]) == nbytes
    after_out, after_in = _mapping_row(fab.lab, "egress"), _mapping_row(fab.gpu, "ingress")
    # One connection, but all of its data is counted: on lab's egress mapping
    # (before SNAT) and on gpu's ingress mapping (after DNAT). Packets are what
    # the kernel forwards: with GRO one may carry up to 64 KiB of TCP segments.
    for before, after in ((before_out, after_out), (before_in, after_in)):
        assert after["bytes"] - before["bytes"] >= nbytes
        assert after["packets"] - before["packets"] >= nbytes // 65536
        assert 1 <= after["connections"] - before["connections"] <= 2
    # ICMP is not aggregated: 200 echo requests are 200 packets each way (one
    # ping "connection" for the NAT rules).
    out = sh("ping", "-q", "-c", "200", "-i", "0.002", "-W", "2", "100.64.2.7", ns=fab.lab.pods["l1"], timeout=30)
    assert " 0% packet loss" in out.stdout
    again_out, again_in = _mapping_row(fab.lab, "egress"), _mapping_row(fab.gpu, "ingress")
    assert again_out["packets"] - after_out["packets"] >= 200  # requests out of lab
    assert again_in["packets"] - after_in["packets"] >= 200  # requests into gpu
    assert again_out["connections"] - after_out["connections"] == 1


def _table_text(ns: str) -> str:
    return sh("nft", "-s", "list", "table", "inet", "crosswire", ns=ns).stdout


def _egress_packets(side: Side) -> int:
    assert side.state is not None
    rows = nat.with_counters(nat.mappings(side.state), Nft(side.gw).list_table("inet", "crosswire"))
    return int(rows[0]["rules"][0]["packets"])


def test_reapply_is_identical(fab: Lab) -> None:
    ask(fab.lab.pods["l1"], "udp", "100.64.2.7")
    counted = _egress_packets(fab.lab)
    assert counted >= 1
    assert fab.lab.state is not None
    apply(fab.lab.state, fab.lab.state, netns=fab.lab.gw)
    assert _egress_packets(fab.lab) == counted  # unchanged state: table (and counters) kept
    # Drift (someone flushed a peer chain) is repaired by the same call.
    sh("nft", "flush", "chain", "inet", "crosswire", "to-gpu", ns=fab.lab.gw)
    assert verify(fab.lab.state, netns=fab.lab.gw) != []
    apply(fab.lab.state, fab.lab.state, netns=fab.lab.gw)
    assert verify(fab.lab.state, netns=fab.lab.gw) == []
    before = _table_text(fab.lab.gw)
    routes_before = sh("ip", "route", "show", "proto", str(ROUTE_PROTO), ns=fab.lab.gw).stdout
    wg_before = WgControl(fab.lab.wg).show()
    assert fab.lab.state is not None
    for _ in range(2):
        apply(fab.lab.state, fab.lab.state, netns=fab.lab.gw)
        apply(fab.lab.state, None, netns=fab.lab.gw)
    assert _table_text(fab.lab.gw) == before
    # One NAT table (and beside it the policy table, the guard), never a second copy.
    assert sh("nft", "list", "tables", ns=fab.lab.gw).stdout.splitlines().count("table inet crosswire") == 1
    assert sh("ip", "route", "show", "proto", str(ROUTE_PROTO), ns=fab.lab.gw).stdout == routes_before
    wg_after = WgControl(fab.lab.wg).show()
    assert list(wg_after) == list(wg_before)
    # The session survived: no new handshake was forced by re-syncing.
    assert wg_after[fab.gpu.pub]["last_handshake"] == wg_before[fab.gpu.pub]["last_handshake"]
    assert ask(fab.lab.pods["l1"], "udp", "100.64.2.7")[:2] == ["g1", "100.65.1.5"]


def test_failing_batch_leaves_old_table(fab: Lab) -> None:
    before = _table_text(fab.lab.gw)
    assert fab.lab.state is not None
    bad = json.loads(nat.render_text(fab.lab.state))
    bad["nftables"].append({"add": {"rule": {"family": "inet", "table": "crosswire", "chain": "to-gpu",
                                             "expr": [{"jump": {"target": "no-such-chain"}}]}}})
    with pytest.raises(NftError):
        Nft(fab.lab.gw).apply(bad)
    assert _table_text(fab.lab.gw) == before
    # Bad state: rejected before anything is touched.
    broken = dataclasses.replace(fab.lab.state, peers=(dataclasses.replace(
        fab.lab.state.peers[0], remote=(RangeMap("pod", "10.244.0.0/16", "10.244.0.0/16"),)),))
    with pytest.raises(ApplyError, match="overlaps"):
        apply(broken, fab.lab.state, netns=fab.lab.gw)
    assert _table_text(fab.lab.gw) == before
    assert ask(fab.lab.pods["l1"], "udp", "100.64.2.7")[:2] == ["g1", "100.65.1.5"]


def test_masquerade_delivers_from_gateway(fab: Lab) -> None:
    original = fab.gpu.state
    assert original is not None
    try:
        program(fab.gpu, dataclasses.replace(
            original, local=dataclasses.replace(original.local, masquerade=True)))
        # g1 now sees gpu's gateway, not lab's pod (what source-verifying CNIs need).
        assert ask(fab.lab.pods["l1"], "udp", "100.64.2.7")[:2] == ["g1", "10.244.0.2"]
        # The other direction is untouched: lab still sees gpu pods by view.
        assert ask(fab.gpu.pods["g1"], "udp", "100.65.1.5")[:2] == ["l1", "100.64.2.7"]
    finally:
        program(fab.gpu, original)
    sh("conntrack", "-F", ns=fab.gpu.gw, check=False)
    assert ask(fab.lab.pods["l1"], "udp", "100.64.2.7")[:2] == ["g1", "100.65.1.5"]


def test_undeclared_destination_is_dropped(fab: Lab) -> None:
    # gpu sends to a lab address it was never given a view of (10.244.1.5 directly):
    # the route is missing on gpu, so force it through the tunnel by hand.
    sh("ip", "route", "add", "10.244.1.5/32", "dev", fab.gpu.wg, ns=fab.gpu.gw)
    try:
        out = ask(fab.gpu.gw, "udp", "10.244.1.5", check=False)
        assert out == []
    finally:
        sh("ip", "route", "del", "10.244.1.5/32", "dev", fab.gpu.wg, ns=fab.gpu.gw)



def test_open_tcp_survives_reapply_and_dataplane_restart(fab: Lab) -> None:
    """Restart safety (issue 4 item 6) for the data plane: a connection open through the
    tunnel keeps working across a full re-apply and a crash + restart of lab's WireGuard."""
    client = subprocess.Popen(
        ["ip", "netns", "exec", fab.lab.pods["l1"], sys.executable, ECHO, "hold", "100.64.2.7", str(PORT),
         "100000"], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert client.stdout is not None and client.stdin is not None
        assert client.stdout.readline().strip() == "sent"
        assert fab.lab.state is not None
        apply(fab.lab.state, None, netns=fab.lab.gw)  # as after a gateway restart
        proc = fab.lab.dataplane._proc
        assert proc is not None
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=5)
        assert not fab.lab.dataplane.alive()
        fab.lab.dataplane.ensure_up()
        apply(fab.lab.state, None, netns=fab.lab.gw)
        client.stdin.write("go\n")
        client.stdin.flush()
        out, _ = client.communicate(timeout=60)
        name, seen, _port, nbytes, _mss = out.split()
        assert (name, seen, int(nbytes)) == ("g1", "100.65.1.5", 200000)
    finally:
        if client.poll() is None:
            client.kill()
            client.wait()
    assert verify(fab.lab.state, netns=fab.lab.gw) == []
