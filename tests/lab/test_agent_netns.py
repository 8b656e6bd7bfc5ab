"""The node agent in real namespaces, against a fake gateway API.

Topology: node1 --veth-- gwpod (the gateway pod, 10.244.0.2) and
node1 --underlay-- node2. The fake gateway serves /api/v1/routes from a file
the test rewrites, listening inside node1 (loopback for node1's agent, the
underlay address for node2's).
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from nsutil import Namespaces, sh

FAKE_GATEWAY = r'''
import http.server, sys
path = sys.argv[1]
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = open(path, "rb").read() if self.path == "/api/v1/routes" else b"{}"
        self.send_response(200 if self.path == "/api/v1/routes" else 404)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *a): pass
http.server.ThreadingHTTPServer(("0.0.0.0", 18080), H).serve_forever()
'''


def agent_routes(ns: str) -> dict[str, str]:
    out = sh("ip", "-j", "route", "show", "proto", "246", ns=ns).stdout
    return {r["dst"]: f"{r.get('gateway')} {r['dev']}" for r in json.loads(out or "[]")}


def wait_for(cond: Callable[[], bool], timeout: float = 10.0) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if cond():
            return
        time.sleep(0.1)
    assert cond(), "condition not reached in time"


@pytest.fixture
def procs() -> Iterator[list[subprocess.Popen[bytes]]]:
    ps: list[subprocess.Popen[bytes]] = []
    try:
        yield ps
    finally:
        for p in ps:
            p.kill()
            p.wait()


@pytest.mark.root
def test_agent_installs_updates_keeps_and_removes_routes(
        netns: Namespaces, tmp_path: Path, procs: list[subprocess.Popen[bytes]]) -> None:
    node1, node2, gwpod = netns.add("agn1"), netns.add("agn2"), netns.add("aggw")
    v_node, v_pod = netns.veth(node1, gwpod, "10.244.0.1/32", "10.244.0.2/32", name="p")
    sh("ip", "route", "add", "10.244.0.2/32", "dev", v_node, ns=node1)
    sh("ip", "route", "add", "default", "via", "10.244.0.1", "onlink", "dev", v_pod, ns=gwpod)
    sh("ip", "addr", "add", "100.64.0.5/32", "dev", "lo", ns=gwpod)  # a "peer" address behind the gateway
    u1, u2 = netns.veth(node1, node2, "192.168.10.11/24", "192.168.10.12/24", name="u")
    sh("ip", "route", "add", "10.244.0.0/24", "via", "192.168.10.11", ns=node2)
    sh("sysctl", "-qw", "net.ipv4.ip_forward=1", ns=node1)
    # Someone else's route in the same range family: the agent must not touch it.
    sh("ip", "route", "add", "100.99.0.0/16", "via", "10.244.0.2", "dev", v_node, ns=node1)

    routes = tmp_path / "routes.json"
    routes.write_text(json.dumps({"gateway_ip": "10.244.0.2",
                                  "cidrs": ["100.64.0.0/16", "100.80.0.0/12"]}))

    def start_fake() -> subprocess.Popen[bytes]:
        p = subprocess.Popen(["ip", "netns", "exec", node1, sys.executable, "-c", FAKE_GATEWAY,
                              str(routes)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        procs.append(p)
        wait_for(lambda: sh("curl", "-sf", "http://127.0.0.1:18080/api/v1/routes",
                            check=False, ns=node1).returncode == 0)
        return p

    fake = start_fake()
    agent = subprocess.Popen(["ip", "netns", "exec", node1, sys.executable, "-m", "fabric.agent",
                              "run", "--gateway", "http://127.0.0.1:18080", "--interval", "0.2"],
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    procs.append(agent)

    want = {"100.64.0.0/16": f"10.244.0.2 {v_node}", "100.80.0.0/12": f"10.244.0.2 {v_node}"}
    wait_for(lambda: agent_routes(node1) == want)
    # The route really carries traffic to the gateway pod.
    sh("ping", "-c1", "-W2", "100.64.0.5", ns=node1)

    # Another node: one-shot run resolves the underlay next hop to the gateway's node.
    # (through the operator CLI this time, as the DaemonSet runs it)
    sh(str(Path(sys.executable).parent / "crosswire"), "agent", "run", "--once", "--gateway",
       "http://192.168.10.11:18080", ns=node2)
    assert agent_routes(node2) == {"100.64.0.0/16": f"192.168.10.11 {u2}",
                                   "100.80.0.0/12": f"192.168.10.11 {u2}"}
    sh("ping", "-c1", "-W2", "100.64.0.5", ns=node2)

    # Flannel-vxlan style underlay: node2 reaches node1's pods via an onlink next hop
    # outside any connected prefix (node1's 10.244.0.0/32); the agent follows it.
    sh("ip", "addr", "add", "10.244.0.0/32", "dev", u1, ns=node1)
    sh("ip", "route", "replace", "10.244.0.0/24", "via", "10.244.0.0", "dev", u2, "onlink", ns=node2)
    sh(str(Path(sys.executable).parent / "crosswire"), "agent", "run", "--once", "--gateway",
       "http://192.168.10.11:18080", ns=node2)
    assert agent_routes(node2) == {"100.64.0.0/16": f"10.244.0.0 {u2}",
                                   "100.80.0.0/12": f"10.244.0.0 {u2}"}
    sh("ping", "-c1", "-W2", "100.64.0.5", ns=node2)

    # A peer view goes away, another comes: stale one removed, new one added.
    routes.write_text(json.dumps({"gateway_ip": "10.244.0.2",
                                  "cidrs": ["100.64.0.0/16", "100.65.0.0/16"]}))
    want = {"100.64.0.0/16": f"10.244.0.2 {v_node}", "100.65.0.0/16": f"10.244.0.2 {v_node}"}
    wait_for(lambda: agent_routes(node1) == want)

    # Gateway down: routes stay, agent keeps running; garbage answers change nothing either.
    fake.kill()
    fake.wait()
    time.sleep(1.0)
    assert agent.poll() is None
    assert agent_routes(node1) == want
    routes.write_text('{"gateway_ip": "10.244.0.2", "cidrs": ["100.66.0.0/16", "bogus"]}')
    start_fake()
    time.sleep(1.0)
    assert agent_routes(node1) == want

    # A gateway IP this node has no route to: nothing changes, --once reports failure.
    routes.write_text(json.dumps({"gateway_ip": "10.9.9.9", "cidrs": ["100.64.0.0/16"]}))
    once = sh(str(Path(sys.executable).parent / "crosswire"), "agent", "run", "--once", "--gateway",
              "http://192.168.10.11:18080", ns=node2, check=False)
    assert once.returncode == 1 and "no route to gateway 10.9.9.9" in once.stderr
    time.sleep(0.6)
    assert agent.poll() is None and agent_routes(node1) == want

    # Gateway back with an empty set: everything of ours removed, the foreign route kept.
    routes.write_text(json.dumps({"gateway_ip": "10.244.0.2", "cidrs": []}))
    wait_for(lambda: agent_routes(node1) == {})
    assert "100.99.0.0/16" in sh("ip", "route", "show", ns=node1).stdout
    agent.terminate()
    assert agent.wait(5) == 0
    assert agent.stderr is not None
    log = agent.stderr.read().decode()
    assert "keeping current routes" in log


@pytest.mark.root
def test_agent_dual_stack_routes_each_family_via_its_gateway_address(
        netns: Namespaces, tmp_path: Path, procs: list[subprocess.Popen[bytes]]) -> None:
    node, gwpod = netns.add("agd1"), netns.add("agdg")
    v_node, v_pod = netns.veth(node, gwpod, "10.244.0.1/32", "10.244.0.2/32", name="p")
    sh("ip", "route", "add", "10.244.0.2/32", "dev", v_node, ns=node)
    for ns, dev, addr, peer in ((node, v_node, "fd00:244::1/128", "fd00:244::2"),
                                (gwpod, v_pod, "fd00:244::2/128", "fd00:244::1")):
        sh("ip", "-6", "addr", "add", addr, "dev", dev, "nodad", ns=ns)
        sh("ip", "-6", "route", "add", peer, "dev", dev, ns=ns)
    sh("ip", "-6", "route", "add", "default", "via", "fd00:244::1", "dev", v_pod, ns=gwpod)
    sh("ip", "-6", "addr", "add", "fd00:1::5/128", "dev", "lo", ns=gwpod)
    routes = tmp_path / "routes.json"
    routes.write_text(json.dumps({"gateway_ip": "10.244.0.2", "gateway_ip6": "fd00:244::2",
                                  "cidrs": ["100.64.0.0/16", "fd00:1::/48"]}))
    fake = subprocess.Popen(["ip", "netns", "exec", node, sys.executable, "-c", FAKE_GATEWAY,
                             str(routes)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    procs.append(fake)
    wait_for(lambda: sh("curl", "-sf", "http://127.0.0.1:18080/api/v1/routes",
                        check=False, ns=node).returncode == 0)
    agent = [str(Path(sys.executable).parent / "crosswire"), "agent", "run", "--once",
             "--gateway", "http://127.0.0.1:18080"]
    sh(*agent, ns=node)
    out = sh("ip", "-j", "-6", "route", "show", "proto", "246", ns=node).stdout
    assert {r["dst"]: f"{r.get('gateway')} {r['dev']}" for r in json.loads(out)} == \
        {"fd00:1::/48": f"fd00:244::2 {v_node}"}
    assert agent_routes(node) == {"100.64.0.0/16": f"10.244.0.2 {v_node}"}
    sh("ping", "-6", "-c1", "-W2", "fd00:1::5", ns=node)
    # The IPv6 gateway address stops resolving: v4 still reconciled, v6 routes kept.
    sh("ip", "-6", "route", "del", "fd00:244::2", "dev", v_node, ns=node)
    routes.write_text(json.dumps({"gateway_ip": "10.244.0.2", "gateway_ip6": "fd00:244::2",
                                  "cidrs": ["100.65.0.0/16", "fd00:1::/48"]}))
    r = sh(*agent, ns=node, check=False)
    assert r.returncode == 0 and "no route to gateway fd00:244::2" in r.stderr
    assert agent_routes(node) == {"100.65.0.0/16": f"10.244.0.2 {v_node}"}
    assert "fd00:1::/48" in sh("ip", "-6", "route", "show", "proto", "246", ns=node).stdout


@pytest.mark.root
def test_agent_never_routes_public_space_or_its_nodes_own_networks(
        netns: Namespaces, tmp_path: Path, procs: list[subprocess.Popen[bytes]]) -> None:
    node, gwpod = netns.add("ags1"), netns.add("agsg")
    v_node, _ = netns.veth(node, gwpod, "10.244.0.1/32", "10.244.0.2/32", name="p")
    sh("ip", "route", "add", "10.244.0.2/32", "dev", v_node, ns=node)
    sh("ip", "addr", "add", "192.168.10.11/24", "dev", "lo", ns=node)  # the node's underlay network
    routes = tmp_path / "routes.json"
    # What a gateway that believed a hostile peer would publish (issue 22).
    routes.write_text(json.dumps({"gateway_ip": "10.244.0.2", "cidrs": [
        "100.64.0.0/16", "8.8.8.0/24", "1.0.0.0/8", "192.168.10.0/25", "10.244.0.0/24", "fd00:1::/48"]}))
    fake = subprocess.Popen(["ip", "netns", "exec", node, sys.executable, "-c", FAKE_GATEWAY, str(routes)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    procs.append(fake)
    wait_for(lambda: sh("curl", "-sf", "http://127.0.0.1:18080/api/v1/routes",
                        check=False, ns=node).returncode == 0)
    agent = [str(Path(sys.executable).parent / "crosswire"), "agent", "run", "--once",
             "--gateway", "http://127.0.0.1:18080"]
    r = sh(*agent, ns=node)
    assert agent_routes(node) == {"100.64.0.0/16": f"10.244.0.2 {v_node}"}
    assert "not routing 8.8.8.0/24 to the gateway: outside the address space routed to peers" in r.stderr
    assert "not routing 1.0.0.0/8" in r.stderr
    assert "not routing 192.168.10.0/25 to the gateway: overlaps this node's local range 192.168.10.0/24" \
        in r.stderr
    assert "not routing 10.244.0.0/24 to the gateway: overlaps this node's local range 10.244.0.1/32" in r.stderr
    assert v_node not in sh("ip", "route", "get", "8.8.8.8", ns=node, check=False).stdout  # not to the gateway
    # An operator widens --allow: what it lists is routed, the rest still is not; --local adds ranges.
    r = sh(*agent, "--allow", "100.64.0.0/10,8.8.8.0/24", "--local", "100.64.0.0/17", ns=node)
    assert agent_routes(node) == {"8.8.8.0/24": f"10.244.0.2 {v_node}"}  # 100.64/16 overlaps --local now
    assert "overlaps this node's local range 100.64.0.0/17" in r.stderr
    # Back to the defaults: the route the wider policy allowed is removed again.
    sh(*agent, ns=node)
    assert agent_routes(node) == {"100.64.0.0/16": f"10.244.0.2 {v_node}"}
    bad = sh(*agent, "--allow", "8.8.8.1/24", ns=node, check=False)
    assert bad.returncode == 2 and "--allow" in bad.stderr
