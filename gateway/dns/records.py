"""What the DNS answers from: a snapshot of the services peers export to us.

The snapshot is a tuple of ``gateway.exports.imports.ImportedService`` (the imports
read model: what the peering channel brought in, translated into our views),
taken whenever the DNS server asks. ``ImportsSnapshot`` keeps it for a moment
because the server asks on every query and the imports live in the state
database.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from gateway.exports.imports import ImportedService

__all__ = ["EMPTY", "ImportedService", "ImportsSnapshot", "Snapshot"]

Snapshot = tuple[ImportedService, ...]
EMPTY: Snapshot = ()
MAX_AGE = 0.25  # s; the imports change at most once per exports sync pass (0.5 s)


class ImportsSnapshot:
    """``source()`` (e.g. ``ReadModel.imported_services``) read at most every ``max_age``
    seconds; the same tuple object while nothing changed, so the answer core
    re-indexes only on a change."""

    def __init__(self, source: Callable[[], Snapshot], max_age: float = MAX_AGE,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.source = source
        self.max_age = max_age
        self.clock = clock
        self._snap: Snapshot = EMPTY
        self._at: float | None = None

    def __call__(self) -> Snapshot:
        now = self.clock()
        if self._at is None or now - self._at >= self.max_age:
            snap = self.source()
            if snap != self._snap:
                self._snap = snap
            self._at = now
        return self._snap
