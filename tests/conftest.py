"""Shared fixtures. Namespace helpers live in nsutil (on pythonpath)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from nsutil import Namespaces, require_root


@pytest.fixture
def netns() -> Iterator[Namespaces]:
    """Root + namespaces required; everything created is removed, also on failure."""
    require_root()
    n = Namespaces()
    try:
        yield n
    finally:
        n.cleanup()
