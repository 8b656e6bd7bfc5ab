"""Two real gateways in namespaces of their own, same 10.244.0.0/16, fd00::/48 and 10.96.0.0/12 on both.

Each gateway namespace has two pod namespaces attached directly (veth, /32
routes) and its own pod address 10.244.0.10 on lo. The
gateways reach each other over an underlay veth (198.18.0.0/24, inside the
namespaces only). Everything goes through the real CLI and daemon, with
crosswire-wg as the data plane (CROSSWIRE_TEST_WG_IMPL); the main test also
runs on wireguard-go, the reference implementation, as a cross-check.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from gwharness import (
    GW_IP,
    IMPL,
    OPERATOR,
    PODS,
    PODS6,
    Gw,
    build_cluster,
    ping,
    two_gateways,
    view_of,
    wait_ping,
    wait_ping6_ready,
)
from nsutil import Namespaces, require_root, sh

UDP_SERVER = """
import socket, sys
s = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM); s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
s.bind(("::", 7777)); s.settimeout(10)
data, addr = s.recvfrom(100); print(addr[0].removeprefix("::ffff:"), flush=True); s.sendto(data, addr)
"""
UDP_CLIENT = """
import socket, sys
s = socket.socket(socket.AF_INET6 if ":" in sys.argv[1] else socket.AF_INET, socket.SOCK_DGRAM); s.settimeout(1)
for _ in range(10):
    s.sendto(b"hi", (sys.argv[1], 7777))
    try:
        print(s.recvfrom(100)[0].decode()); break
    except TimeoutError:
        pass
"""
TCP_SERVER = """
import socket
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); s.bind(("0.0.0.0", 7778)); s.listen()
c, _ = s.accept()
while True:
    d = c.recv(100)
    if not d:
        break
    c.sendall(d.upper())
"""


def source_seen(src_ns: str, dst_ns: str, dst: str) -> str:
    server = subprocess.Popen(["ip", "netns", "exec", dst_ns, sys.executable, "-c", UDP_SERVER],
                              stdout=subprocess.PIPE, text=True)
    try:
        time.sleep(0.3)
        out = sh(sys.executable, "-c", UDP_CLIENT, dst, ns=src_ns).stdout.strip()
        assert out == "hi", out
        got, _ = server.communicate(timeout=10)
        return got.strip()
    finally:
        if server.poll() is None:
            server.kill()
            server.wait()


def nft_rules(g: Gw) -> str:
    return sh("nft", "-s", "list", "table", "inet", "crosswire", ns=g.ns).stdout


@pytest.mark.root
@pytest.mark.slow
# The shipped data plane, and wireguard-go as the reference cross-check (issue 20).
@pytest.mark.parametrize("impl", sorted({IMPL, "wireguard-go"}))
def test_two_gateways_in_namespaces(netns: Namespaces, tmp_path: Path, impl: str) -> None:
    require_root(*(("wireguard-go",) if impl == "wireguard-go" else ()), "wg", "nft", "ping")
    os.chmod(tmp_path, 0o700)
    with two_gateways(netns, tmp_path, impl=impl) as (a, b):
        # --- peer by token through the CLI -----------------------------------------------
        token = b.cli("token", "create", "--ttl", "10m").stdout.strip()
        assert token.startswith("cw1.") and "\n" not in token
        t0 = time.monotonic()
        a.cli("peer", "add", token)
        peers_a, peers_b = a.cli_json("peer", "list"), b.cli_json("peer", "list")
        assert [p["cluster_id"] for p in peers_a] == ["b"] and [p["cluster_id"] for p in peers_b] == ["a"]
        # the token is single use
        r = a.cli("peer", "add", token, check=False)
        assert r.returncode == 1 and "already" in r.stderr

        # --- pod-to-pod both ways through the views ---------------------------------------
        a_sees_b = peers_a[0]["our_views"]
        b_sees_a = peers_b[0]["our_views"]
        dst_b = view_of(PODS[1], a_sees_b)  # a's name for b's pod 10.244.2.7
        dst_a = view_of(PODS[0], b_sees_a)
        first = wait_ping(a.pods[0], dst_b)
        print(f"first ping after peer add returned: {first:.3f}s (peer add + ping {time.monotonic() - t0:.3f}s)")
        wait_ping(b.pods[1], dst_a)
        assert ping(a.pods[1], view_of(PODS[0], a_sees_b))  # other pod pair too
        # A remote address equal to our own gateway's pod IP (b's gateway pod) goes to b, not
        # to a's own gateway: b's guard drops it (a peer never reaches the gateway itself)
        # and counts it against a, which shows it arrived there.
        def b_denied() -> int:
            return int(b.cli_json("nat", "show")["peers"][0]["export_denied"]["packets"])
        before = b_denied()
        assert not ping(a.pods[0], view_of(GW_IP, a_sees_b))
        assert b_denied() > before

        # --- the receiver sees the sender as its own view of the sender -------------------
        assert source_seen(a.pods[0], b.pods[1], dst_b) == view_of(PODS[0], b_sees_a)
        assert source_seen(b.pods[1], a.pods[0], dst_a) == view_of(PODS[1], a_sees_b)

        # --- the same over IPv6 (fd00::/48 on both sides, remapped views) -------------------
        dst6_b, dst6_a = view_of(PODS6[1], a_sees_b), view_of(PODS6[0], b_sees_a)
        assert dst6_b != PODS6[1]  # identical ranges: remapped
        wait_ping6_ready(a.pods[0], dst6_b)
        wait_ping6_ready(b.pods[1], dst6_a)
        assert source_seen(a.pods[0], b.pods[1], dst6_b) == view_of(PODS6[0], b_sees_a)
        assert source_seen(b.pods[1], a.pods[0], dst6_a) == view_of(PODS6[1], a_sees_b)

        # --- health, handshake, NAT counters via the API -----------------------------------
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            p = a.cli_json("peer", "list")[0]
            if p["state"] == "connected" and p["rtt_ms"] is not None:
                break
            time.sleep(0.3)
        assert p["state"] == "connected", p
        assert p["latest_handshake"] and p["rx_bytes"] > 0 and p["tx_bytes"] > 0
        nat = a.cli_json("nat", "show")
        assert nat["peers"][0]["cluster_id"] == "b"
        assert sum(r["packets"] for r in nat["peers"][0]["rules"]) > 0
        metrics = sh(sys.executable, "-c", "import httpx,sys; print(httpx.get(sys.argv[1]).text)",
                     f"{OPERATOR}/metrics", ns=a.ns).stdout
        assert 'crosswire_peers{state="connected"} 1' in metrics
        nat_packets = {line.split("{")[1].split("}")[0]: int(line.split()[-1]) for line in metrics.splitlines()
                       if line.startswith("crosswire_nat_packets_total{")}
        assert nat_packets['peer="b",chain="to-b"'] > 0 and nat_packets['peer="b",chain="from-b"'] > 0
        assert 'crosswire_peer_handshake_age_seconds{peer="b"}' in metrics
        assert 'crosswire_peer_rtt_seconds{peer="b"}' in metrics

        # --- peer health: error within 10 s of silence, back when it returns ---------------
        sh("nft", "-f", "-", ns=b.ns, input=(
            "table inet cwtest {\n chain blackhole {\n  type filter hook input priority -10\n"
            "  udp dport 51820 drop\n }\n}\n"))
        t_block = time.monotonic()
        try:
            while a.cli_json("peer", "list")[0]["state"] != "error":
                assert time.monotonic() - t_block < 10, "peer not in error 10 s after going silent"
                time.sleep(0.3)
            print(f"peer state error {time.monotonic() - t_block:.2f}s after silence")
        finally:
            sh("nft", "delete", "table", "inet", "cwtest", ns=b.ns)
        t_back = time.monotonic()
        while a.cli_json("peer", "list")[0]["state"] != "connected":
            assert time.monotonic() - t_back < 15, "peer did not come back"
            time.sleep(0.3)
        print(f"peer connected again {time.monotonic() - t_back:.2f}s after the path returned")

        # --- key rotation: announced first, traffic keeps flowing -----------------------------
        old_key = a.cli_json("status")["public_key"]
        pinger = subprocess.Popen(["ip", "netns", "exec", b.pods[1], "ping", "-n", "-i", "0.1", "-c", "40",
                                   dst_a], stdout=subprocess.PIPE, text=True)
        time.sleep(0.5)
        new_key = a.cli_json("key", "rotate")["public_key"]
        out, _ = pinger.communicate(timeout=30)
        assert new_key != old_key and b.cli_json("peer", "list")[0]["public_key"] == new_key
        print("ping during key rotation:", [x for x in out.splitlines() if "loss" in x])
        assert ping(a.pods[0], dst_b) and ping(b.pods[1], dst_a)

        # --- kill -9 + restart: same key, views, identical table, open TCP connection survives
        server = subprocess.Popen(["ip", "netns", "exec", b.pods[1], sys.executable, "-c", TCP_SERVER])
        try:
            time.sleep(0.3)
            client = subprocess.Popen(
                ["ip", "netns", "exec", a.pods[0], sys.executable, "-c",
                 "import socket,sys\n"
                 "c=socket.create_connection((sys.argv[1],7778),timeout=5)\n"
                 "for line in sys.stdin:\n"
                 "    c.sendall(line.strip().encode()); print(c.recv(100).decode(), flush=True)\n",
                 dst_b], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
            assert client.stdin is not None and client.stdout is not None
            client.stdin.write("before\n")
            client.stdin.flush()
            assert client.stdout.readline().strip() == "BEFORE"
            status_before = a.cli_json("status")
            rules_before = nft_rules(a)
            views_before = a.cli_json("ipam", "show")["allocations"]
            a.kill9()
            # the data plane outlives the daemon: traffic keeps flowing while it is down
            assert ping(a.pods[0], dst_b)
            a.start()
            t_restart = time.monotonic()
            a.wait_ready()
            print(f"gateway ready {time.monotonic() - t_restart:.3f}s after restart")
            assert a.cli_json("status")["public_key"] == status_before["public_key"]
            assert a.cli_json("ipam", "show")["allocations"] == views_before
            assert nft_rules(a) == rules_before
            wait_ping(a.pods[0], dst_b, timeout=10)
            client.stdin.write("after\n")
            client.stdin.flush()
            assert client.stdout.readline().strip() == "AFTER"
            client.stdin.close()
            client.wait(timeout=10)
        finally:
            server.kill()
            server.wait()
            with contextlib.suppress(Exception):
                client.kill()
                client.wait()

        # --- the data plane dies: the daemon restarts and re-programs it --------------------
        wg_pids = [pid for pid in sh("ip", "netns", "pids", a.ns).stdout.split()
                   if a.iface in Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")]
        assert wg_pids, f"{impl} not found"
        for pid in wg_pids:
            os.kill(int(pid), signal.SIGKILL)
        t_dead = time.monotonic()
        wait_ping(a.pods[0], dst_b, timeout=15)
        print(f"data plane restarted, ping back {time.monotonic() - t_dead:.2f}s after it died")
        assert a.cli_json("status")["reconcile"]["dataplane_restarts"] >= 1

        # --- the whole "pod" dies (daemon + data plane, kill -9): back within 10 s ----------
        wg_pids = [pid for pid in sh("ip", "netns", "pids", a.ns).stdout.split()
                   if a.iface in Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")]
        a.kill9()
        for pid in wg_pids:
            os.kill(int(pid), signal.SIGKILL)
        rules_before = nft_rules(a)
        a.start()
        t_pod = time.monotonic()
        wait_ping(a.pods[0], dst_b, timeout=10)
        wait_ping(b.pods[1], dst_a, timeout=10)
        print(f"whole gateway killed: pod-to-pod both ways again {time.monotonic() - t_pod:.2f}s after restart")
        a.wait_ready()
        assert nft_rules(a) == rules_before

        # --- no secret in any log line -----------------------------------------------------------
        import base64
        import sqlite3

        from gateway.tokens import b64e, decode
        secrets_ = [b64e(decode(token).secret)]
        for g in (a, b):
            db = sqlite3.connect(g.state_dir / "state.db")
            try:
                secrets_ += [r[0] for r in db.execute("SELECT value FROM meta WHERE key='private_key'")]
                secrets_ += [base64.b64encode(r[0]).decode() for r in db.execute("SELECT psk FROM peers")]
                secrets_ += [(g.state_dir / "admin-token").read_text().strip()]
            finally:
                db.close()
        logs = a.log.read_text() + b.log.read_text()
        assert len(secrets_) == 7 and not [s for s in secrets_ if s in logs]

        # --- peer remove cleans both sides --------------------------------------------------
        out = a.cli("peer", "remove", "b").stdout
        assert "removed b" in out and "could not" not in out
        for g in (a, b):
            assert g.cli_json("peer", "list") == []
            assert g.cli_json("ipam", "show")["allocations"] == []
            assert sh("wg", "show", g.iface, "peers", ns=g.ns).stdout.strip() == ""
            assert sh("ip", "route", "show", "dev", g.iface, ns=g.ns).stdout.strip() == ""
            assert "proto" not in sh("ip", "-6", "route", "show", "dev", g.iface, ns=g.ns).stdout.replace(
                "proto kernel", "")
            assert "to-" not in nft_rules(g).replace("to-peer", "")
            g.wait_ready()
        assert not ping(a.pods[0], dst_b, timeout=1)


@pytest.mark.root
def test_gateway_ip_autodetected_in_namespace(netns: Namespaces, tmp_path: Path) -> None:
    require_root(*(("wireguard-go",) if IMPL == "wireguard-go" else ()), "wg")
    os.chmod(tmp_path, 0o700)
    ns = netns.add("gwd")
    sh("ip", "addr", "add", "10.244.3.4/32", "dev", "lo", ns=ns)
    code = ("from gateway.config import detect_gateway_ip as d; "
            "print(d(('10.244.0.0/16',)), d(('10.250.0.0/16',)))")
    assert sh(sys.executable, "-c", code, ns=ns).stdout.split() == ["10.244.3.4", "None"]
    # and the daemon does it too (outside its event loop: sync pyroute2 runs its own)
    g = build_cluster(netns, "d", ns, "127.0.0.1", tmp_path)
    g.config.write_text(g.config.read_text().replace(f"gateway_ip: {GW_IP}\n", ""))
    g.start()
    try:
        assert g.wait_ready()["gateway_ip"] in ("10.244.3.4", GW_IP)
        # SIGTERM: clean exit, the data plane stays up for the next start to adopt
        assert g.proc is not None
        g.proc.send_signal(signal.SIGTERM)
        assert g.proc.wait(timeout=15) == 0
        assert "stopped (data plane left running)" in g.log.read_text()
        assert sh("wg", "show", g.iface, ns=ns, check=False).returncode == 0
    finally:
        if g.proc is not None and g.proc.poll() is None:
            g.proc.kill()
            g.proc.wait(timeout=10)


@pytest.mark.root
def test_daemon_enables_ip_forwarding_in_namespace(netns: Namespaces, tmp_path: Path) -> None:
    require_root(*(("wireguard-go",) if IMPL == "wireguard-go" else ()), "wg")
    os.chmod(tmp_path, 0o700)
    ns = netns.add("gwf")
    g = build_cluster(netns, "f", ns, "127.0.0.1", tmp_path)  # dual stack: both sysctls wanted
    sysctls = ("net.ipv4.ip_forward", "net.ipv6.conf.all.forwarding")
    for s in sysctls:  # build_cluster turned them on; the daemon must do it by itself
        sh("sysctl", "-qw", f"{s}=0", ns=ns)
        assert sh("sysctl", "-n", s, ns=ns).stdout.strip() == "0"
    g.start()
    try:
        assert g.wait_ready()["ready"]
        for s in sysctls:
            assert sh("sysctl", "-n", s, ns=ns).stdout.strip() == "1", s
        assert "set net.ipv4.ip_forward=1" in g.log.read_text()
        # someone turns it off behind our back: /readyz says so, naming the sysctl
        sh("sysctl", "-qw", "net.ipv4.ip_forward=0", ns=ns)
        st = g.cli_json("status")
        assert not st["ready"] and "net.ipv4.ip_forward=0" in st["ready_reason"]
    finally:
        if g.proc is not None and g.proc.poll() is None:
            g.proc.terminate()
            g.proc.wait(timeout=15)


@pytest.mark.root
def test_read_only_proc_sys_warns_by_name_in_namespace(netns: Namespaces) -> None:
    require_root("unshare", "mount")
    ns = netns.add("gwr")
    sh("sysctl", "-qw", "net.ipv4.ip_forward=0", ns=ns)
    # A private mount namespace with /proc/sys read-only, as in an unprivileged container.
    code = ("import logging, sys; logging.basicConfig(stream=sys.stdout, level=logging.WARNING); "
            "from gateway import forwarding as f; print(f.enable((f.IPV4,)))")
    out = sh("unshare", "-m", "--propagation", "private", "sh", "-c",
             f"mount -o bind /proc/sys /proc/sys && mount -o remount,bind,ro /proc/sys && "
             f"{sys.executable} -c '{code}'", ns=ns).stdout
    assert "cannot set net.ipv4.ip_forward=1" in out and "Read-only file system" in out
    assert sh("sysctl", "-n", "net.ipv4.ip_forward", ns=ns).stdout.strip() == "0"
