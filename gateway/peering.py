"""The peering protocol, sans-IO: builds and verifies messages; no sockets, no clock.

Callers pass ``now`` and random material in and get dicts (JSON bodies) or
errors out. The HTTP side lives in :mod:`gateway.api`, the bookkeeping in
:mod:`gateway.exchange`.

Exchange (A holds B's token; see DESIGN.md for the rationale):

1. A -> B ``POST /api/v1/peering/join``: ``{"body": {...}, "mac": m1}`` where the
   body holds the token ID, the token-bound fields (B's URL, cluster ID, public
   key, expiry), A's cluster ID, WireGuard public key and endpoint, A's real
   ranges, A's gateway pod IP, an ephemeral X25519 public key, ``ts`` and a
   random ``nonce``. ``m1 = HMAC(K_req, canonical(body))``,
   ``K_req = HKDF(verifier, "request")``.
2. B -> A: ``{"body": {..., "request_mac": m1}, "mac": m2}`` with B's side,
   B's views of A's ranges, B's ephemeral key; ``m2`` under ``K_resp`` (a
   different key, so a request can never pass as a response) and bound to
   ``m1``.
3. Both derive ``HKDF(X25519(eA, eB) || verifier, salt = SHA256(m1 || m2))``
   -> 32-byte channel key + 32-byte WireGuard PSK. A recorded exchange plus a
   later leak of the verifier does not reveal them (the ephemeral keys are gone).
4. Everything afterwards is a channel message (``/api/v1/peering/message``):
   ``{"body": {"type", "from", "to", "ts", "nonce", ...}, "mac"}`` under the
   channel key; the reply is bound to the request's mac. The first one is A
   telling B A's views of B (``type: views``).

Replay: every body carries ``ts`` (must be within ``WINDOW`` of the receiver's
clock) and a 16-byte ``nonce`` the receiver remembers for longer than the window.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import ipaddress
import json
import math
import secrets
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from fabric.endpoints import EndpointError
from fabric.endpoints import parse as endpoint_syntax
from fabric.model import RangeMap
from gateway.tokens import Token, b64d, b64e

VERSION = 1
WINDOW = 120.0  # seconds of clock skew tolerated; nonces are kept for 2 * WINDOW
# "pins": the sender's TLS pins only (every message carries them; this one nothing else)
MESSAGE_TYPES = ("views", "ranges", "key", "endpoint", "remove", "exports", "pins")


class PeeringError(ValueError):
    """A peering message that must be refused; ``status`` is the HTTP status to answer with."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


def canonical(body: Mapping[str, Any]) -> bytes:
    return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


def _hkdf(ikm: bytes, info: bytes, *, salt: bytes | None = None, length: int = 32) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=length, salt=salt, info=info).derive(ikm)


def request_key(verifier: bytes) -> bytes:
    return _hkdf(verifier, b"crosswire peering request v1")


def response_key(verifier: bytes) -> bytes:
    return _hkdf(verifier, b"crosswire peering response v1")


def mac(key: bytes, body: Mapping[str, Any]) -> str:
    return b64e(hmac.new(key, canonical(body), hashlib.sha256).digest())


def seal(key: bytes, body: dict[str, Any]) -> dict[str, Any]:
    return {"body": body, "mac": mac(key, body)}


# A message whose MAC fails, and one from a cluster not peered here: the same answer.
AUTH_FAILED = "message authentication failed (wrong token secret or tampered)"


def open_envelope(key: bytes, envelope: object) -> tuple[dict[str, Any], str]:
    """Check an envelope's MAC; returns (body, mac). Raises PeeringError(401) if it fails."""
    if not isinstance(envelope, dict) or not isinstance(envelope.get("body"), dict) \
            or not isinstance(envelope.get("mac"), str):
        raise PeeringError("malformed message: expected {'body': {...}, 'mac': '...'}")
    body, got = envelope["body"], envelope["mac"]
    if not hmac.compare_digest(mac(key, body), got):
        raise PeeringError(AUTH_FAILED, 401)
    return body, got


def check_fresh(body: Mapping[str, Any], now: float, window: float = WINDOW) -> str:
    """Timestamp within the window; returns the nonce (the caller checks it was not seen)."""
    ts, nonce = body.get("ts"), body.get("nonce")
    if not isinstance(ts, (int, float)) or isinstance(ts, bool):
        raise PeeringError("malformed message: 'ts' missing")
    # NaN compares false with everything, so it would pass the window check below.
    if not math.isfinite(ts):
        raise PeeringError("malformed message: 'ts' is not a finite number")
    if not abs(now - ts) <= window:
        raise PeeringError(f"message timestamp is {now - ts:+.0f}s off (stale or replayed, or clocks differ)", 401)
    if not isinstance(nonce, str) or len(nonce) < 16:
        raise PeeringError("malformed message: 'nonce' missing")
    return nonce


def new_nonce() -> str:
    return b64e(secrets.token_bytes(16))


# --- payload validation --------------------------------------------------------------------


def _str(body: Mapping[str, Any], key: str) -> str:
    v = body.get(key)
    if not isinstance(v, str) or not v:
        raise PeeringError(f"malformed message: {key!r} must be a non-empty string")
    return v


def _cidr(v: object, where: str) -> str:
    if not isinstance(v, str):
        raise PeeringError(f"{where}: {v!r} is not a CIDR")
    try:
        return str(ipaddress.ip_network(v, strict=True))
    except ValueError:
        raise PeeringError(f"{where}: {v!r} is not a valid CIDR") from None


def parse_ranges(v: object, where: str = "ranges") -> list[tuple[str, str]]:
    """[{"kind": "pod"|"service", "cidr": "..."}] -> [(kind, cidr)]"""
    if not isinstance(v, list) or not v:
        raise PeeringError(f"{where}: expected a non-empty list of {{kind, cidr}}")
    out = []
    for i, r in enumerate(v):
        if not isinstance(r, dict) or r.get("kind") not in ("pod", "service"):
            raise PeeringError(f"{where}[{i}]: expected {{'kind': 'pod'|'service', 'cidr': ...}}")
        out.append((r["kind"], _cidr(r.get("cidr"), f"{where}[{i}].cidr")))
    return out


# A full view maps a pod or service range; sparse ones an exported address, the
# gateway's address or an egress block (ipam/DESIGN.md, "Sparse views").
VIEW_KINDS = ("pod", "service", "export", "gateway", "egress")
# What a release from before sparse views takes (its join carries no view_kinds).
FULL_KINDS = ("pod", "service")


def views_body(maps: Iterable[RangeMap]) -> list[dict[str, str]]:
    """Mappings as they travel and as the API shows them: [{"kind", "real", "view"}]."""
    return [{"kind": m.kind, "real": m.real, "view": m.view} for m in maps]


def parse_views(v: object, where: str = "views") -> list[RangeMap]:
    """[{"kind", "real", "view"}] -> [RangeMap] with equal prefix lengths (inverse of views_body)."""
    if not isinstance(v, list):
        raise PeeringError(f"{where}: expected a list of {{kind, real, view}}")
    out = []
    for i, r in enumerate(v):
        if not isinstance(r, dict) or r.get("kind") not in VIEW_KINDS:
            raise PeeringError(f"{where}[{i}]: expected {{'kind': {'|'.join(VIEW_KINDS)}, 'real', 'view'}}")
        real = _cidr(r.get("real"), f"{where}[{i}].real")
        view = _cidr(r.get("view"), f"{where}[{i}].view")
        rn, vn = ipaddress.ip_network(real), ipaddress.ip_network(view)
        if rn.version != vn.version or rn.prefixlen != vn.prefixlen:
            raise PeeringError(f"{where}[{i}]: view {view} must have the same family and length as {real}")
        out.append(RangeMap(r["kind"], real, view))
    return out


def check_public_key(v: object, where: str = "public_key") -> str:
    if not isinstance(v, str):
        raise PeeringError(f"{where}: not a WireGuard public key")
    try:
        raw = base64.b64decode(v, validate=True)
    except ValueError:
        raise PeeringError(f"{where}: not a base64 WireGuard public key") from None
    if len(raw) != 32:
        raise PeeringError(f"{where}: a WireGuard public key has 32 bytes")
    return v


def check_endpoint(v: object, where: str = "endpoint") -> str | None:
    """An optional WireGuard endpoint, strictly ``host:port`` (a malformed one would
    otherwise reach the data plane, where it used to fail every peer's sync)."""
    if v is None:
        return None
    try:
        endpoint_syntax(v)
    except EndpointError as e:
        raise PeeringError(f"malformed message: {where}: {e}") from None
    return str(v)


def check_ip(v: object, where: str) -> str | None:
    if v is None:
        return None
    try:
        return str(ipaddress.ip_address(str(v)))
    except ValueError:
        raise PeeringError(f"{where}: {v!r} is not an IP address") from None


# --- the join exchange ---------------------------------------------------------------------


@dataclass(frozen=True)
class Side:
    """What one gateway tells the other about itself."""

    cluster_id: str
    public_key: str
    endpoint: str | None
    ranges: tuple[tuple[str, str], ...]  # (kind, real cidr)
    gateway_ip: str | None
    url: str
    # The view kinds this side takes from its peer: a sparse gateway refuses, before
    # anything is spent, a peer from before sparse views (older releases ignore the field).
    view_kinds: tuple[str, ...] = VIEW_KINDS

    def to_body(self) -> dict[str, Any]:
        return {"cluster_id": self.cluster_id, "public_key": self.public_key,
                "endpoint": self.endpoint, "gateway_ip": self.gateway_ip, "url": self.url,
                "ranges": [{"kind": k, "cidr": c} for k, c in self.ranges],
                "view_kinds": list(self.view_kinds)}

    @staticmethod
    def from_body(body: Mapping[str, Any]) -> Side:
        return Side(cluster_id=_str(body, "cluster_id"),
                    public_key=check_public_key(body.get("public_key")),
                    endpoint=check_endpoint(body.get("endpoint")),
                    ranges=tuple(parse_ranges(body.get("ranges"))),
                    gateway_ip=check_ip(body.get("gateway_ip"), "gateway_ip"),
                    url=_str(body, "url"),
                    view_kinds=parse_view_kinds(body.get("view_kinds", list(FULL_KINDS))))


def parse_view_kinds(v: object) -> tuple[str, ...]:
    """The view kinds a peer takes; kinds of a later release that we do not know are ignored."""
    if not isinstance(v, list) or not all(isinstance(k, str) for k in v):
        raise PeeringError("view_kinds: expected a list of view kinds")
    return tuple(k for k in VIEW_KINDS if k in v)


@dataclass
class Ephemeral:
    private: X25519PrivateKey = field(repr=False)

    @staticmethod
    def generate() -> Ephemeral:
        return Ephemeral(X25519PrivateKey.generate())

    @property
    def public(self) -> str:
        return b64e(self.private.public_key().public_bytes(serialization.Encoding.Raw,
                                                           serialization.PublicFormat.Raw))

    def exchange(self, peer_public: object) -> bytes:
        try:
            pub = X25519PublicKey.from_public_bytes(b64d(str(peer_public)))
            return self.private.exchange(pub)
        except ValueError:
            raise PeeringError("malformed message: bad ephemeral key") from None


@dataclass(frozen=True)
class PairKeys:
    channel_key: bytes = field(repr=False)
    psk: bytes = field(repr=False)

    @property
    def psk_b64(self) -> str:
        return base64.b64encode(self.psk).decode()


def pair_keys(shared: bytes, verifier: bytes, request_mac: str, response_mac: str) -> PairKeys:
    salt = hashlib.sha256((request_mac + "|" + response_mac).encode()).digest()
    okm = _hkdf(shared + verifier, b"crosswire pair keys v1", salt=salt, length=64)
    return PairKeys(channel_key=okm[:32], psk=okm[32:])


def build_join(token: Token, me: Side, eph: Ephemeral, now: float) -> dict[str, Any]:
    """A: the join request for ``token``."""
    body = {"v": VERSION, "type": "join", "token_id": token.token_id,
            "to": {"url": token.url, "cluster_id": token.cluster_id,
                   "public_key": token.public_key, "expires": token.expires},
            "ts": now, "nonce": new_nonce(), "eph": eph.public, **me.to_body()}
    return seal(request_key(token.verifier), body)


@dataclass(frozen=True)
class JoinRequest:
    token_id: str
    side: Side
    body: dict[str, Any]
    mac: str
    nonce: str


def peek_token_id(envelope: object) -> str:
    if isinstance(envelope, dict) and isinstance(envelope.get("body"), dict):
        tid = envelope["body"].get("token_id")
        if isinstance(tid, str) and tid:
            return tid
    raise PeeringError("malformed message: 'body.token_id' missing")


def verify_join(envelope: object, verifier: bytes, me_cluster_id: str, me_public_key: str,
                now: float) -> JoinRequest:
    """B: authenticate a join request made with the token whose verifier is given."""
    body, m = open_envelope(request_key(verifier), envelope)
    if body.get("v") != VERSION or body.get("type") != "join":
        raise PeeringError("unsupported peering protocol version or message type")
    nonce = check_fresh(body, now)
    to = body.get("to")
    if not isinstance(to, dict) or to.get("cluster_id") != me_cluster_id \
            or to.get("public_key") != me_public_key:
        raise PeeringError("token was issued for another gateway (cluster ID or key differs)", 403)
    side = Side.from_body(body)
    return JoinRequest(token_id=_str(body, "token_id"), side=side, body=body, mac=m, nonce=nonce)


def build_join_response(req: JoinRequest, verifier: bytes, me: Side,
                        views_of_you: list[RangeMap], eph: Ephemeral,
                        now: float) -> tuple[dict[str, Any], PairKeys]:
    """B: the answer, bound to the request; also returns the pair keys B now shares with A."""
    body = {"v": VERSION, "type": "join-ok", "request_mac": req.mac, "ts": now, "nonce": new_nonce(),
            "eph": eph.public, **me.to_body(),
            "views_of_you": views_body(views_of_you)}
    env = seal(response_key(verifier), body)
    keys = pair_keys(eph.exchange(req.body.get("eph")), verifier, req.mac, env["mac"])
    return env, keys


@dataclass(frozen=True)
class JoinResponse:
    side: Side
    views_of_us: list[RangeMap]  # the peer's views of our ranges
    keys: PairKeys


def verify_join_response(envelope: object, token: Token, request: dict[str, Any], eph: Ephemeral,
                         now: float) -> JoinResponse:
    """A: authenticate B's answer: right key, bound to our request, fresh, pinned public key."""
    body, m = open_envelope(response_key(token.verifier), envelope)
    if body.get("type") != "join-ok":
        raise PeeringError("unexpected peering response type")
    if not isinstance(body.get("request_mac"), str) or \
            not hmac.compare_digest(body["request_mac"], request["mac"]):
        raise PeeringError("peering response is not bound to our request (replayed?)", 401)
    check_fresh(body, now)
    side = Side.from_body(body)
    if side.public_key != token.public_key:
        raise PeeringError("peer answered with a WireGuard key other than the one pinned in the token", 401)
    if side.cluster_id != token.cluster_id:
        raise PeeringError("peer answered with a cluster ID other than the token's", 401)
    views = parse_views(body.get("views_of_you"), "views_of_you")
    keys = pair_keys(eph.exchange(body.get("eph")), token.verifier, request["mac"], m)
    return JoinResponse(side=side, views_of_us=views, keys=keys)


# --- channel messages ----------------------------------------------------------------------


def build_message(channel_key: bytes, sender: str, receiver: str, type_: str,
                  payload: Mapping[str, Any], now: float) -> dict[str, Any]:
    if type_ not in MESSAGE_TYPES:
        raise ValueError(f"unknown message type {type_}")
    body = {"v": VERSION, "type": type_, "from": sender, "to": receiver, "ts": now,
            "nonce": new_nonce(), **payload}
    return seal(channel_key, body)


def peek_sender(envelope: object) -> str:
    if isinstance(envelope, dict) and isinstance(envelope.get("body"), dict):
        s = envelope["body"].get("from")
        if isinstance(s, str) and s:
            return s
    raise PeeringError("malformed message: 'body.from' missing")


@dataclass(frozen=True)
class Message:
    type: str
    sender: str
    body: dict[str, Any]
    mac: str
    nonce: str


def verify_message(envelope: object, channel_key: bytes, me: str, now: float) -> Message:
    body, m = open_envelope(channel_key, envelope)
    if body.get("to") != me:
        raise PeeringError("message is addressed to another cluster", 401)
    nonce = check_fresh(body, now)
    if body.get("type") not in MESSAGE_TYPES:
        raise PeeringError(f"unknown message type {body.get('type')!r}")
    return Message(type=body["type"], sender=_str(body, "from"), body=body, mac=m, nonce=nonce)


def build_reply(channel_key: bytes, msg: Message, me: str, payload: Mapping[str, Any],
                now: float) -> dict[str, Any]:
    body = {"v": VERSION, "type": "ack", "from": me, "to": msg.sender, "in_reply_to": msg.mac,
            "ts": now, "nonce": new_nonce(), **payload}
    return seal(channel_key, body)


def verify_reply(envelope: object, channel_key: bytes, request: dict[str, Any], me: str,
                 now: float) -> dict[str, Any]:
    body, _ = open_envelope(channel_key, envelope)
    if body.get("type") != "ack" or body.get("to") != me or \
            not hmac.compare_digest(str(body.get("in_reply_to")), request["mac"]):
        raise PeeringError("reply is not bound to our message", 401)
    check_fresh(body, now)
    return body
