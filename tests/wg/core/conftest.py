"""Fixtures for the sans-IO WireGuard core tests (helpers live in wgsim)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from wg.core.wgsim import Pair


@pytest.fixture

def pair() -> Iterator[Pair]:
    yield Pair()
