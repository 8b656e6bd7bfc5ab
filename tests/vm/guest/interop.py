"""Inside the VM: crosswire-wg <-> kernel WireGuard, each in a namespace of its own.

The kernel side is driven by fabric.wgnetlink (the gateway's netlink control),
crosswire-wg by ``wg`` over its UAPI socket. Phase 1: outer IPv4, only the
kernel side knows the other's endpoint (so the kernel initiates); phase 2:
fresh peers, outer IPv6, only crosswire-wg knows the endpoint (it initiates).
Each phase: inner v4 and v6 pings both ways, full-MTU pings (DF), and a
checksummed TCP transfer of a few MB each way. Finally ``wg show`` on both
sides must agree. Prints one JSON line: {"ok": bool, "checks": [...], ...}.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import sys
import threading
import time
from pathlib import Path
from typing import Any

from guestkit import check, run  # first: it puts the checkout and tests/ on sys.path
from nsutil import namespaces, sh

from fabric.model import LocalFabric, PeerFabric, RangeMap
from fabric.nft import in_netns
from fabric.wgnetlink import NetlinkWgControl

BIN = Path(sys.executable).parent
MTU = 1420
MB = int(os.environ.get("CROSSWIRE_VM_TRANSFER_MB", "4"))


def keypair() -> tuple[str, str]:
    priv = sh("wg", "genkey").stdout.strip()
    return priv, sh("wg", "pubkey", input=priv + "\n").stdout.strip()


def ping(ns: str, dst: str, size: int | None = None, count: int = 2, wait: int = 3) -> bool:
    args = ["ping", "-n", "-c", str(count), "-W", str(wait)]
    if size is not None:
        args += ["-M", "do", "-s", str(size)]
    return sh(*args, dst, ns=ns, check=False, timeout=60).returncode == 0


def transfer(src_ns: str, dst_ns: str, dst_ip: str, size: int) -> tuple[bool, str]:
    """``size`` random bytes over TCP from src_ns to dst_ns; compared by SHA-256."""
    data = os.urandom(size)
    fam = socket.AF_INET6 if ":" in dst_ip else socket.AF_INET
    lsock = in_netns(dst_ns, lambda: socket.socket(fam, socket.SOCK_STREAM))
    lsock.bind((dst_ip, 0))
    lsock.listen(1)
    lsock.settimeout(120)
    port = lsock.getsockname()[1]
    got: list[str] = []

    def serve() -> None:
        conn, _ = lsock.accept()
        conn.settimeout(120)
        h = hashlib.sha256()
        n = 0
        while True:
            chunk = conn.recv(65536)
            if not chunk:
                break
            h.update(chunk)
            n += len(chunk)
        conn.close()
        got.append(f"{n}:{h.hexdigest()}")

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    c = in_netns(src_ns, lambda: socket.socket(fam, socket.SOCK_STREAM))
    c.settimeout(120)
    t0 = time.monotonic()
    c.connect((dst_ip, port))
    c.sendall(data)
    c.close()
    t.join(150)
    lsock.close()
    want = f"{size}:{hashlib.sha256(data).hexdigest()}"
    secs = time.monotonic() - t0
    return (got == [want]), f"{size} bytes in {secs:.1f} s, sha256 {'match' if got == [want] else got}"


def wg_dump(ns: str, iface: str) -> dict[str, dict[str, Any]]:
    peers = {}
    for line in sh("wg", "show", iface, "dump", ns=ns).stdout.splitlines()[1:]:
        f = line.split("\t")
        peers[f[0]] = {"endpoint": f[2], "allowed": sorted(f[3].split(",")), "handshake": int(f[4]),
                       "rx": int(f[5]), "tx": int(f[6])}
    return peers


def main() -> dict[str, Any]:
    out: dict[str, Any] = {}
    with namespaces() as n:
        k, u = n.add("kns"), n.add("uns")
        veth_k, veth_u = n.veth(k, u, "198.18.0.1/24", "198.18.0.2/24", name="x")
        sh("ip", "addr", "add", "fd01::1/64", "dev", veth_k, "nodad", ns=k)
        sh("ip", "addr", "add", "fd01::2/64", "dev", veth_u, "nodad", ns=u)
        kpriv, kpub = keypair()
        upriv, upub = keypair()

        # kernel side
        sh("ip", "link", "add", "wgk", "type", "wireguard", ns=k)
        ctl = NetlinkWgControl("wgk", netns=k)
        # crosswire-wg side
        t = time.monotonic()
        sh(str(BIN / "crosswire-wg"), "wgu", ns=u, timeout=180)  # returns once TUN + socket exist
        out["crosswire_wg_start_s"] = round(time.monotonic() - t, 1)
        keyfile = Path("/run/cw-vm-ukey")
        keyfile.write_text(upriv + "\n")
        os.chmod(keyfile, 0o600)
        sh("wg", "set", "wgu", "private-key", str(keyfile), "listen-port", "51820", ns=u)
        keyfile.unlink()
        for ns, iface, a4, a6 in ((k, "wgk", "10.9.0.1/24", "fd09::1/64"), (u, "wgu", "10.9.0.2/24", "fd09::2/64")):
            sh("ip", "addr", "add", a4, "dev", iface, ns=ns)
            sh("ip", "addr", "add", a6, "dev", iface, "nodad", ns=ns)
            sh("ip", "link", "set", iface, "mtu", str(MTU), "up", ns=ns)

        local = LocalFabric(cluster_id="k", interface="wgk", listen_port=51820, private_key=kpriv, mtu=MTU)
        upeer = [RangeMap("pod", "10.9.0.2/32", "10.9.0.2/32"), RangeMap("pod", "fd09::2/128", "fd09::2/128")]

        def kernel_peer(endpoint: str | None) -> PeerFabric:
            return PeerFabric(cluster_id="u", public_key=upub, endpoint=endpoint, remote=tuple(upeer),
                              persistent_keepalive=0)

        for phase, (outer_k, outer_u, initiator) in enumerate(
                (("198.18.0.1", "198.18.0.2", "kernel"), ("fd01::1", "fd01::2", "crosswire-wg")), start=1):
            tag = f"phase {phase} (outer v{'6' if ':' in outer_k else '4'}, {initiator} initiates)"
            # Fresh peers on both sides: no session survives from the previous phase.
            ctl.sync(local, [])
            sh("wg", "set", "wgu", "peer", kpub, "remove", ns=u)
            ep_u = f"[{outer_u}]:51820" if ":" in outer_u else f"{outer_u}:51820"
            ep_k = f"[{outer_k}]:51820" if ":" in outer_k else f"{outer_k}:51820"
            ctl.sync(local, [kernel_peer(ep_u if initiator == "kernel" else None)])
            uargs = ["wg", "set", "wgu", "peer", kpub, "allowed-ips", "10.9.0.1/32,fd09::1/128"]
            if initiator == "crosswire-wg":
                uargs += ["endpoint", ep_k]
            sh(*uargs, ns=u)
            first_ns, first_dst = (k, "10.9.0.2") if initiator == "kernel" else (u, "10.9.0.1")
            check(f"{tag}: first ping v4 from the initiator", ping(first_ns, first_dst, count=3))
            check(f"{tag}: ping v4 kernel -> crosswire-wg", ping(k, "10.9.0.2"))
            check(f"{tag}: ping v4 crosswire-wg -> kernel", ping(u, "10.9.0.1"))
            check(f"{tag}: ping v6 kernel -> crosswire-wg", ping(k, "fd09::2"))
            check(f"{tag}: ping v6 crosswire-wg -> kernel", ping(u, "fd09::1"))
            check(f"{tag}: full-MTU v4 both ways (DF, {MTU - 28} B payload)",
                  ping(k, "10.9.0.2", MTU - 28) and ping(u, "10.9.0.1", MTU - 28))
            check(f"{tag}: full-MTU v6 both ways ({MTU - 48} B payload)",
                  ping(k, "fd09::2", MTU - 48) and ping(u, "fd09::1", MTU - 48))
            check(f"{tag}: one byte over the MTU refused (DF)", not ping(k, "10.9.0.2", MTU - 27, count=1, wait=1))
            dev = ctl.device()
            kp = dev.peers.get(upub)
            check(f"{tag}: kernel (netlink) sees the crosswire-wg peer's endpoint and a handshake",
                  kp is not None and kp.last_handshake > 0 and kp.endpoint == ep_u,
                  f"endpoint {kp.endpoint if kp else None}")
            inner = ("10.9.0.2", "10.9.0.1") if phase == 1 else ("fd09::2", "fd09::1")
            ok, detail = transfer(k, u, inner[0], MB << 20)
            check(f"{tag}: {MB} MB kernel -> crosswire-wg, checksummed", ok, detail)
            ok, detail = transfer(u, k, inner[1], MB << 20)
            check(f"{tag}: {MB} MB crosswire-wg -> kernel, checksummed", ok, detail)

        time.sleep(1)  # let the last acknowledgements land before comparing counters
        dk, du = wg_dump(k, "wgk"), wg_dump(u, "wgu")
        pk, pu = dk.get(upub), du.get(kpub)
        out["wg_show"] = {"kernel": pk, "crosswire_wg": pu}
        agree = (pk is not None and pu is not None and set(dk) == {upub} and set(du) == {kpub}
                 and pk["allowed"] == ["10.9.0.2/32", "fd09::2/128"]
                 and pu["allowed"] == ["10.9.0.1/32", "fd09::1/128"]
                 and pk["handshake"] > 0 and pu["handshake"] > 0
                 and pk["endpoint"] == "[fd01::2]:51820" and pu["endpoint"] == "[fd01::1]:51820")
        check("wg show: both sides agree on keys, allowed IPs, endpoints and handshakes", agree, json.dumps(out["wg_show"]))
        if pk and pu:
            # Both count whole WireGuard messages; what one sent the other received.
            d1, d2 = abs(pk["tx"] - pu["rx"]), abs(pu["tx"] - pk["rx"])
            check("wg show: bytes sent by one side = bytes received by the other (within 1%)",
                  d1 <= max(4096, pk["tx"] // 100) and d2 <= max(4096, pu["tx"] // 100),
                  f"kernel tx {pk['tx']} / crosswire-wg rx {pu['rx']}; crosswire-wg tx {pu['tx']} / kernel rx {pk['rx']}")
        # The netlink reading equals wg(8)'s reading of the kernel.
        shown = ctl.show().get(upub, {})
        check("netlink show = wg show on the kernel side",
              pk is not None and sorted(shown.get("allowed_ips", [])) == pk["allowed"]
              and shown.get("endpoint") == pk["endpoint"], json.dumps(shown))
        sh("ip", "link", "del", "wgk", ns=k)
        sh("ip", "link", "del", "wgu", ns=u, check=False)
    return out


if __name__ == "__main__":
    run(main)
