"""Fixtures for the crosswire-wg I/O tests: a ``pair_factory`` building wgpair.Pair objects."""

from __future__ import annotations

import os
import sys
import tempfile
from collections.abc import Callable, Iterator

import pytest
from nsutil import require_root

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from wgpair import Pair


@pytest.fixture
def pair_factory() -> Iterator[Callable[[str, str], Pair]]:
    """``make(impl_a, impl_b)`` -> a Pair; every pair, namespace and daemon is removed at teardown."""
    require_root("wg", "wireguard-go", "ping")
    pairs: list[Pair] = []
    with tempfile.TemporaryDirectory(prefix="cwio") as workdir:
        os.chmod(workdir, 0o700)

        def make(impl_a: str, impl_b: str) -> Pair:
            p = Pair(impl_a, impl_b, workdir)
            pairs.append(p)
            return p

        try:
            yield make
        finally:
            for p in pairs:
                p.close()
