"""WireGuard message layouts (all integers little-endian; the type is a u32
whose top three bytes are zero, so a datagram is classified by its first 4 bytes).

  1 initiation  148 B: type, sender, ephemeral[32], static[32+16], timestamp[12+16], mac1, mac2
  2 response     92 B: type, sender, receiver, ephemeral[32], empty[0+16], mac1, mac2
  3 cookie reply 64 B: type, receiver, nonce[24], cookie[16+16]
  4 transport  >=32 B: type, receiver, counter u64, packet[n+16]
"""

from __future__ import annotations

import struct
from typing import NamedTuple

INITIATION = 1
RESPONSE = 2
COOKIE_REPLY = 3
TRANSPORT = 4

# A UDP address: (host, port), or (host, port, local) when the I/O layer knows the
# local address the datagram arrived at (``local``: packed, 4 or 16 bytes). Replies
# to a peer leave from that address (the kernel's "sticky source"); a 2-tuple lets
# the kernel pick. The core treats ``local`` as part of the endpoint: a datagram
# to another of our addresses is a roam like any other.
Endpoint = tuple[str, int] | tuple[str, int, bytes]

INITIATION_SIZE = 148
RESPONSE_SIZE = 92
COOKIE_REPLY_SIZE = 64

# The first 4 bytes of each message as one LE u32 (so b"\x01\x00\x00\x00" etc.).
TYPE_INITIATION = struct.pack("<I", INITIATION)
TYPE_RESPONSE = struct.pack("<I", RESPONSE)
TYPE_COOKIE_REPLY = struct.pack("<I", COOKIE_REPLY)
TYPE_TRANSPORT = struct.pack("<I", TRANSPORT)

_INIT = struct.Struct("<II32s48s28s16s16s")
_RESP = struct.Struct("<III32s16s16s16s")
_COOKIE = struct.Struct("<II24s32s")
TRANSPORT_HEADER = struct.Struct("<IIQ")


class Initiation(NamedTuple):
    sender: int
    ephemeral: bytes
    static: bytes
    timestamp: bytes
    mac1: bytes
    mac2: bytes


class Response(NamedTuple):
    sender: int
    receiver: int
    ephemeral: bytes
    empty: bytes
    mac1: bytes
    mac2: bytes


class CookieReply(NamedTuple):
    receiver: int
    nonce: bytes
    cookie: bytes


def pack_initiation(sender: int, ephemeral: bytes, static: bytes, timestamp: bytes) -> bytearray:
    """Without macs (zeroed): the caller fills them via cookie.add_macs."""
    return bytearray(_INIT.pack(INITIATION, sender, ephemeral, static, timestamp, bytes(16), bytes(16)))


def unpack_initiation(data: bytes) -> Initiation:
    _, *rest = _INIT.unpack(data)
    return Initiation(*rest)


def pack_response(sender: int, receiver: int, ephemeral: bytes, empty: bytes) -> bytearray:
    return bytearray(_RESP.pack(RESPONSE, sender, receiver, ephemeral, empty, bytes(16), bytes(16)))


def unpack_response(data: bytes) -> Response:
    _, *rest = _RESP.unpack(data)
    return Response(*rest)


def pack_cookie_reply(receiver: int, nonce: bytes, cookie: bytes) -> bytes:
    return _COOKIE.pack(COOKIE_REPLY, receiver, nonce, cookie)


def unpack_cookie_reply(data: bytes) -> CookieReply:
    _, *rest = _COOKIE.unpack(data)
    return CookieReply(*rest)
