"""Configure a kernel WireGuard interface over generic netlink (the module has no UAPI socket).

``NetlinkWgControl`` has the interface of :class:`fabric.wgctl.WgControl`
(``device``, ``sync``, ``show``, ``alive``, ``retry_at``,
``endpoint_problems``), so the gateway drives either backend the same way.

One planner for both backends: ``sync`` reads the device, lets
:func:`fabric.wgctl.render_set` compute the differences exactly as for
crosswire-wg (keys validated, the whole request built before anything is
sent; unknown peers removed one by one, never ``WGDEVICE_F_REPLACE_PEERS``,
which would drop every session), then translates that request into
``WG_CMD_SET_DEVICE`` messages (:func:`parse_set` and :func:`encode_set`, pure).
A request too large for one message is split between peers, the way ``wg``
does; each message is applied by the kernel on its own, so a failure half way
leaves the earlier peers set, and the next sync (which reads the device
first) completes it.

Reading: ``WG_CMD_GET_DEVICE`` is a dump; the kernel splits a large device
over several messages and may continue a peer's allowed IPs in the next one,
so :func:`device_from_messages` merges peers by public key.

Key material never appears in logs, errors or reprs: errors name the
interface and the errno only.
"""

from __future__ import annotations

import base64
import errno
import ipaddress
import os
import socket
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from fabric.endpoints import Resolver
from fabric.model import LocalFabric, PeerFabric
from fabric.wgctl import (
    TRANSIENT_ERRNOS,
    DeviceStatus,
    PeerStatus,
    WgError,
    render_set,
    resolve_endpoints,
)

WGDEVICE_F_REPLACE_PEERS = 0x1  # never sent: see module docstring
WGPEER_F_REMOVE_ME = 0x1
WGPEER_F_REPLACE_ALLOWEDIPS = 0x2
# Bytes per SET message before the next peer goes into a new one; the kernel
# takes far more (pyroute2's socket buffer is 1 MiB), this keeps error acks
# (which echo the request) well inside the receive buffer.
MAX_MESSAGE = 32768
RCVSIZE = 262144


@dataclass
class PeerSet:
    """One peer's part of a set request (keys as raw bytes, never shown)."""
    public_key: bytes = field(repr=False)
    remove: bool = False
    preshared_key: bytes | None = field(default=None, repr=False)
    endpoint: tuple[str, int] | None = None
    keepalive: int | None = None
    replace_allowed_ips: bool = False
    allowed_ips: list[ipaddress.IPv4Network | ipaddress.IPv6Network] = field(default_factory=list)


@dataclass
class DeviceSet:
    private_key: bytes | None = field(default=None, repr=False)
    listen_port: int | None = None
    peers: list[PeerSet] = field(default_factory=list)

    def empty(self) -> bool:
        return self.private_key is None and self.listen_port is None and not self.peers


def _endpoint(value: str) -> tuple[str, int]:
    host, _, port = value.rpartition(":")
    host = host[1:-1] if host.startswith("[") else host
    ipaddress.ip_address(host)  # resolved before: an address, never a name
    return host, int(port)


def parse_set(request: str) -> DeviceSet:
    """A UAPI ``set=1`` request (as ``render_set`` makes it) as a DeviceSet.

    ValueError on anything ``render_set`` does not produce (the message names
    the key, never the value).
    """
    out = DeviceSet()
    peer: PeerSet | None = None
    for line in request.split("\n"):
        if not line or line == "set=1":
            continue
        k, _, v = line.partition("=")
        if k == "public_key":
            peer = PeerSet(public_key=bytes.fromhex(v))
            out.peers.append(peer)
        elif peer is None:
            if k == "private_key":
                out.private_key = bytes.fromhex(v)
            elif k == "listen_port":
                out.listen_port = int(v)
            else:
                raise ValueError(f"set request: unexpected device key {k!r}")
        elif k == "remove":
            peer.remove = v == "true"
        elif k == "preshared_key":
            peer.preshared_key = bytes.fromhex(v)
        elif k == "endpoint":
            peer.endpoint = _endpoint(v)
        elif k == "persistent_keepalive_interval":
            peer.keepalive = int(v)
        elif k == "replace_allowed_ips":
            peer.replace_allowed_ips = v == "true"
        elif k == "allowed_ip":
            peer.allowed_ips.append(ipaddress.ip_network(v, strict=False))
        else:
            raise ValueError(f"set request: unexpected peer key {k!r}")
    for p in out.peers:
        for raw in (p.public_key, p.preshared_key):
            if raw is not None and len(raw) != 32:
                raise ValueError("set request: a key is not 32 bytes")
    return out


def _b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode()


def _peer_attrs(p: PeerSet) -> list[list[Any]]:
    attrs: list[list[Any]] = [["WGPEER_A_PUBLIC_KEY", _b64(p.public_key)]]
    if p.remove:
        attrs.append(["WGPEER_A_FLAGS", WGPEER_F_REMOVE_ME])
        return attrs
    attrs.append(["WGPEER_A_FLAGS", WGPEER_F_REPLACE_ALLOWEDIPS if p.replace_allowed_ips else 0])
    if p.preshared_key is not None:
        attrs.append(["WGPEER_A_PRESHARED_KEY", _b64(p.preshared_key)])  # zeros: none
    if p.endpoint is not None:
        host, port = p.endpoint
        ep: dict[str, Any] = {"addr": host, "port": port}
        if ":" in host:
            ep.update(flowinfo=0, scope_id=0)
        attrs.append(["WGPEER_A_ENDPOINT", ep])
    if p.keepalive is not None:
        attrs.append(["WGPEER_A_PERSISTENT_KEEPALIVE_INTERVAL", p.keepalive])
    if p.allowed_ips:
        attrs.append(["WGPEER_A_ALLOWEDIPS", [
            {"attrs": [["WGALLOWEDIP_A_FAMILY", socket.AF_INET if n.version == 4 else socket.AF_INET6],
                       ["WGALLOWEDIP_A_IPADDR", n.network_address.packed],
                       ["WGALLOWEDIP_A_CIDR_MASK", n.prefixlen]]}
            for n in p.allowed_ips]])
    return attrs


def _peer_size(p: PeerSet) -> int:
    # An upper bound of the peer's encoded size: keys, flags, endpoint, keepalive, IPs.
    return 4 + 36 * 2 + 8 + 36 + 8 + 4 + 36 * len(p.allowed_ips)


def encode_set(interface: str, req: DeviceSet, max_message: int = MAX_MESSAGE) -> list[Any]:
    """The WG_CMD_SET_DEVICE messages (pyroute2 ``wgmsg``, not yet encoded) for ``req``.

    The device attributes go into the first message; peers are split between
    messages of at most ``max_message`` bytes (a peer is never split).
    """
    from pyroute2.netlink.generic.wireguard import WG_CMD_SET_DEVICE, WG_GENL_VERSION, wgmsg

    def new(first: bool) -> Any:
        m = wgmsg()
        m["cmd"] = WG_CMD_SET_DEVICE
        m["version"] = WG_GENL_VERSION
        m["attrs"] = [["WGDEVICE_A_IFNAME", interface]]
        if first:
            if req.private_key is not None:
                m["attrs"].append(["WGDEVICE_A_PRIVATE_KEY", _b64(req.private_key)])
            if req.listen_port is not None:
                m["attrs"].append(["WGDEVICE_A_LISTEN_PORT", req.listen_port])
        return m

    groups: list[list[PeerSet]] = [[]]
    size = 0
    for p in req.peers:
        s = _peer_size(p)
        if groups[-1] and size + s > max_message:
            groups.append([])
            size = 0
        groups[-1].append(p)
        size += s
    msgs = []
    for i, group in enumerate(groups):
        m = new(i == 0)
        if group:
            m["attrs"].append(["WGDEVICE_A_PEERS", [{"attrs": _peer_attrs(p)} for p in group]])
        msgs.append(m)
    return msgs


def _key(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def device_from_messages(msgs: Iterable[Any]) -> DeviceStatus:
    """A DeviceStatus from the decoded WG_CMD_GET_DEVICE dump (peers merged across messages)."""
    dev = DeviceStatus()
    for m in msgs:
        port = m.get_attr("WGDEVICE_A_LISTEN_PORT")
        if port is not None:
            dev.listen_port = int(port)
        priv = m.get_attr("WGDEVICE_A_PRIVATE_KEY")
        if priv is not None:
            raw = base64.b64decode(_key(priv))
            dev.has_private_key = raw != bytes(32)
            dev.private_key_hex = raw.hex()
        for p in m.get_attr("WGDEVICE_A_PEERS") or ():
            pub = _key(p.get_attr("WGPEER_A_PUBLIC_KEY"))
            st = dev.peers.get(pub)
            if st is None:
                st = dev.peers[pub] = PeerStatus(public_key=pub)
            psk = p.get_attr("WGPEER_A_PRESHARED_KEY")
            if psk is not None:
                st.has_preshared_key = base64.b64decode(_key(psk)) != bytes(32)
            ep = p.get_attr("WGPEER_A_ENDPOINT")
            if ep and ep.get("port"):
                st.endpoint = f"[{ep['addr']}]:{ep['port']}" if ":" in ep["addr"] else f"{ep['addr']}:{ep['port']}"
            hs = p.get_attr("WGPEER_A_LAST_HANDSHAKE_TIME")
            if hs and hs.get("tv_sec"):
                st.last_handshake = hs["tv_sec"] + hs.get("tv_nsec", 0) / 1e9
            for name, attr in (("rx_bytes", "WGPEER_A_RX_BYTES"), ("tx_bytes", "WGPEER_A_TX_BYTES")):
                v = p.get_attr(attr)
                if v is not None:
                    setattr(st, name, int(v))
            ka = p.get_attr("WGPEER_A_PERSISTENT_KEEPALIVE_INTERVAL")
            if ka is not None:
                st.persistent_keepalive = int(ka)
            for a in p.get_attr("WGPEER_A_ALLOWEDIPS") or ():
                if a.get("addr"):
                    st.allowed_ips.append(str(ipaddress.ip_network(a["addr"], strict=False)))
    return dev


def _errno_of(e: BaseException) -> int | None:
    code = getattr(e, "code", None)
    if isinstance(code, int):
        return code
    return e.errno if isinstance(e, OSError) else None


class NetlinkWgControl:
    """One kernel WireGuard interface, driven over generic netlink."""

    def __init__(self, interface: str, netns: str | None = None) -> None:
        self.interface = interface
        self.netns = netns
        self._last_endpoints: dict[str, str] = {}
        self.resolver = Resolver()
        self.endpoint_problems: dict[str, str] = {}  # cluster_id -> why (status shows it)

    def __repr__(self) -> str:
        return f"NetlinkWgControl({self.interface!r})"

    def _error(self, what: str, e: BaseException) -> WgError:
        code = _errno_of(e)
        text = os.strerror(code) if code else type(e).__name__
        transient = isinstance(e, TimeoutError) or code in TRANSIENT_ERRNOS
        return WgError(f"{self.interface}: WireGuard netlink {what}: {text}", transient=transient)

    def _socket(self) -> Any:
        from pyroute2 import WireGuard

        kw: dict[str, Any] = {"rcvsize": RCVSIZE}
        if self.netns:
            kw.update(netns=self.netns, flags=0)
        try:
            return WireGuard(**kw)
        except Exception as e:  # no module: the generic netlink family does not exist
            if _errno_of(e) == errno.ENOENT or "wireguard" in str(e).lower():
                raise WgError(f"{self.interface}: the kernel has no WireGuard generic netlink "
                              "family (module not loaded)") from None
            raise self._error("socket", e) from None

    def device(self) -> DeviceStatus:
        from pyroute2.netlink import NLM_F_DUMP, NLM_F_REQUEST
        from pyroute2.netlink.generic.wireguard import WG_CMD_GET_DEVICE, wgmsg

        wg = self._socket()
        try:
            m = wgmsg()
            m["cmd"] = WG_CMD_GET_DEVICE
            m["version"] = 1
            m["attrs"] = [["WGDEVICE_A_IFNAME", self.interface]]
            return device_from_messages(tuple(wg.nlm_request(m, msg_type=wg.prid,
                                                             msg_flags=NLM_F_REQUEST | NLM_F_DUMP)))
        except WgError:
            raise
        except Exception as e:
            raise self._error("get", e) from None
        finally:
            wg.close()

    def _send(self, msgs: Sequence[Any]) -> None:
        from pyroute2.netlink import NLM_F_ACK, NLM_F_REQUEST

        wg = self._socket()
        try:
            for m in msgs:
                tuple(wg.nlm_request(m, msg_type=wg.prid, msg_flags=NLM_F_REQUEST | NLM_F_ACK))
        except Exception as e:
            raise self._error("set", e) from None  # the request holds keys: errno only
        finally:
            wg.close()

    def sync(self, local: LocalFabric, peers: Sequence[PeerFabric], now: float | None = None) -> None:
        """Private key, listen port and exactly ``peers``; unknown peers removed (see WgControl.sync)."""
        now = time.monotonic() if now is None else now
        endpoints, problems = resolve_endpoints(self.resolver, peers, now)
        try:
            req = parse_set(render_set(local, peers, self.device(), self._last_endpoints, endpoints))
            msgs = encode_set(self.interface, req)
        except ValueError as e:
            raise WgError(f"{self.interface}: {e}") from None
        if not req.empty():
            self._send(msgs)
        self._last_endpoints.update(endpoints)
        self.endpoint_problems = problems

    def retry_at(self) -> float | None:
        return self.resolver.next_retry() if self.endpoint_problems else None

    def server_pid(self) -> int | None:
        return None  # the kernel serves it

    def show(self) -> dict[str, dict[str, Any]]:
        return {k: p.as_dict() for k, p in self.device().peers.items()}

    def alive(self) -> bool | None:
        """True: the device answers; False: gone or not WireGuard; None: could not tell."""
        try:
            self.device()
        except WgError as e:
            return None if e.transient else False
        return True
