"""WgControl's pure halves (parse_get, render_set), without sockets."""

from __future__ import annotations

import base64
import random

import pytest

from fabric.model import LocalFabric, PeerFabric, RangeMap
from fabric.wg.device import Device
from fabric.wg.uapi import render_get
from fabric.wgctl import (
    DeviceStatus,
    PeerDump,
    PeerStatus,
    WgError,
    byte_totals,
    key_hex,
    parse_get,
    render_set,
)

PRIV = base64.b64encode(bytes(range(32))).decode()
PUB_A = base64.b64encode(b"\x01" * 32).decode()
PUB_B = base64.b64encode(b"\x02" * 32).decode()
PSK = base64.b64encode(b"\x03" * 32).decode()
LOCAL = LocalFabric(cluster_id="lab", interface="wg0", listen_port=51820, private_key=PRIV)


def peer(pub: str, endpoint: str | None = "198.18.0.2:51820", psk: str | None = None) -> PeerFabric:
    return PeerFabric(cluster_id="gpu", public_key=pub, endpoint=endpoint, preshared_key=psk,
                      remote=(RangeMap("pod", "10.244.0.0/16", "100.64.0.0/16"),
                              RangeMap("pod", "fd00::/48", "fd64::/48")), persistent_keepalive=25)


GET = f"""private_key={bytes(range(32)).hex()}
listen_port=51820
public_key={"01" * 32}
preshared_key={"00" * 32}
protocol_version=1
endpoint=198.18.0.2:51820
last_handshake_time_sec=1700000000
last_handshake_time_nsec=500000000
tx_bytes=1234
rx_bytes=5678
persistent_keepalive_interval=25
allowed_ip=100.64.0.0/16
allowed_ip=fd64::/48
public_key={"02" * 32}
preshared_key={"00" * 32}
protocol_version=1
last_handshake_time_sec=0
last_handshake_time_nsec=0
tx_bytes=0
rx_bytes=0
persistent_keepalive_interval=0
errno=0

"""


def test_parse_get() -> None:
    dev = parse_get(GET)
    assert dev.listen_port == 51820 and dev.has_private_key
    a = dev.peers[PUB_A]
    assert (a.endpoint, a.last_handshake, a.rx_bytes, a.tx_bytes) == ("198.18.0.2:51820", 1700000000.5, 5678, 1234)
    assert a.allowed_ips == ["100.64.0.0/16", "fd64::/48"] and a.persistent_keepalive == 25
    b = dev.peers[PUB_B]
    assert b.endpoint is None and b.last_handshake == 0.0 and b.allowed_ips == []
    assert bytes(range(32)).hex() not in repr(dev)  # the private key stays out of reprs
    with pytest.raises(WgError, match="errno=2"):
        parse_get("errno=2\n\n")


def test_render_set_fresh_device() -> None:
    req = render_set(LOCAL, [peer(PUB_A, psk=PSK)], DeviceStatus(), {}, {"01" * 32: "198.18.0.2:51820"})
    assert req == (
        "set=1\n"
        f"private_key={bytes(range(32)).hex()}\n"
        "listen_port=51820\n"
        f"public_key={'01' * 32}\n"
        f"preshared_key={'03' * 32}\n"
        "endpoint=198.18.0.2:51820\n"
        "persistent_keepalive_interval=25\n"
        "replace_allowed_ips=true\n"
        "allowed_ip=100.64.0.0/16\n"
        "allowed_ip=fd64::/48\n\n")


def test_render_set_in_sync_touches_nothing_disruptive() -> None:
    current = parse_get(GET)
    last = {"01" * 32: "198.18.0.2:51820"}
    req = render_set(LOCAL, [peer(PUB_A)], current, last, last)
    # Same key and port: not resent (wireguard-go rebinds on listen_port); B removed;
    # A's allowed IPs and endpoint unchanged: not replaced (no roaming undone).
    assert req == (
        "set=1\n"
        f"public_key={'02' * 32}\nremove=true\n"
        f"public_key={'01' * 32}\n"
        f"preshared_key={'00' * 32}\n"
        "persistent_keepalive_interval=25\n\n")
    # The peer roamed (current endpoint differs) but config did not change: left alone.
    roamed = parse_get(GET.replace("endpoint=198.18.0.2:51820", "endpoint=198.18.0.9:40000"))
    assert "endpoint=" not in render_set(LOCAL, [peer(PUB_A)], roamed, last, last)
    # The configured endpoint changed: set.
    assert "endpoint=198.18.0.3:51820" in render_set(LOCAL, [peer(PUB_A, "198.18.0.3:51820")], roamed, last,
                                                     {"01" * 32: "198.18.0.3:51820"})
    # Its endpoint did not resolve (no entry): the peer is still programmed, its endpoint left alone.
    req = render_set(LOCAL, [peer(PUB_A, "gw.nonexistent.invalid:51820")], DeviceStatus(), {}, {})
    assert "endpoint=" not in req and f"public_key={'01' * 32}" in req and "allowed_ip=100.64.0.0/16" in req


def test_render_set_errors_do_not_echo_keys() -> None:
    bad = "not-base64!!" + PRIV
    with pytest.raises(WgError) as e:
        render_set(LocalFabric("lab", "wg0", 1, private_key=bad), [], DeviceStatus(), {}, {})
    assert bad not in str(e.value) and PRIV not in str(e.value)
    with pytest.raises(WgError, match="32 bytes"):
        key_hex(base64.b64encode(b"x" * 31).decode(), "psk")
    with pytest.raises(WgError, match="used by peer"):
        render_set(LOCAL, [peer(PUB_A), peer(PUB_A)], DeviceStatus(), {}, {})


def test_parse_get_without_errno_or_peers() -> None:
    with pytest.raises(WgError, match="without errno"):
        parse_get(GET.replace("errno=0", ""))
    dev = parse_get("listen_port=1\nerrno=0\n\n")
    assert dev.listen_port == 1 and not dev.has_private_key and dev.peers == {}
    assert dict(PeerDump("errno=0\n\n")) == {}
    with pytest.raises(WgError, match="errno=19"):
        PeerDump("errno=19\n\n")


def _shuffled(text: str, seed: int) -> str:
    """The same reply with each peer's lines after public_key in another order (the UAPI
    fixes no order; crosswire-wg and wireguard-go happen to agree)."""
    rng = random.Random(seed)
    head, *peers = text.removesuffix("errno=0\n\n").split("public_key=")
    out = [head]
    for block in peers:
        key, *lines = block.rstrip("\n").split("\n")
        rng.shuffle(lines)
        out.append("\n".join([key, *lines]) + "\n")
    return "public_key=".join(out) + "errno=0\n\n"


@pytest.mark.parametrize("seed", [None, 1, 2, 3])
def test_peer_dump_reads_as_parse_get(seed: int | None) -> None:
    """What show() gives lazily is what parse_get gives, for crosswire-wg's own dumps."""
    rng = random.Random(seed or 0)
    dev = Device()
    dev.private_key, dev.listen_port = bytes(range(32)), 51820
    for i in range(60):
        p = dev.add_peer(rng.randbytes(32))
        if i % 3:
            p.endpoint = ("198.18.0.2", 20000 + i) if i % 2 else ("fd00::1", 443)
        p.persistent_keepalive, p.tx_bytes, p.rx_bytes = 25 * (i % 2), rng.randrange(1 << 40), rng.randrange(1 << 40)
        p.last_handshake_ns = rng.randrange(1 << 62) if i % 4 else 0
        if i % 5:
            dev.allowed_ips.insert(4, (100 << 24) | (i << 8), 24, p)
    text = render_get(dev) + "errno=0\n\n"
    if seed is not None:
        text = _shuffled(text, seed)
    parsed = parse_get(text)
    dump = PeerDump(text)
    keys = list(dump)
    assert keys == list(parsed.peers) and len(dump) == 60
    rx, tx = byte_totals(dump, [*keys[::2], "not-a-peer"])  # without parsing
    assert dump._parsed == {}
    assert (rx, tx) == (sum(parsed.peers[k].rx_bytes for k in keys[::2]),
                        sum(parsed.peers[k].tx_bytes for k in keys[::2]))
    assert (rx, tx) == byte_totals({k: parsed.peers[k].as_dict() for k in keys}, keys[::2])
    # every peer of the dump asked for (the usual case), and more
    everyone = (sum(p.rx_bytes for p in parsed.peers.values()), sum(p.tx_bytes for p in parsed.peers.values()))
    assert byte_totals(dump, {*keys, "not-a-peer"}) == byte_totals(dump, [*keys]) == everyone
    assert dump._parsed == {}
    for k in keys:
        assert dump[k] == parsed.peers[k].as_dict() and dump.get(k) is dump[k]
    assert dump.get("not-a-peer") is None


def test_peer_status_dict() -> None:
    s = PeerStatus(public_key=PUB_A, endpoint="1.2.3.4:5", last_handshake=1.0, rx_bytes=2, tx_bytes=3)
    assert s.as_dict()["rx_bytes"] == 2 and "public_key" not in s.as_dict()
