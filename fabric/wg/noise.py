"""Noise_IKpsk2_25519_ChaChaPoly_BLAKE2s handshake, as pure functions.

The prologue is a parameter: WireGuard uses its IDENTIFIER, the cacophony test
vectors use their own. Payloads are arbitrary (WireGuard: the TAI64N stamp in
message 1, nothing in message 2), so the same code checks the public vectors
and runs the real protocol. Each step returns the new (chaining key, hash).

  initiator -> responder: e, es, s, ss, {payload}
  responder -> initiator: e, ee, se, psk, {payload}
  transport keys: KDF2(ck, "") -> (initiator send, responder send)
"""

from __future__ import annotations

from typing import NamedTuple

from fabric.wg.crypto import aead_decrypt, aead_encrypt, dh, hash_, kdf1, kdf2, kdf3, public_key

CONSTRUCTION = b"Noise_IKpsk2_25519_ChaChaPoly_BLAKE2s"
IDENTIFIER = b"WireGuard v1 zx2c4 Jason@zx2c4.com"

_CK0 = hash_(CONSTRUCTION)


class HandshakeError(Exception):
    """The message did not authenticate / decrypt, or a DH result was zero."""


def initial_hash(prologue: bytes = IDENTIFIER) -> tuple[bytes, bytes]:
    """(ck, h) before the responder's static key is mixed in."""
    return _CK0, hash_(_CK0, prologue)


class InitiationOut(NamedTuple):
    ck: bytes
    h: bytes
    ephemeral_pub: bytes
    enc_static: bytes
    enc_payload: bytes

    def __repr__(self) -> str:  # chaining key / hash are key material
        return "InitiationOut(...)"


class InitiationIn(NamedTuple):
    ck: bytes
    h: bytes
    initiator_static: bytes
    payload: bytes

    def __repr__(self) -> str:  # chaining key / hash are key material
        return "InitiationIn(...)"


class ResponseOut(NamedTuple):
    ck: bytes
    h: bytes
    ephemeral_pub: bytes
    enc_payload: bytes

    def __repr__(self) -> str:  # chaining key / hash are key material
        return "ResponseOut(...)"


class ResponseIn(NamedTuple):
    ck: bytes
    h: bytes
    payload: bytes

    def __repr__(self) -> str:  # chaining key / hash are key material
        return "ResponseIn(...)"


def _dh(priv: bytes, pub: bytes) -> bytes:
    try:
        return dh(priv, pub)
    except ValueError as e:  # all-zero shared secret
        raise HandshakeError("invalid public key") from e


def _open(key: bytes, ct: bytes, ad: bytes) -> bytes:
    try:
        return aead_decrypt(key, 0, ct, ad)
    except Exception as e:
        raise HandshakeError("decryption failed") from e


def create_initiation(
    *,
    ck_h: tuple[bytes, bytes],
    static_priv: bytes,
    static_pub: bytes,
    remote_static: bytes,
    ephemeral_priv: bytes,
    payload: bytes,
    static_static: bytes | None = None,
) -> InitiationOut:
    """ck_h: initial_hash(prologue). static_static: cached DH(s_i, S_r), if any."""
    ck, h = ck_h
    h = hash_(h, remote_static)
    e_pub = public_key(ephemeral_priv)
    ck = kdf1(ck, e_pub)
    h = hash_(h, e_pub)
    ck, k = kdf2(ck, _dh(ephemeral_priv, remote_static))
    enc_static = aead_encrypt(k, 0, static_pub, h)
    h = hash_(h, enc_static)
    ss = static_static if static_static is not None else _dh(static_priv, remote_static)
    ck, k = kdf2(ck, ss)
    enc_payload = aead_encrypt(k, 0, payload, h)
    h = hash_(h, enc_payload)
    return InitiationOut(ck, h, e_pub, enc_static, enc_payload)


def consume_initiation(
    *,
    ck_h: tuple[bytes, bytes],
    static_priv: bytes,
    static_pub: bytes,
    ephemeral_pub: bytes,
    enc_static: bytes,
    enc_payload: bytes,
    static_static_for: object = None,
) -> InitiationIn:
    """Responder side. Returns the initiator's static key and the payload.

    static_static_for: optional callable(initiator_static) -> cached DH(s_r, S_i).
    """
    ck, h = ck_h
    h = hash_(h, static_pub)
    ck = kdf1(ck, ephemeral_pub)
    h = hash_(h, ephemeral_pub)
    ck, k = kdf2(ck, _dh(static_priv, ephemeral_pub))
    s_i = _open(k, enc_static, h)
    h = hash_(h, enc_static)
    ss = static_static_for(s_i) if callable(static_static_for) else None
    if ss is None:
        ss = _dh(static_priv, s_i)
    ck, k = kdf2(ck, ss)
    payload = _open(k, enc_payload, h)
    h = hash_(h, enc_payload)
    return InitiationIn(ck, h, s_i, payload)


def create_response(
    *,
    ck: bytes,
    h: bytes,
    ephemeral_priv: bytes,
    initiator_ephemeral: bytes,
    initiator_static: bytes,
    psk: bytes,
    payload: bytes,
) -> ResponseOut:
    e_pub = public_key(ephemeral_priv)
    ck = kdf1(ck, e_pub)
    h = hash_(h, e_pub)
    ck = kdf1(ck, _dh(ephemeral_priv, initiator_ephemeral))
    ck = kdf1(ck, _dh(ephemeral_priv, initiator_static))
    ck, t, k = kdf3(ck, psk)
    h = hash_(h, t)
    enc_payload = aead_encrypt(k, 0, payload, h)
    h = hash_(h, enc_payload)
    return ResponseOut(ck, h, e_pub, enc_payload)


def consume_response(
    *,
    ck: bytes,
    h: bytes,
    ephemeral_priv: bytes,
    static_priv: bytes,
    responder_ephemeral: bytes,
    psk: bytes,
    enc_payload: bytes,
) -> ResponseIn:
    ck = kdf1(ck, responder_ephemeral)
    h = hash_(h, responder_ephemeral)
    ck = kdf1(ck, _dh(ephemeral_priv, responder_ephemeral))
    ck = kdf1(ck, _dh(static_priv, responder_ephemeral))
    ck, t, k = kdf3(ck, psk)
    h = hash_(h, t)
    payload = _open(k, enc_payload, h)
    h = hash_(h, enc_payload)
    return ResponseIn(ck, h, payload)


def transport_keys(ck: bytes) -> tuple[bytes, bytes]:
    """(initiator->responder key, responder->initiator key)."""
    return kdf2(ck, b"")
