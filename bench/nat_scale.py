#!/usr/bin/env python3
"""NAT scale benchmark (issue 4, "Benchmarks", first bullet). Run as root.

1. Programs 1, 100 and 1000 peers (all on the same ranges: pods 10.244.0.0/16,
   services 10.96.0.0/16; distinct views of each from a synthetic pool
   32.0.0.0/5, used only inside the benchmark's namespaces) into a gateway
   namespace with ``fabric.apply.apply``: WireGuard peers through the UAPI of a
   real wireguard-go interface, routes, and the nft table. Each apply is timed
   (``apply_s_N``), with the nft part alone as ``nft_s_N``.
2. TCP throughput (iperf3) from a pod through the NAT path to peer 0, with the
   table holding 1 and then 1000 peers. The "tunnel" is a veth named as the
   table's interface (same table, rendered for that interface): a real
   wireguard-go tunnel on this 2-core shared machine is CPU-bound and noisy,
   and the question is what the table costs, not what WireGuard costs.
   Two identical paths (gateway, pod, veth tunnel, remote) carry one table
   each, 1 and 1000 peers, and are measured at the same time so both see
   the same background load; ``ratio`` is the median of the per-round
   ratios. A control (both paths with 1 peer) first shows the noise floor
   (``control_ratio``/``control_range``): on a shared 2-core box it is wide.

Last line: JSON with apply_s_1, apply_s_100, apply_s_1000, apply_s_change1 (one
peer of 1000 changed), mbps_1, mbps_1000, ratio.

``--sparse`` (issue 23) measures instead only the nft table, render + apply, in
one namespace (no WireGuard, no routes, no traffic): a hub viewing 1000 peers
sparse (each: 20 exported addresses and its gateway as adjacent /32 views, and
a /28 egress block, in ``remote``; the peers' full views of the hub's pods and
services in ``local``; ``sparse_unaligned``: the views placed so they collapse
into 7 keys instead of 3), the same hub with the peers also viewing it sparse
(``sparse_both``, ``local``: one export, the gateway, a /28 block;
``sparse_both20``: 20 exports), and 1000 full-mode peers; for
each the whole table and a one-peer delta (one more export; full mode: one
view moved), medians of ``--rounds``. Last line: JSON.
"""

from __future__ import annotations

import argparse
import base64
import dataclasses
import ipaddress
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from iperfpair import figures, measure

from fabric import nat
from fabric.apply import apply
from fabric.model import FabricState, LocalFabric, PeerFabric, RangeMap
from fabric.nat import pieces
from fabric.nft import Nft
from fabric.routes import sync_routes
from fabric.wgprocess import WgProcess

POOL = ipaddress.ip_network("32.0.0.0/5")


def sh(*cmd: str, ns: str | None = None, check: bool = True, timeout: float = 120) -> str:
    full = (["ip", "netns", "exec", ns] if ns else []) + list(cmd)
    p = subprocess.run(full, capture_output=True, text=True, timeout=timeout)
    if check and p.returncode != 0:
        raise RuntimeError(f"{' '.join(full)}: {p.stderr.strip()}")
    return p.stdout


def key() -> tuple[str, str]:
    k = X25519PrivateKey.generate()
    raw = k.private_bytes(serialization.Encoding.Raw, serialization.PrivateFormat.Raw,
                          serialization.NoEncryption())
    pub = k.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return base64.b64encode(raw).decode(), base64.b64encode(pub).decode()


def view(i: int) -> str:
    return str(list(POOL.subnets(new_prefix=16))[i])


def peers(n: int, pubs: list[str]) -> tuple[PeerFabric, ...]:
    subnets = list(POOL.subnets(new_prefix=16))
    out = []
    for i in range(n):
        out.append(PeerFabric(
            cluster_id=f"peer{i:04d}", public_key=pubs[i], endpoint=f"198.18.{i // 250}.{i % 250 + 1}:51820",
            remote=(RangeMap("pod", "10.244.0.0/16", str(subnets[2 * i])),
                    RangeMap("service", "10.96.0.0/16", str(subnets[2 * i + 1]))),
            local=(RangeMap("pod", "10.244.0.0/16", "100.65.0.0/16"),
                   RangeMap("service", "10.96.0.0/16", "100.66.0.0/16")),
            persistent_keepalive=0))
    return tuple(out)


def _cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def iperf(client_ns: str, server_ip: str, seconds: int) -> float:
    out = sh("iperf3", "-c", server_ip, "-t", str(seconds), "-J", ns=client_ns, timeout=seconds + 30)
    return float(json.loads(out)["end"]["sum_received"]["bits_per_second"]) / 1e6


def build_path(made: list[str], label: str, target: str | None = None) -> tuple[str, str, str, str]:
    """gateway, pod and remote namespaces; a veth "tunnel" ``tun`` to peer 0's pod
    (``target``: the address the remote end answers as, default peer 0's pod .7).

    Returns (gateway ns, pod ns, tunnel interface, peer 0 pod address as we view it).
    """
    tag = os.urandom(3).hex()
    gw, pod, remote, tun = f"cwb{label}g{tag}", f"cwb{label}p{tag}", f"cwb{label}r{tag}", f"cwbt{label}{tag}"
    for ns in (gw, pod, remote):
        sh("ip", "netns", "add", ns)
        made.append(ns)
        sh("ip", "link", "set", "lo", "up", ns=ns)
    sh("sysctl", "-qw", "net.ipv4.ip_forward=1", ns=gw)
    # pod <-> gateway: the pod is 10.244.1.5, the gateway's pod address 10.244.0.1.
    sh("ip", "link", "add", "eth0", "netns", pod, "type", "veth", "peer", "name", "pod0", "netns", gw)
    sh("ip", "addr", "add", "10.244.1.5/32", "dev", "eth0", ns=pod)
    sh("ip", "link", "set", "eth0", "up", ns=pod)
    sh("ip", "route", "add", "10.244.0.1/32", "dev", "eth0", ns=pod)
    sh("ip", "route", "add", "default", "via", "10.244.0.1", ns=pod)
    sh("ip", "addr", "add", "10.244.0.1/32", "dev", "pod0", ns=gw)
    sh("ip", "link", "set", "pod0", "up", ns=gw)
    sh("ip", "route", "add", "10.244.1.5/32", "dev", "pod0", ns=gw)
    # The remote end answers as peer 0's pod (view 32.0.0.0/16, host .7).
    target = target or str(ipaddress.ip_network(view(0)).network_address + 7)
    sh("ip", "link", "add", tun, "netns", gw, "type", "veth", "peer", "name", "eth0", "netns", remote)
    sh("ip", "link", "set", tun, "mtu", "1420", "up", ns=gw)
    sh("ip", "addr", "add", f"{target}/32", "dev", "eth0", ns=remote)
    sh("ip", "link", "set", "eth0", "mtu", "1420", "up", ns=remote)
    # Link addresses so the L2 veth resolves neighbours both ways (a WireGuard tun is L3).
    sh("ip", "addr", "add", "169.254.77.1/30", "dev", tun, ns=gw)
    sh("ip", "addr", "add", "169.254.77.2/30", "dev", "eth0", ns=remote)
    sh("ip", "route", "add", "100.65.0.0/16", "via", "169.254.77.1", ns=remote)
    subprocess.Popen(["ip", "netns", "exec", remote, "iperf3", "-s", "-B", target],
                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # killed with the namespace
    return gw, pod, tun, target


def ours(exports: int) -> tuple[RangeMap, ...]:
    """A peer's sparse view of the hub: ``exports`` services, the gateway, a /28 block."""
    return (*(RangeMap("export", f"10.96.{k}.10/32", f"100.66.0.{10 + k}/32") for k in range(exports)),
            RangeMap("gateway", "10.244.0.1/32", "100.66.0.6/32"), RangeMap("egress", "0.0.0.0/28", "100.67.0.0/28"))


def sparse_peers(n: int, pubs: list[str], both: bool, aligned: bool = True,
                 exports: int = 1) -> tuple[PeerFabric, ...]:
    """Peer i's sparse views in its own /26 of the pool. Aligned (an IPAM handing each
    peer adjacent addresses from a fresh pool): the egress /28 at .0, exports at .16-.35,
    the gateway at .36 (3 map keys). Not aligned: exports at .1-.20, gateway .21,
    block .48/28 (7 keys)."""
    out = []
    first, gateway, block = (16, 36, 0) if aligned else (1, 21, 48)
    for i in range(n):
        base = int(POOL.network_address) + 64 * i

        def a(k: int, base: int = base) -> str:
            return str(ipaddress.IPv4Address(base + k))

        remote = tuple(RangeMap("export", f"10.96.{k}.10/32", f"{a(first + k)}/32") for k in range(20))
        remote += (RangeMap("gateway", "10.244.0.1/32", f"{a(gateway)}/32"),
                   RangeMap("egress", "0.0.0.0/28", f"{a(block)}/28"))
        local = ours(exports) if both else (RangeMap("pod", "10.244.0.0/16", "100.65.0.0/16"),
                                            RangeMap("service", "10.96.0.0/16", "100.66.0.0/16"))
        out.append(PeerFabric(cluster_id=f"peer{i:04d}", public_key=pubs[i], endpoint=None, remote=remote, local=local,
                              persistent_keepalive=0))
    return tuple(out)


def sparse_main(rounds: int) -> int:
    """Render + apply of the whole nft table and of a one-peer delta: sparse vs full."""
    made: list[str] = []
    try:
        ns = f"cwbs{os.urandom(3).hex()}"
        sh("ip", "netns", "add", ns)
        made.append(ns)
        nft = Nft(ns)
        pubs = [key()[1] for _ in range(1000)]
        local = LocalFabric(cluster_id="hub", interface="cwbwg0", listen_port=51820, private_key=key()[0],
                            pod_cidrs=("10.244.0.0/16",), service_cidrs=("10.96.0.0/16",), gateway_ip="10.244.0.1")
        result: dict[str, Any] = {"peers": 1000}
        for mode in ("sparse", "sparse_unaligned", "sparse_both", "sparse_both20", "full"):
            peers_ = (peers(1000, pubs) if mode == "full" else
                      sparse_peers(1000, pubs, mode.startswith("sparse_both"), mode != "sparse_unaligned",
                                   20 if mode == "sparse_both20" else 1))
            state = FabricState(local, peers_)
            moved = list(state.peers)
            if mode == "full":
                moved[1] = dataclasses.replace(moved[1], local=(RangeMap("pod", "10.244.0.0/16", "100.67.0.0/16"),
                                                                moved[1].local[1]))
            else:  # one more export, next to the others
                extra = str(ipaddress.IPv4Address(int(POOL.network_address) + 64 + 37 + 3 * (mode == "sparse_unaligned")))
                moved[1] = dataclasses.replace(moved[1], remote=(*moved[1].remote,
                                                                 RangeMap("export", "10.96.99.10/32", f"{extra}/32")))
            changed = FabricState(local, tuple(moved))
            times: dict[str, list[float]] = {k: [] for k in ("render", "nft", "delta_render", "delta_nft",
                                                             "nft_cpu", "delta_nft_cpu")}
            text = ""
            for _ in range(rounds):
                # Render from scratch (every peer new); the delta below then finds
                # the unchanged peers' pieces kept, as an apply after this one would.
                nat.build.cache_clear()
                pieces.peer_pieces.cache_clear()
                t0 = time.perf_counter()
                text = nat.render_text(state)
                t1, c1 = time.perf_counter(), _cpu()
                nft.apply(text)  # libnftables parses in this process: its CPU time is ours
                t2, c2 = time.perf_counter(), _cpu()
                delta = nat.render_delta(state, changed)  # builds (validates) the changed state too
                t3, c3 = time.perf_counter(), _cpu()
                assert delta is not None
                nft.apply(delta)  # raises if the kernel refuses it
                t4, c4 = time.perf_counter(), _cpu()
                times["render"].append(t1 - t0)
                times["nft"].append(t2 - t1)
                times["nft_cpu"].append(c2 - c1)
                times["delta_render"].append(t3 - t2)
                times["delta_nft"].append(t4 - t3)
                times["delta_nft_cpu"].append(c4 - c3)
            for k, v in times.items():
                result[f"{mode}_{k}_s"] = round(statistics.median(v), 3)
            result[f"{mode}_whole_s"] = round(result[f"{mode}_render_s"] + result[f"{mode}_nft_s"], 3)
            result[f"{mode}_delta_s"] = round(result[f"{mode}_delta_render_s"] + result[f"{mode}_delta_nft_s"], 3)
            result[f"{mode}_batch_kb"] = len(text) // 1024
            result[f"{mode}_rules"] = text.count('{"add":{"rule":')
            result[f"{mode}_keys_per_map"] = sum(len(p.keys) for p in nat.build(state).peers)
            print(f"{mode:12s}: whole table {result[f'{mode}_whole_s']:.3f} s (render {result[f'{mode}_render_s']:.3f}"
                  f" + nft {result[f'{mode}_nft_s']:.3f}, {result[f'{mode}_nft_cpu_s']:.3f} CPU), one-peer delta {result[f'{mode}_delta_s']:.3f} s, "
                  f"batch {result[f'{mode}_batch_kb']} KB", flush=True)
        result["loadavg_1m"] = round(os.getloadavg()[0], 2)
        print(json.dumps(result), flush=True)
        return 0
    finally:
        for ns in made:
            sh("ip", "netns", "del", ns, check=False)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seconds", type=int, default=3, help="iperf3 duration per run")
    ap.add_argument("--rounds", type=int, default=6, help="concurrent throughput rounds (control and 1/1000)")
    ap.add_argument("--implementation", default="wireguard-go", help="WireGuard for the apply timing")
    ap.add_argument("--sparse", action="store_true", help="only the nft table: sparse hub vs full (issue 23)")
    ap.add_argument("--shape", choices=("full", "sparse"), default="full",
                    help="the peers of the apply and throughput runs: full views, or a sparse hub's "
                         "(20 export /32s, a gateway /32, a /28 egress block each; iperf3 to peer 0's first export)")
    args = ap.parse_args()
    if os.geteuid() != 0:
        sys.exit("nat_scale: needs root (network namespaces)")
    if args.sparse:
        return sparse_main(min(args.rounds, 5))
    made: list[str] = []
    dp: WgProcess | None = None
    make = peers if args.shape == "full" else lambda n, pubs: sparse_peers(n, pubs, both=False)
    target = None if args.shape == "full" else str(ipaddress.ip_network(make(1, ["x"])[0].remote[0].view).network_address)
    try:
        one = build_path(made, "a", target)   # table with 1 peer
        many = build_path(made, "b", target)  # table with 1000 peers; also where apply is timed
        gw = many[0]
        wg = f"cwbw{os.urandom(3).hex()}"
        dp = WgProcess(wg, args.implementation, 1420, netns=gw)
        dp.ensure_up()
        priv, _ = key()
        pubs = [key()[1] for _ in range(1000)]
        local = LocalFabric(cluster_id="bench", interface=wg, listen_port=51820, private_key=priv,
                            pod_cidrs=("10.244.0.0/16",), service_cidrs=("10.96.0.0/16",), gateway_ip="10.244.0.1")
        result: dict[str, Any] = {}
        previous: FabricState | None = None
        for n in (1, 100, 1000):
            state = FabricState(local, make(n, pubs))
            t0, c0 = time.perf_counter(), _cpu()
            apply(state, previous, netns=gw)
            result[f"apply_s_{n}"] = round(time.perf_counter() - t0, 3)
            result[f"apply_cpu_s_{n}"] = round(_cpu() - c0, 3)
            t0 = time.perf_counter()
            Nft(gw).apply(nat.render_text(state))  # what apply sends
            result[f"nft_s_{n}"] = round(time.perf_counter() - t0, 3)
            previous = state
            print(f"{n:5d} peers: apply {result[f'apply_s_{n}']:.3f} s wall, "
                  f"{result[f'apply_cpu_s_{n}']:.3f} s CPU in this process "
                  f"(render + nft table alone {result[f'nft_s_{n}']:.3f} s)", flush=True)
        # One peer changed among 1000 (its view of our pods): apply rewrites only
        # that peer's chains, rules and elements (nat.render_delta).
        state = FabricState(local, make(1000, pubs))
        moved = list(state.peers)
        if args.shape == "full":
            moved[1] = dataclasses.replace(moved[1], local=(RangeMap("pod", "10.244.0.0/16", "100.67.0.0/16"),
                                                            moved[1].local[1]))
        else:  # one more export of peer 1, next to its others
            moved[1] = dataclasses.replace(moved[1], remote=(*moved[1].remote, RangeMap(
                "export", "10.96.99.10/32", f"{ipaddress.IPv4Address(int(POOL.network_address) + 64 + 37)}/32")))
        t0 = time.perf_counter()
        apply(FabricState(local, tuple(moved)), state, netns=gw)
        result["apply_s_change1"] = round(time.perf_counter() - t0, 3)
        apply(state, FabricState(local, tuple(moved)), netns=gw)  # back to the 1000-peer state
        print(f"1 of 1000 peers changed: apply {result['apply_s_change1']:.3f} s wall", flush=True)
        listing = sh("nft", "list", "table", "inet", "crosswire", ns=gw)
        print(f"table with 1000 peers: {listing.count(' counter ')} counters, "
              f"{listing.count('chain ')} chains; routes: "
              f"{len(sh('ip', 'route', 'show', 'proto', '245', ns=gw).splitlines())}", flush=True)

        # Throughput: the same table rendered for each path's veth tunnel; both
        # paths run at the same time so they share whatever else loads the box.
        def program(path: tuple[str, str, str, str], n: int) -> None:
            g, _pod, tun, _t = path
            Nft(g).apply(nat.render_text(FabricState(dataclasses.replace(local, interface=tun), make(n, pubs))))
            sync_routes(tun, [view(0) if target is None else f"{target}/32"], netns=g)

        clients = [["ip", "netns", "exec", p[1], "iperf3", "-c", p[3]] for p in (one, many)]

        # Control first: both paths with 1 peer, to show the noise of the box.
        program(one, 1)
        program(many, 1)
        time.sleep(0.3)  # iperf3 servers up
        _, _, control = measure(clients, args.rounds, args.seconds, "control, 1 vs 1 peer")
        program(many, 1000)
        runs1, runs1000, ratios = measure(clients, args.rounds, args.seconds, "1 vs 1000 peers")
        counted = sh("nft", "list", "chain", "inet", "crosswire", "to-peer0000", ns=gw)
        assert "packets 0 " not in counted.splitlines()[1], "traffic did not take the NAT path"
        result.update(figures(runs1, runs1000, ratios, control))
        result["tunnel"] = "veth"
        result["shape"] = args.shape
        result["loadavg_1m"] = round(os.getloadavg()[0], 2)
        print(json.dumps(result), flush=True)
        return 0
    finally:
        if dp is not None:
            dp.stop()
        for ns in reversed(made):
            pids = sh("ip", "netns", "pids", ns, check=False).split()
            for pid in pids:
                subprocess.run(["kill", "-9", pid], capture_output=True)
            sh("ip", "netns", "del", ns, check=False)


if __name__ == "__main__":
    sys.exit(main())
