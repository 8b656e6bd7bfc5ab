"""Who the DNS listener answers: never a peer, and each source at a bounded rate (sans-IO).

A peer's packets reach the gateway pod's own address through its view of our
pods; its source then lies in one of our views of it. Those queries are
dropped (the imported names are this cluster's, and a peer must not learn
another peer's exports or enumerate our namespaces). Every other source gets a
token bucket (``rate`` queries per second, ``burst`` at once): one pod
flooding the listener cannot starve the others. The table of sources is
bounded; the least recently seen is forgotten first.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field

RATE = 200.0  # queries per second per source, sustained
BURST = 400.0
MAX_SOURCES = 4096


@dataclass
class SourceLimiter:
    rate: float = RATE
    burst: float = BURST
    max_sources: int = MAX_SOURCES
    from_peer: Callable[[str], bool] = lambda source: False
    _buckets: OrderedDict[str, tuple[float, float]] = field(default_factory=OrderedDict)  # tokens, last

    def verdict(self, source: str, now: float) -> str:
        """``ok``, ``peer`` (a peer's source: drop) or ``rate`` (over its rate: drop)."""
        if self.from_peer(source):
            return "peer"
        tokens, last = self._buckets.pop(source, (self.burst, now))
        tokens = min(self.burst, tokens + (now - last) * self.rate)
        ok = tokens >= 1.0
        self._buckets[source] = (tokens - 1.0 if ok else tokens, now)
        if len(self._buckets) > self.max_sources:
            self._buckets.popitem(last=False)
        return "ok" if ok else "rate"
