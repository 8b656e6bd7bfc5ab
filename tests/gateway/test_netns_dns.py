"""The DNS listener for real: queried with `dig` (Debian dnsutils) over UDP and TCP, in a namespace.

`dnsserve.py` runs gateway.dns.server.DnsServer with a snapshot callable fed
from a file (the daemon's seam, here fed by the test); the daemon tests run
`crosswire gateway run` itself and check its listener, its /metrics and its
refusal to start when dns.listen is taken.
"""

from __future__ import annotations

import contextlib
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from dnsserve import write_snapshot
from nsutil import Namespaces, require_root, sh, uniq

BIN = Path(sys.executable).parent
SERVE = Path(__file__).resolve().parent / "dnsserve.py"
WEB = "web.default.svc.clusterset.local"
SNAP: list[dict[str, object]] = [
    {"peer": "gpu", "name": "web.default", "ports": ["80/tcp"], "addresses": ["100.64.0.10", "fd00:64::a"]},
    {"peer": "edge", "name": "web.default", "addresses": ["100.66.0.10"]},
]


def dig(ns: str, server: str, *args: str, port: int = 53) -> tuple[str, list[str], str]:
    """(status, answer lines with single spaces, the whole output) of one `dig` query."""
    p = sh("dig", f"@{server}", "-p", str(port), "+tries=1", "+time=3", *args, ns=ns, check=False)
    m = re.search(r"status: ([A-Z]+)", p.stdout)
    assert m, p.stdout + p.stderr
    section = p.stdout.split(";; ANSWER SECTION:\n", 1)
    lines = section[1].split("\n\n", 1)[0].splitlines() if len(section) == 2 else []
    return m.group(1), [" ".join(line.split()) for line in lines], p.stdout


@contextlib.contextmanager
def serving(ns: str, listen: str, snapshot: Path, *extra: str) -> Iterator[subprocess.Popen[str]]:
    p = subprocess.Popen(["ip", "netns", "exec", ns, sys.executable, str(SERVE), "--listen", listen,
                          "--snapshot", str(snapshot), *extra], stdout=subprocess.PIPE,
                         stderr=subprocess.STDOUT, text=True)
    try:
        assert p.stdout is not None
        line = p.stdout.readline().strip()
        if line != "up":
            p.kill()
            raise AssertionError(line + p.stdout.read())
        yield p
    finally:
        p.terminate()
        try:
            p.wait(timeout=10)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait(timeout=10)


def test_dig_over_udp_and_tcp(netns: Namespaces, tmp_path: Path) -> None:
    require_root("dig")
    ns = netns.add("dns")
    snap = tmp_path / "imports.json"
    write_snapshot(str(snap), SNAP)
    with serving(ns, "127.0.0.1:53", snap):
        for transport in ("+notcp", "+tcp"):
            status, answer, out = dig(ns, "127.0.0.1", WEB, "A", transport)
            assert "(TCP)" in out if transport == "+tcp" else "(UDP)" in out, out
            assert status == "NOERROR" and " aa" in out.split("flags:")[1].split(";")[0]
            # dnspython shuffles an RRset on the wire (round robin): compare as a set.
            assert sorted(answer) == [f"{WEB}. 2 IN A 100.64.0.10", f"{WEB}. 2 IN A 100.66.0.10"]
            assert dig(ns, "127.0.0.1", WEB, "AAAA", transport)[1] == [f"{WEB}. 2 IN AAAA fd00:64::a"]
            assert dig(ns, "127.0.0.1", f"edge.{WEB}", "A", transport)[1] == [
                f"edge.{WEB}. 2 IN A 100.66.0.10"]
            status, answer, _ = dig(ns, "127.0.0.1", f"edge.{WEB}", "AAAA", transport)
            assert (status, answer) == ("NOERROR", [])
            assert dig(ns, "127.0.0.1", "db.default.svc.clusterset.local", "A", transport)[0] == "NXDOMAIN"
            assert dig(ns, "127.0.0.1", "example.com", "A", transport)[0] == "REFUSED"


def test_a_snapshot_change_is_answered_at_once(netns: Namespaces, tmp_path: Path) -> None:
    require_root("dig")
    ns = netns.add("dns")
    snap = tmp_path / "imports.json"
    write_snapshot(str(snap), SNAP)
    with serving(ns, "127.0.0.1:53", snap):
        assert dig(ns, "127.0.0.1", f"gpu.{WEB}", "A")[1] == [f"gpu.{WEB}. 2 IN A 100.64.0.10"]
        write_snapshot(str(snap), [{"peer": "gpu", "name": "web.default", "addresses": ["100.64.7.7"]}])
        # The very next query, no waiting: the 2 s budget of a change is the channel's.
        assert dig(ns, "127.0.0.1", f"gpu.{WEB}", "A")[1] == [f"gpu.{WEB}. 2 IN A 100.64.7.7"]
        assert dig(ns, "127.0.0.1", f"edge.{WEB}", "A")[0] == "NXDOMAIN"
        write_snapshot(str(snap), [])
        assert dig(ns, "127.0.0.1", WEB, "A")[0] == "NXDOMAIN"


def test_truncation_falls_back_to_tcp_and_ipv6_listen(netns: Namespaces, tmp_path: Path) -> None:
    require_root("dig")
    ns = netns.add("dns")
    snap = tmp_path / "imports.json"
    many = [{"peer": f"p{i}", "name": "web.default", "addresses": [f"100.64.{i}.10"]} for i in range(60)]
    write_snapshot(str(snap), many)
    with serving(ns, "[::1]:5353", snap):
        _, answer, out = dig(ns, "::1", WEB, "A", "+ignore", "+noedns", port=5353)
        assert " tc" in out.split("flags:")[1].split(";")[0] and answer == [], out
        _, answer, out = dig(ns, "::1", WEB, "A", "+noedns", port=5353)  # dig retries over TCP
        assert len(answer) == 60 and "(TCP)" in out, out


CLIENT = r"""
import socket, struct, sys, time
host, port, idle = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
def conn():
    s = socket.create_connection((host, port), timeout=10)
    return s
def closed(s, within):
    s.settimeout(within)
    try:
        return s.recv(1) == b""
    except (socket.timeout, ConnectionResetError):
        return False
# Garbage over UDP is counted, never answered with a crash: the server still answers after it.
u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
for junk in (b"", b"\x00", b"\xff" * 40, b"\x12\x34\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00\x03"):
    u.sendto(junk, (host, port))
a, b = conn(), conn()
time.sleep(0.3)
c = conn()
print("third closed at once:", closed(c, 3))
# A length prefix promising more than ever comes: closed after the idle timeout.
a.sendall(b"\x00\x40abc")
t = time.monotonic()
print("slow closed:", closed(a, idle + 10), "after idle:", time.monotonic() - t >= idle * 0.5)
print("idle closed:", closed(b, idle + 10))
d = conn()
print("new accepted:", not closed(d, 0.5))
"""


def test_tcp_connections_are_bounded_and_idle_ones_closed(netns: Namespaces, tmp_path: Path) -> None:
    require_root("dig")
    ns = netns.add("dns")
    snap = tmp_path / "imports.json"
    write_snapshot(str(snap), SNAP)
    with serving(ns, "127.0.0.1:53", snap, "--max-tcp", "2", "--tcp-idle", "1"):
        out = sh(sys.executable, "-c", CLIENT, "127.0.0.1", "53", "1", ns=ns, timeout=60).stdout
        assert "third closed at once: True" in out, out
        assert "slow closed: True after idle: True" in out, out
        assert "idle closed: True" in out, out
        assert "new accepted: True" in out, out
        assert dig(ns, "127.0.0.1", WEB, "A", "+tcp")[0] == "NOERROR"
        assert dig(ns, "127.0.0.1", WEB, "A")[0] == "NOERROR"


# --- the daemon ----------------------------------------------------------------------------------


def _config(tmp: Path, iface: str, dns_listen: str) -> Path:
    cfg = tmp / "gw.yaml"
    cfg.write_text(f"cluster_id: t1\npod_cidrs: [10.244.0.0/16]\ngateway_ip: 10.244.0.10\n"
                   f"wireguard: {{interface: {iface}, implementation: userspace}}\n"
                   f"api: {{listen: '127.0.0.1:8080', advertise: 'http://192.0.2.1:8080'}}\n"
                   f"dns: {{listen: '{dns_listen}'}}\n"
                   f"state_dir: {tmp / 'sd'}\n")
    return cfg


def _gateway_ns(netns: Namespaces) -> str:
    ns = netns.add("cwd")
    sh("ip", "addr", "add", "10.244.0.10/32", "dev", "lo", ns=ns)
    return ns


def test_the_daemon_answers_its_zone_and_counts_in_metrics(netns: Namespaces, tmp_path: Path) -> None:
    require_root("dig", "curl")
    ns = _gateway_ns(netns)
    cfg = _config(tmp_path, uniq("cwd"), "10.244.0.10:53")
    log = open(tmp_path / "gw.log", "wb")  # noqa: SIM115
    p = subprocess.Popen(["ip", "netns", "exec", ns, str(BIN / "crosswire"), "gateway", "run", "--config",
                          str(cfg)], stdout=log, stderr=log, start_new_session=True)
    log.close()
    try:
        deadline = time.monotonic() + 60
        while sh("curl", "-sf", "-m", "2", "http://127.0.0.1:8081/healthz", ns=ns, check=False).returncode:
            assert p.poll() is None, (tmp_path / "gw.log").read_text()
            assert time.monotonic() < deadline, (tmp_path / "gw.log").read_text()
            time.sleep(0.2)
        # Until the imports are wired in (records.imports_snapshot), the zone is empty.
        assert dig(ns, "10.244.0.10", WEB, "A")[0] == "NXDOMAIN"
        status, answer, _ = dig(ns, "10.244.0.10", "clusterset.local", "SOA", "+tcp")
        assert status == "NOERROR" and answer[0].startswith("clusterset.local. 2 IN SOA ns.clusterset.local.")
        assert dig(ns, "10.244.0.10", "example.com", "A")[0] == "REFUSED"
        sh(sys.executable, "-c", "import socket; s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); "
           "s.sendto(b'\\x00\\x01garbage', ('10.244.0.10', 53))", ns=ns)
        time.sleep(0.3)
        metrics = sh("curl", "-sf", "http://127.0.0.1:8081/metrics", ns=ns).stdout
        for line in ('crosswire_dns_queries_total{transport="udp"} 3',
                     'crosswire_dns_queries_total{transport="tcp"} 1',
                     'crosswire_dns_answers_total{rcode="NXDOMAIN"} 1',
                     'crosswire_dns_answers_total{rcode="NOERROR"} 1',
                     'crosswire_dns_answers_total{rcode="REFUSED"} 1',
                     "crosswire_dns_malformed_total 1"):
            assert line in metrics.splitlines(), (line, metrics)
    finally:
        p.terminate()
        try:
            p.wait(timeout=20)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait(timeout=10)
    assert p.returncode == 0, (tmp_path / "gw.log").read_text()


@pytest.mark.parametrize("proto", ["udp", "tcp"])
def test_dns_port_in_use_stops_before_touching_anything(netns: Namespaces, tmp_path: Path, proto: str) -> None:
    require_root()
    ns = _gateway_ns(netns)
    sh("sysctl", "-qw", "net.ipv4.ip_forward=0", ns=ns)
    iface = uniq("cwd")
    cfg = _config(tmp_path, iface, "10.244.0.10:53")
    kind = "SOCK_DGRAM" if proto == "udp" else "SOCK_STREAM"
    holder = subprocess.Popen(["ip", "netns", "exec", ns, sys.executable, "-c",
                               f"import socket, time\ns = socket.socket(socket.AF_INET, socket.{kind}); "
                               "s.bind(('10.244.0.10', 53)); print('up', flush=True); time.sleep(60)"],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "up"
        p = subprocess.run(["ip", "netns", "exec", ns, str(BIN / "crosswire"), "gateway", "run",
                            "--config", str(cfg)], capture_output=True, text=True, timeout=60)
        assert p.returncode == 1, p.stderr
        assert "crosswire: cannot start: dns.listen: cannot listen on 10.244.0.10:53: Address already in use" \
            in p.stderr, p.stderr
        assert "Traceback" not in p.stderr
        assert sh("sysctl", "-n", "net.ipv4.ip_forward", ns=ns).stdout.strip() == "0"
        assert sh("ip", "link", "show", iface, ns=ns, check=False).returncode != 0
    finally:
        holder.kill()
        holder.wait(timeout=10)
