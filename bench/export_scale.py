#!/usr/bin/env python3
"""Export policy scale benchmark (issue 10, item 7). Run as root.

1. Programs the export table (``fabric.exports.apply``) for 1000 peers with 20
   exports each (distinct addresses per peer, one port each) into a gateway
   namespace: the whole table (``apply_s_1000``), then one peer's exports
   changed among 1000 (``apply_s_change1``, the delta the gateway sends when
   an admin changes one peer's share). The same for 1 peer for reference.
2. TCP throughput (iperf3) *from* peer 0's pod *into* our pod: the direction
   the policy filters, every packet looked up in the allowed set. Same harness
   as ``bench/nat_scale.py`` (a veth stands in for the tunnel, two identical
   paths measured at the same time, a control with the same table on both
   first): path A holds the NAT table and the export table for 1 peer, path B
   for 1000 peers x 20 exports. ``ratio`` = median of B/A over the rounds.
   A port peer 0 was not given is checked to be refused on both paths.

Last line: JSON with apply_s_1, apply_s_1000, apply_s_change1, elements_1000,
mbps_1, mbps_1000, ratio, control_ratio.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from typing import Any

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from iperfpair import figures, measure
from nat_scale import build_path, key, peers, sh, view

from fabric import nat
from fabric.exports import apply as exportsapply
from fabric.exports import policy as exportpolicy
from fabric.exports.model import Allowed, ExportPolicy, PeerExports, PeerGuard, PolicyTable
from fabric.model import FabricState, LocalFabric
from fabric.nft import Nft
from fabric.routes import sync_routes

PORT = 5201
EXPORTS = 20


def policy(n: int, interface: str, tweak: int | None = None) -> ExportPolicy:
    """n peers, 20 exports each; peer 0 may reach our pod 10.244.1.5 on PORT (its last export)."""
    out = []
    for i in range(n):
        allowed = [Allowed(f"10.244.{k + 2}.{i % 250 + 1}/32", "tcp", 8000 + k) for k in range(EXPORTS - 1)]
        allowed.append(Allowed("10.244.1.5/32", "tcp", PORT) if i == 0 else Allowed(f"10.244.1.{i % 250 + 6}/32",
                                                                                      "udp", 53))
        if tweak == i:
            allowed[0] = Allowed(f"10.244.2.{i % 250 + 1}/32", "tcp", 9000)
        out.append(PeerExports(f"peer{i:04d}", (view(2 * i),), tuple(allowed)))
    return ExportPolicy(interface=interface, table=exportpolicy.table_name("crosswire"), peers=tuple(out))


def table(pol: ExportPolicy) -> PolicyTable:
    """The policy table of ``pol`` (its peers' guards keyed by the same views; no health port)."""
    return PolicyTable(pol.interface, pol.table, None, tuple(PeerGuard(p.cluster_id, p.sources) for p in pol.peers),
                       pol)


def refused(remote: str, src: str, port: int) -> bool:
    code = (f"import socket,sys\ns=socket.socket();s.settimeout(1.5);s.bind(({src!r},0))\n"
            f"try: s.connect(('100.65.1.5',{port}))\nexcept Exception: sys.exit(0)\nsys.exit(1)\n")
    return subprocess.run(["ip", "netns", "exec", remote, sys.executable, "-c", code], timeout=20).returncode == 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seconds", type=int, default=3, help="iperf3 duration per run")
    ap.add_argument("--rounds", type=int, default=6, help="concurrent throughput rounds (control and 1/1000)")
    args = ap.parse_args()
    if os.geteuid() != 0:
        sys.exit("export_scale: needs root (network namespaces)")
    made: list[str] = []
    servers: list[subprocess.Popen[bytes]] = []
    try:
        one = build_path(made, "a")
        many = build_path(made, "b")
        priv, _ = key()
        pubs = [key()[1] for _ in range(1000)]
        result: dict[str, Any] = {}
        gw, tun = many[0], many[2]
        for n in (1, 1000):
            pol = policy(n, tun)
            t0 = time.perf_counter()
            exportsapply.apply(table(pol), None, Nft(gw))
            result[f"apply_s_{n}"] = round(time.perf_counter() - t0, 3)
            print(f"{n:5d} peers x {EXPORTS} exports: whole export table {result[f'apply_s_{n}']:.3f} s", flush=True)
        base = policy(1000, tun)
        result["elements_1000"] = sum(len(exportpolicy.allowed_elements(p, 4)) for p in base.peers)
        t0 = time.perf_counter()
        exportsapply.apply(table(policy(1000, tun, tweak=7)), table(base), Nft(gw))
        result["apply_s_change1"] = round(time.perf_counter() - t0, 3)
        print(f"1 of 1000 peers' exports changed: {result['apply_s_change1']:.3f} s (delta)", flush=True)

        def program(path: tuple[str, str, str, str], n: int) -> None:
            g, _pod, t, _target = path
            local = LocalFabric(cluster_id="bench", interface=t, listen_port=51820, private_key=priv,
                                pod_cidrs=("10.244.0.0/16",), service_cidrs=("10.96.0.0/16",),
                                gateway_ip="10.244.0.1")
            Nft(g).apply(nat.render_text(FabricState(local, peers(n, pubs))))
            exportsapply.apply(table(policy(n, t)), None, Nft(g))
            sync_routes(t, [view(0)], netns=g)

        # iperf3 servers in our pods; clients in peer 0's pod (the remote end), so the
        # data flows in through the export policy.
        for p in (one, many):
            servers.append(subprocess.Popen(["ip", "netns", "exec", p[1], "iperf3", "-s", "-B", "10.244.1.5"],
                                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        remotes = [next(ns for ns in made if ns.startswith(f"cwb{label}r")) for label in ("a", "b")]

        clients = [["ip", "netns", "exec", r, "iperf3", "-c", "100.65.1.5", "-B", p[3]]
                   for r, p in zip(remotes, (one, many), strict=True)]

        program(one, 1)
        program(many, 1)
        time.sleep(0.3)
        _, _, control = measure(clients, args.rounds, args.seconds, "control, 1 vs 1 peer")
        program(many, 1000)
        for r, p in zip(remotes, (one, many), strict=True):
            assert refused(r, p[3], PORT + 1), "a port peer 0 was not given got through"
        runs1, runs1000, ratios = measure(clients, args.rounds, args.seconds, "1 vs 1000 peers x 20 exports")
        denied = exportsapply.denied(table(policy(1000, tun)), Nft(gw))["peer0000"]["packets"]
        assert denied >= 1, "the refused connection was not counted"
        result.update(figures(runs1, runs1000, ratios, control))
        result["tunnel"] = "veth"
        result["loadavg_1m"] = round(os.getloadavg()[0], 2)
        print(json.dumps(result), flush=True)
        return 0
    finally:
        for s in servers:
            s.kill()
            s.wait()
        for ns in reversed(made):
            for pid in sh("ip", "netns", "pids", ns, check=False).split():
                subprocess.run(["kill", "-9", pid], capture_output=True)
            sh("ip", "netns", "del", ns, check=False)


if __name__ == "__main__":
    sys.exit(main())
