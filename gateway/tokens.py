"""Peering tokens: one pasteable line from gateway B that lets gateway A peer with it.

Format: ``cw1.<base64url(JSON)>`` with fields

- ``u``: B's peering URL (written ``http://``: a gateway from before TLS
  then gets a plain-HTTP "upgrade" answer; upgraded ones always use https and
  ``f``), ``c``: B's cluster ID, ``k``: B's WireGuard public key
  (A pins it: the exchange fails if B answers with another key),
- ``i``: token ID, ``s``: 32 random bytes (base64url), ``e``: expiry (unix time),
- ``f``: the pin of B's peering listener certificate (see :mod:`gateway.tlsid`;
  A talks to ``u`` over TLS and accepts only that key; tokens from before TLS
  lack it and are refused by ``peer add``),
- ``t``: a tag, HMAC(secret, fields without ``f``), so a corrupted or edited
  line is caught locally before anything is sent (and a gateway from before
  TLS still reads the token, to be told to upgrade), ``h``: the same over the
  fields with ``f``.

B keeps only ``verifier(secret)`` (a one-way HMAC of the secret), never the
secret. Both peering directions are authenticated with keys derived from the
verifier (see :mod:`gateway.peering`), so the line printed once is the only
place the secret ever exists.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
from dataclasses import dataclass, field

PREFIX = "cw1."


class TokenError(ValueError):
    """A token that is malformed, tampered, expired, used or foreign."""


def b64e(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def b64d(text: str) -> bytes:
    if not isinstance(text, str):
        raise ValueError("not a string")
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def verifier(secret: bytes) -> bytes:
    """What B stores: a one-way function of the secret, the root of the peering keys."""
    return hmac.new(secret, b"crosswire token verifier v1", hashlib.sha256).digest()


@dataclass(frozen=True)
class Token:
    url: str
    cluster_id: str
    public_key: str
    token_id: str
    expires: float
    secret: bytes = field(repr=False)
    tls_pin: str | None = None  # None: a token from a gateway without TLS peering

    def _fields(self, with_pin: bool = False) -> bytes:
        pin = [self.tls_pin] if with_pin else []
        return json.dumps([self.url, self.cluster_id, self.public_key, self.token_id, self.expires, *pin],
                          separators=(",", ":")).encode()

    def encode(self) -> str:
        tag = hmac.new(self.secret, self._fields(), hashlib.sha256).digest()[:16]
        doc = {"u": self.url, "c": self.cluster_id, "k": self.public_key, "i": self.token_id,
               "e": self.expires, "s": b64e(self.secret), "t": b64e(tag)}
        if self.tls_pin is not None:
            doc["f"] = self.tls_pin
            doc["h"] = b64e(hmac.new(self.secret, self._fields(True), hashlib.sha256).digest()[:16])
        return PREFIX + b64e(json.dumps(doc, separators=(",", ":")).encode())

    @property
    def verifier(self) -> bytes:
        return verifier(self.secret)


def new_token(url: str, cluster_id: str, public_key: str, *, ttl: float, now: float,
              tls_pin: str | None = None) -> Token:
    return Token(url=url, cluster_id=cluster_id, public_key=public_key,
                 token_id=b64e(secrets.token_bytes(9)), expires=now + ttl,
                 secret=secrets.token_bytes(32), tls_pin=tls_pin)


def decode(text: str, *, now: float | None = None) -> Token:
    """Parse and integrity-check a token line; if ``now`` is given, also reject it when expired."""
    text = text.strip()
    if not text.startswith(PREFIX):
        raise TokenError("not a crosswire token (expected it to start with 'cw1.')")
    try:
        doc = json.loads(b64d(text[len(PREFIX):]))
        tok = Token(url=str(doc["u"]), cluster_id=str(doc["c"]), public_key=str(doc["k"]),
                    token_id=str(doc["i"]), expires=float(doc["e"]), secret=b64d(doc["s"]),
                    tls_pin=None if doc.get("f") is None else str(doc["f"]))
        tag = b64d(doc["t"])
        pin_tag = b64d(doc["h"]) if tok.tls_pin is not None else b""
    except (ValueError, KeyError, TypeError):
        raise TokenError("token is malformed (truncated or edited?)") from None
    if len(tok.secret) != 32:
        raise TokenError("token is malformed (bad secret length)")
    want = hmac.new(tok.secret, tok._fields(), hashlib.sha256).digest()[:16]
    if not hmac.compare_digest(want, tag):
        raise TokenError("token is tampered (integrity check failed)")
    if tok.tls_pin is not None and not hmac.compare_digest(
            hmac.new(tok.secret, tok._fields(True), hashlib.sha256).digest()[:16], pin_tag):
        raise TokenError("token is tampered (integrity check failed)")
    if now is not None and now >= tok.expires:
        raise TokenError("token has expired")
    return tok


@dataclass(frozen=True)
class TokenRecord:
    """B's stored view of a token it issued (no secret)."""

    token_id: str
    verifier: bytes = field(repr=False)
    created: float
    expires: float
    reusable: bool
    uses: int = 0


def check_usable(rec: TokenRecord | None, now: float) -> TokenRecord:
    """B's checks before honouring a join: known, not expired, not used up."""
    if rec is None:
        raise TokenError("unknown token (issued by another gateway, or revoked)")
    if now >= rec.expires:
        raise TokenError("token has expired")
    if not rec.reusable and rec.uses > 0:
        raise TokenError("token was already used")
    return rec


MAX_TTL = 365 * 86400


def parse_duration(text: str) -> float:
    """'90s', '15m', '1h', '7d' or plain seconds -> seconds."""
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    t = text.strip().lower()
    try:
        value = float(t[:-1]) * units[t[-1]] if t and t[-1] in units else float(t)
    except ValueError:
        raise ValueError(f"invalid duration {text!r} (use e.g. 90s, 15m, 1h, 7d)") from None
    if not value > 0:
        raise ValueError(f"invalid duration {text!r}: must be positive")
    # Also refuses inf/1e999: a token must expire (and the expiry must stay a number).
    if not value <= MAX_TTL:
        raise ValueError(f"invalid duration {text!r}: at most {MAX_TTL // 86400} days")
    return value
