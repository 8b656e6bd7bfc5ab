"""The export policy end to end: gpu exports one port of one pod to lab, over real WireGuard.

Same two-gateway harness as test_netns_fabric (lab views gpu's pods as
100.64.0.0/16). gpu gives lab only g1 (10.244.2.7) on 7000/tcp: that passes;
7001/tcp on the same pod, UDP to the same port and another pod (g0) are
dropped and counted on lab's counter; connections gpu's pods open to lab get
their replies; a changed policy takes effect without resetting the counter.
A packet from lab's *service* view is counted on lab's counter too, and
without exports the policy table stays (the guard) while everything passes.
"""

from __future__ import annotations

import contextlib
import dataclasses
import struct
import subprocess
import sys
import time
from collections.abc import Callable, Iterator

import pytest
from fabric_topo import (
    ECHO,
    Side,
    add_pod,
    ask,
    keypair,
    make_side,
    make_state,
    program,
    start_echo,
)
from nsutil import Namespaces, require_root, sh

from fabric import nftdump
from fabric.apply import verify
from fabric.exports import apply as exportsapply
from fabric.exports import policy as exportpolicy
from fabric.exports.guard import table_of
from fabric.exports.model import Allowed, ExportPolicy, PeerExports
from fabric.model import PeerFabric, RangeMap
from fabric.nft import Nft, in_netns

pytestmark = pytest.mark.root

LAB_VIEWS_OF_GPU = ("100.64.0.0/16", "100.80.0.0/12", "fd64::/48")
GPU_VIEWS_OF_LAB = ("100.65.0.0/16", "100.112.0.0/12", "fd65::/48")


def gpu_policy(side: Side, allowed: tuple[Allowed, ...]) -> ExportPolicy:
    return ExportPolicy(interface=side.wg, table=exportpolicy.table_name("crosswire"),
                        peers=(PeerExports("lab", (GPU_VIEWS_OF_LAB[0], GPU_VIEWS_OF_LAB[2]), allowed),))


@pytest.fixture(scope="module")
def sides() -> Iterator[tuple[Side, Side]]:
    require_root("wireguard-go", "nft", "conntrack")
    n = Namespaces()
    made: list[Side] = []
    procs: list[subprocess.Popen[str]] = []
    try:
        lab = make_side(n, "lab", "198.18.0.1", "10.244.0.1", "wireguard-go")
        made.append(lab)
        gpu = make_side(n, "gpu", "198.18.0.2", "10.244.0.2", "wireguard-go")
        made.append(gpu)
        n.veth(lab.gw, gpu.gw, "198.18.0.1/24", "198.18.0.2/24", name="u")
        lab.pods["l1"] = add_pod(n, lab.gw, "10.244.1.5", "10.244.0.1")
        gpu.pods["g1"] = add_pod(n, gpu.gw, "10.244.2.7", "10.244.0.2")
        gpu.pods["g0"] = add_pod(n, gpu.gw, "10.244.0.1", "10.244.0.2")
        for side in (lab, gpu):
            for name, pod in side.pods.items():
                start_echo(pod, name)
            side.dataplane.ensure_up()
        # A second port on g1, not exported.
        p = subprocess.Popen(["ip", "netns", "exec", gpu.pods["g1"], sys.executable, ECHO, "server", "g1b", "7001"],
                             stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        procs.append(p)
        assert p.stdout is not None and p.stdout.readline().strip() == "ready"
        program(lab, make_state(lab, gpu, LAB_VIEWS_OF_GPU, GPU_VIEWS_OF_LAB))
        state = make_state(gpu, lab, GPU_VIEWS_OF_LAB, LAB_VIEWS_OF_GPU)
        program(gpu, dataclasses.replace(state, exports=gpu_policy(gpu, (Allowed("10.244.2.7/32", "tcp", 7000),))))
        yield lab, gpu
    finally:
        for p in procs:
            p.kill()
            p.wait()
        for side in made:
            with contextlib.suppress(Exception):
                side.dataplane.stop()
        n.cleanup()


def reaches(pod: str, proto: str, host: str, port: int) -> bool:
    """One short attempt (1.5 s), so a refusal costs little; True if the server answered."""
    code = (
        "import socket,sys\n"
        f"p,h,port={proto!r},{host!r},{port}\n"
        "s=socket.socket(socket.AF_INET,socket.SOCK_DGRAM if p=='udp' else socket.SOCK_STREAM)\n"
        "s.settimeout(1.5)\n"
        "try:\n"
        "  if p=='udp':\n"
        "    s.sendto(b'x',(h,port)); s.recv(100)\n"
        "  else:\n"
        "    s.connect((h,port)); s.sendall(b'x'); s.shutdown(socket.SHUT_WR); assert s.recv(100)\n"
        "except Exception: sys.exit(1)\n")
    return sh(sys.executable, "-c", code, ns=pod, check=False, timeout=20).returncode == 0


def denied(gpu: Side) -> int:
    assert gpu.state is not None
    return exportsapply.denied(table_of(gpu.state), Nft(gpu.gw))["lab"]["packets"]


def test_exported_port_passes_everything_else_is_dropped_and_counted(sides: tuple[Side, Side]) -> None:
    lab, gpu = sides
    l1 = lab.pods["l1"]
    # The handshake may take the first packet: the exported port answers.
    assert ask(l1, "tcp", "100.64.2.7")[:2] == ["g1", "100.65.1.5"]
    assert gpu.state is not None and verify(gpu.state, netns=gpu.gw) == []
    before = denied(gpu)
    assert not reaches(l1, "tcp", "100.64.2.7", 7001)  # another port
    after_port = denied(gpu)
    assert after_port > before
    assert not reaches(l1, "udp", "100.64.2.7", 7000)  # another protocol
    after_proto = denied(gpu)
    assert after_proto > after_port
    assert not reaches(l1, "tcp", "100.64.0.1", 7000)  # another pod
    assert denied(gpu) > after_proto
    # The kernel's object dump (what the gateway's /api/v1/nat reads) says the same as
    # libnftables' listing of the counters.
    t = table_of(gpu.state)
    dumped = in_netns(gpu.gw, lambda: nftdump.counters("inet", t.table))
    listed = exportpolicy.listed_counters(Nft(gpu.gw).list_counters("inet", t.table))
    assert dumped == listed and dumped[exportpolicy.counter_name("lab")]["packets"] == denied(gpu) > 0
    # The table's total counts what the peers' counters count, read as one object by name.
    total, nobody = in_netns(gpu.gw, lambda: (nftdump.counter("inet", t.table, exportpolicy.TOTAL_COUNTER),
                                              nftdump.counter("inet", t.table, "denied-nobody")))
    peers = [c for name, c in dumped.items() if name != exportpolicy.TOTAL_COUNTER]
    assert total == {"packets": sum(c["packets"] for c in peers), "bytes": sum(c["bytes"] for c in peers)}
    assert total["packets"] > 0 and nobody is None
    # ... each object read by slicing (the kernel's layout), as the attribute walk reads it
    head, kind = nftdump._attr(nftdump.OBJ_TABLE, t.table.encode() + b"\0"), struct.pack(">I", nftdump.NFT_OBJECT_COUNTER)
    raw = in_netns(gpu.gw, lambda: list(nftdump._dump("inet", nftdump.NFT_MSG_GETOBJ,
                                                      head + nftdump._attr(nftdump.OBJ_TYPE, kind))))
    assert raw and all(nftdump._counter_as_laid_out(m, head) == nftdump._counter_object(m, t.table) is not None
                       for m in raw)
    # Still allowed afterwards.
    assert reaches(l1, "tcp", "100.64.2.7", 7000)


def test_replies_to_connections_opened_on_the_exporting_side_pass(sides: tuple[Side, Side]) -> None:
    _, gpu = sides
    # gpu's pods open connections to lab (lab exports everything): their replies come
    # in through gpu's wg interface and pass, though lab's address is no export.
    assert ask(gpu.pods["g1"], "tcp", "100.65.1.5")[:2] == ["l1", "100.64.2.7"]
    assert ask(gpu.pods["g0"], "udp", "100.65.1.5")[:2] == ["l1", "100.64.0.1"]


def test_changed_policy_applies_as_a_delta_keeping_the_counter(sides: tuple[Side, Side]) -> None:
    lab, gpu = sides
    l1 = lab.pods["l1"]
    assert not reaches(l1, "udp", "100.64.2.7", 7000)
    count = denied(gpu)
    assert gpu.state is not None
    wider = dataclasses.replace(gpu.state, exports=gpu_policy(gpu, (
        Allowed("10.244.2.7/32", "tcp", 7000), Allowed("10.244.2.7/32", "udp", 7000))))
    assert exportpolicy.render_delta(table_of(gpu.state), table_of(wider)) is not None
    program(gpu, wider)
    assert reaches(l1, "udp", "100.64.2.7", 7000)
    assert denied(gpu) == count  # the delta left lab's counter as it was
    # Every port and protocol of g1; g0 still refused.
    program(gpu, dataclasses.replace(gpu.state, exports=gpu_policy(gpu, (Allowed("10.244.2.7/32"),))))
    assert reaches(l1, "tcp", "100.64.2.7", 7001)
    assert not reaches(l1, "tcp", "100.64.0.1", 7000)
    assert denied(gpu) > count


def test_a_source_in_the_peers_service_view_is_counted_against_it(sides: tuple[Side, Side]) -> None:
    lab, gpu = sides
    # A lab pod sending from an address of lab's service range: lab SNATs it into
    # gpu's view of lab's services (100.112/12), which is no pod view, so gpu's
    # export filter drops it at its catch-all; the drop still counts against lab.
    l1 = lab.pods["l1"]
    sh("ip", "addr", "add", "10.96.0.50/32", "dev", "lo", ns=l1)
    try:
        before = denied(gpu)
        code = ("import socket\n"
                "s=socket.socket(socket.AF_INET,socket.SOCK_DGRAM); s.bind(('10.96.0.50',0))\n"
                "for _ in range(5): s.sendto(b'x',('100.64.2.7',7000))\n")
        sh(sys.executable, "-c", code, ns=l1, timeout=20)
        assert wait_for(lambda: denied(gpu) >= before + 5)
    finally:
        sh("ip", "addr", "del", "10.96.0.50/32", "dev", "lo", ns=l1, check=False)


def wait_for(cond: Callable[[], bool], timeout: float = 5.0) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if cond():
            return True
        time.sleep(0.1)
    return cond()


def test_without_exports_the_guard_stays_and_everything_passes(sides: tuple[Side, Side]) -> None:
    lab, gpu = sides
    assert gpu.state is not None
    table = exportpolicy.table_name("crosswire")
    assert table in Nft(gpu.gw).tables("inet")
    program(gpu, dataclasses.replace(gpu.state, exports=None))
    # The policy table stays for the guard (input), without the export filter (forward).
    assert table in Nft(gpu.gw).tables("inet")
    assert Nft(gpu.gw).has_chain("inet", table, "input")
    assert not Nft(gpu.gw).has_chain("inet", table, "forward")
    assert verify(gpu.state, netns=gpu.gw) == []
    assert reaches(lab.pods["l1"], "tcp", "100.64.0.1", 7000)
    assert reaches(lab.pods["l1"], "udp", "100.64.2.7", 7000)
    # gpu's gateway itself (10.244.0.2, 100.64.0.2 to lab) is out of reach, counted against lab.
    before = denied(gpu)
    assert not reaches(lab.pods["l1"], "tcp", "100.64.0.2", 7000)
    assert denied(gpu) > before

    # Another peer added, then removed: a delta of its elements and counter; lab's count
    # carries on (a whole-table rewrite would have reset it) and the guard holds.
    count = denied(gpu)
    other = PeerFabric(cluster_id="edge", public_key=keypair()[1], endpoint=None, persistent_keepalive=0,
                       remote=(RangeMap("pod", "10.244.0.0/16", "100.66.0.0/16"),),
                       local=(RangeMap("pod", "10.244.0.0/16", "100.67.0.0/16"),), probe_ip="100.66.0.1")
    before_state = gpu.state
    bigger = dataclasses.replace(gpu.state, peers=(*gpu.state.peers, other))
    assert exportpolicy.render_delta(table_of(before_state), table_of(bigger)) is not None
    program(gpu, bigger)
    assert denied(gpu) == count
    assert exportsapply.denied(table_of(bigger), Nft(gpu.gw))["edge"]["packets"] == 0
    assert verify(bigger, netns=gpu.gw) == []
    program(gpu, before_state)
    assert denied(gpu) == count
    assert "denied-edge" not in sh("nft", "list", "table", "inet", table, ns=gpu.gw).stdout
    assert not reaches(lab.pods["l1"], "tcp", "100.64.0.2", 7000)
    assert denied(gpu) > count
