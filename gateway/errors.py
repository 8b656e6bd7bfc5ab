"""The control plane's refusal: one exception the API turns into ``{"detail": ...}``."""

from __future__ import annotations


class GatewayError(Exception):
    """A refused operation: ``status`` is the HTTP status, the message is safe to show."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status
