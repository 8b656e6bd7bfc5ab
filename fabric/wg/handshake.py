"""The handshake's message steps, sans-IO: data, keys and ``now`` in; the message
to send and/or the new Keypair out, or a drop reason.

A drop reason is the name of the device counter to bump (``drop_*``). Nothing
here sends, changes the index table (it only looks indices up) or moves a
peer's keypairs: the device picks the indices and ephemeral keys (from its
rng), then installs what comes back. The only state written is the peer's cookie generator, which stamps
mac1/mac2 on outgoing messages and remembers the last mac1 for cookie replies.

Checks on an initiation, in order: Noise decryption, known peer, TAI64N
strictly newer than the last accepted from that peer, and not within
HANDSHAKE_INITIATION_RATE of the last accepted one.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

from fabric.wg import messages as m
from fabric.wg import noise, tai64n
from fabric.wg.constants import HANDSHAKE_INITIATION_RATE
from fabric.wg.indextable import IndexTable
from fabric.wg.peer import Keypair, Peer, Pending


class ConsumedInitiation(NamedTuple):
    """An initiation that authenticated and passed the replay/flood checks."""

    peer: Peer
    sender: int  # the initiator's index: the receiver of our response
    ephemeral: bytes  # the initiator's ephemeral public key
    noise: noise.InitiationIn

    def __repr__(self) -> str:  # chaining key / hash are key material
        return f"ConsumedInitiation({self.peer!r})"


def create_initiation(
    *,
    static_priv: bytes,
    static_pub: bytes,
    peer: Peer,
    local_index: int,
    ephemeral_priv: bytes,
    wall: float,
    now: float,
) -> tuple[bytes, Pending]:
    """Message 1 to ``peer`` (which must have ``static_static``) and the state
    its response will need."""
    out = noise.create_initiation(
        ck_h=noise.initial_hash(),
        static_priv=static_priv,
        static_pub=static_pub,
        remote_static=peer.public_key,
        ephemeral_priv=ephemeral_priv,
        payload=tai64n.encode(wall),
        static_static=peer.static_static,
    )
    msg = m.pack_initiation(local_index, out.ephemeral_pub, out.enc_static, out.enc_payload)
    peer.cookie.add_macs(msg, now)
    return bytes(msg), Pending(local_index, ephemeral_priv, out.ck, out.h)


def consume_initiation(
    *, static_priv: bytes, static_pub: bytes, peers: dict[bytes, Peer], data: bytes, now: float
) -> ConsumedInitiation | str:
    """A 148-byte message 1 whose mac1 (and, under load, mac2) already checked."""
    msg = m.unpack_initiation(data)

    def cached_ss(s_i: bytes) -> bytes | None:
        p = peers.get(s_i)
        return p.static_static if p is not None else None

    try:
        got = noise.consume_initiation(
            ck_h=noise.initial_hash(),
            static_priv=static_priv,
            static_pub=static_pub,
            ephemeral_pub=msg.ephemeral,
            enc_static=msg.static,
            enc_payload=msg.timestamp,
            static_static_for=cached_ss,
        )
    except noise.HandshakeError:
        return "drop_bad_handshake"
    peer = peers.get(got.initiator_static)
    if peer is None or peer.static_static is None:
        return "drop_unknown_peer"
    if not tai64n.after(got.payload, peer.last_timestamp):
        return "drop_replay_timestamp"
    if now - peer.last_initiation_consumed <= HANDSHAKE_INITIATION_RATE:
        return "drop_handshake_flood"
    return ConsumedInitiation(peer, msg.sender, msg.ephemeral, got)


def create_response(
    init: ConsumedInitiation, *, local_index: int, ephemeral_priv: bytes, now: float,
    make: Callable[..., Keypair] = Keypair,
) -> tuple[bytes, Keypair] | str:
    """Message 2 answering ``init`` and the responder's new keypair."""
    peer = init.peer
    try:
        resp = noise.create_response(
            ck=init.noise.ck,
            h=init.noise.h,
            ephemeral_priv=ephemeral_priv,
            initiator_ephemeral=init.ephemeral,
            initiator_static=init.noise.initiator_static,
            psk=peer.preshared_key,
            payload=b"",
        )
    except noise.HandshakeError:
        return "drop_bad_handshake"
    out = m.pack_response(local_index, init.sender, resp.ephemeral_pub, resp.enc_payload)
    peer.cookie.add_macs(out, now)
    k_i, k_r = noise.transport_keys(resp.ck)
    kp = make(peer, k_r, k_i, local_index, init.sender, is_initiator=False, created=now)
    return bytes(out), kp


def consume_response(
    *, static_priv: bytes, handshakes: dict[int, Peer], data: bytes, now: float,
    make: Callable[..., Keypair] = Keypair,
) -> Keypair | str:
    """A 92-byte message 2 (mac-checked) -> the initiator's new keypair, whose
    ``peer`` and ``local_index`` say which pending handshake it completes."""
    msg = m.unpack_response(data)
    peer = handshakes.get(msg.receiver)
    pending = peer.handshake if peer is not None else None
    if peer is None or pending is None:
        return "drop_unknown_index"
    try:
        got = noise.consume_response(
            ck=pending.ck,
            h=pending.h,
            ephemeral_priv=pending.ephemeral_priv,
            static_priv=static_priv,
            responder_ephemeral=msg.ephemeral,
            psk=peer.preshared_key,
            enc_payload=msg.empty,
        )
    except noise.HandshakeError:
        return "drop_bad_handshake"
    if got.payload:
        return "drop_bad_handshake"
    k_i, k_r = noise.transport_keys(got.ck)
    return make(peer, k_i, k_r, pending.local_index, msg.sender, is_initiator=True, created=now)


def consume_cookie_reply(index: IndexTable, data: bytes, now: float) -> str | None:
    """A 64-byte cookie reply -> None if its cookie was stored, else a drop reason."""
    msg = m.unpack_cookie_reply(data)
    peer = index.peer_for(msg.receiver)
    if peer is None:
        return "drop_unknown_index"
    if not peer.cookie.consume_reply(msg.nonce, msg.cookie, now):
        return "drop_bad_cookie"
    return None
