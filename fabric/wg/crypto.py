"""WireGuard's cryptographic primitives, built on hashlib and `cryptography`.

HASH/MAC/HMAC are BLAKE2s (hashlib); KDF1/2/3 are WireGuard's HKDF over
HMAC-BLAKE2s; DH is X25519; AEAD is ChaCha20-Poly1305 with the 4-zero-byte +
LE u64 nonce. `cryptography` has no XChaCha20-Poly1305, so HChaCha20 is derived
from one ChaCha20 keystream block: the block is permute(state) + state, and
HChaCha20 is words 0-3 and 12-15 of permute(state), so we subtract the known
input words back out.
"""

from __future__ import annotations

import hashlib
import hmac
import struct

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers import Cipher
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from cryptography.hazmat.primitives.ciphers.algorithms import ChaCha20
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    NoEncryption,
    PrivateFormat,
    PublicFormat,
)

__all__ = [
    "AEAD_TAG",
    "KEY_LEN",
    "InvalidTag",
    "aead_decrypt",
    "aead_encrypt",
    "dh",
    "hash_",
    "hchacha20",
    "hmac_",
    "kdf1",
    "kdf2",
    "kdf3",
    "mac",
    "public_key",
    "xaead_decrypt",
    "xaead_encrypt",
]

KEY_LEN = 32
AEAD_TAG = 16
_ZERO4 = b"\x00\x00\x00\x00"
_SIGMA = struct.unpack("<4I", b"expand 32-byte k")
_ZERO64 = bytes(64)


def hash_(*parts: bytes) -> bytes:
    h = hashlib.blake2s()
    for p in parts:
        h.update(p)
    return h.digest()


def mac(key: bytes, data: bytes) -> bytes:
    """Keyed BLAKE2s-128 (mac1/mac2/cookie)."""
    return hashlib.blake2s(data, digest_size=16, key=key).digest()


def hmac_(key: bytes, data: bytes) -> bytes:
    return hmac.new(key, data, hashlib.blake2s).digest()


def kdf1(key: bytes, data: bytes) -> bytes:
    t0 = hmac_(key, data)
    return hmac_(t0, b"\x01")


def kdf2(key: bytes, data: bytes) -> tuple[bytes, bytes]:
    t0 = hmac_(key, data)
    t1 = hmac_(t0, b"\x01")
    t2 = hmac_(t0, t1 + b"\x02")
    return t1, t2


def kdf3(key: bytes, data: bytes) -> tuple[bytes, bytes, bytes]:
    t0 = hmac_(key, data)
    t1 = hmac_(t0, b"\x01")
    t2 = hmac_(t0, t1 + b"\x02")
    t3 = hmac_(t0, t2 + b"\x03")
    return t1, t2, t3


def public_key(private: bytes) -> bytes:
    return (
        X25519PrivateKey.from_private_bytes(private)
        .public_key()
        .public_bytes(Encoding.Raw, PublicFormat.Raw)
    )


def clamp(private: bytes) -> bytes:
    """RFC 7748 clamping, as `wg genkey` does (X25519 clamps internally anyway)."""
    b = bytearray(private)
    b[0] &= 248
    b[31] = (b[31] & 127) | 64
    return bytes(b)


def private_bytes(key: X25519PrivateKey) -> bytes:
    return key.private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption())


def dh(private: bytes, public: bytes) -> bytes:
    """X25519. Raises ValueError on an all-zero result (low-order point)."""
    return X25519PrivateKey.from_private_bytes(private).exchange(
        X25519PublicKey.from_public_bytes(public)
    )


def nonce(counter: int) -> bytes:
    return _ZERO4 + counter.to_bytes(8, "little")


def aead_encrypt(key: bytes, counter: int, plaintext: bytes, ad: bytes) -> bytes:
    return ChaCha20Poly1305(key).encrypt(nonce(counter), plaintext, ad)


def aead_decrypt(key: bytes, counter: int, ciphertext: bytes, ad: bytes) -> bytes:
    """Raises InvalidTag on authentication failure."""
    return ChaCha20Poly1305(key).decrypt(nonce(counter), ciphertext, ad)


def hchacha20(key: bytes, nonce16: bytes) -> bytes:
    """HChaCha20 (draft-irtf-cfrg-xchacha section 2.2) from one ChaCha20 block."""
    # cryptography's ChaCha20 takes a 16-byte "nonce" = LE block counter + 96-bit
    # nonce, i.e. exactly state words 12..15, which is where HChaCha20 puts its input.
    enc = Cipher(ChaCha20(key, nonce16), mode=None).encryptor()
    block = struct.unpack("<16I", enc.update(_ZERO64))
    inp = struct.unpack("<4I", nonce16)
    out = [(block[i] - _SIGMA[i]) & 0xFFFFFFFF for i in range(4)]
    out += [(block[12 + i] - inp[i]) & 0xFFFFFFFF for i in range(4)]
    return struct.pack("<8I", *out)


def _xkey_nonce(key: bytes, nonce24: bytes) -> tuple[bytes, bytes]:
    if len(nonce24) != 24:
        raise ValueError("XChaCha20 nonce must be 24 bytes")
    return hchacha20(key, nonce24[:16]), _ZERO4 + nonce24[16:]


def xaead_encrypt(key: bytes, nonce24: bytes, plaintext: bytes, ad: bytes) -> bytes:
    subkey, n = _xkey_nonce(key, nonce24)
    return ChaCha20Poly1305(subkey).encrypt(n, plaintext, ad)


def xaead_decrypt(key: bytes, nonce24: bytes, ciphertext: bytes, ad: bytes) -> bytes:
    subkey, n = _xkey_nonce(key, nonce24)
    return ChaCha20Poly1305(subkey).decrypt(n, ciphertext, ad)
