"""The kernel WireGuard control's pure halves and the implementation choice, without a kernel.

The SET messages are encoded to bytes and decoded back with pyroute2's own
``wgmsg``, so the attributes checked are the ones the kernel would parse.
"""

from __future__ import annotations

import base64
import logging
import os
import socket
from typing import Any

import pytest

from fabric import wgnetlink
from fabric.model import LocalFabric, PeerFabric, RangeMap
from fabric.wgctl import DeviceStatus, PeerStatus, WgError, key_hex, render_set
from fabric.wgnetlink import NetlinkWgControl, device_from_messages, encode_set, parse_set
from fabric.wgprocess import WgProcess
from fabric.wgselect import ModuleState, choose, probe_kernel_module


def key() -> str:
    return base64.b64encode(os.urandom(32)).decode()


PRIV = key()


def local(port: int = 51820) -> LocalFabric:
    return LocalFabric(cluster_id="me", interface="wgk", listen_port=port, private_key=PRIV, pod_cidrs=("10.244.0.0/16",),
                       service_cidrs=("10.96.0.0/12",))


def peer(cid: str, pub: str, views: tuple[str, ...] = ("100.64.0.0/16",), endpoint: str | None = None,
         psk: str | None = None) -> PeerFabric:
    return PeerFabric(cluster_id=cid, public_key=pub, endpoint=endpoint, preshared_key=psk,
                      remote=tuple(RangeMap("pod", "10.244.0.0/16", v) for v in views), local=(),
                      persistent_keepalive=25)


def roundtrip(msgs: list[Any]) -> list[Any]:
    from pyroute2.netlink.generic.wireguard import wgmsg

    out = []
    for m in msgs:
        m["header"]["type"] = 0x20
        m.encode()
        d = wgmsg(m.data)
        d.decode()
        out.append(d)
    return out


def peers_of(m: Any) -> list[Any]:
    return list(m.get_attr("WGDEVICE_A_PEERS") or [])


def test_new_device_sets_key_port_and_each_peer_with_its_attributes() -> None:
    a, b, psk = key(), key(), key()
    req = render_set(local(), [peer("gpu", a, ("100.64.0.0/16", "fd00:64::/48"), endpoint="x", psk=psk),
                               peer("lab", b)],
                     DeviceStatus(), {}, {key_hex(a, "a"): "[fd00::2]:51821"})
    ds = parse_set(req)
    assert ds.private_key == base64.b64decode(PRIV) and ds.listen_port == 51820
    (m,) = roundtrip(encode_set("wgk", ds))
    assert m.get_attr("WGDEVICE_A_IFNAME") == "wgk"
    assert m.get_attr("WGDEVICE_A_PRIVATE_KEY").decode() == PRIV
    assert m.get_attr("WGDEVICE_A_LISTEN_PORT") == 51820
    assert m.get_attr("WGDEVICE_A_FLAGS") is None  # never REPLACE_PEERS: that drops every session
    pa, pb = peers_of(m)
    assert pa.get_attr("WGPEER_A_PUBLIC_KEY").decode() == a
    assert pa.get_attr("WGPEER_A_PRESHARED_KEY").decode() == psk
    assert pa.get_attr("WGPEER_A_FLAGS") == wgnetlink.WGPEER_F_REPLACE_ALLOWEDIPS
    ep = pa.get_attr("WGPEER_A_ENDPOINT")
    assert (ep["family"], ep["addr"], ep["port"]) == (socket.AF_INET6, "fd00::2", 51821)
    assert pa.get_attr("WGPEER_A_PERSISTENT_KEEPALIVE_INTERVAL") == 25
    assert [x["addr"] for x in pa.get_attr("WGPEER_A_ALLOWEDIPS")] == ["100.64.0.0/16", "fd00:64::/48"]
    # No endpoint resolved for lab: none sent; no PSK: zeros clear any old one.
    assert pb.get_attr("WGPEER_A_ENDPOINT") is None
    assert base64.b64decode(pb.get_attr("WGPEER_A_PRESHARED_KEY")) == bytes(32)


def test_only_differences_are_sent_and_unknown_peers_removed() -> None:
    a, gone = key(), key()
    cur = DeviceStatus(listen_port=51820, has_private_key=True,
                       private_key_hex=base64.b64decode(PRIV).hex(),
                       peers={a: PeerStatus(a, endpoint="198.18.0.2:51820", allowed_ips=["100.64.0.0/16"]),
                              gone: PeerStatus(gone, allowed_ips=["100.70.0.0/16"])})
    ep = {key_hex(a, "a"): "198.18.0.2:51820"}
    ds = parse_set(render_set(local(), [peer("gpu", a, endpoint="gw")], cur, dict(ep), ep))
    assert ds.private_key is None and ds.listen_port is None
    (m,) = roundtrip(encode_set("wgk", ds))
    assert m.get_attr("WGDEVICE_A_PRIVATE_KEY") is None and m.get_attr("WGDEVICE_A_LISTEN_PORT") is None
    removed, kept = peers_of(m)
    assert removed.get_attr("WGPEER_A_PUBLIC_KEY").decode() == gone
    assert removed.get_attr("WGPEER_A_FLAGS") == wgnetlink.WGPEER_F_REMOVE_ME
    assert removed.get_attr("WGPEER_A_ALLOWEDIPS") is None
    # Same allowed IPs, same endpoint as last set: neither is touched (no roaming undone).
    assert kept.get_attr("WGPEER_A_FLAGS") == 0
    assert kept.get_attr("WGPEER_A_ALLOWEDIPS") is None and kept.get_attr("WGPEER_A_ENDPOINT") is None


def test_large_requests_split_between_peers_device_attributes_first() -> None:
    pubs = [key() for _ in range(300)]
    ds = parse_set(render_set(local(), [peer(f"p{i}", k, (f"100.{64 + i // 256}.{i % 256}.0/24",))
                                         for i, k in enumerate(pubs)], DeviceStatus(), {}, {}))
    msgs = roundtrip(encode_set("wgk", ds, max_message=4096))
    assert len(msgs) > 5
    assert msgs[0].get_attr("WGDEVICE_A_PRIVATE_KEY") is not None
    assert all(m.get_attr("WGDEVICE_A_PRIVATE_KEY") is None for m in msgs[1:])
    assert all(m.get_attr("WGDEVICE_A_IFNAME") == "wgk" for m in msgs)
    assert all(len(m.data) <= 4096 + 64 for m in msgs)
    sent = [p.get_attr("WGPEER_A_PUBLIC_KEY").decode() for m in msgs for p in peers_of(m)]
    assert sent == pubs


def test_dump_merged_across_messages() -> None:
    """The kernel continues a peer's allowed IPs in the next dump message: one peer, all IPs."""
    from pyroute2.netlink.generic.wireguard import wgmsg

    a = key()
    first = wgmsg()
    first["cmd"], first["version"] = 0, 1
    first["attrs"] = [["WGDEVICE_A_LISTEN_PORT", 51820], ["WGDEVICE_A_PRIVATE_KEY", PRIV],
                      ["WGDEVICE_A_PEERS", [{"attrs": [
                          ["WGPEER_A_PUBLIC_KEY", a], ["WGPEER_A_PRESHARED_KEY", key()],
                          ["WGPEER_A_ENDPOINT", {"addr": "198.18.0.2", "port": 51820}],
                          ["WGPEER_A_LAST_HANDSHAKE_TIME", {"tv_sec": 1_800_000_000, "tv_nsec": 500_000_000}],
                          ["WGPEER_A_RX_BYTES", 1234], ["WGPEER_A_TX_BYTES", 5678],
                          ["WGPEER_A_PERSISTENT_KEEPALIVE_INTERVAL", 25],
                          ["WGPEER_A_ALLOWEDIPS", [{"attrs": [["WGALLOWEDIP_A_FAMILY", socket.AF_INET],
                                                              ["WGALLOWEDIP_A_IPADDR", bytes([100, 64, 0, 0])],
                                                              ["WGALLOWEDIP_A_CIDR_MASK", 16]]}]]]}]]]
    second = wgmsg()
    second["cmd"], second["version"] = 0, 1
    second["attrs"] = [["WGDEVICE_A_PEERS", [{"attrs": [
        ["WGPEER_A_PUBLIC_KEY", a],
        ["WGPEER_A_ALLOWEDIPS", [{"attrs": [["WGALLOWEDIP_A_FAMILY", socket.AF_INET6],
                                            ["WGALLOWEDIP_A_IPADDR", socket.inet_pton(socket.AF_INET6, "fd00:64::")],
                                            ["WGALLOWEDIP_A_CIDR_MASK", 48]]}]]]}]]]
    dev = device_from_messages(roundtrip([first, second]))
    assert dev.listen_port == 51820 and dev.has_private_key
    assert dev.private_key_hex == base64.b64decode(PRIV).hex()
    assert list(dev.peers) == [a]
    p = dev.peers[a]
    assert p.endpoint == "198.18.0.2:51820" and p.last_handshake == 1_800_000_000.5
    assert (p.rx_bytes, p.tx_bytes, p.persistent_keepalive) == (1234, 5678, 25)
    assert p.allowed_ips == ["100.64.0.0/16", "fd00:64::/48"] and p.has_preshared_key
    assert "private_key_hex" not in repr(dev) and PRIV not in repr(dev)


class FakeKernel:
    """Stands for the netlink socket: a device to read, and what was sent."""

    def __init__(self, dev: DeviceStatus) -> None:
        self.dev = dev
        self.sent: list[Any] = []


def fake_control(monkeypatch: pytest.MonkeyPatch, dev: DeviceStatus) -> tuple[NetlinkWgControl, FakeKernel]:
    k = FakeKernel(dev)
    ctl = NetlinkWgControl("wgk")
    monkeypatch.setattr(ctl, "device", lambda: k.dev)
    monkeypatch.setattr(ctl, "_send", lambda msgs: k.sent.extend(msgs))
    return ctl, k


def test_sync_validates_the_whole_request_before_sending(monkeypatch: pytest.MonkeyPatch,
                                                          caplog: pytest.LogCaptureFixture) -> None:
    ctl, k = fake_control(monkeypatch, DeviceStatus())
    good, bad = key(), base64.b64encode(b"short").decode()
    caplog.set_level(logging.DEBUG)
    with pytest.raises(WgError) as e:
        ctl.sync(local(), [peer("gpu", good), peer("lab", bad)])
    assert k.sent == []  # the good peer was not sent either
    assert "lab" in str(e.value) and bad not in str(e.value) and PRIV not in str(e.value)
    with pytest.raises(WgError):
        ctl.sync(local(), [peer("gpu", good), peer("dup", good)])
    assert k.sent == []
    assert PRIV not in caplog.text and good not in caplog.text


def test_sync_sends_nothing_when_the_device_already_matches(monkeypatch: pytest.MonkeyPatch) -> None:
    a = key()
    ctl, k = fake_control(monkeypatch, DeviceStatus())
    ctl.sync(local(), [peer("gpu", a, endpoint="198.18.0.2:51820")])
    assert len(k.sent) == 1
    # What the kernel now holds: the next sync must be a no-op.
    k.dev = DeviceStatus(listen_port=51820, has_private_key=True,
                         private_key_hex=base64.b64decode(PRIV).hex(),
                         peers={a: PeerStatus(a, endpoint="198.18.0.2:51820", allowed_ips=["100.64.0.0/16"],
                                              persistent_keepalive=25)})
    k.sent.clear()
    ctl.sync(local(), [peer("gpu", a, endpoint="198.18.0.2:51820")])
    # render_set always restates each kept peer (psk, keepalive), as over UAPI; no device keys,
    # no allowed-IP replacement, no endpoint (it may have roamed).
    (m,) = roundtrip(k.sent)
    assert m.get_attr("WGDEVICE_A_PRIVATE_KEY") is None and m.get_attr("WGDEVICE_A_LISTEN_PORT") is None
    (p,) = peers_of(m)
    assert p.get_attr("WGPEER_A_FLAGS") == 0 and p.get_attr("WGPEER_A_ENDPOINT") is None


def test_unresolvable_endpoint_is_a_problem_not_a_failure(monkeypatch: pytest.MonkeyPatch) -> None:
    ctl, k = fake_control(monkeypatch, DeviceStatus())
    ctl.sync(local(), [peer("gpu", key(), endpoint="not a host:port:x")])
    assert len(k.sent) == 1 and "gpu" in ctl.endpoint_problems


def test_parse_set_refuses_what_render_set_never_makes() -> None:
    with pytest.raises(ValueError, match="fwmark"):
        parse_set("set=1\nfwmark=3\n\n")
    with pytest.raises(ValueError, match="bogus"):
        parse_set(f"set=1\npublic_key={'ab' * 32}\nbogus=1\n\n")


# ----------------------------------------------------------------- the choice


def test_choose() -> None:
    c = choose("auto", ModuleState(True, "loaded"))
    assert (c.implementation, c.display) == ("kernel", "kernel") and "loaded" in c.reason
    c = choose("auto", ModuleState(False, "modprobe wireguard: Module wireguard not found"))
    assert (c.implementation, c.display) == ("userspace", "crosswire-wg")
    assert "not found" in c.reason and "crosswire-wg" in c.reason
    for impl in ("kernel", "userspace", "wireguard-go"):
        c = choose(impl, None)
        assert c.implementation == impl and "configured" in c.reason


def test_probe_kernel_module(tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    loaded = tmp_path / "wireguard"
    loaded.mkdir()
    assert probe_kernel_module(str(loaded)) == ModuleState(True, "loaded")
    monkeypatch.setenv("PATH", str(tmp_path))  # no modprobe anywhere on PATH
    monkeypatch.setattr(os.path, "exists", lambda p: False)
    st = probe_kernel_module(str(tmp_path / "absent"))
    assert not st.available and "modprobe" in st.detail


def test_auto_outside_the_vm_is_crosswire_wg() -> None:
    """This machine's kernel has no WireGuard module (the VM tier checks the other half)."""
    p = WgProcess("cwauto0", "auto")
    if os.path.isdir("/sys/module/wireguard"):
        pytest.fail("this host has a WireGuard module: the test's premise (no module outside the VM) is wrong")
    assert p.resolved == "userspace" and p.choice.display == "crosswire-wg"
    assert "no kernel WireGuard module" in p.choice.reason
    assert type(p.control()).__name__ == "WgControl"
