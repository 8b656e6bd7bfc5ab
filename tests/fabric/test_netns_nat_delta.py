"""nat.render_delta against the kernel: changing only the peers that changed
must leave exactly the table a whole-table replace would, keep the unchanged
peers' rules (same handles, so their counters keep counting), and fail as a
whole when the kernel is not what ``previous`` made."""

from __future__ import annotations

import dataclasses
import json

import pytest
from nsutil import namespaces, require_root, sh

from fabric import nat
from fabric.model import FabricState, LocalFabric, PeerFabric, RangeMap
from fabric.nft import Nft, NftError

KEY = "A" * 43 + "="
LOCAL = LocalFabric(cluster_id="lab", interface="wg0", listen_port=51820, private_key=KEY,
                    pod_cidrs=("10.244.0.0/16", "fd00::/48"), service_cidrs=("10.96.0.0/12",), gateway_ip="10.244.0.1")


def peer(cid: str, n: int, mine: str = "100.65.0.0/16") -> PeerFabric:
    return PeerFabric(cluster_id=cid, public_key=KEY, endpoint=None,
                      remote=(RangeMap("pod", "10.244.0.0/16", f"100.{64 + n}.0.0/16"),
                              RangeMap("pod", "fd00::/48", f"fd{64 + n}::/48")),
                      local=(RangeMap("pod", "10.244.0.0/16", mine), RangeMap("pod", "fd00::/48", "fd65::/48")))


SAME = tuple(peer(f"s{i}", 10 + i) for i in range(3))
BEFORE = FabricState(LOCAL, (peer("a", 0), peer("b", 1), peer("c", 2), *SAME))
# a and s* unchanged, b's view of us changed, c gone, d new.
AFTER = FabricState(LOCAL, (peer("a", 0), peer("b", 1, "100.99.0.0/16"), peer("d", 3), *SAME))


def listing(ns: str) -> list[str]:
    return sorted(line.strip() for line in sh("nft", "list", "table", "inet", "crosswire", ns=ns).stdout.splitlines())


def handles(ns: str, chain: str) -> list[int]:
    out = json.loads(sh("nft", "-j", "-a", "list", "chain", "inet", "crosswire", chain, ns=ns).stdout)
    return [item["rule"]["handle"] for item in out["nftables"] if "rule" in item]


@pytest.fixture(scope="module", autouse=True)
def _root() -> None:
    require_root("nft")


def test_delta_leaves_the_table_a_whole_render_makes() -> None:
    with namespaces() as nss:
        ns, ref = nss.add("cwd"), nss.add("cwd")
        Nft(ns).apply(nat.render_text(BEFORE))
        kept = handles(ns, "to-a") + handles(ns, "from-a")
        delta = nat.render_delta(BEFORE, AFTER)
        assert delta is not None and len(delta) < len(nat.render_text(AFTER))
        Nft(ns).apply(delta)
        Nft(ref).apply(nat.render_text(AFTER))
        got = listing(ns)
        assert got == listing(ref)
        assert not any("to-c" in line or "from-c" in line for line in got)
        assert any("100.99.0.0/16" in line for line in got)
        assert handles(ns, "to-a") + handles(ns, "from-a") == kept  # untouched: counters keep counting


def test_delta_fails_whole_when_kernel_differs_from_previous() -> None:
    with namespaces() as nss:
        ns = nss.add("cwd")
        Nft(ns).apply(nat.render_text(BEFORE))
        sh("nft", "flush", "chain", "inet", "crosswire", "to-c", ns=ns)
        sh("nft", "delete", "element", "inet", "crosswire", "to_peer_v4", "{ 100.66.0.0/16 }", ns=ns)
        before = listing(ns)
        delta = nat.render_delta(BEFORE, AFTER)
        assert delta is not None
        with pytest.raises(NftError):
            Nft(ns).apply(delta)
        assert listing(ns) == before  # nothing changed: apply then replaces the table wholly


def test_delta_is_none_when_shared_inputs_or_nothing_changed() -> None:
    assert nat.render_delta(BEFORE, BEFORE) is None
    assert nat.render_delta(BEFORE, FabricState(LOCAL, BEFORE.peers[::-1])) is None
    other = FabricState(dataclasses.replace(LOCAL, mtu=1380), AFTER.peers)
    assert nat.render_delta(BEFORE, other) is None
    # More than half of the 6 peers change (5 here; 3 in AFTER): the whole table instead.
    assert nat.render_delta(BEFORE, FabricState(LOCAL, AFTER.peers[:4])) is None
    assert nat.render_delta(BEFORE, AFTER) is not None
