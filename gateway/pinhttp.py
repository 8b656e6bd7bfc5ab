"""One HTTPS POST to a peer's peering listener, accepting only a pinned certificate.

The pin (see :mod:`gateway.tlsid`) is checked right after the TLS handshake
and before one byte of the request is written: a listener presenting another
key never sees the request. No CA, no host name: the pin is the identity.
With no pins at all (a peering made before TLS, see gateway/DESIGN.md,
"Transport security") the certificate is not checked; the channel's own MAC
still authenticates both ends, and the first reply tells us the pin.

One connection per request (``Connection: close``): peering messages are
rare, and a fresh handshake each time means a rotated certificate is seen at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import ssl
import urllib.parse
from typing import Any

from gateway.tlsid import pin_of_cert

MAX_ANSWER = 1 << 20  # a peering answer is a few KiB


class PinError(ConnectionError):
    """The peer's certificate is not the pinned one."""


def _client_context() -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE  # the pin below is the check
    return ctx


_CTX: ssl.SSLContext | None = None


async def post(url: str, body: dict[str, Any], pins: tuple[str, ...], timeout: float = 10.0
               ) -> tuple[int, str, Any]:
    """POST ``body`` as JSON; (status, reason, decoded JSON or None). Raises OSError,
    TimeoutError, PinError (wrong certificate) or ValueError (not HTTP)."""
    global _CTX
    if _CTX is None:
        _CTX = _client_context()
    u = urllib.parse.urlsplit(url)
    if u.scheme != "https" or not u.hostname:
        raise ValueError(f"{url!r} is not an https URL")
    port = u.port or 443
    async with asyncio.timeout(timeout):
        reader, writer = await asyncio.open_connection(u.hostname, port, ssl=_CTX, server_hostname=None,
                                                       ssl_handshake_timeout=timeout)
        try:
            if pins:
                der = writer.get_extra_info("ssl_object").getpeercert(binary_form=True)
                got = pin_of_cert(der) if der else "none"
                if not any(hmac.compare_digest(got, p) for p in pins):
                    raise PinError(f"the peering listener at {u.netloc} presented a certificate with key "
                                   f"fingerprint {got}, not the pinned {' or '.join(pins)}")
            payload = json.dumps(body, separators=(",", ":")).encode()
            head = (f"POST {u.path or '/'} HTTP/1.1\r\nHost: {u.netloc}\r\nConnection: close\r\n"
                    f"Content-Type: application/json\r\nAccept: application/json\r\n"
                    f"Content-Length: {len(payload)}\r\n\r\n")
            writer.write(head.encode() + payload)
            await writer.drain()
            raw = await reader.read(MAX_ANSWER + 65536)
            while True:
                more = await reader.read(65536)
                if not more:
                    break
                raw += more
                if len(raw) > MAX_ANSWER + 65536:
                    raise ValueError("answer too large")
        finally:
            writer.close()
            with contextlib.suppress(OSError, ssl.SSLError):  # the peer closing first is normal here
                await writer.wait_closed()
    status, reason, data = parse_response(raw)
    try:
        return status, reason, json.loads(data) if data else None
    except ValueError:
        return status, reason, None


def parse_response(raw: bytes) -> tuple[int, str, bytes]:
    """Status, reason and body of a complete HTTP/1.1 answer (Content-Length or chunked)."""
    head, sep, rest = raw.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ", 2)
    if not sep or len(parts) < 2 or not parts[0].startswith("HTTP/") or not parts[1].isdigit():
        raise ValueError("the answer is not HTTP")
    fields = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    if fields.get("transfer-encoding", "").lower() == "chunked":
        out, pos = [], 0
        while True:
            end = rest.index(b"\r\n", pos)
            size = int(rest[pos:end].split(b";")[0], 16)
            if size == 0:
                break
            out.append(rest[end + 2: end + 2 + size])
            pos = end + 2 + size + 2
        rest = b"".join(out)
    elif "content-length" in fields:
        rest = rest[: int(fields["content-length"])]
    return int(parts[1]), parts[2] if len(parts) > 2 else "", rest
