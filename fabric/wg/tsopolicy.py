"""When the TUN's TSO offload pays: a pure decision over the last second's reads
(crosswire-wg's default where numpy is installed; ``--tso`` / ``--no-tso`` fix it).

With TSO the kernel hands over TCP super-packets: one read and one vectorised split
(fabric.wg.offload.gso_split) for up to ~45 segments. The kernel grants TSO only
together with the checksum offload, so every other packet the local stack sends
(UDP above all) then arrives with a partial checksum that Python completes at
~2-3 us, where the kernel took ~0.1 us. A super-packet saves ~20 us of reads, so
the offload goes off when partial packets outnumber super-packets ``OFF_RATIO``
to one (and are more than ``MIN_PARTIAL`` a second), and is tried again after
``RETRY_AFTER`` seconds: a mix that still does not pay turns it off within a
second, at most one second in ``RETRY_AFTER`` at the slower setting.
"""

from __future__ import annotations

from dataclasses import dataclass

MIN_PARTIAL = 1000  # per interval; fewer cost little either way
OFF_RATIO = 8  # ~20 us saved by a super-packet / ~2.5 us lost per partial packet
RETRY_AFTER = 30.0


@dataclass
class TsoPolicy:
    on: bool = True
    retry_at: float = 0.0

    def update(self, supers: int, partials: int, now: float) -> bool | None:
        """Reads of the last interval: ``supers`` super-packets, ``partials`` single
        packets with a partial checksum. Returns the new setting when it changes."""
        if self.on:
            if partials >= MIN_PARTIAL and partials > OFF_RATIO * supers:
                self.on = False
                self.retry_at = now + RETRY_AFTER
                return False
        elif now >= self.retry_at:
            self.on = True
            return True
        return None
