"""Known-answer tests for the primitives.

Sources: wireguard-go device/kdf_test.go (KDF1/2/3), draft-irtf-cfrg-xchacha-03
section 2.2.1 (HChaCha20) and appendix A.3.1 (XChaCha20-Poly1305), RFC 7748
section 6.1 (X25519), the kernel's drivers/net/wireguard/selftest/counter.c
(replay window), TAI64N per cr.yp.to/libtai/tai64.html with WireGuard's
2^24 ns whitening.
"""

from __future__ import annotations

import pytest
from cryptography.exceptions import InvalidTag

from fabric.wg import crypto, tai64n
from fabric.wg.replay import REJECT_AFTER_MESSAGES, WINDOW_SIZE, ReplayWindow

H = bytes.fromhex

KDF_VECTORS = [
    (
        "746573742d6b6579",
        "746573742d696e707574",
        "6f0e5ad38daba1bea8a0d213688736f19763239305e0f58aba697f9ffc41c633",
        "df1194df20802a4fe594cde27e92991c8cae66c366e8106aaa937a55fa371e8a",
        "fac6e2745a325f5dc5d11a5b165aad08b0ada28e7b4e666b7c077934a4d76c24",
    ),
    (
        "776972656775617264",
        "776972656775617264",
        "491d43bbfdaa8750aaf535e334ecbfe5129967cd64635101c566d4caefda96e8",
        "1e71a379baefd8a79aa4662212fcafe19a23e2b609a3db7d6bcba8f560e3d25f",
        "31e1ae48bddfbe5de38f295e5452b1909a1b4e38e183926af3780b0c1e1f0160",
    ),
    (
        "",
        "",
        "8387b46bf43eccfcf349552a095d8315c4055beb90208fb1be23b894bc2ed5d0",
        "58a0e5f6faefccf4807bff1f05fa8a9217945762040bcec2f4b4a62bdfe0e86e",
        "0ce6ea98ec548f8e281e93e32db65621c45eb18dc6f0a7ad94178610a2f7338e",
    ),
]


@pytest.mark.parametrize(("key", "data", "t0", "t1", "t2"), KDF_VECTORS)
def test_kdf_vectors(key: str, data: str, t0: str, t1: str, t2: str) -> None:
    assert crypto.kdf1(H(key), H(data)) == H(t0)
    assert crypto.kdf2(H(key), H(data)) == (H(t0), H(t1))
    assert crypto.kdf3(H(key), H(data)) == (H(t0), H(t1), H(t2))


def test_hchacha20_vector() -> None:
    key = bytes(range(32))
    nonce = H("000000090000004a0000000031415927")
    assert crypto.hchacha20(key, nonce) == H(
        "82413b4227b27bfed30e42508a877d73a0f9e4d58a74a853c12ec41326d3ecdc"
    )


XCHACHA_PT = (
    b"Ladies and Gentlemen of the class of '99: If I could offer you only one tip "
    b"for the future, sunscreen would be it."
)
XCHACHA_CT = H(
    "bd6d179d3e83d43b9576579493c0e939572a1700252bfaccbed2902c21396cbb"
    "731c7f1b0b4aa6440bf3a82f4eda7e39ae64c6708c54c216cb96b72e1213b452"
    "2f8c9ba40db5d945b11b69b982c1bb9e3f3fac2bc369488f76b2383565d3fff9"
    "21f9664c97637da9768812f615c68b13b52e"
)
XCHACHA_TAG = H("c0875924c1c7987947deafd8780acf49")


def test_xchacha20poly1305_vector() -> None:
    key = bytes(range(0x80, 0xA0))
    nonce = bytes(range(0x40, 0x58))
    aad = H("50515253c0c1c2c3c4c5c6c7")
    sealed = crypto.xaead_encrypt(key, nonce, XCHACHA_PT, aad)
    assert sealed == XCHACHA_CT + XCHACHA_TAG
    assert crypto.xaead_decrypt(key, nonce, sealed, aad) == XCHACHA_PT
    with pytest.raises(InvalidTag):
        crypto.xaead_decrypt(key, nonce, sealed, aad + b"x")


def test_x25519_rfc7748() -> None:
    a = H("77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a")
    b = H("5dab087e624a8a4b79e17f8b83800ee66f3bb1292618b6fd1c2f8b27ff88e0eb")
    assert crypto.public_key(a) == H(
        "8520f0098930a754748b7ddcb43ef75a0dbf3a0d26381af4eba4a98eaa9b4e6a"
    )
    shared = H("4a5d9d5ba4ce2de1728e3bf480350f25e07e21c947d19e3376f09b3c1e161742")
    assert crypto.dh(a, crypto.public_key(b)) == shared == crypto.dh(b, crypto.public_key(a))
    with pytest.raises(ValueError):
        crypto.dh(a, bytes(32))  # low-order point -> all-zero secret refused


def test_aead_nonce_layout() -> None:
    # WireGuard's nonce: 4 zero bytes then the counter as LE u64.
    assert crypto.nonce(1) == H("000000000100000000000000")
    assert crypto.nonce(0x0102030405060708) == H("000000000807060504030201")


def test_mac_is_blake2s_128() -> None:
    import hashlib

    assert crypto.mac(b"k" * 32, b"data") == hashlib.blake2s(
        b"data", key=b"k" * 32, digest_size=16
    ).digest()
    assert len(crypto.hash_(b"")) == 32
    # BLAKE2s-256("abc"), RFC 7693 appendix B
    assert crypto.hash_(b"abc") == H(
        "508c5e8c327c14e2e1a72ba34eeb452f37458b209ed63a294d999b4c86675982"
    )


def test_tai64n_encoding() -> None:
    assert tai64n.encode(0) == H("400000000000000a00000000")
    # 1.5 s: seconds label + 1, nanoseconds rounded down to a multiple of 2^24
    assert tai64n.encode(1.5) == H("400000000000000b") + (486539264).to_bytes(4, "big")
    s = tai64n.encode(1_700_000_000.25)
    assert tai64n.decode(s) == (1_700_000_000, 250_000_000 & ~0xFFFFFF)
    assert tai64n.after(tai64n.encode(10.1), tai64n.encode(10.0))
    assert not tai64n.after(tai64n.encode(10.0), tai64n.encode(10.0))
    # Within one 2^24 ns step the stamp does not change (so it cannot be "after").
    assert tai64n.encode(10.0) == tai64n.encode(10.001)


def _kernel_counter_cases() -> list[list[tuple[int, bool]]]:
    lim = WINDOW_SIZE + 1
    r = REJECT_AFTER_MESSAGES
    first = [
        (0, True), (1, True), (1, False), (9, True), (8, True), (7, True), (7, False),
        (lim, True), (lim - 1, True), (lim - 1, False), (lim - 2, True), (2, True),
        (2, False), (lim + 16, True), (3, False), (lim + 16, False), (lim * 4, True),
        (lim * 4 - (lim - 1), True), (10, False), (lim * 4 - lim, False),
        (lim * 4 - (lim + 1), False), (lim * 4 - (lim - 2), True),
        (lim * 4 + 1 - lim, False), (0, False), (r, False), (r - 1, True), (r, False),
        (r - 1, False), (r - 2, True), (r + 1, False), (r + 2, False), (r - 2, False),
        (r - 3, True), (0, False),
    ]  # fmt: skip
    w = WINDOW_SIZE
    return [
        first,
        [(i, True) for i in range(1, w + 1)] + [(0, True), (0, False)],
        [(i, True) for i in range(2, w + 2)] + [(1, True), (0, False)],
        [(i, True) for i in range(w, -1, -1)],
        [(i, True) for i in range(w + 1, 0, -1)] + [(0, False)],
        [(i, True) for i in range(w, 0, -1)] + [(w + 1, True), (0, False)],
        [(i, True) for i in range(w, 0, -1)] + [(0, True), (w + 1, True)],
    ]


@pytest.mark.parametrize("case", range(7))
def test_replay_window_kernel_selftest(case: int) -> None:
    window = ReplayWindow()
    for num, (n, expect) in enumerate(_kernel_counter_cases()[case], 1):
        assert window.check(n) is expect, f"case {case} step {num}: counter {n}"


def test_replay_window_size() -> None:
    assert WINDOW_SIZE == 8128
    w = ReplayWindow()
    assert w.check(10000)
    assert w.check(10000 - 8128)  # oldest still inside the window
    assert not w.check(10000 - 8129 - 64)
