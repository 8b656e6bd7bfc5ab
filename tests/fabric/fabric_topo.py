"""Two simulated clusters in namespaces, joined by real WireGuard, programmed by fabric.

Each gateway namespace has pods attached directly by veth (a /32 route per pod,
the gateway's pod address on every pod-facing veth, as Calico-style CNIs do).
The gpu side also has a "node" namespace between the gateway and one pod,
running a kube-proxy stand-in (an nft DNAT from a service IP to that pod).
Underlay 198.18.0.0/24 (benchmark range) between the gateways only.
"""

from __future__ import annotations

import base64
import os
import sys
from dataclasses import dataclass, field
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from nsutil import Namespaces, sh, uniq

from fabric.apply import apply
from fabric.model import FabricState, LocalFabric, PeerFabric, RangeMap
from fabric.wgprocess import Implementation, WgProcess

ECHO = os.path.join(os.path.dirname(__file__), "echo.py")
PORT = 7000


def keypair() -> tuple[str, str]:
    k = X25519PrivateKey.generate()
    priv = k.private_bytes(serialization.Encoding.Raw, serialization.PrivateFormat.Raw,
                           serialization.NoEncryption())
    pub = k.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return base64.b64encode(priv).decode(), base64.b64encode(pub).decode()


def forwarding(ns: str) -> None:
    sh("sysctl", "-qw", "net.ipv4.ip_forward=1", ns=ns)
    sh("sysctl", "-qw", "net.ipv6.conf.all.forwarding=1", ns=ns)


def add_pod(n: Namespaces, host_ns: str, ip4: str, gw4: str, ip6: str | None = None,
            gw6: str | None = None) -> str:
    """A pod namespace hanging off ``host_ns`` by a veth; returns its namespace."""
    pod = n.add("cwp")
    a, b = uniq("vh"), uniq("vp")
    sh("ip", "link", "add", a, "netns", host_ns, "type", "veth", "peer", "name", b, "netns", pod)
    sh("ip", "addr", "add", f"{ip4}/32", "dev", b, ns=pod)
    sh("ip", "link", "set", b, "up", ns=pod)
    sh("ip", "route", "add", f"{gw4}/32", "dev", b, ns=pod)
    sh("ip", "route", "add", "default", "via", gw4, ns=pod)
    sh("ip", "addr", "add", f"{gw4}/32", "dev", a, ns=host_ns)
    sh("ip", "link", "set", a, "up", ns=host_ns)
    sh("ip", "route", "add", f"{ip4}/32", "dev", a, ns=host_ns)
    if ip6 and gw6:
        sh("ip", "addr", "add", f"{ip6}/128", "dev", b, "nodad", ns=pod)
        sh("ip", "-6", "route", "add", f"{gw6}/128", "dev", b, ns=pod)
        sh("ip", "-6", "route", "add", "default", "via", gw6, ns=pod)
        sh("ip", "addr", "add", f"{gw6}/128", "dev", a, "nodad", ns=host_ns)
        sh("ip", "-6", "route", "add", f"{ip6}/128", "dev", a, ns=host_ns)
    return pod


def start_echo(pod: str, name: str) -> None:
    """Background echo server in ``pod`` (killed with the namespace)."""
    import subprocess

    proc = subprocess.Popen(["ip", "netns", "exec", pod, sys.executable, ECHO, "server", name, str(PORT)],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "ready"


def ask(pod: str, proto: str, host: str, nbytes: int = 1, check: bool = True) -> list[str]:
    """Run the echo client in ``pod``; returns [server name, peer ip, port, nbytes, mss]."""
    out = sh(sys.executable, ECHO, "client", proto, host, str(PORT), str(nbytes), ns=pod,
             timeout=30, check=check)
    return out.stdout.split()


@dataclass
class Side:
    cluster_id: str
    gw: str
    wg: str
    endpoint: str
    priv: str
    pub: str
    gateway_ip: str
    dataplane: WgProcess
    pods: dict[str, str] = field(default_factory=dict)
    state: FabricState | None = None


def ranges(pod4: str, svc4: str, pod6: str) -> tuple[tuple[str, str], ...]:
    return (("pod", pod4), ("service", svc4), ("pod", pod6))


REAL = ("10.244.0.0/16", "10.96.0.0/12", "fd00::/48")


def mapping(views: tuple[str, str, str]) -> tuple[RangeMap, ...]:
    return tuple(RangeMap(kind, real, view)  # type: ignore[arg-type]
                 for (kind, real), view in zip(ranges(*REAL), views, strict=True))


def make_state(me: Side, peer: Side, my_views_of_peer: tuple[str, str, str],
               peer_views_of_me: tuple[str, str, str], masquerade: bool = False,
               psk: str | None = None) -> FabricState:
    local = LocalFabric(cluster_id=me.cluster_id, interface=me.wg, listen_port=51820, private_key=me.priv,
                        pod_cidrs=(REAL[0], REAL[2]), service_cidrs=(REAL[1],), gateway_ip=me.gateway_ip,
                        masquerade=masquerade, nft_table="crosswire")
    p = PeerFabric(cluster_id=peer.cluster_id, public_key=peer.pub, endpoint=peer.endpoint,
                   preshared_key=psk, remote=mapping(my_views_of_peer), local=mapping(peer_views_of_me),
                   persistent_keepalive=0)
    return FabricState(local=local, peers=(p,))


def make_side(n: Namespaces, cluster_id: str, underlay: str, gateway_ip: str,
              implementation: Implementation) -> Side:
    gw = n.add("cwg")
    forwarding(gw)
    wg = uniq("cww")
    priv, pub = keypair()
    dp = WgProcess(wg, implementation, 1420, netns=gw)
    return Side(cluster_id, gw, wg, f"{underlay}:51820", priv, pub, gateway_ip, dp)


def program(side: Side, state: FabricState) -> None:
    apply(state, side.state, netns=side.gw)
    side.state = state


def start_wg(dp_ns: tuple[str, list[WgProcess]], prefix: str) -> tuple[str, str]:
    """A wireguard-go interface up in the ``dp_ns`` namespace (stopped by the fixture)."""
    ns, made = dp_ns
    wg = uniq(prefix)
    dp = WgProcess(wg, "wireguard-go", 1420, netns=ns)
    made.append(dp)
    dp.ensure_up()
    return ns, wg


def summed(rows: list[dict[str, Any]]) -> list[tuple[str, str, int, int, int]]:
    """Per peer and chain the sums of report rows' counters, as /metrics exports them
    (what ``fabric.nat.totals`` must give without the rows)."""
    out: list[tuple[str, str, int, int, int]] = []
    for m in rows:
        chains: dict[str, list[int]] = {}
        for r in m["rules"]:
            c = chains.setdefault(r["chain"], [0, 0, 0])
            c[0] += r["packets"]
            c[1] += r["bytes"]
            c[2] += r["connections"] or 0
        out += [(m["cluster_id"], chain, pk, by, cn) for chain, (pk, by, cn) in sorted(chains.items())]
    return out
