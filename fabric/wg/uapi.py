"""The wg(8) configuration protocol ("UAPI"), applied to a Device, sans-IO.

``handle(device, request, now)`` takes a whole request ("get=1\\n\\n" or
"set=1\\n<key=value lines>\\n\\n") and returns the whole reply, ending with
"errno=N\\n\\n". Keys and output order follow wireguard-go's uapi.go, which `wg`
is written against.

Unlike wireguard-go, a set request is validated completely before anything
is applied: an invalid line anywhere yields errno=-EINVAL (-EPROTO for an
unparsable line) and leaves the device untouched. Error replies use
wireguard-go's negative errno values, which `wg` turns into its error message.
Error texts name the offending key, never a key's value.
"""

from __future__ import annotations

import errno
import ipaddress
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from fabric.wg.allowedips import format_cidr, parse_cidr

if TYPE_CHECKING:
    from fabric.wg.device import Device


class UapiError(Exception):
    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code


def _invalid(msg: str) -> UapiError:
    return UapiError(-errno.EINVAL, msg)


def parse_key(value: str, what: str) -> bytes:
    if len(value) != 64:
        raise _invalid(f"{what}: key must be 64 hex characters")
    try:
        return bytes.fromhex(value)
    except ValueError:
        raise _invalid(f"{what}: key is not hex") from None


def _uint(value: str, bits: int, what: str) -> int:
    if not value.isdigit() or not value.isascii():
        raise _invalid(f"invalid {what}")
    n = int(value)
    if n >= 1 << bits:
        raise _invalid(f"{what} out of range")
    return n


def parse_endpoint(value: str) -> tuple[str, int]:
    """"1.2.3.4:51820" or "[fd00::1]:51820" -> (host, port). Literals only:
    `wg` resolves names before it talks to the device."""
    if value.startswith("["):
        host, sep, port_s = value[1:].partition("]:")
        if not sep:
            raise _invalid("invalid endpoint")
    else:
        host, sep, port_s = value.rpartition(":")
        if not sep or ":" in host:
            raise _invalid("invalid endpoint")
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        raise _invalid("invalid endpoint address") from None
    port = _uint(port_s, 16, "endpoint port")
    return str(ip), port


def format_endpoint(ep: tuple[str, int]) -> str:
    host, port = ep
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


@dataclass(repr=False)  # may hold a preshared key: never printed
class _PeerOps:
    public_key: bytes
    remove: bool = False
    update_only: bool = False
    ops: list[tuple[str, object]] = field(default_factory=list)


@dataclass(repr=False)  # holds keys: never printed
class _SetRequest:
    # device-level lines are applied in order, as wireguard-go does
    device_ops: list[tuple[str, object]] = field(default_factory=list)
    peers: list[_PeerOps] = field(default_factory=list)


def _true(value: str, what: str) -> None:
    if value != "true":
        raise _invalid(f"invalid value for {what}")


def parse_set(body: str) -> _SetRequest:
    req = _SetRequest()
    peer: _PeerOps | None = None
    for line in body.split("\n"):
        if line == "":
            break
        key, sep, value = line.partition("=")
        if not sep:
            raise UapiError(-errno.EPROTO, "failed to parse line")
        if key == "public_key":
            peer = _PeerOps(parse_key(value, "public_key"))
            req.peers.append(peer)
            continue
        if peer is None:
            if key == "private_key":
                req.device_ops.append(("private_key", parse_key(value, "private_key")))
            elif key == "listen_port":
                req.device_ops.append(("listen_port", _uint(value, 16, "listen_port")))
            elif key == "fwmark":
                req.device_ops.append(("fwmark", _uint(value, 32, "fwmark")))
            elif key == "replace_peers":
                _true(value, key)
                req.device_ops.append(("replace_peers", True))
            else:
                raise _invalid(f"invalid UAPI device key: {key}")
            continue
        if key == "update_only":
            _true(value, key)
            peer.ops.append(("update_only", True))
        elif key == "remove":
            _true(value, key)
            peer.ops.append(("remove", True))
        elif key == "preshared_key":
            peer.ops.append(("preshared_key", parse_key(value, "preshared_key")))
        elif key == "endpoint":
            peer.ops.append(("endpoint", parse_endpoint(value)))
        elif key == "persistent_keepalive_interval":
            peer.ops.append(("keepalive", _uint(value, 16, key)))
        elif key == "replace_allowed_ips":
            _true(value, key)
            peer.ops.append(("replace_allowed_ips", True))
        elif key == "allowed_ip":
            remove = value.startswith("-")
            try:
                cidr = parse_cidr(value[1:] if remove else value)
            except ValueError:
                raise _invalid("invalid allowed_ip") from None
            if "/" not in value:
                raise _invalid("allowed_ip needs a prefix length")
            peer.ops.append(("allowed_ip_remove" if remove else "allowed_ip", cidr))
        elif key == "protocol_version":
            if value != "1":
                raise _invalid("invalid protocol version")
        else:
            raise _invalid(f"invalid UAPI peer key: {key}")
    return req


def apply_set(device: Device, req: _SetRequest, now: float) -> None:
    for op, val in req.device_ops:
        if op == "private_key":
            assert isinstance(val, bytes)
            device.set_private_key(val, now)
        elif op == "listen_port":
            assert isinstance(val, int)
            device.set_listen_port(val)
        elif op == "fwmark":
            assert isinstance(val, int)
            device.set_fwmark(val)
        elif op == "replace_peers":
            for pub in list(device.peers):
                device.remove_peer(pub)
    for pops in req.peers:
        dummy = pops.public_key == device.public_key
        existing = device.peers.get(pops.public_key)
        created = existing is None
        peer = None if dummy else (existing or device.add_peer(pops.public_key))
        pka_on = False
        for op, val in pops.ops:
            if op == "update_only":
                if created and peer is not None:
                    device.remove_peer(pops.public_key)
                    peer = None
                continue
            if op == "remove":
                if peer is not None:
                    device.remove_peer(pops.public_key)
                peer = None
                continue
            if peer is None:
                continue
            if op == "preshared_key":
                assert isinstance(val, bytes)
                peer.preshared_key = val
            elif op == "endpoint":
                assert isinstance(val, tuple)
                peer.endpoint = val
            elif op == "keepalive":
                assert isinstance(val, int)
                old = peer.persistent_keepalive
                peer.persistent_keepalive = val
                if val == 0:
                    peer.t_persistent_keepalive = None
                pka_on = old == 0 and val != 0
            elif op == "replace_allowed_ips":
                device.allowed_ips.remove_peer(peer)
            elif op == "allowed_ip":
                assert isinstance(val, tuple)
                device.allowed_ips.insert(val[0], val[1], val[2], peer)
            elif op == "allowed_ip_remove":
                assert isinstance(val, tuple)
                device.allowed_ips.remove(val[0], val[1], val[2], peer)
        if peer is not None:
            if pka_on:
                # Turned on: one keepalive right away (as wireguard-go).
                device.send_keepalive(peer, now)
            elif peer.staged:
                device.send_staged(peer, now)


def render_get(device: Device) -> str:
    lines: list[str] = []
    if device.private_key is not None:
        lines.append(f"private_key={device.private_key.hex()}")
    port = device.bound_port or device.listen_port
    if port:
        lines.append(f"listen_port={port}")
    if device.fwmark:
        lines.append(f"fwmark={device.fwmark}")
    for peer in device.peers.values():
        lines.append(f"public_key={peer.public_key.hex()}")
        lines.append(f"preshared_key={peer.preshared_key.hex()}")
        lines.append("protocol_version=1")
        if peer.endpoint is not None:
            lines.append(f"endpoint={format_endpoint(peer.endpoint)}")
        secs, nsec = divmod(peer.last_handshake_ns, 1_000_000_000)
        lines.append(f"last_handshake_time_sec={secs}")
        lines.append(f"last_handshake_time_nsec={nsec}")
        lines.append(f"tx_bytes={peer.tx_bytes}")
        lines.append(f"rx_bytes={peer.rx_bytes}")
        lines.append(f"persistent_keepalive_interval={peer.persistent_keepalive}")
        for family, net, plen in device.allowed_ips.entries(peer):
            lines.append(f"allowed_ip={format_cidr(family, net, plen)}")
    return "".join(line + "\n" for line in lines)


def handle(device: Device, request: str, now: float) -> str:
    try:
        if request.startswith("get=1\n"):
            if request[6:] not in ("\n", ""):
                raise _invalid("trailing characters in get")
            return render_get(device) + "errno=0\n\n"
        if request.startswith("set=1\n"):
            req = parse_set(request[6:])
            apply_set(device, req, now)
            return "errno=0\n\n"
        raise UapiError(-errno.EPROTO, "invalid UAPI operation")
    except UapiError as e:
        device.last_uapi_error = str(e)
        return f"errno={e.code}\n\n"
