"""Lab fixtures: every test builds its own lab instance under a unique name and tears it down."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest
from labkit.lab import Lab, teardown
from labkit.topology import Topology, parse
from nsutil import require_root, uniq


@pytest.fixture
def make_lab() -> Iterator[Callable[..., Lab]]:
    """``make_lab(topology_dict, gateways=True)`` -> a running Lab; removed at teardown."""
    require_root("nft", "curl")
    names: list[str] = []

    def make(topo: dict[str, object] | Topology | None = None, gateways: bool = True) -> Lab:
        name = uniq("t")
        names.append(name)
        t = topo if isinstance(topo, Topology) else parse(topo)
        lab = Lab(name, t)
        lab.up(log=lambda *_: None, gateways=gateways)
        return lab

    try:
        yield make
    finally:
        for n in names:
            teardown(n)
