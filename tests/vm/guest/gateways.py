"""Inside the VM: two real gateways, ``a`` on kernel WireGuard and ``b`` on crosswire-wg.

The two-gateway harness of tests/gateway (same 10.244/16, fd00::/48 and
10.96/12 on both), one step per invocation so the host reports each as its
own test while the gateways keep running between steps (their namespaces
and processes are recorded in /run/cw-vm-gateways.json):

- ``up``: start both, peer them by token (the API, as ``peer add`` does), ping
  pod to pod both ways, and check the receiving pod sees the sender's view;
- ``rotate``: rotate ``a``'s key (the kernel side) with traffic flowing;
- ``restart``: stop ``a``'s daemon and start it again: it adopts the running
  kernel interface (same ifindex, sessions kept) and traffic goes on;
- ``repair``: a peer removed behind ``a``'s back comes back (drift repair),
  then ``peer remove`` empties the kernel device;
- ``down``: stop everything, remove the namespaces.

Each prints one JSON line {"ok": bool, "checks": [...], ...}. HTTP goes from
this script straight into the gateway namespaces (no CLI: a Python start
costs many seconds under emulation).
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from guestkit import check, run  # first: it puts the checkout and tests/ on sys.path
from gwharness import PODS, Gw, build_cluster, ping, view_of
from nsutil import Namespaces, delete_ns, sh

from fabric.nft import in_netns
from fabric.wgnetlink import NetlinkWgControl

STATE = Path("/run/cw-vm-gateways.json")
TMP = Path("/run/cw-vm-gw")
# Two daemons starting at once under emulation on a shared 2-core host: minutes.
READY_TIMEOUT = float(os.environ.get("CROSSWIRE_VM_READY_TIMEOUT", "600"))


def api(g: Gw, method: str, path: str, body: Any = None, admin: bool = False, timeout: float = 60) -> tuple[int, Any]:
    headers = {"Content-Type": "application/json"}
    if admin:
        headers["Authorization"] = "Bearer " + (g.state_dir / "admin-token").read_text().strip()

    def call() -> tuple[int, Any]:
        c = http.client.HTTPConnection("127.0.0.1", 8081, timeout=timeout)  # the operator listener
        try:
            c.request(method, path, body=None if body is None else json.dumps(body), headers=headers)
            r = c.getresponse()
            data = r.read()
            try:
                return r.status, json.loads(data)
            except ValueError:
                return r.status, data.decode(errors="replace")
        finally:
            c.close()
    return in_netns(g.ns, call)


def wait_ready(g: Gw, timeout: float = READY_TIMEOUT) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            code, st = api(g, "GET", "/api/v1/status", timeout=20)
            if code == 200 and st.get("ready"):
                return dict(st)
            last = st
        except OSError as e:
            last = str(e)
        time.sleep(2)
    raise AssertionError(f"gateway {g.name} not ready within {timeout:.0f} s: {last}\n"
                         f"{g.log.read_text(errors='replace')[-2000:]}")


def start(g: Gw) -> int:
    out = open(g.log, "ab")  # noqa: SIM115
    # crosswire-wg's start takes ~15 s under emulation (10 s is the default limit).
    env = dict(os.environ, CROSSWIRE_WG_START_TIMEOUT="120")
    p = subprocess.Popen(["ip", "netns", "exec", g.ns, str(Path(sys.executable).parent / "crosswire"), "gateway",
                          "run", "--config", str(g.config)], stdout=out, stderr=out, start_new_session=True,
                         env=env)
    out.close()
    return p.pid


def save(a: Gw, b: Gw, created: list[str], pids: dict[str, int], extra: dict[str, Any]) -> None:
    def gw(g: Gw) -> dict[str, Any]:
        return {"name": g.name, "ns": g.ns, "underlay": g.underlay, "config": str(g.config),
                "state_dir": str(g.state_dir), "log": str(g.log), "iface": g.iface, "pods": list(g.pods)}
    STATE.write_text(json.dumps({"a": gw(a), "b": gw(b), "created": created, "pids": pids, **extra}))


def load() -> tuple[Gw, Gw, dict[str, Any]]:
    st = json.loads(STATE.read_text())

    def gw(d: dict[str, Any]) -> Gw:
        return Gw(name=d["name"], ns=d["ns"], underlay=d["underlay"], config=Path(d["config"]),
                  state_dir=Path(d["state_dir"]), log=Path(d["log"]), iface=d["iface"], pods=tuple(d["pods"]))
    return gw(st["a"]), gw(st["b"]), st


def udp_sees(src_ns: str, dst_ns: str, dst_ip: str, send_to: str) -> str | None:
    """Send one datagram from src_ns to ``send_to``; the source address dst_ns's socket saw."""
    rx = in_netns(dst_ns, lambda: socket.socket(socket.AF_INET, socket.SOCK_DGRAM))
    rx.bind((dst_ip, 0))
    rx.settimeout(3)
    port = rx.getsockname()[1]
    tx = in_netns(src_ns, lambda: socket.socket(socket.AF_INET, socket.SOCK_DGRAM))
    try:
        for _ in range(5):
            tx.sendto(b"hello", (send_to, port))
            try:
                _, addr = rx.recvfrom(100)
                return str(addr[0])
            except TimeoutError:
                continue
        return None
    finally:
        rx.close()
        tx.close()


def views(g: Gw, peer: str) -> tuple[list[dict[str, str]], list[dict[str, str]]]:
    _, peers = api(g, "GET", "/api/v1/peers")
    p = next(x for x in peers if x["cluster_id"] == peer)
    return p["our_views"], p["their_views"] or []


def up() -> dict[str, Any]:
    TMP.mkdir(mode=0o700, exist_ok=True)
    n = Namespaces()
    ns_a, ns_b = n.add("gwa"), n.add("gwb")
    n.veth(ns_a, ns_b, "198.18.0.1/24", "198.18.0.2/24", name="u")
    a = build_cluster(n, "a", ns_a, "198.18.0.1", TMP, impl="kernel")
    # No standby for b's crosswire-wg here: one more Python start costs 30-60 s under
    # emulation, and this tier is about the kernel side.
    b = build_cluster(n, "b", ns_b, "198.18.0.2", TMP, impl="userspace")
    b.config.write_text(b.config.read_text().replace("  implementation:", "  standby: false\n  implementation:", 1))
    t = time.monotonic()
    pids = {"a": start(a), "b": start(b)}
    save(a, b, n.created, pids, {})
    sa, sb = wait_ready(a), wait_ready(b)
    out: dict[str, Any] = {"start_to_ready_s": round(time.monotonic() - t, 1)}
    check("a reports implementation kernel", sa["implementation"] == "kernel",
          f"{sa['implementation']}: {sa.get('implementation_reason')}")
    check("b reports implementation crosswire-wg", sb["implementation"] == "crosswire-wg",
          f"{sb['implementation']}: {sb.get('implementation_reason')}")
    link = sh("ip", "-d", "link", "show", a.iface, ns=a.ns).stdout
    check("a's interface is a kernel WireGuard link marked crosswire",
          " wireguard " in link and "alias crosswire" in link)
    t = time.monotonic()
    code, tok = api(b, "POST", "/api/v1/tokens", {"ttl": "1h"}, admin=True)
    code2, res = api(a, "POST", "/api/v1/peers", {"token": tok.get("token") if code == 201 else ""}, admin=True,
                     timeout=180)
    check("peered by token (a holds b's token)", code == 201 and code2 == 201, f"{code} {code2} {res}")
    out["peer_add_s"] = round(time.monotonic() - t, 1)
    a_views_of_b, b_views_of_a = views(a, "b")
    b_ours, _ = views(b, "a")
    dst_from_a = view_of(PODS[1], a_views_of_b)  # b's second pod as a addresses it
    dst_from_b = view_of(PODS[0], b_ours)  # a's first pod as b addresses it
    t = time.monotonic()
    deadline = t + 120
    while not ping(a.pods[0], dst_from_a, timeout=2) and time.monotonic() < deadline:
        pass
    out["first_ping_s"] = round(time.monotonic() - t, 1)
    check(f"pod a {PODS[0]} -> pod b via {dst_from_a}", ping(a.pods[0], dst_from_a, count=3))
    check(f"pod b {PODS[1]} -> pod a via {dst_from_b}", ping(b.pods[1], dst_from_b, count=3))
    seen = udp_sees(a.pods[0], b.pods[1], PODS[1], dst_from_a)
    want = view_of(PODS[0], b_views_of_a)  # b's view of a's pod: how b must see the sender
    check("b's pod sees a's pod under b's view of it", seen == want, f"saw {seen}, want {want}")
    seen = udp_sees(b.pods[1], a.pods[0], PODS[0], dst_from_b)
    want = view_of(PODS[1], a_views_of_b)
    check("a's pod sees b's pod under a's view of it", seen == want, f"saw {seen}, want {want}")
    ctl = NetlinkWgControl(a.iface, netns=a.ns)
    dev = ctl.device()
    _, sbn = api(b, "GET", "/api/v1/status")
    p = dev.peers.get(sbn["public_key"])
    check("a's kernel device holds b as its one peer, with b's views as allowed IPs",
          list(dev.peers) == [sbn["public_key"]] and p is not None
          and sorted(p.allowed_ips) == sorted(v["view"] for v in a_views_of_b), json.dumps(p.as_dict() if p else None))
    _, peers_a = api(a, "GET", "/api/v1/peers")
    check("a's API shows b connected with kernel counters", peers_a[0]["state"] in ("connected", "connecting")
          and peers_a[0]["rx_bytes"] > 0 and peers_a[0]["latest_handshake"], json.dumps(peers_a[0])[:400])
    code, metrics = api(a, "GET", "/metrics")
    check("a's /metrics names the implementation", 'crosswire_wireguard_implementation{implementation="kernel"' in
          str(metrics))
    save(a, b, n.created, pids, {"dst_from_a": dst_from_a, "dst_from_b": dst_from_b})
    return out


class Pinger:
    """Pings from ``ns`` to ``dst`` 10 times a second in the background; counts replies."""

    def __init__(self, ns: str, dst: str) -> None:
        self.p = subprocess.Popen(["ip", "netns", "exec", ns, "ping", "-n", "-i", "0.1", "-W", "1", dst],
                                  stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        self.lines: list[str] = []
        self.t = threading.Thread(target=lambda: self.lines.extend(iter(self.p.stdout.readline, "")),  # type: ignore[union-attr]
                                  daemon=True)
        self.t.start()

    def stop(self) -> tuple[int, int, int]:
        """(replies, sent, longest run of missing sequence numbers)."""
        self.p.send_signal(signal.SIGINT)
        self.p.wait(timeout=10)
        self.t.join(5)
        seqs = sorted({int(ln.split("icmp_seq=")[1].split()[0]) for ln in self.lines if "icmp_seq=" in ln})
        sent = max(seqs) if seqs else 0
        gap, prev = 0, 0
        for s in seqs:
            gap = max(gap, s - prev - 1)
            prev = s
        return len(seqs), sent, gap


def rotate() -> dict[str, Any]:
    a, b, st = load()
    ctl = NetlinkWgControl(a.iface, netns=a.ns)
    before = ctl.device().private_key_hex
    _, sa = api(a, "GET", "/api/v1/status")
    traffic = Pinger(a.pods[0], st["dst_from_a"])
    time.sleep(3)
    t = time.monotonic()
    code, res = api(a, "POST", "/api/v1/key/rotate", {}, admin=True, timeout=180)
    out: dict[str, Any] = {"rotate_call_s": round(time.monotonic() - t, 1)}
    check("key rotate accepted", code == 200, f"{code} {str(res)[:300]}")
    new_pub = res.get("public_key") if isinstance(res, dict) else None
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not ping(b.pods[1], st["dst_from_b"], timeout=2):
        pass
    time.sleep(3)
    replies, sent, gap = traffic.stop()
    out.update(replies=replies, sent=sent, longest_gap_probes=gap)
    after = ctl.device()
    check("the kernel device now holds a new private key", after.private_key_hex != before and after.has_private_key)
    _, peers_b = api(b, "GET", "/api/v1/peers")
    check("b holds a's new public key", new_pub is not None and peers_b[0]["public_key"] == new_pub
          and new_pub != sa["public_key"])
    bpeers = sh("wg", "show", b.iface, "peers", ns=b.ns).stdout.split()
    check("b's crosswire-wg peer is a's new key", bpeers == [new_pub], f"{len(bpeers)} peers")
    check("traffic flowed through the rotation", replies > 0 and sent - replies <= max(20, sent // 4),
          f"{replies}/{sent} replies, longest gap {gap} probes (0.1 s each)")
    check("pings both ways after the rotation",
          ping(a.pods[0], st["dst_from_a"], count=2) and ping(b.pods[1], st["dst_from_b"], count=2))
    return out


def restart() -> dict[str, Any]:
    a, b, st = load()
    ctl = NetlinkWgControl(a.iface, netns=a.ns)
    index_before = sh("cat", f"/sys/class/net/{a.iface}/ifindex", ns=a.ns).stdout.strip()
    dev_before = ctl.device()
    traffic = Pinger(a.pods[0], st["dst_from_a"])
    time.sleep(2)
    t = time.monotonic()
    os.kill(st["pids"]["a"], signal.SIGTERM)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            os.kill(st["pids"]["a"], 0)
        except ProcessLookupError:
            break
        time.sleep(0.2)
    link_kept = sh("ip", "link", "show", a.iface, ns=a.ns, check=False).returncode == 0
    check("daemon stopped, kernel interface left running", link_kept)
    st["pids"]["a"] = start(a)
    STATE.write_text(json.dumps(st))
    sa = wait_ready(a)
    out: dict[str, Any] = {"restart_to_ready_s": round(time.monotonic() - t, 1)}
    time.sleep(2)
    replies, sent, gap = traffic.stop()
    out.update(replies=replies, sent=sent, longest_gap_probes=gap)
    index_after = sh("cat", f"/sys/class/net/{a.iface}/ifindex", ns=a.ns).stdout.strip()
    check("the restarted gateway adopted the same kernel interface (same ifindex)", index_before == index_after,
          f"{index_before} -> {index_after}")
    check("status after restart: implementation kernel", sa["implementation"] == "kernel", sa["implementation_reason"])
    dev_after = ctl.device()
    check("same peers and key on the device", set(dev_after.peers) == set(dev_before.peers)
          and dev_after.private_key_hex == dev_before.private_key_hex)
    hs_b, hs_a = (next(iter(d.peers.values())).last_handshake for d in (dev_before, dev_after))
    out["handshake_kept"] = hs_a == hs_b
    check("traffic went on through the restart (no packet needs the daemon)", replies > 0
          and sent - replies <= max(5, sent // 10), f"{replies}/{sent} replies, longest gap {gap} probes")
    check("pings both ways after the restart",
          ping(a.pods[0], st["dst_from_a"], count=2) and ping(b.pods[1], st["dst_from_b"], count=2))
    return out


def repair() -> dict[str, Any]:
    """Drift on the kernel side is repaired; then removing the peer empties the device."""
    a, _, st = load()
    ctl = NetlinkWgControl(a.iface, netns=a.ns)
    (bkey,) = ctl.device().peers
    sh("wg", "set", a.iface, "peer", bkey, "remove", ns=a.ns)  # behind the gateway's back
    t = time.monotonic()
    deadline = t + 90
    while time.monotonic() < deadline and bkey not in ctl.device().peers:
        time.sleep(1)
    out: dict[str, Any] = {"drift_repaired_s": round(time.monotonic() - t, 1)}
    check("a peer removed from the kernel device behind the gateway's back is put back (drift repair)",
          bkey in ctl.device().peers)
    ok = False
    while time.monotonic() < deadline and not ok:
        ok = ping(a.pods[0], st["dst_from_a"], timeout=2)
    check("traffic flows again after the repair", ok)
    code, res = api(a, "DELETE", "/api/v1/peers/b", admin=True, timeout=120)
    check("peer remove accepted", code in (200, 204), f"{code} {str(res)[:200]}")
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and ctl.device().peers:
        time.sleep(1)
    check("after peer remove the kernel device has no peers", not ctl.device().peers)
    routes = sh("ip", "route", "show", "dev", a.iface, ns=a.ns).stdout.strip()
    check("and no routes into the interface", routes == "", routes)
    check("and the link stays (ours, still up)", "alias crosswire" in sh("ip", "-d", "link", "show", a.iface,
                                                                           ns=a.ns).stdout)
    return out


def down() -> dict[str, Any]:
    if not STATE.exists():
        return {}
    st = json.loads(STATE.read_text())
    for pid in st["pids"].values():
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    for ns in reversed(st["created"]):
        delete_ns(ns)
    STATE.unlink()
    check("namespaces removed", all(ns not in sh("ip", "netns", "list").stdout for ns in st["created"]))
    return {}


def main() -> dict[str, Any]:
    step = sys.argv[1]
    return {"up": up, "rotate": rotate, "restart": restart, "repair": repair, "down": down}[step]()


if __name__ == "__main__":
    run(main)
