"""Synthetic peers for bench/fleet.py (and tests/gateway/test_fleet_peers.py).

A synthetic peer is a cluster without a cluster: no kernel WireGuard, no nft,
no pods. What it does is real protocol:

- it redeems the real gateway's (reusable) token over its TLS peering listener
  with the project's own client code (``peering.build_join`` /
  ``verify_join_response``, ``PeerChannel`` over ``pinhttp`` with the token's
  pin) and tells the gateway its views of it (``views``, a channel message);
- it answers the gateway's channel messages (``exports`` at first, any other
  type too) on one plain-HTTP listener shared by all peers: each peer's URL is
  ``http://IP:PORT/p/<cluster_id>`` and the gateway appends the message path;
- it is a WireGuard peer: the project's sans-IO ``fabric.wg.device.Device`` on
  a UDP socket of its own, doing real handshakes with the gateway's
  crosswire-wg, and answering the gateway's health probes that arrive through
  the tunnel (UDP to ``health.port`` on its gateway IP, echoed back like
  ``gateway.health.EchoResponder`` would after its cluster's NAT).

Simulated: everything behind the peer's gateway (its pods, its NAT: the probe
reply is the packet a real peer's conntrack would send), and its own view
allocation (every synthetic peer views the gateway's pods as 100.120.0.0/16
and its services as 100.96.0.0/12: legal, each cluster's numbers are its own).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import socket
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from fabric.model import RangeMap
from fabric.wg.device import Device
from fabric.wg.uapi import handle
from gateway import peering
from gateway.channel import PeerChannel
from gateway.errors import GatewayError
from gateway.peering import views_body
from gateway.state import PeerRecord
from gateway.tokens import decode

PEER_RANGES = (("pod", "10.244.0.0/16"), ("service", "10.96.0.0/12"))
PEER_GATEWAY_IP = "10.244.0.10"
# Our (each synthetic peer's) views of the gateway's ranges: outside the gateway's
# lower pool, where its sparse views of 1,000 peers live, so a reply is never ambiguous.
VIEW_OF = {"pod": "100.120.0.0/16", "service": "100.96.0.0/12"}
HEALTH_PORT = 51830
PROBE_LEN = 20


def _ip_checksum(header: bytes) -> int:
    s = sum(struct.unpack(f"!{len(header) // 2}H", header))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return ~s & 0xFFFF


def probe_reply(packet: bytes, health_port: int = HEALTH_PORT) -> bytes | None:
    """The echo of an IPv4/UDP health probe (addresses and ports swapped), or None."""
    if len(packet) < 28 or packet[0] >> 4 != 4 or packet[9] != 17:
        return None
    ihl = (packet[0] & 0x0F) * 4
    udp = packet[ihl:]
    if len(udp) < 8:
        return None
    sport, dport, ulen = struct.unpack("!HHH", udp[:6])
    payload = udp[8:ulen]
    if dport != health_port or len(payload) != PROBE_LEN or not payload.startswith(b"CWP1"):
        return None
    src, dst = packet[12:16], packet[16:20]
    head = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 28 + PROBE_LEN, 0, 0x4000, 64, 17, 0, dst, src)
    head = head[:10] + struct.pack("!H", _ip_checksum(head)) + head[12:]
    # UDP checksum 0: "none", allowed over IPv4.
    return head + struct.pack("!HHHH", dport, sport, 8 + PROBE_LEN, 0) + payload


def _keypair() -> tuple[bytes, bytes]:
    k = X25519PrivateKey.generate()
    raw = k.private_bytes(serialization.Encoding.Raw, serialization.PrivateFormat.Raw,
                          serialization.NoEncryption())
    pub = k.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return raw, pub


class _Udp(asyncio.DatagramProtocol):
    def __init__(self, peer: SyntheticPeer) -> None:
        self.peer = peer

    def datagram_received(self, data: bytes, addr: tuple[Any, ...]) -> None:
        self.peer.on_datagram(data, (addr[0], addr[1]))


@dataclass
class SyntheticPeer:
    cluster_id: str
    ip: str  # our underlay address (the WireGuard endpoint's host)
    wg_port: int
    channel_url: str  # http://IP:PORT (the shared listener); our URL is this + /p/<cluster_id>
    clock: Callable[[], float] = time.monotonic
    device: Device = field(default_factory=Device)
    record: PeerRecord | None = None  # the gateway, as we stored it
    transport: asyncio.DatagramTransport | None = None
    probes_answered: int = 0
    first_probe: float | None = None  # clock() of the first probe answered
    messages: dict[str, int] = field(default_factory=dict)  # channel messages received by type
    joined_at: float | None = None
    views_sent_at: float | None = None

    def __post_init__(self) -> None:
        self._priv, pub = _keypair()
        self.public_key = base64.b64encode(pub).decode()

    @property
    def url(self) -> str:
        return f"{self.channel_url}/p/{self.cluster_id}"

    def side(self) -> peering.Side:
        return peering.Side(cluster_id=self.cluster_id, public_key=self.public_key,
                            endpoint=f"{self.ip}:{self.wg_port}", ranges=PEER_RANGES,
                            gateway_ip=PEER_GATEWAY_IP, url=self.url)

    async def open(self) -> None:
        loop = asyncio.get_running_loop()
        t, _ = await loop.create_datagram_endpoint(lambda: _Udp(self), local_addr=(self.ip, self.wg_port),
                                                   family=socket.AF_INET)
        self.transport = t

    async def join(self, token_text: str, attempts: int = 1) -> None:
        """The A side of a peering (what ``Exchange.peer_add`` does, without a data plane of
        our own): join over pinned TLS, configure WireGuard, send our views, await the ack.
        The views are sent up to ``attempts`` times (a busy gateway may answer late: it
        stored them, so the join itself is never repeated)."""
        pins = await self.redeem(token_text)
        for attempt in range(attempts):
            try:
                await self.send_views(pins)
                return
            except GatewayError:
                if attempt == attempts - 1:
                    raise
                await asyncio.sleep(1 + attempt)

    async def redeem(self, token_text: str) -> tuple[str, ...]:
        """Join with the token; the pins the gateway's listener is accepted by."""
        token = decode(token_text, now=time.time())
        assert token.tls_pin is not None, "the gateway's token carries no TLS pin"
        pins = (token.tls_pin,)
        channel = PeerChannel(cluster_id=self.cluster_id)
        eph = peering.Ephemeral.generate()
        request = peering.build_join(token, self.side(), eph, time.time())
        url = "https://" + token.url.split("://", 1)[-1]
        answer = await channel.post(url + "/api/v1/peering/join", request, pins)
        resp = peering.verify_join_response(answer, token, request, eph, time.time())
        gw = resp.side
        self.record = PeerRecord(cluster_id=gw.cluster_id, public_key=gw.public_key, endpoint=gw.endpoint,
                                 url=gw.url, gateway_ip=gw.gateway_ip, ranges=gw.ranges,
                                 their_views=tuple(resp.views_of_us), channel_key=resp.keys.channel_key,
                                 psk=resp.keys.psk)
        self._configure(gw.public_key, resp.keys.psk, gw.endpoint)
        return pins

    async def send_views(self, pins: tuple[str, ...]) -> None:
        assert self.record is not None
        ours = [RangeMap(kind, real, VIEW_OF[kind]) for kind, real in self.record.ranges if kind in VIEW_OF]
        channel = PeerChannel(cluster_id=self.cluster_id)
        self.views_sent_at = self.clock()  # from here the gateway programs us (routes change)
        await channel.send(self.record, "views", {"views": views_body(ours)}, pins_override=pins)
        self.joined_at = self.clock()

    def _configure(self, gw_key: str, psk: bytes, endpoint: str | None) -> None:
        req = (f"set=1\nprivate_key={self._priv.hex()}\nlisten_port={self.wg_port}\n"
               f"public_key={base64.b64decode(gw_key).hex()}\npreshared_key={psk.hex()}\n"
               + (f"endpoint={endpoint}\n" if endpoint else "") + "allowed_ip=0.0.0.0/0\n\n")
        reply = handle(self.device, req, self.clock()).wire()
        if reply != "errno=0\n\n":
            raise RuntimeError(f"{self.cluster_id}: WireGuard configuration refused: {reply.strip()}")

    # --- the data plane ---------------------------------------------------------------------

    def on_datagram(self, data: bytes, src: tuple[str, int]) -> None:
        now = self.clock()
        dev = self.device
        dev.on_datagram(data, src, now)
        while dev.inbox:
            reply = probe_reply(dev.inbox.popleft())
            if reply is not None:
                self.probes_answered += 1
                if self.first_probe is None:
                    self.first_probe = now
                dev.on_packet(reply, now)
        self.flush()

    def tick(self, now: float) -> None:
        nxt = self.device.next_deadline()
        if nxt is not None and nxt <= now:
            self.device.on_timer(now)
            self.flush()

    def flush(self) -> None:
        out = self.device.outbox
        while out:
            data, ep = out.popleft()
            if self.transport is not None:
                with contextlib.suppress(OSError):
                    self.transport.sendto(data, (ep[0], ep[1]))

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()
            self.transport = None

    # --- the channel (receiver) -------------------------------------------------------------

    def on_message(self, envelope: object) -> dict[str, Any]:
        assert self.record is not None
        msg = peering.verify_message(envelope, self.record.channel_key, self.cluster_id, time.time())
        self.messages[msg.type] = self.messages.get(msg.type, 0) + 1
        return peering.build_reply(self.record.channel_key, msg, self.cluster_id, {"applied": True}, time.time())


class Fleet:
    """Many synthetic peers: one timer task, one HTTP listener for the gateway's messages."""

    def __init__(self, ip: str, http_port: int, first_wg_port: int) -> None:
        self.ip = ip
        self.http_port = http_port
        self.next_port = first_wg_port
        self.peers: dict[str, SyntheticPeer] = {}
        self._server: asyncio.Server | None = None
        self._timer: asyncio.Task[None] | None = None
        self.http_errors = 0

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, self.ip, self.http_port, limit=1 << 20)
        self._timer = asyncio.get_running_loop().create_task(self._ticks())

    async def add(self, cluster_id: str) -> SyntheticPeer:
        p = SyntheticPeer(cluster_id, self.ip, self.next_port, f"http://{self.ip}:{self.http_port}")
        self.next_port += 1
        await p.open()
        self.peers[cluster_id] = p
        return p

    async def _ticks(self) -> None:
        # WireGuard timers (rekey, keepalive, retransmit) of every peer: 10 Hz is plenty.
        while True:
            now = time.monotonic()
            for p in list(self.peers.values()):
                p.tick(now)
            await asyncio.sleep(0.1)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except (asyncio.IncompleteReadError, ConnectionError, asyncio.CancelledError):
                    return
                lines = head.decode("latin-1").split("\r\n")
                method, path, _ = lines[0].split(" ", 2)
                fields = {k.strip().lower(): v.strip() for k, _, v in (x.partition(":") for x in lines[1:] if x)}
                body = await reader.readexactly(int(fields.get("content-length", "0")))
                status, answer = self._route(method, path, body)
                data = json.dumps(answer).encode()
                close = fields.get("connection", "").lower() == "close"
                writer.write(f"HTTP/1.1 {status} X\r\nContent-Type: application/json\r\nContent-Length: "
                             f"{len(data)}\r\n{'Connection: close' + chr(13) + chr(10) if close else ''}\r\n"
                             .encode() + data)
                await writer.drain()
                if close:
                    return
        except (ConnectionError, asyncio.IncompleteReadError, ValueError):
            self.http_errors += 1
        finally:
            writer.close()

    def _route(self, method: str, path: str, body: bytes) -> tuple[int, dict[str, Any]]:
        parts = path.split("/")  # "", "p", cid, "api", "v1", "peering", "message"
        if method != "POST" or len(parts) != 7 or parts[1] != "p" or "/".join(parts[3:]) != \
                "api/v1/peering/message":
            return 404, {"detail": "not found"}
        peer = self.peers.get(parts[2])
        if peer is None or peer.record is None:
            return 403, {"detail": f"unknown peer {parts[2]}"}
        try:
            return 200, peer.on_message(json.loads(body))
        except (ValueError, peering.PeeringError) as e:
            self.http_errors += 1
            return 401, {"detail": str(e)}

    async def aclose(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._timer
        if self._server is not None:
            self._server.close()
        for p in self.peers.values():
            p.close()
