"""Per-peer state: keypairs (previous/current/next), the pending handshake,
timer deadlines, stats. Data only: device.py, handshake.py and timers.py act on it."""

from __future__ import annotations

import base64
import collections
import struct
from typing import NamedTuple

from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

from fabric.wg.constants import LAST_MINUTE_HANDSHAKE_AGE, REJECT_AFTER_TIME, REKEY_AFTER_TIME
from fabric.wg.cookie import CookieGenerator
from fabric.wg.messages import Endpoint
from fabric.wg.replay import ReplayWindow


class Pending(NamedTuple):
    """Our initiation awaiting its response (handshake.py makes and consumes it)."""

    local_index: int
    ephemeral_priv: bytes
    ck: bytes
    h: bytes

    def __repr__(self) -> str:  # ephemeral key / chaining key are key material
        return f"Pending(local={self.local_index:#x})"


class Keypair:
    """One direction pair of transport keys. Raw keys are not kept: only the
    AEAD objects (reused for every packet) hold them."""

    __slots__ = (
        "created",
        "fast_until",
        "hdr_prefix",
        "is_initiator",
        "last_minute_at",
        "local_index",
        "peer",
        "recv",
        "reject_at",
        "remote_index",
        "replay",
        "send",
        "send_counter",
    )

    def __init__(
        self,
        peer: Peer,
        send_key: bytes,
        recv_key: bytes,
        local_index: int,
        remote_index: int,
        is_initiator: bool,
        created: float,
    ) -> None:
        self.peer = peer
        self.send = ChaCha20Poly1305(send_key)
        self.recv = ChaCha20Poly1305(recv_key)
        self.send_counter = 0
        self.replay = ReplayWindow()
        self.local_index = local_index
        self.remote_index = remote_index
        self.hdr_prefix = struct.pack("<II", 4, remote_index)  # transport type + receiver
        self.is_initiator = is_initiator
        self.created = created
        # Until then the sender needs no freshness checks per packet: the initiator
        # rekeys after REKEY_AFTER_TIME, anyone stops at REJECT_AFTER_TIME.
        self.fast_until = created + (REKEY_AFTER_TIME if is_initiator else REJECT_AFTER_TIME)
        self.reject_at = created + REJECT_AFTER_TIME
        # Receiving side: the initiator renews this long before its key dies.
        self.last_minute_at = (
            created + LAST_MINUTE_HANDSHAKE_AGE if is_initiator else float("inf")
        )

    def take_run(self, n: int) -> int:
        """The first send counter for a batched run of up to ``n`` packets; the run
        reports the next unused one to ``end_run`` (shared.SharedKeypair takes all
        ``n`` at once instead)."""
        return self.send_counter

    def end_run(self, counter: int) -> None:
        self.send_counter = counter

    def __repr__(self) -> str:
        return f"Keypair(local={self.local_index:#x}, remote={self.remote_index:#x}, initiator={self.is_initiator})"


class Peer:
    def __init__(self, public_key: bytes) -> None:
        self.public_key = public_key
        self.preshared_key = bytes(32)
        self.endpoint: Endpoint | None = None
        self.persistent_keepalive = 0
        self.static_static: bytes | None = None  # DH(our private, their public), cached
        self.cookie = CookieGenerator(public_key)

        # handshake
        self.handshake: Pending | None = None  # our initiation awaiting a response
        self.last_timestamp = bytes(12)
        self.last_initiation_consumed = float("-inf")
        self.last_sent_handshake = float("-inf")
        self.handshake_attempts = 0
        self.sent_last_minute_handshake = False
        self.need_another_keepalive = False

        # keypairs
        self.previous: Keypair | None = None
        self.current: Keypair | None = None
        self.next: Keypair | None = None

        self.staged: collections.deque[bytes] = collections.deque()

        # timers (monotonic deadlines)
        self.t_retransmit: float | None = None
        self.t_send_keepalive: float | None = None
        self.t_new_handshake: float | None = None
        self.t_zero_keys: float | None = None
        self.t_persistent_keepalive: float | None = None

        # stats
        self.rx_bytes = 0
        self.tx_bytes = 0
        self.last_handshake_ns = 0  # unix time; 0 = never

    def next_deadline(self) -> float | None:
        best: float | None = None
        for t in (
            self.t_retransmit,
            self.t_send_keepalive,
            self.t_new_handshake,
            self.t_zero_keys,
            self.t_persistent_keepalive,
        ):
            if t is not None and (best is None or t < best):
                best = t
        return best

    def __repr__(self) -> str:
        # Public key only (never psk / keys).
        return f"Peer({base64.b64encode(self.public_key).decode()[:8]}…)"
