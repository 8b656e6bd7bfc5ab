"""The wg(8) configuration protocol ("UAPI"), applied to a Device, sans-IO.

``handle(device, request, now)`` takes a whole request ("get=1\\n\\n" or
"set=1\\n<key=value lines>\\n\\n") and returns a ``UapiReply`` (errno, body,
error text); ``reply.wire()`` is the text sent back, ending with "errno=N\\n\\n".
Keys and output order follow wireguard-go's uapi.go, which `wg` is written
against. The protocol sits on top of the Device's plain configuration methods:
the device knows nothing of it.

A set request parses into typed operations (``SetRequest``: one dataclass per
device or peer key) before anything is applied.

Unlike wireguard-go, a set request is validated completely before anything
is applied: an invalid line anywhere yields errno=-EINVAL (-EPROTO for an
unparsable line) and leaves the device untouched. Error replies use
wireguard-go's negative errno values, which `wg` turns into its error message.
Error texts name the offending key, never a key's value.
"""

from __future__ import annotations

import errno
import functools
import ipaddress
from dataclasses import dataclass, field

from fabric.wg.allowedips import format_cidr, parse_cidr
from fabric.wg.device import Device
from fabric.wg.messages import Endpoint
from fabric.wg.peer import Peer


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


def parse_endpoint(value: str) -> Endpoint:
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


def format_endpoint(ep: Endpoint) -> str:
    host, port = ep[0], ep[1]  # a local address, if any, is not part of wg(8)'s view
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


# ---------------------------------------------------------------- set operations
# One dataclass per key of a set request. Key material is never printed.


@dataclass(frozen=True, repr=False)
class SetPrivateKey:
    key: bytes


@dataclass(frozen=True)
class SetListenPort:
    port: int


@dataclass(frozen=True)
class SetFwmark:
    mark: int


@dataclass(frozen=True)
class ReplacePeers:
    pass


DeviceOp = SetPrivateKey | SetListenPort | SetFwmark | ReplacePeers


@dataclass(frozen=True)
class UpdateOnly:
    pass


@dataclass(frozen=True)
class RemovePeer:
    pass


@dataclass(frozen=True, repr=False)
class SetPresharedKey:
    key: bytes


@dataclass(frozen=True)
class SetEndpoint:
    endpoint: Endpoint


@dataclass(frozen=True)
class SetPersistentKeepalive:
    interval: int


@dataclass(frozen=True)
class ReplaceAllowedIPs:
    pass


@dataclass(frozen=True)
class AddAllowedIP:
    cidr: tuple[int, int, int]  # (family, network, prefix length) as parse_cidr gives


@dataclass(frozen=True)
class RemoveAllowedIP:
    cidr: tuple[int, int, int]


PeerOp = (
    UpdateOnly
    | RemovePeer
    | SetPresharedKey
    | SetEndpoint
    | SetPersistentKeepalive
    | ReplaceAllowedIPs
    | AddAllowedIP
    | RemoveAllowedIP
)


@dataclass(repr=False)  # may hold a preshared key: never printed
class PeerSet:
    public_key: bytes
    ops: list[PeerOp] = field(default_factory=list)


@dataclass(repr=False)  # holds keys: never printed
class SetRequest:
    # device-level lines are applied in order, as wireguard-go does
    device_ops: list[DeviceOp] = field(default_factory=list)
    peers: list[PeerSet] = field(default_factory=list)


def _true(value: str, what: str) -> None:
    if value != "true":
        raise _invalid(f"invalid value for {what}")


def parse_set(body: str) -> SetRequest:
    """Parse and validate a whole set request; raises UapiError, applies nothing."""
    req = SetRequest()
    peer: PeerSet | None = None
    for line in body.split("\n"):
        if line == "":
            break
        key, sep, value = line.partition("=")
        if not sep:
            raise UapiError(-errno.EPROTO, "failed to parse line")
        if key == "public_key":
            peer = PeerSet(parse_key(value, "public_key"))
            req.peers.append(peer)
            continue
        if peer is None:
            if key == "private_key":
                req.device_ops.append(SetPrivateKey(parse_key(value, "private_key")))
            elif key == "listen_port":
                req.device_ops.append(SetListenPort(_uint(value, 16, "listen_port")))
            elif key == "fwmark":
                req.device_ops.append(SetFwmark(_uint(value, 32, "fwmark")))
            elif key == "replace_peers":
                _true(value, key)
                req.device_ops.append(ReplacePeers())
            else:
                raise _invalid(f"invalid UAPI device key: {key}")
            continue
        if key == "update_only":
            _true(value, key)
            peer.ops.append(UpdateOnly())
        elif key == "remove":
            _true(value, key)
            peer.ops.append(RemovePeer())
        elif key == "preshared_key":
            peer.ops.append(SetPresharedKey(parse_key(value, "preshared_key")))
        elif key == "endpoint":
            peer.ops.append(SetEndpoint(parse_endpoint(value)))
        elif key == "persistent_keepalive_interval":
            peer.ops.append(SetPersistentKeepalive(_uint(value, 16, key)))
        elif key == "replace_allowed_ips":
            _true(value, key)
            peer.ops.append(ReplaceAllowedIPs())
        elif key == "allowed_ip":
            remove = value.startswith("-")
            try:
                cidr = parse_cidr(value[1:] if remove else value)
            except ValueError:
                raise _invalid("invalid allowed_ip") from None
            if "/" not in value:
                raise _invalid("allowed_ip needs a prefix length")
            peer.ops.append(RemoveAllowedIP(cidr) if remove else AddAllowedIP(cidr))
        elif key == "protocol_version":
            if value != "1":
                raise _invalid("invalid protocol version")
        else:
            raise _invalid(f"invalid UAPI peer key: {key}")
    return req


def apply_set(device: Device, req: SetRequest, now: float) -> None:
    """Apply a parsed request; cannot fail (everything was validated by parse_set)."""
    for dop in req.device_ops:
        match dop:
            case SetPrivateKey(key):
                device.set_private_key(key, now)
            case SetListenPort(port):
                device.set_listen_port(port)
            case SetFwmark(mark):
                device.set_fwmark(mark)
            case ReplacePeers():
                for pub in list(device.peers):
                    device.remove_peer(pub)
    removed: list[tuple[Peer, Ranges]] = []
    created: list[Peer] = []
    for pset in req.peers:
        _apply_peer(device, pset, now, removed, created)
    _hand_over(device, removed, created, now)


Ranges = frozenset[tuple[int, int, int]]  # a peer's allowed IPs as (family, net, plen)


def _hand_over(device: Device, removed: list[tuple[Peer, Ranges]], created: list[Peer],
               now: float) -> None:
    """A peer removed and another added with exactly its allowed IPs, in one request, is
    a key change of the same party (crosswire's peer key rotation does exactly that):
    the new peer keeps the old one's sessions for a short grace instead of losing
    traffic until its first handshake. Any other removed peer's keys are zeroed."""
    ranges: dict[Ranges, Peer] = {}
    for peer in created:
        if device.peers.get(peer.public_key) is peer and peer.current is None and peer.next is None:
            ranges.setdefault(frozenset(device.allowed_ips.entries(peer)), peer)
    for old, allowed in removed:
        new = ranges.pop(allowed, None) if allowed else None
        if new is not None:
            device.take_over_sessions(old, new, now)
        device.zero_keys(old)


def _apply_peer(device: Device, pset: PeerSet, now: float, removed: list[tuple[Peer, Ranges]],
                created_peers: list[Peer]) -> None:
    dummy = pset.public_key == device.public_key  # our own key: ignored
    existing = device.peers.get(pset.public_key)
    created = existing is None
    peer = None if dummy else (existing or device.add_peer(pset.public_key))
    keepalive_on = False
    for op in pset.ops:
        match op:
            case UpdateOnly():
                if created and peer is not None:
                    device.remove_peer(pset.public_key)
                    peer = None
                continue
            case RemovePeer():
                if peer is not None:
                    allowed = frozenset(device.allowed_ips.entries(peer))
                    if device.remove_peer(pset.public_key, keep_sessions=True) is not None:
                        removed.append((peer, allowed))
                peer = None
                continue
        if peer is None:
            continue
        match op:
            case SetPresharedKey(key):
                peer.preshared_key = key
            case SetEndpoint(endpoint):
                peer.endpoint = endpoint
            case SetPersistentKeepalive(interval):
                keepalive_on = peer.persistent_keepalive == 0 and interval != 0
                device.set_persistent_keepalive(peer, interval)
            case ReplaceAllowedIPs():
                device.allowed_ips.remove_peer(peer)
            case AddAllowedIP((family, net, plen)):
                device.allowed_ips.insert(family, net, plen, peer)
            case RemoveAllowedIP((family, net, plen)):
                device.allowed_ips.remove(family, net, plen, peer)
    if peer is not None:
        if created:
            created_peers.append(peer)
        if keepalive_on:
            # Turned on: one keepalive right away (as wireguard-go).
            device.send_keepalive(peer, now)
        elif peer.staged:
            device.send_staged(peer, now)


def render_get(device: Device) -> str:
    lines: list[str] = []
    if device.private_key is not None:
        lines.append(f"private_key={device.private_key.hex()}\n")
    port = device.bound_port or device.listen_port
    if port:
        lines.append(f"listen_port={port}\n")
    if device.fwmark:
        lines.append(f"fwmark={device.fwmark}\n")
    # One string a peer: the gateway dumps 1,000 peers every second or two while its
    # operator page is open, so this runs ~10^3 times a second on the data plane.
    entries = device.allowed_ips.entries
    for peer in device.peers.values():
        secs, nsec = divmod(peer.last_handshake_ns, 1_000_000_000)
        endpoint = "" if peer.endpoint is None else f"endpoint={format_endpoint(peer.endpoint)}\n"
        lines.append(
            f"public_key={peer.public_key.hex()}\npreshared_key={peer.preshared_key.hex()}\n"
            f"protocol_version=1\n{endpoint}last_handshake_time_sec={secs}\n"
            f"last_handshake_time_nsec={nsec}\ntx_bytes={peer.tx_bytes}\nrx_bytes={peer.rx_bytes}\n"
            f"persistent_keepalive_interval={peer.persistent_keepalive}\n"
            + "".join(f"allowed_ip={_cidr_text(e)}\n" for e in entries(peer)))
    return "".join(lines)


@functools.lru_cache(maxsize=16384)
def _cidr_text(entry: tuple[int, int, int]) -> str:
    # The same CIDRs in every dump; formatting one through ipaddress costs ~1 us.
    return format_cidr(*entry)


# ---------------------------------------------------------------- requests


@dataclass(frozen=True)
class UapiReply:
    """A whole reply: ``body`` (get: key=value lines) then ``errno=N``.

    ``error`` says why errno is not 0, for the log; it names keys, never values.
    """

    errno: int = 0
    body: str = field(default="", repr=False)  # holds private and preshared keys
    error: str = ""

    def wire(self) -> str:
        return f"{self.body}errno={self.errno}\n\n"


def handle(device: Device, request: str, now: float) -> UapiReply:
    """A whole request ("get=1\\n\\n" / "set=1\\n...\\n\\n") -> its reply."""
    try:
        if request.startswith("get=1\n"):
            if request[6:] not in ("\n", ""):
                raise _invalid("trailing characters in get")
            return UapiReply(body=render_get(device))
        if request.startswith("set=1\n"):
            apply_set(device, parse_set(request[6:]), now)
            return UapiReply()
        raise UapiError(-errno.EPROTO, "invalid UAPI operation")
    except UapiError as e:
        return UapiReply(errno=e.code, error=str(e))
