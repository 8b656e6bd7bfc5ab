"""Known answers for the handshake: the cacophony Noise_IKpsk2_25519_ChaChaPoly_BLAKE2s
vector (haskell-cryptography/cacophony vectors/cacophony.txt), run through our
prologue parameter with the vector's own prologue, and the WireGuard
construction/identifier hashes."""

from __future__ import annotations

from fabric.wg import noise
from fabric.wg.crypto import aead_decrypt, aead_encrypt, hash_, public_key

H = bytes.fromhex
PROLOGUE = H("4a6f686e2047616c74")  # "John Galt"
PSK = H("54686973206973206d7920417573747269616e20706572737065637469766521")
INIT_STATIC = H("e61ef9919cde45dd5f82166404bd08e38bceb5dfdfded0a34c8df7ed542214d1")
INIT_EPHEMERAL = H("893e28b9dc6ca8d611ab664754b8ceb7bac5117349a4439a6b0569da977c464a")
INIT_REMOTE_STATIC = H("31e0303fd6418d2f8c0e78b91f22e8caed0fbe48656dcf4767e4834f701b8f62")
RESP_STATIC = H("4a3acbfdb163dec651dfa3194dece676d437029c62a408b4c5ea9114246e4893")
RESP_EPHEMERAL = H("bbdb4cdbd309f1a1f2e1456967fe288cadd6f712d65dc7b7793d5e63da6b375b")
HANDSHAKE_HASH = H("f5191b875290abcd41347ac3622d9679688a7e980229cb937ef748336cfde0e5")
MESSAGES = [
    (
        "4c756477696720766f6e204d69736573",
        "ca35def5ae56cec33dc2036731ab14896bc4c75dbb07a61f879f8e3afa4c7944001e21de9f98ddd8e2ad57527207feb56253c9c94a9e496782ecfcb2a75fbcaf1b52948cc48daefe660c62119ab5000980c84831215f2441eba616548e832985464cf17e51ee93109008399a21f7e13f",
    ),
    (
        "4d757272617920526f746862617264",
        "95ebc60d2b1fa672c1f46a8aa265ef51bfe38e7ccb39ec5be34069f144808843cb765f2caef0751b8f007572dab0322217755c0632f365717edbf34d33e87a",
    ),
    ("462e20412e20486179656b", "8153ca9833bc3c1b91a7e66e5f4d4f5b59bf9e64c2f20d15f0bba7"),
    ("4361726c204d656e676572", "07af0c9c86e1b4e80f36b04ff7688d51141af3debd0332f0a705ef"),
    (
        "4a65616e2d426170746973746520536179",
        "6ab1467c0448cc78394494abaaf23afce0e234315d6e2624dcbfa8a21c1c4d073d",
    ),
    (
        "457567656e2042f6686d20766f6e2042617765726b",
        "dfc346c0d2296ae6cf1acf6f12b8456a1dba228cf8d8b774aacf1c47fc53aa80ebc7a4c292",
    ),
]


def test_vector_remote_static_matches() -> None:
    assert public_key(RESP_STATIC) == INIT_REMOTE_STATIC


def test_cacophony_ikpsk2_initiator_and_responder() -> None:
    ck_h = noise.initial_hash(PROLOGUE)
    p1, c1 = (H(x) for x in MESSAGES[0])
    out = noise.create_initiation(
        ck_h=ck_h,
        static_priv=INIT_STATIC,
        static_pub=public_key(INIT_STATIC),
        remote_static=INIT_REMOTE_STATIC,
        ephemeral_priv=INIT_EPHEMERAL,
        payload=p1,
    )
    assert out.ephemeral_pub + out.enc_static + out.enc_payload == c1

    got = noise.consume_initiation(
        ck_h=ck_h,
        static_priv=RESP_STATIC,
        static_pub=INIT_REMOTE_STATIC,
        ephemeral_pub=c1[:32],
        enc_static=c1[32:80],
        enc_payload=c1[80:],
    )
    assert got.payload == p1
    assert got.initiator_static == public_key(INIT_STATIC)
    assert (got.ck, got.h) == (out.ck, out.h)

    p2, c2 = (H(x) for x in MESSAGES[1])
    resp = noise.create_response(
        ck=got.ck,
        h=got.h,
        ephemeral_priv=RESP_EPHEMERAL,
        initiator_ephemeral=out.ephemeral_pub,
        initiator_static=got.initiator_static,
        psk=PSK,
        payload=p2,
    )
    assert resp.ephemeral_pub + resp.enc_payload == c2
    assert resp.h == HANDSHAKE_HASH

    back = noise.consume_response(
        ck=out.ck,
        h=out.h,
        ephemeral_priv=INIT_EPHEMERAL,
        static_priv=INIT_STATIC,
        responder_ephemeral=c2[:32],
        psk=PSK,
        enc_payload=c2[32:],
    )
    assert back.payload == p2
    assert back.h == HANDSHAKE_HASH
    assert back.ck == resp.ck

    # Transport: messages alternate initiator -> responder, responder -> initiator.
    k_i, k_r = noise.transport_keys(back.ck)
    counters = [0, 0]
    for i, (p, c) in enumerate(MESSAGES[2:]):
        who = i % 2
        key = (k_i, k_r)[who]
        assert aead_encrypt(key, counters[who], H(p), b"") == H(c)
        assert aead_decrypt(key, counters[who], H(c), b"") == H(p)
        counters[who] += 1


def test_wireguard_construction_hashes() -> None:
    # Ci and Hi as published (e.g. rustyguard's CONSTRUCTION_HASH/IDENTIFIER_HASH).
    ci = hash_(noise.CONSTRUCTION)
    assert list(ci[:6]) == [96, 226, 109, 174, 243, 39]
    ck, hi = noise.initial_hash()
    assert ck == ci
    assert list(hi[:6]) == [34, 17, 179, 97, 8, 26]
