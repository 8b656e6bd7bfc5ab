"""tests/fabric helpers (fabric_topo, echo.py) live beside the tests; make them importable."""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator

import pytest

_HERE = os.path.dirname(os.path.abspath(__file__))
if _HERE not in sys.path:
    sys.path.insert(0, _HERE)

from nsutil import Namespaces  # noqa: E402

from fabric.wgprocess import WgProcess  # noqa: E402


@pytest.fixture
def dp_ns(netns: Namespaces) -> Iterator[tuple[str, list[WgProcess]]]:
    """A namespace, and a list where a test puts the WgProcess objects it starts (stopped after)."""
    ns = netns.add("cwd")
    made: list[WgProcess] = []
    try:
        yield ns, made
    finally:
        for d in made:
            with contextlib.suppress(Exception):
                d.stop()
