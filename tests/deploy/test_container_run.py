"""The manifests' command lines start the real daemons (root, network namespaces).

A "node" namespace and a "pod" namespace joined by a veth play the kubelet's
world: the pod gets an address inside the overlay's pod CIDR, the kubelet
stand-in (kubelet.py) builds the process from the rendered Deployment or
DaemonSet, and the probes are sent from the node namespace, as the kubelet
sends them. Nothing leaves the namespaces this test creates.
"""

from __future__ import annotations

import ipaddress
import json
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import kubelet
import pytest
import yaml
from deploykit import REPO, container, find, gateway_config_text
from nsutil import Namespaces, require_root, sh, uniq

from fabric.agent import AGENT_PROTO

Rendered = dict[str, list[dict[str, Any]]]
POD_IP = "10.244.1.10"
NODE_IP = "10.244.1.1"



@pytest.fixture
def pod_net(netns: Namespaces) -> Iterator[tuple[str, str, str]]:
    """(node ns, pod ns, node-side veth name): the pod at POD_IP, default route via the node."""
    require_root("setpriv", "curl")
    node, pod = netns.add("cwdn"), netns.add("cwdp")
    node_if, _ = netns.veth(node, pod, f"{NODE_IP}/24", f"{POD_IP}/24", name="dk")
    sh("ip", "route", "add", "default", "via", NODE_IP, ns=pod)
    yield node, pod, node_if


@pytest.mark.root
@pytest.mark.parametrize("variant", ["gpu", "gpu+host-network"])
def test_deployment_command_starts_a_ready_gateway(rendered: Rendered, pod_net: tuple[str, str, str],
                                                   tmp_path: Path, variant: str) -> None:
    node, pod, _ = pod_net
    res = rendered[variant]
    dep = find(res, "Deployment", "crosswire-gateway")
    host_network = bool(dep["spec"]["template"]["spec"].get("hostNetwork"))
    # A host-network pod lives in the node's namespace and its status.podIP is the
    # node's address; here the node's address is inside pod_cidrs (like cni0 or
    # cilium_host), which is what the gateway must then detect by itself.
    where, ip = (node, NODE_IP) if host_network else (pod, POD_IP)
    image = kubelet.Image.from_dockerfile(REPO / "Dockerfile")
    cfg_pods = yaml.safe_load(gateway_config_text(res))["pod_cidrs"]
    assert ipaddress.ip_address(ip) in ipaddress.ip_network(cfg_pods[0])
    iface = uniq("cwdk")  # the UAPI socket directory is machine-wide

    # Init container first, as the kubelet does (it runs privileged: no setpriv).
    init = kubelet.prepare(res, dep, "forwarding", image, tmp_path, ip, init=True)
    sh(*kubelet.env_argv(init.env, init.argv), ns=where)
    assert sh("cat", "/proc/sys/net/ipv4/ip_forward", ns=where).stdout.strip() == "1"

    launch = kubelet.prepare(res, dep, "gateway", image, tmp_path, ip,
                             config_edit={"wireguard.interface": iface})
    assert launch.argv[1:4] == ["gateway", "run", "--config"]
    assert ("CROSSWIRE_POD_IP" in launch.env) != host_network
    gw = container(dep, "gateway")

    def in_container(*cmd: str) -> list[str]:
        return launch.in_netns(where, list(cmd))

    # The dataplane container first, as the pod lists it: crosswire-wg, adopted by the gateway.
    dp = kubelet.prepare(res, dep, "dataplane", image, tmp_path, ip, config_edit={"wireguard.interface": iface})
    assert dp.argv[1:4] == ["dataplane", "run", "--config"]
    dp_proc = subprocess.Popen(dp.in_netns(where), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    proc = subprocess.Popen(launch.in_netns(where), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    try:
        # The kubelet probes the pod IP on the named container port, from the node.
        port = next(p["containerPort"] for p in gw["ports"]
                    if p["name"] == gw["readinessProbe"]["httpGet"]["port"])
        base = f"http://{ip}:{port}"
        code, body = kubelet.wait_http(node, base + gw["readinessProbe"]["httpGet"]["path"], 90, proc)
        assert code == 200, f"/readyz: {code} {body}\n--- gateway output:\n{kubelet.stop(proc)}"
        code, _ = kubelet.wait_http(node, base + gw["livenessProbe"]["httpGet"]["path"], 5, proc)
        assert code == 200
        # The DNS listener (dns.listen, what the crosswire-dns Service targets) is up without
        # CAP_NET_BIND_SERVICE and answers its zone from the node, UDP and TCP.
        require_root("dig")
        dns_port = next(p["containerPort"] for p in gw["ports"] if p["name"] == "dns")
        for transport in ("+notcp", "+tcp"):
            out = sh("dig", f"@{ip}", "-p", str(dns_port), "clusterset.local", "SOA", transport, "+tries=1",
                     "+time=3", ns=node, check=False).stdout
            assert "status: NOERROR" in out and "ns.clusterset.local." in out, out

        status = json.loads(sh("curl", "-sf", "-m", "3", base + "/api/v1/status", ns=node).stdout)
        assert status["cluster_id"] == "gpu"
        # The gateway's own address: from the downward API, or detected (host network).
        routes = json.loads(sh("curl", "-sf", "-m", "3", base + "/api/v1/routes", ns=node).stdout)
        assert routes["gateway_ip"] == ip, f"{routes}\n{kubelet.stop(proc)}"
        # state_dir landed on the "volume", with the admin credential 0600.
        token_file = launch.mounts["/var/lib/crosswire"] / "admin-token"
        assert token_file.exists() and token_file.stat().st_mode & 0o777 == 0o600
        # README step 4, `kubectl exec deploy/crosswire-gateway -- crosswire token create`:
        # the CLI beside the daemon, same env, finds the API and the credential by itself.
        out = sh(*in_container(launch.argv[0], "token", "create", "--ttl", "10m"))
        token = out.stdout.strip()
        assert token.startswith("cw1.") and "\n" not in token, out.stdout  # TOKEN=$(...)
        # The confinement is real: NET_ADMIN is the only capability, / is read-only.
        caps = sh(*in_container("grep", "^CapEff", "/proc/self/status")).stdout.split()
        assert int(caps[-1], 16) == 1 << 12, caps  # CAP_NET_ADMIN
        probe = f"/cw-ro-{iface}"
        assert sh(*in_container("touch", probe), check=False).returncode != 0
        assert not Path(probe).exists()
        # The data plane the config asks for is up in the pod's (or node's) namespace, run by
        # the dataplane container (its process and standby), not by the gateway.
        assert iface in sh("ip", "-o", "link", "show", ns=where).stdout
        assert _wait_two(iface), _wg_pids(iface)  # the active process and its standby
        assert sum(b"--standby" in Path(f"/proc/{p}/cmdline").read_bytes() for p in _wg_pids(iface)) == 1
        assert "dataplane.log" not in {p.name for p in launch.mounts["/var/lib/crosswire"].iterdir()}
    finally:
        output = kubelet.stop(proc)
        dp_output = kubelet.stop(dp_proc)
        kubelet.cleanup_socket(iface)
    assert "Traceback" not in dp_output and "data plane up" in dp_output, dp_output
    assert "Traceback" not in output, output
    # What `kubectl logs` would show carries no credential.
    assert token not in output and token_file.read_text().strip() not in output


def _wg_pids(iface: str) -> list[int]:
    return [int(p) for p in sh("pgrep", "-f", f"crosswire-wg.* {iface}$", check=False).stdout.split()]


def _wait_two(iface: str, timeout: float = 30) -> bool:
    deadline = time.monotonic() + timeout
    while len(_wg_pids(iface)) != 2:
        if time.monotonic() > deadline:
            return False
        time.sleep(0.2)
    return True


FAKE_GATEWAY = """
import http.server, json, sys
ANSWER = json.dumps({"gateway_ip": sys.argv[2], "cidrs": sys.argv[3].split(",")}).encode()
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        ok = self.path == "/api/v1/routes"
        self.send_response(200 if ok else 404)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(ANSWER if ok else b"{}")
    def log_message(self, *a):
        pass
http.server.HTTPServer((sys.argv[2], int(sys.argv[1])), H).serve_forever()
"""


@pytest.mark.root
def test_daemonset_command_installs_routes(rendered: Rendered, pod_net: tuple[str, str, str],
                                           tmp_path: Path) -> None:
    node, pod, node_if = pod_net
    res = rendered["lab"]
    ds = find(res, "DaemonSet", "crosswire-agent")
    agent = container(ds, "agent")
    image = kubelet.Image.from_dockerfile(REPO / "Dockerfile")
    url = agent["args"][agent["args"].index("--gateway") + 1]
    host, port = url.split("://", 1)[1].rsplit(":", 1)
    views = ["100.64.0.0/16", "100.80.0.0/12"]

    # The Service name resolves in the node namespace as cluster DNS would resolve
    # it; `ip netns exec` bind-mounts /etc/netns/<ns>/hosts over /etc/hosts.
    # (The ClusterIP stand-in is the pod IP itself: Service port == container port.)
    etc = Path("/etc/netns") / node
    fake = subprocess.Popen(["ip", "netns", "exec", pod, sys.executable, "-c",
                             FAKE_GATEWAY, port, POD_IP, ",".join(views)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    proc: subprocess.Popen[str] | None = None
    try:
        etc.mkdir(parents=True)
        (etc / "hosts").write_text(f"127.0.0.1 localhost\n{POD_IP} {host}\n")
        code, body = kubelet.wait_http(node, f"http://{POD_IP}:{port}/api/v1/routes", 30, fake)
        assert code == 200, f"fake gateway: {code} {body}"
        launch = kubelet.prepare(res, ds, "agent", image, tmp_path, NODE_IP)
        assert launch.argv[1:3] == ["agent", "run"]
        proc = subprocess.Popen(launch.in_netns(node), stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True)
        deadline = time.monotonic() + 30
        routes = ""
        while time.monotonic() < deadline and proc.poll() is None:
            routes = sh("ip", "route", "show", "proto", str(AGENT_PROTO), ns=node).stdout
            if all(v in routes for v in views):
                break
            time.sleep(0.3)
        for v in views:
            assert f"{v} via {POD_IP} dev {node_if}" in routes, \
                f"routes: {routes!r}\n--- agent output:\n{kubelet.stop(proc)}"
    finally:
        if proc is not None:
            kubelet.stop(proc)
        kubelet.stop(fake)
        shutil.rmtree(etc, ignore_errors=True)
