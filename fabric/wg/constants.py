"""WireGuard's protocol constants (whitepaper section 6, wireguard-go constants.go).

A module of their own, importing nothing: the cookie, the peer and the timers
all need them, and the timers need the peer, so keeping them in ``timers``
made an import circle.
"""

from __future__ import annotations

REKEY_AFTER_MESSAGES = 1 << 60
REJECT_AFTER_MESSAGES = (1 << 64) - (1 << 13) - 1
REKEY_AFTER_TIME = 120.0
REKEY_ATTEMPT_TIME = 90.0
REKEY_TIMEOUT = 5.0
MAX_TIMER_HANDSHAKES = int(REKEY_ATTEMPT_TIME / REKEY_TIMEOUT)  # 18
REKEY_TIMEOUT_JITTER_MAX = 1 / 3  # 0..333 ms
REJECT_AFTER_TIME = 180.0
KEEPALIVE_TIMEOUT = 10.0
COOKIE_REFRESH_TIME = 120.0
HANDSHAKE_INITIATION_RATE = 0.020  # 20 ms flood guard
MAX_STAGED_PACKETS = 128
# The initiator starts a new handshake this early before its receive key dies,
# so it does not fall silent when traffic is one-way.
LAST_MINUTE_HANDSHAKE_AGE = REJECT_AFTER_TIME - KEEPALIVE_TIMEOUT - REKEY_TIMEOUT
ZERO_KEYS_AFTER = REJECT_AFTER_TIME * 3
