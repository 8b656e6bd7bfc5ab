"""Lab fixtures: every test builds its own lab instance under a unique name and tears it down.

When a test fails, the tail of every lab process log (gateways, agents, pods)
is printed before teardown, so a red CI run shows what the gateways said.
"""

from __future__ import annotations

from collections.abc import Callable, Generator, Iterator

import pytest
from labkit.lab import STATE_ROOT, Lab, teardown
from labkit.topology import Topology, parse
from nsutil import require_root, uniq


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Generator[None, None, None]:
    outcome = yield
    rep = outcome.get_result()  # type: ignore[attr-defined]
    if rep.when == "call":
        item.stash[_FAILED] = rep.failed


_FAILED = pytest.StashKey[bool]()


def _dump_logs(name: str) -> None:
    logs = STATE_ROOT / name / "logs"
    if not logs.is_dir():
        return
    for f in sorted(logs.iterdir()):
        text = f.read_text(errors="replace")
        if "gateway" in f.name or "agent" in f.name:
            print(f"----- {name}/{f.name} (last 3000 chars) -----\n{text[-3000:]}")


@pytest.fixture
def make_lab(request: pytest.FixtureRequest) -> Iterator[Callable[..., Lab]]:
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
            if request.node.stash.get(_FAILED, False):
                _dump_logs(n)
            teardown(n)
