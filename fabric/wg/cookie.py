"""mac1/mac2, cookie replies, the under-load rule and the per-source rate limit.

Responder side (``CookieChecker``, one per device): mac1 proves the sender
knows our public key; under load a valid mac2 (keyed by a cookie bound to the
sender's address, rotating every 120 s) is also required, otherwise we answer
with a cookie reply instead of doing DH work.

Initiator side (``CookieGenerator``, one per peer): stamps mac1 on every
handshake message, stores a cookie received in a cookie reply and uses it for
mac2 while it is younger than 120 s.

"Under load": wireguard-go calls a device loaded while its handshake queue
(1024 deep) is at least 1/8 full, and keeps it loaded for 1 s after. This core
has no queue (the I/O layer hands datagrams over one by one), so ``LoadMeter``
counts handshake messages received in the last second and reports loaded once
that count reaches ``threshold`` (default 128 = 1024/8), and for 1 s after.
``force`` overrides it (tests, or an I/O layer that measures its own backlog).
"""

from __future__ import annotations

import collections
import ipaddress
from collections.abc import Callable

from fabric.wg.constants import COOKIE_REFRESH_TIME
from fabric.wg.crypto import InvalidTag, hash_, mac, xaead_decrypt, xaead_encrypt
from fabric.wg.messages import Endpoint, pack_cookie_reply

LABEL_MAC1 = b"mac1----"
LABEL_COOKIE = b"cookie--"
UNDER_LOAD_AFTER_TIME = 1.0
DEFAULT_LOAD_THRESHOLD = 128

# Token bucket: 20 handshakes/s per source address, burst 5.
RATE_PER_SECOND = 20.0
RATE_BURST = 5.0
RATE_GC_AFTER = 1.0


def mac1_key(public_key: bytes) -> bytes:
    return hash_(LABEL_MAC1, public_key)


def cookie_key(public_key: bytes) -> bytes:
    return hash_(LABEL_COOKIE, public_key)


def source_bytes(src: Endpoint) -> bytes:
    """The address+port the cookie is bound to."""
    return ipaddress.ip_address(src[0]).packed + src[1].to_bytes(2, "big")


def rate_key(src: Endpoint) -> bytes:
    """Rate limiting is per IPv4 address / per IPv6 /64, as the kernel does."""
    packed = ipaddress.ip_address(src[0]).packed
    return packed if len(packed) == 4 else packed[:8]


class CookieChecker:
    """Our own side: verifies mac1/mac2 and makes cookie replies."""

    def __init__(self, rng: Callable[[int], bytes]) -> None:
        self._rng = rng
        self._mac1_key = b""
        self._cookie_key = b""
        self._secret = b""
        self._secret_time = float("-inf")

    def set_public_key(self, public_key: bytes | None) -> None:
        if public_key is None:
            self._mac1_key = self._cookie_key = b""
        else:
            self._mac1_key = mac1_key(public_key)
            self._cookie_key = cookie_key(public_key)

    @property
    def ready(self) -> bool:
        return bool(self._mac1_key)

    def check_mac1(self, msg: bytes) -> bool:
        n = len(msg)
        return mac(self._mac1_key, msg[: n - 32]) == msg[n - 32 : n - 16]

    def _cookie(self, src: Endpoint, now: float) -> bytes:
        if now - self._secret_time > COOKIE_REFRESH_TIME:
            self._secret = self._rng(32)
            self._secret_time = now
        return mac(self._secret, source_bytes(src))

    def check_mac2(self, msg: bytes, src: Endpoint, now: float) -> bool:
        if now - self._secret_time > COOKIE_REFRESH_TIME:
            return False  # no live secret -> no cookie we handed out is valid
        n = len(msg)
        return mac(self._cookie(src, now), msg[: n - 16]) == msg[n - 16 :]

    def create_reply(self, msg: bytes, receiver: int, src: Endpoint, now: float) -> bytes:
        n = len(msg)
        nonce = self._rng(24)
        sealed = xaead_encrypt(self._cookie_key, nonce, self._cookie(src, now), msg[n - 32 : n - 16])
        return pack_cookie_reply(receiver, nonce, sealed)


class CookieGenerator:
    """Per peer: macs on our outgoing handshake messages."""

    __slots__ = ("_cookie", "_cookie_key", "_cookie_time", "_last_mac1", "_mac1_key")

    def __init__(self, peer_public_key: bytes) -> None:
        self._mac1_key = mac1_key(peer_public_key)
        self._cookie_key = cookie_key(peer_public_key)
        self._cookie = b""
        self._cookie_time = float("-inf")
        self._last_mac1 = b""

    def add_macs(self, msg: bytearray, now: float) -> None:
        n = len(msg)
        m1 = mac(self._mac1_key, bytes(msg[: n - 32]))
        msg[n - 32 : n - 16] = m1
        self._last_mac1 = m1
        if self._cookie and now - self._cookie_time < COOKIE_REFRESH_TIME:
            msg[n - 16 :] = mac(self._cookie, bytes(msg[: n - 16]))
        else:
            msg[n - 16 :] = bytes(16)

    def consume_reply(self, nonce: bytes, sealed: bytes, now: float) -> bool:
        if not self._last_mac1:
            return False
        try:
            cookie = xaead_decrypt(self._cookie_key, nonce, sealed, self._last_mac1)
        except InvalidTag:
            return False
        self._cookie = cookie
        self._cookie_time = now
        return True


class LoadMeter:
    """Handshake messages per second -> "under load" (see module docstring)."""

    def __init__(self, threshold: int = DEFAULT_LOAD_THRESHOLD) -> None:
        self.threshold = threshold
        self.force: bool | None = None
        self._times: collections.deque[float] = collections.deque()
        self._loaded_until = float("-inf")

    def record(self, now: float) -> None:
        t = self._times
        t.append(now)
        while t and t[0] <= now - 1.0:
            t.popleft()
        if len(t) >= self.threshold:
            self._loaded_until = now + UNDER_LOAD_AFTER_TIME

    def under_load(self, now: float) -> bool:
        if self.force is not None:
            return self.force
        return now < self._loaded_until


class RateLimiter:
    """Per-source token bucket for handshake messages processed under load."""

    def __init__(self, rate: float = RATE_PER_SECOND, burst: float = RATE_BURST) -> None:
        self.rate = rate
        self.burst = burst
        self._buckets: dict[bytes, tuple[float, float]] = {}
        self._last_gc = float("-inf")

    def allow(self, src: Endpoint, now: float) -> bool:
        if now - self._last_gc > RATE_GC_AFTER:
            self._gc(now)
        key = rate_key(src)
        tokens, last = self._buckets.get(key, (self.burst, now))
        tokens = min(self.burst, tokens + (now - last) * self.rate)
        if tokens < 1.0:
            self._buckets[key] = (tokens, now)
            return False
        self._buckets[key] = (tokens - 1.0, now)
        return True

    def _gc(self, now: float) -> None:
        self._last_gc = now
        stale = [k for k, (_, last) in self._buckets.items() if now - last > RATE_GC_AFTER]
        for k in stale:
            del self._buckets[k]

    def __len__(self) -> int:
        return len(self._buckets)
