"""`lab demo` (filled in once the gateway lands)."""

from __future__ import annotations


def run_demo(name: str, keep: bool = False) -> int:
    raise NotImplementedError
