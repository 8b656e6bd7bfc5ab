"""wg-quick with WG_QUICK_USERSPACE_IMPLEMENTATION=crosswire-wg, and a bounded fuzz run."""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Callable

import pytest
from wgpair import PYTHON, VENV_BIN, Pair, Transfer

PairFactory = Callable[[str, str], Pair]
FUZZER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fuzz_sender.py")

pytestmark = pytest.mark.root


def _wg_quick(p: Pair, action: str, conf: str) -> subprocess.CompletedProcess[str]:
    env = {"PATH": f"{VENV_BIN}:/usr/sbin:/usr/bin:/sbin:/bin",
           "WG_QUICK_USERSPACE_IMPLEMENTATION": "crosswire-wg"}
    return subprocess.run(["ip", "netns", "exec", p.a.ns, "wg-quick", action, conf],
                          capture_output=True, text=True, timeout=60, env=env)


def test_wg_quick_up_down(pair_factory: PairFactory) -> None:
    p = pair_factory("crosswire", "wggo")
    p.b.start()
    p.configure(p.b, p.a, with_endpoint=False)
    p.b.address()
    conf = os.path.join(p.workdir, f"{p.a.iface}.conf")
    fd = os.open(conf, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(f"""[Interface]
PrivateKey = {p.a.priv}
ListenPort = {p.a.port}
Address = {p.a.inner4}/24, {p.a.inner6}/64
MTU = 1380

[Peer]
PublicKey = {p.b.pub}
AllowedIPs = {p.b.inner4}/32, {p.b.inner6}/128
Endpoint = {p.b.outer4}:{p.b.port}
PersistentKeepalive = 15
""")
    up = _wg_quick(p, "up", conf)
    try:
        assert up.returncode == 0, up.stderr
        assert "crosswire-wg" in up.stderr  # wg-quick says which implementation it started
        assert p.a.pids(), "crosswire-wg is not running after wg-quick up"
        assert " 0% packet loss" in p.ping(p.a, p.b.inner4, count=2)
        assert " 0% packet loss" in p.ping(p.a, p.b.inner6, count=2)
        mtu = p.a.sh("cat", f"/sys/class/net/{p.a.iface}/mtu").stdout.strip()
        assert mtu == "1380"
        shown = p.a.wg("showconf", p.a.iface).stdout
        assert "PersistentKeepalive = 15" in shown and f"PublicKey = {p.b.pub}" in shown
    except BaseException:
        print(up.stdout, up.stderr, p.debug_dump())
        raise
    down = _wg_quick(p, "down", conf)
    assert down.returncode == 0, down.stderr
    assert p.a.wait_gone(5), "crosswire-wg still running after wg-quick down"
    assert not p.a.iface_exists()
    assert not os.path.exists(p.a.sock)


def test_fuzz_keeps_serving_and_counts_drops(pair_factory: PairFactory) -> None:
    """Random and mutated WireGuard-shaped datagrams for a few seconds, real traffic alongside."""
    p = pair_factory("crosswire", "wggo")
    p.up(endpoint_on="both")
    assert " 0% packet loss" in p.ping(p.b, p.a.inner4, count=2)
    time.sleep(1.2)  # the stats file is refreshed every second
    before = p.a.stats()
    # Real traffic to capture for replays: wireguard-go's pings to crosswire-wg.
    pinger = subprocess.Popen(["ip", "netns", "exec", p.b.ns, "ping", "-q", "-c", "200", "-i",
                               "0.05", p.a.inner4], stdout=subprocess.DEVNULL)
    fuzz = subprocess.Popen(["ip", "netns", "exec", p.b.ns, PYTHON, FUZZER, p.a.outer4,
                             str(p.a.port), "4", "1234", p.veth[1]],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        time.sleep(2.5)  # scapy loads, the fuzzer captures for a second, then starts
        assert fuzz.poll() is None, fuzz.communicate()[1]
        # The real peer is still served while the fuzzer runs.
        out = p.ping(p.b, p.a.inner4, count=10)
        assert " 0% packet loss" in out, out
        sent_out, err = fuzz.communicate(timeout=30)
    finally:
        for proc in (fuzz, pinger):
            if proc.poll() is None:
                proc.kill()
            proc.wait()
    assert fuzz.returncode == 0, err
    sent, replayed = map(int, sent_out.split())
    assert sent > 1000 and replayed > 50
    t = Transfer(p.b, p.a, p.a.inner4, 5_000_000)
    got = t.wait(60)
    assert got[0] == got[1]
    assert p.a.pids(), "crosswire-wg died under fuzzing"
    time.sleep(1.2)
    after = p.a.stats()
    grown = {k: after[k] - before.get(k, 0) for k in after if k.startswith("drop_")}
    for reason in ("drop_bad_size", "drop_bad_type", "drop_bad_mac1", "drop_unknown_index",
                   "drop_replay"):
        assert grown[reason] > 0, (reason, grown)
    assert sum(grown.values()) >= sent * 0.9, (sent, grown)
    assert after["rx_datagrams"] - before["rx_datagrams"] >= sent
