"""What a peer's underlay address reaches, on two real gateways in namespaces.

From b's namespace (the internet, as seen by a's published port): only the
peering endpoints answer, over TLS; plain HTTP gets no answer, every readable
path is 404 and the operator listener is not there at all. A token whose pin
names another certificate is refused by ``peer add`` before anything is sent.
A sniffer on a's underlay interface during the join and channel messages sees
TLS records only, never the JSON of the protocol.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from gwharness import GW_IP, PODS, operator_on_pod, two_gateways, view_of, wait_ping
from nsutil import Namespaces, require_root, sh

from gateway.tokens import Token, decode

SNIFFER = r"""
import json, signal, socket, struct, sys
iface, port = sys.argv[1], int(sys.argv[2])
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(3))
s.bind((iface, 0))
s.settimeout(0.2)
stats = {"segments": 0, "bytes": 0, "json": 0, "record_types": []}
done = False
def stop(*_):
    global done
    done = True
signal.signal(signal.SIGTERM, stop)
print("ready", flush=True)
while not done:
    try:
        frame = s.recv(65535)
    except TimeoutError:
        continue
    if len(frame) < 34 or frame[12:14] != b"\x08\x00" or frame[23] != 6:
        continue
    ihl = (frame[14] & 15) * 4
    tcp = frame[14 + ihl:]
    sport, dport = struct.unpack("!HH", tcp[:4])
    if port not in (sport, dport):
        continue
    payload = tcp[(tcp[12] >> 4) * 4:]
    if not payload:
        continue
    stats["segments"] += 1
    stats["bytes"] += len(payload)
    stats["json"] += b'"mac":' in payload or b'"body":' in payload or b'"type":' in payload or b"HTTP/1." in payload
    if payload[0] not in stats["record_types"]:
        stats["record_types"].append(payload[0])
print(json.dumps(stats), flush=True)
"""

DNS_FLOOD = r"""
import socket, sys, time
q = bytes.fromhex("abcd01000001000000000000") + b"\x0aclusterset\x05local\x00\x00\x06\x00\x01"
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
t0 = time.monotonic()
for i in range(6000):  # ~1,500/s for 4 s: paced, so the socket buffer does not drop them first
    s.sendto(q, (sys.argv[1], 53))
    while time.monotonic() < t0 + i / 1500:
        pass
"""

PROBE = r"""
import json, socket, ssl, sys, urllib.request, urllib.error
host = sys.argv[1]
ctx = ssl.create_default_context()
ctx.check_hostname = False
ctx.verify_mode = ssl.CERT_NONE
out = {}
for path in ("/", "/healthz", "/readyz", "/metrics", "/openapi.json", "/docs", "/api/v1/status",
             "/api/v1/peers", "/api/v1/nat", "/api/v1/routes", "/api/v1/tokens", "/api/v1/exports"):
    try:
        with urllib.request.urlopen(f"https://{host}:8080{path}", context=ctx, timeout=5) as r:
            out[path] = r.status
    except urllib.error.HTTPError as e:
        out[path] = e.code
# the peering endpoint itself answers (a refusal: no valid token)
req = urllib.request.Request(f"https://{host}:8080/api/v1/peering/join", data=b'{"body": {"token_id": "x"}, "mac": "x"}',
                             headers={"Content-Type": "application/json"})
try:
    urllib.request.urlopen(req, context=ctx, timeout=5)
except urllib.error.HTTPError as e:
    out["join"] = e.code
# plain HTTP on the peering port: no HTTP answer
s = socket.create_connection((host, 8080), timeout=5)
s.sendall(b"GET /api/v1/peers HTTP/1.1\r\nHost: x\r\n\r\n")
try:
    out["plain"] = s.recv(100).decode("latin-1")
except OSError as e:
    out["plain"] = type(e).__name__
# a gateway from before TLS joining with a new token (its URL is written http://): told to upgrade
req = urllib.request.Request(f"http://{host}:8080/api/v1/peering/join", data=b'{"body": {"token_id": "x"}, "mac": "x"}',
                             headers={"Content-Type": "application/json"})
try:
    urllib.request.urlopen(req, timeout=5)
except urllib.error.HTTPError as e:
    out["plain_join"] = [e.code, json.loads(e.read())["detail"]]
for port in (8081,):
    try:
        socket.create_connection((host, port), timeout=3).close()
        out[str(port)] = "open"
    except OSError as e:
        out[str(port)] = type(e).__name__
print(json.dumps(out))
"""


def test_peer_underlay_sees_only_tls_peering(netns: Namespaces, tmp_path: Path) -> None:
    require_root("wireguard-go", "wg", "nft")
    os.chmod(tmp_path, 0o700)
    with two_gateways(netns, tmp_path, operator_on_pod) as (a, b):
        dev = sh("ip", "-o", "addr", "show", "to", f"{a.underlay}/32", ns=a.ns).stdout.split()[1]
        sniff = subprocess.Popen(["ip", "netns", "exec", a.ns, sys.executable, "-c", SNIFFER, dev, "8080"],
                                 stdout=subprocess.PIPE, text=True)
        try:
            assert sniff.stdout is not None and sniff.stdout.readline().strip() == "ready"
            # A token whose pin is not b's certificate: refused before anything is sent.
            good = b.cli("token", "create", "--ttl", "10m").stdout.strip()
            t = decode(good)
            other_pin = a.cli_json("status")["tls_pins"][0]  # a's own certificate: not b's
            assert other_pin != t.tls_pin
            forged = Token(url=t.url, cluster_id=t.cluster_id, public_key=t.public_key, token_id=t.token_id,
                           expires=t.expires, secret=t.secret, tls_pin=other_pin).encode()
            r = a.cli("peer", "add", forged, check=False)
            assert r.returncode == 1
            assert f"presented a certificate with key fingerprint {t.tls_pin}, not the pinned {other_pin}" \
                in r.stderr, r.stderr
            assert b.cli_json("peer", "list") == [] and a.cli_json("peer", "list") == []
            assert "join" not in b.log.read_text()  # b never saw a join
            # The genuine token: peered over TLS; then channel messages both ways.
            a.cli("peer", "add", good)
            assert [p["cluster_id"] for p in b.cli_json("peer", "list")] == ["a"]
            a.cli("key", "rotate")
            # a new certificate on a's listener: b learns the pin first, then talks to the new one
            old_pin = a.cli_json("status")["tls_pins"]
            dst = view_of(PODS[1], a.cli_json("peer", "list")[0]["our_views"])
            wait_ping(a.pods[0], dst)
            ping = subprocess.Popen(["ip", "netns", "exec", a.pods[0], "ping", "-n", "-i", "0.1", "-c", "30", dst],
                                    stdout=subprocess.PIPE, text=True)
            rotated = json.loads(a.cli("tls", "rotate", "--json").stdout)
            summary = next(x for x in ping.communicate(timeout=30)[0].splitlines() if "transmitted" in x)
            assert " 0% packet loss" in summary, summary  # traffic across the rotation: nothing lost
            assert rotated["peers_informed"] == ["b"] and [rotated["tls_pin"]] != old_pin
            assert a.cli_json("status")["tls_pins"] == [rotated["tls_pin"]]
            b.cli("key", "rotate")  # b -> a over TLS, pinned to the new certificate
            time.sleep(0.5)
        finally:
            sniff.send_signal(signal.SIGTERM)
            out = sniff.communicate(timeout=10)[0]
        stats = json.loads(out.strip().splitlines()[-1])
        print("sniffed on the underlay:", stats)
        assert stats["segments"] >= 10 and stats["bytes"] > 2000  # the sniffer saw the traffic
        assert stats["json"] == 0, stats  # ... and none of it was readable
        assert set(stats["record_types"]) <= {0x14, 0x15, 0x16, 0x17}, stats  # TLS records only

        # From the peer's underlay address: the peering endpoints only.
        probe = json.loads(sh(sys.executable, "-c", PROBE, a.underlay, ns=b.ns).stdout)
        print("from b's underlay:", probe)
        assert probe.pop("join") == 403
        assert probe.pop("plain").startswith("HTTP/1.1 404")  # plain HTTP: nothing readable either
        code, detail = probe.pop("plain_join")
        assert code == 426 and "upgrade crosswire on the calling gateway" in detail
        assert probe.pop("8081") == "ConnectionRefusedError"
        assert set(probe.values()) == {404}, probe

        # Through the tunnel, from b's pod to a's gateway pod (b's view of a's pod range):
        # the guard drops it in nftables (no answer at all; test_netns_guard.py), so the
        # operator listener's own 403 for peers (test_api.py) is not even reached.
        b_views = b.cli_json("peer", "list")[0]["our_views"]
        gw_seen_by_b = view_of(GW_IP, b_views)
        wait_ping(b.pods[0], view_of(PODS[0], b_views))
        for path in ("/api/v1/peers", "/metrics", "/healthz"):
            code = sh("curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", "-m", "3",
                      f"http://{gw_seen_by_b}:8081{path}", ns=b.pods[0], check=False).stdout
            assert code == "000", (path, code)

        # The gateway's DNS answers this cluster's pods, never a peer, and a flood from one
        # pod leaves the others resolving.
        def dig(ns: str, server: str) -> str:
            return str(sh("dig", f"@{server}", "clusterset.local", "SOA", "+tries=1", "+time=2", "+short",
                          ns=ns, check=False).stdout)
        assert "ns.clusterset.local." in dig(a.pods[1], GW_IP)
        assert "ns.clusterset.local." not in dig(b.pods[0], gw_seen_by_b)  # through the tunnel: nothing
        flood = subprocess.Popen(["ip", "netns", "exec", a.pods[0], sys.executable, "-c", DNS_FLOOD, GW_IP])
        time.sleep(0.5)
        during = [dig(a.pods[1], GW_IP) for _ in range(5)]  # the other pod, while the flood lasts
        assert flood.wait(timeout=60) == 0
        assert all("ns.clusterset.local." in d for d in during), during
        metrics = sh("curl", "-s", f"http://{GW_IP}:8081/metrics", ns=a.ns).stdout
        dropped = {line.split('"')[1]: int(line.split()[-1]) for line in metrics.splitlines()
                   if line.startswith("crosswire_dns_dropped_total{")}
        print("dns dropped:", dropped)
        # A peer's query never reaches the DNS server (the guard drops it first).
        assert dropped["rate"] >= 3000  # 6000 in 4 s: ~400 + 4 x 200 answered
