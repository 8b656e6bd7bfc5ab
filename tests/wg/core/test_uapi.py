"""The wg(8) text protocol against a Device: the exact lines `wg` sends and parses."""

from __future__ import annotations

from wg.core.wgsim import Pair, make_key, uapi

from fabric.wg.crypto import public_key
from fabric.wg.device import Device
from fabric.wg.uapi import handle

PRIV = bytes.fromhex("e84b5a6d2717c1003a13b431570353dbaca9146cf150c5f8575680feba52027a")
PUB1 = bytes(range(1, 33))
PUB2 = bytes(range(2, 34))
PSK = bytes(range(100, 132))


def _set(dev: Device, body: str, now: float = 0.0) -> str:
    return uapi(dev, "set=1\n" + body + "\n", now)


def _get(dev: Device) -> str:
    return uapi(dev, "get=1\n\n", 0.0)


def test_get_empty_device() -> None:
    assert _get(Device()) == "errno=0\n\n"


def test_setconf_round_trip_exact_text() -> None:
    dev = Device()
    # What `wg setconf` sends for a two-peer config.
    req = (
        f"private_key={PRIV.hex()}\nlisten_port=51820\nfwmark=0\nreplace_peers=true\n"
        f"public_key={PUB1.hex()}\npreshared_key={PSK.hex()}\nendpoint=192.0.2.7:51820\n"
        "persistent_keepalive_interval=25\nreplace_allowed_ips=true\n"
        "allowed_ip=10.0.0.0/24\nallowed_ip=fd00::/64\n"
        f"public_key={PUB2.hex()}\nendpoint=[2001:db8::1]:4242\nreplace_allowed_ips=true\n"
        "allowed_ip=10.1.2.3/32\n"
    )
    assert _set(dev, req) == "errno=0\n\n"
    dev.set_bound_port(51820)
    assert _get(dev) == (
        f"private_key={PRIV.hex()}\n"
        "listen_port=51820\n"
        f"public_key={PUB1.hex()}\n"
        f"preshared_key={PSK.hex()}\n"
        "protocol_version=1\n"
        "endpoint=192.0.2.7:51820\n"
        "last_handshake_time_sec=0\n"
        "last_handshake_time_nsec=0\n"
        "tx_bytes=148\n"  # turning keepalive on sent an initiation at once
        "rx_bytes=0\n"
        "persistent_keepalive_interval=25\n"
        "allowed_ip=10.0.0.0/24\n"
        "allowed_ip=fd00::/64\n"
        f"public_key={PUB2.hex()}\n"
        f"preshared_key={'00' * 32}\n"
        "protocol_version=1\n"
        "endpoint=[2001:db8::1]:4242\n"
        "last_handshake_time_sec=0\n"
        "last_handshake_time_nsec=0\n"
        "tx_bytes=0\n"
        "rx_bytes=0\n"
        "persistent_keepalive_interval=0\n"
        "allowed_ip=10.1.2.3/32\n"
        "errno=0\n\n"
    )
    assert dev.public_key == public_key(PRIV)


def test_listen_port_and_fwmark_bump_generation() -> None:
    dev = Device()
    g = dev.config_generation
    assert _set(dev, "listen_port=1234\nfwmark=7\n") == "errno=0\n\n"
    assert dev.listen_port == 1234 and dev.fwmark == 7
    assert dev.config_generation > g
    g = dev.config_generation
    _set(dev, "listen_port=1234\n")
    assert dev.config_generation == g  # unchanged value: no rebind
    dev.set_bound_port(1234)
    assert "listen_port=1234\nfwmark=7\n" in _get(dev)
    _set(dev, "fwmark=0\n")
    assert "fwmark" not in _get(dev)


def test_listen_port_zero_reports_bound_port() -> None:
    dev = Device()
    _set(dev, "listen_port=0\n")
    dev.set_bound_port(40000)
    assert "listen_port=40000\n" in _get(dev)


def test_allowed_ips_replace_remove_and_move() -> None:
    dev = Device()
    _set(dev, f"public_key={PUB1.hex()}\nallowed_ip=10.0.0.0/24\nallowed_ip=10.0.1.0/24\n")
    _set(dev, f"public_key={PUB1.hex()}\nallowed_ip=-10.0.0.0/24\n")  # single removal
    out = _get(dev)
    assert "allowed_ip=10.0.1.0/24\n" in out and "10.0.0.0/24" not in out
    # an allowed IP belongs to one peer: giving it to PUB2 takes it from PUB1
    _set(dev, f"public_key={PUB2.hex()}\nallowed_ip=10.0.1.0/24\n")
    p1, p2 = dev.peers[PUB1], dev.peers[PUB2]
    assert dev.allowed_ips.entries(p1) == []
    assert len(dev.allowed_ips.entries(p2)) == 1
    _set(dev, f"public_key={PUB2.hex()}\nreplace_allowed_ips=true\nallowed_ip=192.168.7.9/16\n")
    assert "allowed_ip=192.168.0.0/16\n" in _get(dev)  # host bits cleared, as wg shows
    assert dev.allowed_ips.lookup(4, 0xC0A80101) is p2


def test_remove_update_only_replace_peers() -> None:
    dev = Device()
    _set(dev, f"public_key={PUB1.hex()}\n")
    # update_only does not create a missing peer...
    _set(dev, f"public_key={PUB2.hex()}\nupdate_only=true\nendpoint=1.2.3.4:5\n")
    assert PUB2 not in dev.peers
    # ...but updates an existing one
    _set(dev, f"public_key={PUB1.hex()}\nupdate_only=true\nendpoint=1.2.3.4:5\n")
    assert dev.peers[PUB1].endpoint == ("1.2.3.4", 5)
    _set(dev, f"public_key={PUB1.hex()}\nremove=true\n")
    assert PUB1 not in dev.peers
    _set(dev, f"public_key={PUB1.hex()}\npublic_key={PUB2.hex()}\nallowed_ip=10.0.0.0/8\n")
    assert set(dev.peers) == {PUB1, PUB2}
    _set(dev, "replace_peers=true\n")
    assert dev.peers == {}
    assert dev.allowed_ips.lookup(4, 0x0A000001) is None


def test_peer_with_own_public_key_is_ignored() -> None:
    dev = Device()
    _set(dev, f"private_key={PRIV.hex()}\n")
    assert _set(dev, f"public_key={public_key(PRIV).hex()}\nallowed_ip=10.0.0.0/8\n") == "errno=0\n\n"
    assert dev.peers == {}
    # and setting a private key whose public key is a configured peer removes that peer
    other = make_key()
    _set(dev, f"public_key={public_key(other).hex()}\n")
    _set(dev, f"private_key={other.hex()}\n")
    assert dev.peers == {}


def test_invalid_requests_change_nothing() -> None:
    dev = Device()
    base = f"private_key={PRIV.hex()}\nlisten_port=1000\npublic_key={PUB1.hex()}\nallowed_ip=10.0.0.0/24\n"
    assert _set(dev, base) == "errno=0\n\n"
    snapshot = _get(dev)
    gen = dev.config_generation
    bad_tails = [
        "listen_port=70000\n",
        "listen_port=-1\n",
        "listen_port=abc\n",
        "fwmark=4294967296\n",
        "private_key=zz\n",
        f"private_key={'0' * 63}\n",
        "replace_peers=false\n",
        "bogus=1\n",
        "no equals sign\n",
        f"public_key={PUB2.hex()}\nendpoint=example.com:51820\n",
        f"public_key={PUB2.hex()}\nendpoint=1.2.3.4\n",
        f"public_key={PUB2.hex()}\nendpoint=[::1:51820\n",
        f"public_key={PUB2.hex()}\nendpoint=1.2.3.4:65536\n",
        f"public_key={PUB2.hex()}\nallowed_ip=10.0.0.0/33\n",
        f"public_key={PUB2.hex()}\nallowed_ip=10.0.0.1\n",
        f"public_key={PUB2.hex()}\nallowed_ip=fd00::/129\n",
        f"public_key={PUB2.hex()}\npersistent_keepalive_interval=65536\n",
        f"public_key={PUB2.hex()}\nprotocol_version=2\n",
        f"public_key={PUB2.hex()}\nremove=yes\n",
        f"public_key={PUB2.hex()}\npreshared_key=abcd\n",
        f"public_key={PUB2.hex()}\nunknown_peer_key=1\n",
        "public_key=nothex\n",
    ]
    for tail in bad_tails:
        # valid changes first, the bad line last: none of it may be applied
        req = f"listen_port=2000\npublic_key={PUB1.hex()}\nreplace_allowed_ips=true\n" + tail
        if not tail.startswith("public_key") and "=" in tail and not tail.startswith("no "):
            req = tail + req  # device keys must come before peers
        typed = handle(dev, "set=1\n" + req + "\n", 0.0)
        reply = typed.wire()
        assert reply.startswith("errno=-") and reply.endswith("\n\n"), (tail, reply)
        assert reply != "errno=0\n\n"
        assert _get(dev) == snapshot, tail
        assert dev.config_generation == gen
        assert PRIV.hex() not in typed.error


def test_error_codes_follow_wireguard_go() -> None:
    dev = Device()
    assert _set(dev, "listen_port=x\n") == "errno=-22\n\n"  # -EINVAL
    assert _set(dev, "garbage\n") == "errno=-71\n\n"  # -EPROTO
    assert uapi(dev, "get=1\nx\n", 0) == "errno=-22\n\n"
    assert uapi(dev, "frob=1\n\n", 0).startswith("errno=-")


def test_device_configured_like_wg_works_end_to_end() -> None:
    # Pair() configures both devices only through uapi(); check `wg show` data after traffic.
    pair = Pair()
    pair.a_to_b(b"hello")
    pair.b_to_a(b"back")
    out = uapi(pair.a, "get=1\n\n", pair.clock.now)
    fields = dict(line.split("=", 1) for line in out.strip().split("\n") if "=" in line)
    assert int(fields["last_handshake_time_sec"]) == int(pair.clock.wall())
    assert int(fields["tx_bytes"]) > 0 and int(fields["rx_bytes"]) > 0
    assert fields["endpoint"] == "192.0.2.2:51821"
    assert fields["errno"] == "0"


def test_private_key_change_rehandshakes() -> None:
    pair = Pair()
    pair.a_to_b(b"x")
    new = make_key()
    uapi(pair.a, f"set=1\nprivate_key={new.hex()}\n\n", pair.clock.now)
    # the other side learns the new key (as `wg set` on the far side would do)
    uapi(
        pair.b,
        f"set=1\npublic_key={pair.a_pub.hex()}\nremove=true\npublic_key={public_key(new).hex()}\n"
        "endpoint=192.0.2.1:51820\nallowed_ip=10.0.0.1/32\nallowed_ip=fd00::1/128\n\n",
        pair.clock.now,
    )
    pair.b.inbox.clear()
    # the new peer took over the old session until the new handshake (test_key_change.py)
    pkt = pair.a_to_b(b"after key change")
    assert list(pair.b.inbox) == [pkt]
    assert pair.b.peers[public_key(new)].current is not None


def test_private_key_stored_clamped_like_wireguard_go() -> None:
    dev = Device()
    _set(dev, f"private_key={'ff' * 32}\n")
    assert f"private_key=f8{'ff' * 30}7f\n" in _get(dev)


def test_garbage_requests_never_raise() -> None:
    import random
    import re

    rnd = random.Random(7)
    keys = [
        "private_key", "listen_port", "fwmark", "replace_peers", "public_key", "remove",
        "update_only", "preshared_key", "endpoint", "persistent_keepalive_interval",
        "replace_allowed_ips", "allowed_ip", "protocol_version", "x",
    ]  # fmt: skip
    values = [
        "", "true", "false", "1", "-1", "65535", "99999999999", PUB1.hex(), PSK.hex(), "zz" * 32,
        "1.2.3.4:5", "[::1]:5", "[::1]", "10.0.0.0/8", "-10.0.0.0/8", "fd00::/200", "\x00", "=",
    ]  # fmt: skip
    dev = Device()
    for _ in range(500):
        lines = [f"{rnd.choice(keys)}={rnd.choice(values)}" for _ in range(rnd.randint(0, 6))]
        op = rnd.choice(["set=1\n", "get=1\n", "", "set=2\n"])
        reply = uapi(dev, op + "\n".join(lines) + "\n\n", 0.0)
        assert re.fullmatch(r"(?s).*errno=-?\d+\n\n", reply), reply


def test_parsed_requests_do_not_print_keys() -> None:
    from fabric.wg.uapi import parse_set

    req = parse_set(f"private_key={PRIV.hex()}\npublic_key={PUB1.hex()}\npreshared_key={PSK.hex()}\n\n")
    text = repr(req) + repr(req.peers) + str(req)
    assert PRIV.hex() not in text and PSK.hex() not in text
    assert repr(PRIV) not in text and repr(PSK) not in text
