from __future__ import annotations

import base64

import pytest

from gateway.tokens import (
    Token,
    TokenError,
    TokenRecord,
    b64d,
    b64e,
    check_usable,
    decode,
    new_token,
    parse_duration,
    verifier,
)

NOW = 1_800_000_000.0
KEY = base64.b64encode(b"\x05" * 32).decode()


def make() -> Token:
    return new_token("http://gpu:8080", "gpu", KEY, ttl=3600, now=NOW)


def test_roundtrip_and_one_line() -> None:
    t = make()
    text = t.encode()
    assert text.startswith("cw1.") and "\n" not in text and " " not in text
    back = decode(text, now=NOW)
    assert back == t and back.secret == t.secret and len(t.secret) == 32
    assert b64e(t.secret) not in repr(t)


def test_expiry() -> None:
    t = make()
    decode(t.encode(), now=NOW + 3599)
    with pytest.raises(TokenError, match="expired"):
        decode(t.encode(), now=NOW + 3600)


def test_tampering_detected_in_every_field() -> None:
    import json
    t = make()
    doc = json.loads(b64d(t.encode()[4:]))
    for field, value in (("u", "http://evil:8080"), ("c", "evil"), ("k", base64.b64encode(b"\x06" * 32).decode()),
                         ("i", "other"), ("e", NOW + 10**9)):
        forged = "cw1." + b64e(json.dumps({**doc, field: value}).encode())
        with pytest.raises(TokenError, match="tampered"):
            decode(forged)
    with pytest.raises(TokenError, match="malformed"):
        decode(t.encode()[:-10])
    with pytest.raises(TokenError, match="not a crosswire token"):
        decode("hello")


def test_store_side_checks() -> None:
    t = make()
    rec = TokenRecord(t.token_id, verifier(t.secret), NOW, t.expires, reusable=False)
    assert rec.verifier != t.secret and t.secret not in rec.verifier
    check_usable(rec, NOW)
    with pytest.raises(TokenError, match="already used"):
        check_usable(TokenRecord(t.token_id, rec.verifier, NOW, t.expires, False, uses=1), NOW)
    check_usable(TokenRecord(t.token_id, rec.verifier, NOW, t.expires, True, uses=5), NOW)
    with pytest.raises(TokenError, match="expired"):
        check_usable(rec, t.expires)
    with pytest.raises(TokenError, match="unknown token"):
        check_usable(None, NOW)


def test_durations() -> None:
    assert parse_duration("1h") == 3600 and parse_duration("90s") == 90
    assert parse_duration("15m") == 900 and parse_duration("2d") == 172800 and parse_duration("30") == 30
    assert parse_duration("365d") == 365 * 86400
    for badv in ("", "h", "-1h", "0", "1y", "inf", "Infinity", "1e999", "nan", "366d", "-inf"):
        with pytest.raises(ValueError):
            parse_duration(badv)
