"""deploy/README.md's walk-through, with the overlays exactly as shipped (root, namespaces).

Two clusters in network namespaces, addressed as the overlays say:

    gpu pod 10.244.1.10 -- gpu node 10.244.1.1 / 203.0.113.10 --+
                                                                 inet (203.0.113.1, 198.51.100.1)
    lab pod 10.244.1.10 -- lab node 10.244.1.1 / 198.51.100.20 -+

Both pods have the same address, as two kubeadm clusters would. The gpu node
plays the LoadBalancer (DNAT of 203.0.113.10 51820/udp and 8080/tcp to the
pod), the lab node the NodePort Service (31820/udp, 31880/tcp), and both
masquerade their pods' egress as a CNI does. Each gateway is started from its
overlay's rendered Deployment (kubelet.py). Then the README's step 4 runs as
`kubectl exec` would: `crosswire token create` in gpu, `crosswire peer add` in
lab, and both sides must report the other as connected: WireGuard handshake
through the NATs and health probes answered through the tunnel and the
crosswire NAT of both gateways. Finally each node runs the node agent from
the rendered DaemonSet, and an application pod in lab (10.244.2.20) reaches
the application pod with the same address in gpu through lab's view of gpu's
pods, which sees the client under gpu's view of lab's pods (the README's step
5 `wget`). All addresses live only inside the
namespaces this test creates (203.0.113.0/24 and 198.51.100.0/24 are
documentation ranges).
"""

from __future__ import annotations

import ipaddress
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import kubelet
import pytest
import yaml
from deploykit import REPO, find, gateway_config_text
from nsutil import Namespaces, require_root, sh, uniq

from fabric.agent import AGENT_PROTO

Rendered = dict[str, list[dict[str, Any]]]
POD_IP, NODE_POD_SIDE = "10.244.1.10", "10.244.1.1"
APP_IP, NODE_APP_SIDE = "10.244.2.20", "10.244.2.1"
APP_PORT = 8080

# A pod that tells each client the address it sees (one line, then closes).
WHOAMI = """
import socket, sys
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", int(sys.argv[1])))
s.listen()
while True:
    c, (addr, _) = s.accept()
    c.sendall(addr.encode() + b"\\n")
    c.close()
"""

ASK = """
import socket, sys
c = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=2)
print(c.recv(100).decode().strip())
"""


def _translate(ip: str, ranges: list[dict[str, str]]) -> str:
    """``ip`` moved prefix-for-prefix from the ``real`` range containing it to its ``view``."""
    addr = ipaddress.ip_address(ip)
    for r in ranges:
        real, view = ipaddress.ip_network(r["real"]), ipaddress.ip_network(r["view"])
        if addr in real:
            return str(view.network_address + (int(addr) - int(real.network_address)))
    raise AssertionError(f"{ip} is in none of {ranges}")


def _node_nat(node: str, public: str, uplink: str, forwards: list[tuple[str, int, int]],
              sources: list[str]) -> None:
    """The Service (LoadBalancer or NodePort) and the CNI's masquerade, on the node."""
    allow = f"ip saddr {{ {', '.join(sources)} }} " if sources else ""
    rules = "\n".join(f"    {allow}ip daddr {public} {proto} dport {port} dnat to {POD_IP}:{target}"
                      for proto, port, target in forwards)
    sh("nft", "-f", "-", ns=node, input=f"""
table ip svc {{
  chain pre {{
    type nat hook prerouting priority dstnat;
{rules}
  }}
  chain post {{
    type nat hook postrouting priority srcnat;
    ip saddr 10.244.0.0/16 oifname "{uplink}" masquerade
  }}
}}
""")
    sh("sysctl", "-qw", "net.ipv4.ip_forward=1", ns=node)


def _service_forwards(res: list[dict[str, Any]]) -> list[tuple[str, int, int]]:
    """(proto, port peers dial, container port) for each Service port, as kube-proxy would."""
    svc = find(res, "Service", "crosswire-gateway")["spec"]
    dep = find(res, "Deployment", "crosswire-gateway")
    ports = {p["name"]: p["containerPort"]
             for c in dep["spec"]["template"]["spec"]["containers"] for p in c["ports"]}
    key = "nodePort" if svc["type"] == "NodePort" else "port"
    return [(p["protocol"].lower(), p[key], ports[p["targetPort"]]) for p in svc["ports"]]


@pytest.mark.root
@pytest.mark.slow
def test_readme_walkthrough_peers_gpu_and_lab(rendered: Rendered, netns: Namespaces,
                                              tmp_path: Path) -> None:
    require_root("setpriv", "curl", "nft")
    image = kubelet.Image.from_dockerfile(REPO / "Dockerfile")
    inet = netns.add("cwdi")
    clusters: dict[str, dict[str, Any]] = {}
    for name in ("gpu", "lab"):
        res = rendered[name]
        cfg = yaml.safe_load(gateway_config_text(res))
        # The address peers dial is the one the overlay's config advertises.
        public = urlsplit(cfg["api"]["advertise"]).hostname
        assert public == cfg["wireguard"]["endpoint"].rsplit(":", 1)[0]
        node, pod = netns.add(f"cwd{name[0]}n"), netns.add(f"cwd{name[0]}p")
        _, uplink = netns.veth(inet, node, f"{public.rsplit('.', 1)[0]}.1/24", f"{public}/24",
                               name=f"u{name[0]}")
        gw_if, _ = netns.veth(node, pod, f"{NODE_POD_SIDE}/24", f"{POD_IP}/24", name=f"p{name[0]}")
        app = netns.add(f"cwd{name[0]}a")
        netns.veth(node, app, f"{NODE_APP_SIDE}/24", f"{APP_IP}/24", name=f"a{name[0]}")
        sh("ip", "route", "add", "default", "via", f"{public.rsplit('.', 1)[0]}.1", ns=node)
        sh("ip", "route", "add", "default", "via", NODE_POD_SIDE, ns=pod)
        sh("ip", "route", "add", "default", "via", NODE_APP_SIDE, ns=app)
        # loadBalancerSourceRanges, as the cloud load balancer enforces them.
        sources = find(res, "Service", "crosswire-gateway")["spec"].get("loadBalancerSourceRanges", [])
        _node_nat(node, public, uplink, _service_forwards(res), sources)
        clusters[name] = {"res": res, "node": node, "pod": pod, "app": app, "gw_if": gw_if,
                          "iface": uniq("cwdw")}
    sh("sysctl", "-qw", "net.ipv4.ip_forward=1", ns=inet)

    procs: list[subprocess.Popen[str]] = []
    etc_dirs: list[Path] = []
    try:
        for name, c in clusters.items():
            dep = find(c["res"], "Deployment", "crosswire-gateway")
            init = kubelet.prepare(c["res"], dep, "forwarding", image, tmp_path / name, POD_IP,
                                   init=True)
            sh(*kubelet.env_argv(init.env, init.argv), ns=c["pod"])
            # The pod's containers in order: the data plane, then the gateway that adopts it.
            dp = kubelet.prepare(c["res"], dep, "dataplane", image, tmp_path / name, POD_IP,
                                 config_edit={"wireguard.interface": c["iface"]})
            procs.append(subprocess.Popen(dp.in_netns(c["pod"]), stdout=subprocess.PIPE,
                                          stderr=subprocess.STDOUT, text=True))
            c["launch"] = kubelet.prepare(c["res"], dep, "gateway", image, tmp_path / name,
                                          POD_IP, config_edit={"wireguard.interface": c["iface"]})
            c["proc"] = subprocess.Popen(c["launch"].in_netns(c["pod"]), stdout=subprocess.PIPE,
                                         stderr=subprocess.STDOUT, text=True)
            procs.append(c["proc"])
        for name, c in clusters.items():
            code, body = kubelet.wait_http(c["node"], f"http://{POD_IP}:8081/readyz", 120, c["proc"])
            assert code == 200, f"{name} /readyz {code} {body}\n{kubelet.stop(c['proc'])}"

        def crosswire(name: str, *args: str) -> subprocess.CompletedProcess[str]:
            c = clusters[name]
            return sh(*c["launch"].in_netns(c["pod"], [c["launch"].argv[0], *args]), timeout=120)

        # README step 4.
        token = crosswire("gpu", "token", "create", "--ttl", "1h").stdout.strip()
        added = crosswire("lab", "peer", "add", token)
        assert "peered with gpu" in added.stdout, added.stdout

        # README step 5: both sides see the other connected.
        deadline = time.monotonic() + 90
        states: dict[str, Any] = {}
        while time.monotonic() < deadline:
            states = {}
            for name in ("gpu", "lab"):
                peers = json.loads(crosswire(name, "peer", "list", "--json").stdout)
                states[name] = {p["cluster_id"]: p["state"] for p in peers}
            if states == {"gpu": {"lab": "connected"}, "lab": {"gpu": "connected"}}:
                break
            time.sleep(1)
        assert states == {"gpu": {"lab": "connected"}, "lab": {"gpu": "connected"}}, states
        status = crosswire("lab", "status").stdout
        assert status.startswith("cluster lab  ready"), status
        nat = {name: json.loads(crosswire(name, "nat", "show", "--json").stdout)["peers"]
               for name in clusters}
        assert [p["cluster_id"] for p in nat["lab"]] == ["gpu"]
        assert [p["cluster_id"] for p in nat["gpu"]] == ["lab"]

        # The node agents, from the DaemonSet, on every node; the gateway Service's
        # name resolves to the gateway pod (ip netns exec's /etc/netns/<ns>/hosts).
        for name, c in clusters.items():
            ds = find(c["res"], "DaemonSet", "crosswire-agent")
            agent = kubelet.prepare(c["res"], ds, "agent", image, tmp_path / name, NODE_POD_SIDE)
            url = agent.argv[agent.argv.index("--gateway") + 1]
            etc = Path("/etc/netns") / c["node"]
            etc.mkdir(parents=True)
            etc_dirs.append(etc)
            (etc / "hosts").write_text(f"127.0.0.1 localhost\n{POD_IP} {urlsplit(url).hostname}\n")
            procs.append(subprocess.Popen(agent.in_netns(c["node"]), stdout=subprocess.PIPE,
                                          stderr=subprocess.STDOUT, text=True))

        # lab's app pod -> gpu's app pod (same real address) through lab's view of it.
        server = subprocess.Popen(["ip", "netns", "exec", clusters["gpu"]["app"], sys.executable,
                                   "-c", WHOAMI, str(APP_PORT)], stdout=subprocess.PIPE,
                                  stderr=subprocess.STDOUT, text=True)
        procs.append(server)
        target = _translate(APP_IP, nat["lab"][0]["remote"])      # lab's view of gpu's pod
        expected = _translate(APP_IP, nat["gpu"][0]["remote"])    # gpu's view of lab's pod
        assert target != APP_IP and expected != APP_IP  # overlap: both sides remap
        seen = ""
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and seen != expected:
            r = sh("ip", "netns", "exec", clusters["lab"]["app"], sys.executable, "-c", ASK,
                   target, str(APP_PORT), check=False)
            seen = r.stdout.strip()
            if seen != expected:
                time.sleep(1)
        routes = {n: sh("ip", "route", "show", "proto", str(AGENT_PROTO), ns=c["node"]).stdout
                  for n, c in clusters.items()}
        assert seen == expected, f"lab pod -> {target}: server saw {seen!r}; agent routes {routes}"
        for name, c in clusters.items():
            for view in nat[name][0]["remote"]:
                assert f"{view['view']} via {POD_IP} dev {c['gw_if']}" in routes[name], routes

        # README "Remove a peering": one side removes, both sides forget.
        removed = crosswire("lab", "peer", "remove", "gpu").stdout
        assert removed.startswith("removed gpu") and "could not be told" not in removed, removed
        for name in clusters:
            assert json.loads(crosswire(name, "peer", "list", "--json").stdout) == []
    finally:
        outputs = [kubelet.stop(p) for p in procs]
        for c in clusters.values():
            kubelet.cleanup_socket(c["iface"])
        for etc in etc_dirs:
            shutil.rmtree(etc, ignore_errors=True)
    for out in outputs:
        assert "Traceback" not in out, out
        assert token not in out
