"""Cookie replies interoperate with the reference: wireguard-go under load
answers our initiation with a cookie reply that our core opens, and accepts
our retry carrying mac2. (Needs root, a namespace and wireguard-go.)"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import subprocess
import sys
import time

import pytest
from nsutil import Namespaces, kill_ns_processes, require_root, sh, uniq

from fabric.wg.crypto import public_key

pytestmark = pytest.mark.root

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(os.path.dirname(HERE)))
SOCK_DIR = "/var/run/wireguard"


def test_wireguard_go_cookie_reply_and_mac2_retry(netns: Namespaces, tmp_path: object) -> None:
    require_root("wg", "wireguard-go")
    ns = netns.add("cwck")
    iface = uniq("cwck")
    sock = os.path.join(SOCK_DIR, f"{iface}.sock")
    ours = os.urandom(32)
    theirs = sh("wg", "genkey").stdout.strip()
    their_pub = sh("wg", "pubkey", input=theirs + "\n").stdout.strip()
    keyfile = os.path.join(str(tmp_path), "wg.key")
    fd = os.open(keyfile, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(theirs + "\n")
    try:
        sh("wireguard-go", iface, ns=ns)
        for _ in range(100):
            if os.path.exists(sock):
                break
            time.sleep(0.05)
        our_pub_b64 = base64.b64encode(public_key(ours)).decode()
        sh("wg", "set", iface, "private-key", keyfile, "listen-port", "51820",
           "peer", our_pub_b64, "allowed-ips", "10.0.0.2/32", ns=ns)  # fmt: skip
        sh("ip", "link", "set", iface, "up", ns=ns)
        proc = sh(
            sys.executable, os.path.join(HERE, "cookie_probe.py"), "probe", REPO, ours.hex(),
            base64.b64decode(their_pub).hex(), "51820", ns=ns, timeout=60,
        )  # fmt: skip
        result = json.loads(proc.stdout.strip().splitlines()[-1])
    finally:
        kill_ns_processes(ns)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(sock)
        subprocess.run(["ip", "link", "del", iface], capture_output=True)
    assert not result["first_had_mac2"]
    assert result["cookie_replies"] >= 1, result  # wireguard-go was under load
    assert result["got_cookie"] and result["drop_bad_cookie"] == 0, result
    assert result["mac2_present"], result
    assert result["handshake_complete"] == 1, result  # the mac2 retry was accepted


def test_our_cookie_reply_accepted_by_wireguard_go(netns: Namespaces, tmp_path: object) -> None:
    """The other direction: we are loaded, wireguard-go initiates, gets our cookie
    reply, and its retry (REKEY_TIMEOUT later) carries a mac2 we accept."""
    require_root("wg", "wireguard-go", "ping")
    ns = netns.add("cwck")
    iface = uniq("cwck")
    sock = os.path.join(SOCK_DIR, f"{iface}.sock")
    ours = os.urandom(32)
    theirs = sh("wg", "genkey").stdout.strip()
    their_pub = sh("wg", "pubkey", input=theirs + "\n").stdout.strip()
    keyfile = os.path.join(str(tmp_path), "wg.key")
    fd = os.open(keyfile, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(theirs + "\n")
    try:
        sh("wireguard-go", iface, ns=ns)
        for _ in range(100):
            if os.path.exists(sock):
                break
            time.sleep(0.05)
        our_pub_b64 = base64.b64encode(public_key(ours)).decode()
        sh("wg", "set", iface, "private-key", keyfile, "peer", our_pub_b64,
           "endpoint", "127.0.0.1:51999", "allowed-ips", "10.0.0.2/32", ns=ns)  # fmt: skip
        sh("ip", "addr", "add", "10.0.0.1/24", "dev", iface, ns=ns)
        sh("ip", "link", "set", iface, "up", ns=ns)
        server = subprocess.Popen(
            ["ip", "netns", "exec", ns, sys.executable, os.path.join(HERE, "cookie_probe.py"),
             "serve", REPO, ours.hex(), base64.b64decode(their_pub).hex(), "51999"],
            stdout=subprocess.PIPE, text=True,
        )  # fmt: skip
        time.sleep(0.5)
        # Traffic into wireguard-go's TUN makes it initiate towards us.
        pinger = subprocess.Popen(
            ["ip", "netns", "exec", ns, "ping", "-c", "40", "-i", "0.5", "10.0.0.2"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        try:
            out, _ = server.communicate(timeout=30)
        finally:
            pinger.kill()
            pinger.wait()
            if server.poll() is None:
                server.kill()
                server.wait()
        result = json.loads(out.strip().splitlines()[-1])
    finally:
        kill_ns_processes(ns)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(sock)
    assert result["cookie_replies_sent"] >= 1, result
    assert result["responses_sent"] >= 1, result  # a retry with a valid mac2
    assert result["handshake_complete"] == 1, result
    assert result["inner_packets"] >= 1, result  # wireguard-go's ping arrived
    assert "drop_bad_mac1" not in result["drops"], result
