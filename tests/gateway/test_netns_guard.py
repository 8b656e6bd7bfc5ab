"""The guard end to end: a peer reaches the gateway pod itself only with its gateway's health probes.

Two real gateways (crosswire-wg, the two-gateway harness), dual stack: each
gateway pod has 10.244.0.10 and fd00::10, its operator listener on the pod
address (as in Kubernetes), DNS on :53, WireGuard on :51820, the health echo
on :51830. From b's pod, through b's view of a's pod range, a connect scan of
20 ports of a's gateway (IPv4) and 6 (IPv6) finds nothing: every TCP connect
times out (no RST) and every datagram goes unanswered, and each packet counts
against b (`export_denied` in `nat show`, the metric), also from a source in
b's service view. b's gateway's health
probes still pass (both sides read `connected`); a probe datagram from b's pod
does not (another peer cannot send from b's gateway address at all: WireGuard
takes from each peer only sources in its allowed IPs). The scan is also run with the guard's chain deleted by hand, the
way things were before it (printed, for the record), and the drift check puts
the chain back. A table of the operator's in a's namespace is left as it was.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import pytest
from gwharness import GW_IP, PODS, Gw, operator_on_pod, two_gateways, view_of, wait_ping
from nsutil import Namespaces, require_root, sh

pytestmark = [pytest.mark.root, pytest.mark.slow]

GW6 = "fd00::10"
POLICY = "crosswire-exports"
# What a peer's pod tries on the gateway (IPv4): the API (operator listener), DNS both
# ways, WireGuard, the health echo (from a pod, not the peer's gateway), closed ports.
TCP = (8081, 53, 8080, 51820, 51830, 22, 80, 443, 6443, 10250, 9, 7)
UDP = (53, 51820, 51830, 123, 161, 9, 500, 5353)
TCP6 = (53, 8081, 22)
UDP6 = (53, 51820, 51830)

# Each attempt in its own thread (the scan takes one timeout, not twenty): answered,
# refused (RST or ICMP port unreachable) or timeout.
SCAN = r"""
import json, socket, struct, sys, threading
targets = json.loads(sys.argv[1])
out = {}
DNS = struct.pack("!HHHHHH", 0x1234, 0x0100, 1, 0, 0, 0) + b"\x0aclusterset\x05local\x00\x00\x06\x00\x01"
PROBE = b"CWP1" + b"\x00" * 16
def one(proto, host, port):
    fam = socket.AF_INET6 if ":" in host else socket.AF_INET
    s = socket.socket(fam, socket.SOCK_STREAM if proto == "tcp" else socket.SOCK_DGRAM)
    s.settimeout(2.5)
    key = f"{proto}/{port}"
    try:
        s.connect((host, port))
        if proto == "udp":
            s.send(DNS if port == 53 else PROBE if port == 51830 else b"x" * 8)
            s.recv(512)
        out[key] = "answered"
    except ConnectionRefusedError:
        out[key] = "refused"
    except (TimeoutError, socket.timeout):
        out[key] = "timeout"
    except OSError as e:
        out[key] = type(e).__name__
    finally:
        s.close()
ts = [threading.Thread(target=one, args=t) for t in targets]
[t.start() for t in ts]
[t.join() for t in ts]
print(json.dumps(out, sort_keys=True))
"""


def scan(pod: str, host: str, tcp: tuple[int, ...], udp: tuple[int, ...]) -> dict[str, str]:
    targets = [("tcp", host, p) for p in tcp] + [("udp", host, p) for p in udp]
    out = sh(sys.executable, "-c", SCAN, json.dumps(targets), ns=pod, timeout=30).stdout
    return dict(json.loads(out))


def tally(result: dict[str, str]) -> dict[str, int]:
    out: dict[str, int] = {}
    for v in result.values():
        out[v] = out.get(v, 0) + 1
    return out


def denied(a: Gw, peer: str = "b") -> int:
    row = next(p for p in a.cli_json("nat", "show")["peers"] if p["cluster_id"] == peer)
    return int(row["export_denied"]["packets"])


def dual_stack(a: Gw, b: Gw) -> None:
    """A ``two_gateways`` prepare: the operator listener on the pod address and a pod
    IPv6 address for each gateway; an operator's table in a's namespace."""
    operator_on_pod(a, b)
    for g in (a, b):
        sh("ip", "addr", "add", f"{GW6}/128", "dev", "lo", ns=g.ns)
        g.config.write_text(g.config.read_text().replace(f"gateway_ip: {GW_IP}\n",
                                                         f"gateway_ip: {GW_IP}\ngateway_ip6: {GW6}\n"))
    sh("nft", "add table inet ops; add chain inet ops input { type filter hook input priority 0; }; "
       "add rule inet ops input tcp dport 2222 counter accept comment \"keep me\"", ns=a.ns)


def wait_state(g: Gw, want: str, timeout: float = 15) -> dict[str, object]:
    deadline = time.monotonic() + timeout
    while True:
        p = dict(g.cli_json("peer", "list")[0])
        if p["state"] == want or time.monotonic() > deadline:
            return p
        time.sleep(0.3)


def test_a_peer_reaches_the_gateway_only_with_its_health_probes(netns: Namespaces, tmp_path: Path) -> None:
    require_root("nft", "curl")
    os.chmod(tmp_path, 0o700)
    with two_gateways(netns, tmp_path, prepare=dual_stack) as (a, b):
        ops = sh("nft", "list", "table", "inet", "ops", ns=a.ns).stdout
        b.cli("peer", "add", a.cli("token", "create", "--ttl", "10m").stdout.strip())
        views = b.cli_json("peer", "list")[0]["our_views"]
        gw4, gw6 = view_of(GW_IP, views), view_of(GW6, views)  # a's gateway pod, as b names it
        pod = b.pods[0]
        wait_ping(pod, view_of(PODS[1], views))  # the tunnel carries pod traffic
        assert wait_state(a, "connected")["state"] == "connected"
        assert wait_state(b, "connected")["state"] == "connected"

        # Before the guard (its chain deleted by hand): what a peer's pod saw of a's gateway.
        sh("nft", f"flush chain inet {POLICY} input; delete chain inet {POLICY} input", ns=a.ns)
        before = scan(pod, gw4, TCP, UDP)
        print("scan without the guard:", tally(before), before)
        # The drift check (every 10 s) finds the chain missing and puts it back.
        deadline = time.monotonic() + 25
        while "chain input" not in sh("nft", "list", "table", "inet", POLICY, ns=a.ns).stdout:
            assert time.monotonic() < deadline, "the drift check did not restore the guard"
            time.sleep(0.5)
        assert "drift:" in a.log.read_text()
        time.sleep(0.5)

        # With the guard: nothing answers, nothing is refused, everything counts against b.
        count0 = denied(a)
        after = scan(pod, gw4, TCP, UDP)
        print("scan with the guard:", tally(after), after)
        assert set(after.values()) == {"timeout"}, after
        assert len(after) == 20
        after6 = scan(pod, gw6, TCP6, UDP6)
        print("IPv6 scan with the guard:", tally(after6), after6)
        assert set(after6.values()) == {"timeout"}, after6
        counted = denied(a) - count0
        print("counted against b:", counted)
        assert counted >= len(after) + len(after6)  # a SYN per connect at least (and its retries)
        metrics = sh("curl", "-s", f"http://{GW_IP}:8081/metrics", ns=a.ns).stdout
        line = next(x for x in metrics.splitlines() if x.startswith('crosswire_export_denied_packets_total{peer="b"}'))
        assert int(line.split()[-1]) >= counted

        # From an address of b's service range (b SNATs it into a's view of b's services):
        # dropped all the same, and counted against b too.
        sh("ip", "addr", "add", "10.96.0.50/32", "dev", "lo", ns=pod)
        count1 = denied(a)
        svc = ("import socket\ns=socket.socket(socket.AF_INET,socket.SOCK_DGRAM); s.bind(('10.96.0.50',0))\n"
               f"for _ in range(5): s.sendto(b'x',({gw4!r},53))\n")
        sh(sys.executable, "-c", svc, ns=pod)
        deadline = time.monotonic() + 5
        while denied(a) < count1 + 5:
            assert time.monotonic() < deadline, "drops from b's service view were not counted against b"
            time.sleep(0.2)

        # The guard's verdict in the trace: b's pod (as a sees it) to a's gateway's API.
        a_views = a.cli_json("peer", "list")[0]["our_views"]
        t = a.cli_json("trace", view_of(PODS[0], a_views), gw4, "--port", "8081")
        assert t["verdict"] == "dropped" and t["steps"][-1]["kind"] == "guard", t
        assert t["steps"][-1]["chain"] == "input"

        # b's gateway's probes still pass: both read connected, now and after the scans.
        time.sleep(1.5)
        assert wait_state(a, "connected")["state"] == "connected"
        p = wait_state(b, "connected")
        assert p["state"] == "connected" and p["rtt_ms"] is not None, p
        # A pod's traffic is unaffected.
        wait_ping(pod, view_of(PODS[1], views))

        # Nothing crosswire did not create was touched.
        assert sh("nft", "list", "table", "inet", "ops", ns=a.ns).stdout == ops
        tables = {line.split()[-1] for line in sh("nft", "list", "tables", ns=a.ns).stdout.splitlines()}
        assert tables == {"crosswire", POLICY, "ops"}, tables
