"""The daemon never touches a link or nft table it did not create (issue 9).

A ``wireguard.interface`` naming an existing link that crosswire did not create
(a veth, a persistent TUN) or an ``nft_table`` naming an operator's table: the
daemon exits non-zero naming the key and the object, before changing anything.
A gateway upgraded from a version without the marks adopts its own running
data plane (state directory with state + answering UAPI socket).
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
from gwharness import BIN, IMPL, Gw, build_cluster, serving_pid
from nsutil import Namespaces, require_root, sh, uniq

pytestmark = pytest.mark.root


def run_once(g: Gw) -> subprocess.CompletedProcess[str]:
    """``crosswire gateway run`` that is expected to refuse (so: to exit by itself)."""
    return sh("ip", "netns", "exec", g.ns, str(BIN / "crosswire"), "gateway", "run", "--config", str(g.config),
              check=False, timeout=60)


def gateway(netns: Namespaces, tmp_path: Path, prefix: str) -> Gw:
    require_root(*(("wireguard-go",) if IMPL == "wireguard-go" else ()), "nft")
    os.chmod(tmp_path, 0o700)
    ns = netns.add(prefix)
    return build_cluster(netns, "o", ns, "127.0.0.1", tmp_path)


def use_interface(g: Gw, name: str) -> None:
    g.config.write_text(g.config.read_text().replace(f"interface: {g.iface}", f"interface: {name}"))
    g.iface = name


def link(ns: str, name: str) -> str:
    return sh("ip", "-d", "-o", "link", "show", name, ns=ns).stdout


def make_state(g: Gw) -> None:
    """This gateway's state directory as a gateway leaves it (both stores, a key)."""
    from gateway.config import parse
    from gateway.daemon import build

    # Built here, outside the test namespace: names nothing in this namespace exists.
    raw = {"cluster_id": "o", "pod_cidrs": ["10.244.0.0/16", "fd00::/48"], "service_cidrs": ["10.96.0.0/12"],
           "state_dir": str(g.state_dir), "wireguard": {"interface": uniq("ox")}, "nft_table": uniq("ox")}
    cp = build(parse(raw, env={}), None)
    cp.store.private_key()
    cp.store.close()
    cp.views.close()  # type: ignore[attr-defined]


def stop(g: Gw) -> None:
    if g.proc is not None and g.proc.poll() is None:
        g.proc.terminate()
        g.proc.wait(timeout=15)
    g.proc = None


def test_veth_named_as_interface_is_refused_untouched(netns: Namespaces, tmp_path: Path) -> None:
    g = gateway(netns, tmp_path, "own")
    a, b = uniq("ova"), uniq("ovb")
    sh("ip", "link", "add", a, "type", "veth", "peer", "name", b, ns=g.ns)
    sh("ip", "addr", "add", "192.0.2.1/24", "dev", a, ns=g.ns)
    sh("ip", "link", "set", a, "up", ns=g.ns)
    before = (link(g.ns, a), link(g.ns, b))
    use_interface(g, a)
    p = run_once(g)
    assert p.returncode != 0, p.stderr
    assert (f"crosswire: cannot start: wireguard.interface: a link named '{a}' (veth) already exists "
            "and was not created by crosswire") in p.stderr
    assert "Traceback" not in p.stderr
    assert (link(g.ns, a), link(g.ns, b)) == before  # both ends there, unchanged (addresses too)
    assert "192.0.2.1/24" in sh("ip", "-o", "addr", "show", a, ns=g.ns).stdout
    assert not (g.state_dir / "state.db").exists()  # refused before anything was created


def test_persistent_tun_named_as_interface_is_refused_untouched(netns: Namespaces, tmp_path: Path) -> None:
    g = gateway(netns, tmp_path, "owt")
    tun = uniq("otun")
    sh("ip", "tuntap", "add", "mode", "tun", "name", tun, ns=g.ns)
    before = link(g.ns, tun)
    use_interface(g, tun)
    p = run_once(g)
    assert p.returncode != 0, p.stderr
    assert f"wireguard.interface: a link named '{tun}' (tun) already exists and was not created" in p.stderr
    assert "Traceback" not in p.stderr
    assert link(g.ns, tun) == before
    # Even with this gateway's state in the directory: a TUN without an answering
    # UAPI socket is not a previous crosswire version's, so it is not adopted.
    make_state(g)
    p = run_once(g)
    assert p.returncode != 0 and f"a link named '{tun}' (tun) already exists" in p.stderr, p.stderr
    assert link(g.ns, tun) == before


def test_operator_table_of_that_name_is_refused_untouched(netns: Namespaces, tmp_path: Path) -> None:
    g = gateway(netns, tmp_path, "own")
    sh("nft", "add table inet crosswire; add chain inet crosswire input "
       "{ type filter hook input priority 0; policy accept; }; "
       "add rule inet crosswire input tcp dport 2222 counter accept comment \"operator's rule\"", ns=g.ns)
    before = sh("nft", "list", "table", "inet", "crosswire", ns=g.ns).stdout
    p = run_once(g)
    assert p.returncode != 0, p.stderr
    assert ("crosswire: cannot start: nft_table: table inet crosswire exists and was not created by crosswire"
            in p.stderr)
    assert "Traceback" not in p.stderr
    assert sh("nft", "list", "table", "inet", "crosswire", ns=g.ns).stdout == before
    assert "operator's rule" in before
    # The wireguard interface was not created either: nothing changed.
    assert sh("ip", "link", "show", g.iface, ns=g.ns, check=False).returncode != 0


def test_other_operator_table_untouched_and_marks_set(netns: Namespaces, tmp_path: Path) -> None:
    g = gateway(netns, tmp_path, "own")
    sh("nft", "add table inet ops; add chain inet ops input { type filter hook input priority 0; }; "
       "add rule inet ops input tcp dport 2222 accept comment \"keep me\"", ns=g.ns)
    before = sh("nft", "list", "table", "inet", "ops", ns=g.ns).stdout
    g.start()
    try:
        g.wait_ready()
        assert "alias crosswire" in link(g.ns, g.iface)
        ours = sh("nft", "list", "table", "inet", "crosswire", ns=g.ns).stdout
        assert "set created_by_crosswire" in ours
        assert sh("nft", "list", "table", "inet", "ops", ns=g.ns).stdout == before
    finally:
        stop(g)
    # A restart finds its own (marked) link and table: adopted and replaced as before.
    g.start()
    try:
        g.wait_ready()
        assert sh("nft", "list", "table", "inet", "ops", ns=g.ns).stdout == before
    finally:
        stop(g)


def test_upgrade_adopts_unmarked_data_plane_with_state(netns: Namespaces, tmp_path: Path) -> None:
    g = gateway(netns, tmp_path, "owu")
    g.start()
    try:
        g.wait_ready()
    finally:
        stop(g)  # SIGTERM: the data plane stays running for the next start
    pids = sh("ip", "netns", "pids", g.ns).stdout.split()
    assert pids, "the WireGuard process should keep running"
    # What the previous version left: no alias on the TUN, no marker set in the table.
    sh("ip", "link", "set", "dev", g.iface, "alias", "", ns=g.ns)
    sh("nft", "delete", "set", "inet", "crosswire", "created_by_crosswire", ns=g.ns)
    assert "alias" not in link(g.ns, g.iface)
    # A fresh state directory (another gateway) must not take them over.
    fresh = g.config.read_text().replace(f"state_dir: {g.state_dir}", f"state_dir: {g.state_dir}-new")
    other = g.config.with_name("fresh.yaml")
    other.write_text(fresh)
    p = sh("ip", "netns", "exec", g.ns, str(BIN / "crosswire"), "gateway", "run", "--config", str(other),
           check=False, timeout=60)
    assert p.returncode != 0 and f"a link named '{g.iface}' (tun) already exists" in p.stderr, p.stderr
    assert "alias" not in link(g.ns, g.iface)
    # The gateway whose state this is: adopts (same process) and marks both.
    g.start()
    try:
        g.wait_ready()
        assert "alias crosswire" in link(g.ns, g.iface)
        assert "set created_by_crosswire" in sh("nft", "list", "table", "inet", "crosswire", ns=g.ns).stdout
        # The same process serves the interface (adopted, not restarted).
        assert str(serving_pid(g.iface)) in pids, (serving_pid(g.iface), pids)
    finally:
        stop(g)
