"""Links and nft tables crosswire did not create are never deleted, changed or replaced (issue 9).

crosswire marks what it creates: links with the alias ``crosswire``, tables
with the empty set ``created_by_crosswire``. What lacks the mark is refused
by ``claim`` (start-up) and by every action that would change it; what carries
it is reused or replaced as before.
"""

from __future__ import annotations

import pytest
from fabric_topo import keypair, start_wg
from nsutil import sh, uniq

from fabric import apply as fabric_apply
from fabric.apply import TableOwnershipError, apply, claim_table, remove, table_owner, verify
from fabric.model import FabricState, LocalFabric, PeerFabric, RangeMap
from fabric.nft import Nft
from fabric.wgprocess import LinkOwnershipError, WgProcess

pytestmark = pytest.mark.root


def link(ns: str, name: str) -> str:
    return sh("ip", "-d", "-o", "link", "show", name, ns=ns).stdout


def state_for(wg: str, table: str = "crosswire") -> FabricState:
    priv, _ = keypair()
    _, pub = keypair()
    return FabricState(
        LocalFabric("lab", wg, 51997, private_key=priv, pod_cidrs=("10.244.0.0/16",), gateway_ip="10.244.0.1",
                    nft_table=table),
        (PeerFabric("gpu", pub, "198.18.0.2:51820", remote=(RangeMap("pod", "10.244.0.0/16", "100.64.0.0/16"),),
                    local=(RangeMap("pod", "10.244.0.0/16", "100.65.0.0/16"),)),))


def test_foreign_links_are_refused_and_left_alone(dp_ns: tuple[str, list[WgProcess]]) -> None:
    ns, made = dp_ns
    a, b = uniq("ofa"), uniq("ofb")
    sh("ip", "link", "add", a, "type", "veth", "peer", "name", b, ns=ns)
    tun = uniq("oft")
    sh("ip", "tuntap", "add", "mode", "tun", "name", tun, ns=ns)
    before = {n: link(ns, n) for n in (a, b, tun)}
    for name, kind in ((a, "veth"), (tun, "tun")):
        for implementation in ("userspace", "wireguard-go", "kernel"):
            dp = WgProcess(name, implementation, 1420, netns=ns)  # type: ignore[arg-type]
            made.append(dp)
            message = f"wireguard.interface: a link named '{name}' ({kind}) already exists and was not created"
            for adopt in (False, True):  # a veth, or a TUN without a socket: never a crosswire data plane
                with pytest.raises(LinkOwnershipError, match=message.replace("(", r"\(").replace(")", r"\)")):
                    dp.claim(adopt)
            with pytest.raises(LinkOwnershipError):
                dp.ensure_up()  # the supervisor does not replace it either
            with pytest.raises(LinkOwnershipError):
                dp.stop()
    assert {n: link(ns, n) for n in (a, b, tun)} == before


def test_marked_leftover_link_is_replaced(dp_ns: tuple[str, list[WgProcess]]) -> None:
    ns, made = dp_ns
    wg = uniq("oml")
    # A link of ours whose process died (no answering socket): a leftover, replaced.
    sh("ip", "tuntap", "add", "mode", "tun", "name", wg, ns=ns)
    sh("ip", "link", "set", "dev", wg, "alias", "crosswire", ns=ns)
    dp = WgProcess(wg, "wireguard-go", 1420, netns=ns)
    made.append(dp)
    assert dp.claim(False) == "ours"
    dp.ensure_up()
    assert dp.alive() and dp.starts == 1
    assert "alias crosswire" in link(ns, wg)
    dp.stop()
    assert sh("ip", "link", "show", wg, ns=ns, check=False).returncode != 0


@pytest.mark.parametrize("implementation", ["wireguard-go", "userspace"])
def test_unmarked_running_data_plane_adopted_only_with_state(dp_ns: tuple[str, list[WgProcess]],
                                                              implementation: str) -> None:
    ns, made = dp_ns
    wg = uniq("oup")
    old = WgProcess(wg, implementation, 1420, netns=ns)  # type: ignore[arg-type]
    made.append(old)
    old.ensure_up()
    assert "alias crosswire" in link(ns, wg)
    sh("ip", "link", "set", "dev", wg, "alias", "", ns=ns)  # as the previous version left it
    new = WgProcess(wg, implementation, 1420, netns=ns)  # type: ignore[arg-type]
    with pytest.raises(LinkOwnershipError, match=rf"'{wg}' \(tun\) already exists"):
        new.claim(False)  # no state: not this gateway's
    with pytest.raises(LinkOwnershipError):
        new.ensure_up()
    assert "alias" not in link(ns, wg) and old.alive()
    assert new.claim(True) == "adopted"
    assert "alias crosswire" in link(ns, wg)
    new.ensure_up()
    assert new.starts == 0 and old.alive()  # adopted: the same process


def test_operator_table_of_that_name_is_never_replaced(dp_ns: tuple[str, list[WgProcess]]) -> None:
    ns, wg = start_wg(dp_ns, "otb")
    sh("nft", "add table inet crosswire; add chain inet crosswire input "
       "{ type filter hook input priority 0; policy accept; }; "
       "add rule inet crosswire input tcp dport 2222 counter accept comment \"operator's rule\"", ns=ns)
    before = sh("nft", "list", "table", "inet", "crosswire", ns=ns).stdout
    assert table_owner(Nft(ns), "crosswire") == "foreign"
    for adopt in (False, True):  # no base chains of ours: not an earlier crosswire's table
        with pytest.raises(TableOwnershipError, match="nft_table: table inet crosswire exists and was not created"):
            claim_table("crosswire", adopt, netns=ns)
    state = state_for(wg)
    with pytest.raises(TableOwnershipError):
        apply(state, netns=ns)  # the whole-table replace
    with pytest.raises(TableOwnershipError):
        apply(state, state_for(wg), netns=ns)  # with a previous state (reconcile)
    remove(state, netns=ns)
    # A rename away from it does not delete it either.
    apply(state_for(wg, "cwnew"), state, netns=ns)
    assert sh("nft", "list", "table", "inet", "crosswire", ns=ns).stdout == before
    assert "operator's rule" in before


def test_other_tables_untouched_marked_table_replaced(dp_ns: tuple[str, list[WgProcess]]) -> None:
    ns, wg = start_wg(dp_ns, "otc")
    sh("nft", "add table inet ops; add chain inet ops input { type filter hook input priority 0; }; "
       "add rule inet ops input tcp dport 2222 accept comment \"keep me\"", ns=ns)
    before = sh("nft", "list", "table", "inet", "ops", ns=ns).stdout
    state = state_for(wg)
    assert claim_table("crosswire", False, netns=ns) == "absent"
    apply(state, netns=ns)
    assert table_owner(Nft(ns), "crosswire") == "ours"
    assert claim_table("crosswire", False, netns=ns) == "ours"
    # Someone adds to our table: the next whole-table replace (start-up) takes it back.
    sh("nft", "add rule inet crosswire prerouting counter", ns=ns)
    apply(state, netns=ns)
    assert verify(state, netns=ns) == []
    assert "counter packets 0 bytes 0\n" not in sh("nft", "list", "chain", "inet", "crosswire", "prerouting",
                                                   ns=ns).stdout
    bigger = state_for(wg)
    apply(bigger, state, netns=ns)
    remove(bigger, netns=ns)
    assert table_owner(Nft(ns), "crosswire") == "absent"
    assert sh("nft", "list", "table", "inet", "ops", ns=ns).stdout == before


def test_upgrade_adopts_unmarked_table_with_base_chains(dp_ns: tuple[str, list[WgProcess]]) -> None:
    ns, wg = start_wg(dp_ns, "otu")
    state = state_for(wg)
    apply(state, netns=ns)
    sh("nft", "delete", "set", "inet", "crosswire", "created_by_crosswire", ns=ns)  # as before the marker
    with pytest.raises(TableOwnershipError):
        claim_table("crosswire", False, netns=ns)
    with pytest.raises(TableOwnershipError):
        apply(state, netns=ns)
    assert claim_table("crosswire", True, netns=ns) == "adopted"
    assert table_owner(Nft(ns), "crosswire") == "ours"
    apply(state, netns=ns)
    assert verify(state, netns=ns) == []
    assert fabric_apply.nat.MARKER_SET == "created_by_crosswire"
