"""WgProcess (start/supervise/stop) and WgControl against real userspace WireGuard."""

from __future__ import annotations

import os
import signal

import pytest
from fabric_topo import keypair, start_wg
from nsutil import sh, uniq

from fabric.model import LocalFabric, PeerFabric, RangeMap
from fabric.routes import list_routes, remove_routes, sync_routes
from fabric.wgctl import WgControl, WgError
from fabric.wgprocess import WgProcess, WgProcessError

pytestmark = pytest.mark.root


def _pid_of(dp: WgProcess) -> int:
    assert dp._proc is not None
    return dp._proc.pid


@pytest.mark.parametrize("implementation", ["wireguard-go", "userspace"])
def test_start_supervise_stop(dp_ns: tuple[str, list[WgProcess]], implementation: str) -> None:
    ns, made = dp_ns
    wg = uniq("cwd")
    dp = WgProcess(wg, implementation, 1380, netns=ns)  # type: ignore[arg-type]
    made.append(dp)
    assert not dp.alive()
    dp.ensure_up()
    assert dp.alive()
    link = sh("ip", "-o", "link", "show", wg, ns=ns).stdout
    assert "mtu 1380" in link and ",UP" in link
    pid = _pid_of(dp)
    dp.ensure_up()  # idempotent: same process
    assert _pid_of(dp) == pid and dp.starts == 1
    # The implementation dies: alive() notices, ensure_up() restarts it.
    os.kill(pid, signal.SIGKILL)
    dp._proc.wait(timeout=5)  # type: ignore[union-attr]
    assert not dp.alive()
    dp.ensure_up()
    assert dp.alive() and dp.starts == 2 and _pid_of(dp) != pid
    # A fresh supervisor (gateway restart) adopts the running process.
    adopted = WgProcess(wg, implementation, 1380, netns=ns)  # type: ignore[arg-type]
    adopted.ensure_up()
    assert adopted.starts == 0 and adopted.alive()
    # Stopping an adopted process: deleting its interface makes it exit.
    running = dp._proc
    assert running is not None
    adopted.stop()
    assert running.wait(timeout=10) is not None
    assert not dp.alive() and not adopted.alive()
    assert sh("ip", "link", "show", wg, ns=ns, check=False).returncode != 0
    assert not os.path.exists(f"/var/run/wireguard/{wg}.sock")


def test_bad_config_is_refused() -> None:
    with pytest.raises(WgProcessError, match="implementation"):
        WgProcess("wg0", "bogus")  # type: ignore[arg-type]
    with pytest.raises(WgProcessError, match="interface"):
        WgProcess("x" * 16)
    with pytest.raises(WgProcessError, match="mtu"):
        WgProcess("wg0", mtu=100)
    # One range, the config's: what passes config validation is what the data plane takes.
    from gateway.config import ConfigError, parse

    for mtu in (1279, 9001):
        with pytest.raises(WgProcessError, match=f"wireguard.mtu: {mtu} is out of range 1280-9000"):
            WgProcess("wg0", mtu=mtu)
        with pytest.raises(ConfigError, match=f"wireguard.mtu: {mtu} is out of range 1280-9000"):
            parse({"cluster_id": "a", "pod_cidrs": ["10.244.0.0/16"], "wireguard": {"mtu": mtu}}, env={})
    WgProcess("wg0", mtu=1280)
    WgProcess("wg0", mtu=9000)


def test_wgcontrol_sync_show_remove(dp_ns: tuple[str, list[WgProcess]]) -> None:
    _, wg = start_wg(dp_ns, "cwd")
    priv, _ = keypair()
    _, pub_a = keypair()
    psk, pub_b = keypair()
    local = LocalFabric("lab", wg, 51999, private_key=priv)
    a = PeerFabric("a", pub_a, "198.18.0.2:51820", remote=(RangeMap("pod", "10.244.0.0/16", "100.64.0.0/16"),))
    b = PeerFabric("b", pub_b, None, preshared_key=psk,
                   remote=(RangeMap("pod", "10.244.0.0/16", "100.66.0.0/16"),
                           RangeMap("pod", "fd00::/48", "fd66::/48")))
    ctl = WgControl(wg)
    ctl.sync(local, [a, b])
    shown = ctl.show()
    assert set(shown) == {pub_a, pub_b}
    assert shown[pub_a]["endpoint"] == "198.18.0.2:51820"
    assert sorted(shown[pub_b]["allowed_ips"]) == ["100.66.0.0/16", "fd66::/48"]
    dump = sh("wg", "show", wg, "dump").stdout  # the stock tool agrees
    assert "51999" in dump and pub_b in dump and "100.66.0.0/16,fd66::/48" in dump
    ctl.sync(local, [b])
    assert set(ctl.show()) == {pub_b}
    # A bad key: refused, device unchanged, and the message does not echo the key.
    bad = PeerFabric("c", "Zm9v" + psk, None)
    with pytest.raises(WgError) as e:
        ctl.sync(local, [b, bad])
    assert psk not in str(e.value)
    assert set(ctl.show()) == {pub_b}
    assert priv not in repr(ctl) and priv not in str(ctl.device())


def test_routes_sync_and_remove(dp_ns: tuple[str, list[WgProcess]]) -> None:
    ns, wg = start_wg(dp_ns, "cwd")
    sh("ip", "route", "add", "100.99.0.0/16", "dev", wg, ns=ns)  # not ours: kept
    sync_routes(wg, ["100.64.0.0/16", "fd64::/48"], netns=ns)
    sync_routes(wg, ["100.64.0.0/16", "100.80.0.0/12"], netns=ns)
    assert {str(n) for n in list_routes(wg, netns=ns)} == {"100.64.0.0/16", "100.80.0.0/12"}
    remove_routes(wg, netns=ns)
    assert list_routes(wg, netns=ns) == set()
    assert "100.99.0.0/16" in sh("ip", "route", ns=ns).stdout


def test_apply_then_remove(dp_ns: tuple[str, list[WgProcess]]) -> None:
    from fabric.apply import apply, remove, verify
    from fabric.model import FabricState

    ns, wg = start_wg(dp_ns, "cwd")
    priv, _ = keypair()
    _, pub = keypair()
    state = FabricState(
        LocalFabric("lab", wg, 51998, private_key=priv, pod_cidrs=("10.244.0.0/16",), gateway_ip="10.244.0.1"),
        (PeerFabric("gpu", pub, "198.18.0.2:51820", remote=(RangeMap("pod", "10.244.0.0/16", "100.64.0.0/16"),),
                    local=(RangeMap("pod", "10.244.0.0/16", "100.65.0.0/16"),)),))
    apply(state, netns=ns)
    assert verify(state, netns=ns) == []
    remove(state, netns=ns)
    assert list_routes(wg, netns=ns) == set()
    assert WgControl(wg).show() == {}
    assert "crosswire" not in sh("nft", "list", "tables", ns=ns).stdout
    problems = verify(state, netns=ns)
    # The NAT table, the policy table (the guard), routes and WireGuard peers.
    assert len(problems) == 4 and any("nft table inet crosswire-exports" in p for p in problems)
