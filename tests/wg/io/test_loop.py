"""The event loop around a scripted fake Device: survives core bugs, rebinds, echoes in batches."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest
from nsutil import Namespaces, sh, uniq
from wgpair import PYTHON, REPO

pytestmark = pytest.mark.root
SCRIPT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fake_device_daemon.py")
CLIENT = """
import socket, sys
port, n = int(sys.argv[1]), int(sys.argv[2])
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.settimeout(5)
s.sendto(b"boom", ("127.0.0.1", port))
got = 0
for i in range(n):
    s.sendto(b"x%d" % i, ("127.0.0.1", port))
for i in range(n):
    data, _ = s.recvfrom(100)
    got += 1
print(got)
"""


def test_loop_survives_core_exception_and_echoes(netns: Namespaces, tmp_path: Path) -> None:
    ns = netns.add("cwf")
    iface = uniq("cwf")
    stats = tmp_path / "stats.json"
    proc = subprocess.Popen(["ip", "netns", "exec", ns, PYTHON, SCRIPT, iface, str(stats),
                             str(tmp_path)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env={**os.environ, "PYTHONPATH": REPO})
    try:
        assert proc.stdout is not None
        port = int(proc.stdout.readline())
        assert port > 0
        out = sh(PYTHON, "-c", CLIENT, str(port), "200", ns=ns, timeout=30).stdout
        assert out.strip() == "200"  # every datagram after the "boom" was still echoed
        time.sleep(1.2)  # stats are written once a second
        counters = json.loads(stats.read_text())
        assert counters["io_internal_error"] == 1  # the "boom" datagram
        assert counters["rx_datagrams"] == 201
        # The UAPI socket of the fake lives in tmp_path; a listen_port change rebinds.
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(5)
            s.connect(str(tmp_path / f"{iface}.sock"))
            s.sendall(b"set=1\nlisten_port=40555\n\nget=1\n\n")
            reply = b""
            while reply.count(b"\n\n") < 2:
                reply += s.recv(4096)
        assert b"listen_port=40555" in reply
        assert ":40555" in sh("ss", "-Hlun", ns=ns).stdout
        # A configuration bug gets an error reply, not a hung client or a dead daemon.
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(5)
            s.connect(str(tmp_path / f"{iface}.sock"))
            s.sendall(b"set=1\nboom=1\n\nget=1\n\n")
            reply = b""
            while reply.count(b"\n\n") < 2:
                reply += s.recv(4096)
        assert reply.startswith(b"errno=-5\n\n") and reply.endswith(b"errno=0\n\n")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(10) == 0, proc.stderr.read() if proc.stderr else ""
        assert not stats.exists() and not (tmp_path / f"{iface}.sock").exists()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
