"""fabric.apply without a kernel: validation before any change, and step order."""

from __future__ import annotations

import dataclasses
import json

import pytest

from fabric import apply as fabric_apply
from fabric import nat
from fabric.apply import ApplyError, order
from fabric.model import FabricState, LocalFabric, PeerFabric, RangeMap
from fabric.nft import NftError

KEY = "A" * 43 + "="
LOCAL = LocalFabric("lab", "wg0", 51820, private_key=KEY, pod_cidrs=("10.244.0.0/16",), gateway_ip="10.244.0.1")
GPU = PeerFabric("gpu", "B" * 43 + "=", "198.18.0.2:51820",
                 remote=(RangeMap("pod", "10.244.0.0/16", "100.64.0.0/16"),),
                 local=(RangeMap("pod", "10.244.0.0/16", "100.65.0.0/16"),))
CPU = PeerFabric("cpu", "C" * 43 + "=", None, remote=(RangeMap("pod", "10.244.0.0/16", "100.66.0.0/16"),))


def test_order() -> None:
    one, two = FabricState(LOCAL, (GPU,)), FabricState(LOCAL, (GPU, CPU))
    assert order(one, None) == ("nat", "wireguard", "routes")
    assert order(two, one) == ("nat", "wireguard", "routes")  # growing: NAT before routes attract traffic
    assert order(one, two) == ("routes", "wireguard", "nat")  # shrinking: routes go first
    narrower = FabricState(LOCAL, (dataclasses.replace(GPU, remote=()),))
    assert order(narrower, one) == ("routes", "wireguard", "nat")


@pytest.mark.parametrize("state, message", [
    (FabricState(dataclasses.replace(LOCAL, private_key="short"), ()), "private key"),
    (FabricState(LOCAL, (dataclasses.replace(GPU, public_key="x"),)), "gpu public key"),
    (FabricState(LOCAL, (dataclasses.replace(GPU, preshared_key="!!"),)), "gpu preshared key"),
    (FabricState(LOCAL, (GPU, dataclasses.replace(CPU, remote=GPU.remote))), "overlaps"),
])
def test_bad_state_refused_before_any_change(monkeypatch: pytest.MonkeyPatch, state: FabricState,
                                             message: str) -> None:
    touched: list[str] = []
    monkeypatch.setattr(fabric_apply.Nft, "apply", lambda self, r: touched.append("nft"))
    monkeypatch.setattr(fabric_apply.routes, "sync_routes", lambda *a, **k: touched.append("routes"))
    monkeypatch.setattr(fabric_apply.WgControl, "sync", lambda *a, **k: touched.append("wg"))
    with pytest.raises(ApplyError, match=message) as e:
        fabric_apply.apply(state)
    assert touched == []
    assert "!!" not in str(e.value) and "short" not in str(e.value)


def test_apply_runs_steps_in_order(monkeypatch: pytest.MonkeyPatch) -> None:
    touched: list[str] = []
    monkeypatch.setattr(fabric_apply.Nft, "apply", lambda self, r: touched.append("nat"))
    monkeypatch.setattr(fabric_apply.routes, "sync_routes", lambda *a, **k: touched.append("routes"))
    monkeypatch.setattr(fabric_apply.WgControl, "sync", lambda *a, **k: touched.append("wireguard"))
    monkeypatch.setattr(fabric_apply.exportsapply, "apply", lambda t, previous, nft: touched.append("policy"))
    one, two = FabricState(LOCAL, (GPU,)), FabricState(LOCAL, (GPU, CPU))
    fabric_apply.apply(two, one)
    fabric_apply.apply(one, two)
    # The policy table (the guard) first, both ways: a new peer is guarded from its first packet.
    assert touched == ["policy", "nat", "wireguard", "routes", "policy", "routes", "wireguard", "nat"]
    assert json.loads(nat.render_text(one))["nftables"][0] == {"add": {"table": {"family": "inet", "name": "crosswire"}}}


def test_unchanged_nat_inputs_keep_the_table(monkeypatch: pytest.MonkeyPatch) -> None:
    touched: list[str] = []
    monkeypatch.setattr(fabric_apply.Nft, "apply", lambda self, r: touched.append("nat"))
    monkeypatch.setattr(fabric_apply, "_nat_problem", lambda state, nft: None)
    monkeypatch.setattr(fabric_apply.exportsapply, "apply", lambda t, previous, nft: None)
    monkeypatch.setattr(fabric_apply.routes, "sync_routes", lambda *a, **k: None)
    monkeypatch.setattr(fabric_apply.WgControl, "sync", lambda *a, **k: None)
    one = FabricState(LOCAL, (GPU,))
    rekeyed = FabricState(dataclasses.replace(LOCAL, private_key="D" * 43 + "="),
                          (dataclasses.replace(GPU, endpoint="198.18.0.9:1", public_key="E" * 43 + "="),))
    fabric_apply.apply(rekeyed, one)  # keys/endpoints only: table kept
    assert touched == []
    fabric_apply.apply(one, None)  # no previous: always rewritten
    masq = FabricState(dataclasses.replace(LOCAL, masquerade=True), (GPU,))
    fabric_apply.apply(masq, one)
    assert touched == ["nat", "nat"]
    monkeypatch.setattr(fabric_apply, "_nat_problem", lambda state, nft: "rules missing")
    fabric_apply.apply(one, one)  # table damaged: rewritten even though nothing changed
    assert touched == ["nat", "nat", "nat"]


def test_changed_peers_go_as_a_delta_and_a_refused_delta_falls_back_to_the_whole_table(
        monkeypatch: pytest.MonkeyPatch) -> None:
    sent: list[str] = []

    def nft_apply(self: object, ruleset: str) -> None:
        sent.append(ruleset)
        if len(sent) == 1 and refuse:
            raise NftError("No such file or directory")  # the kernel is not what `previous` made

    monkeypatch.setattr(fabric_apply.Nft, "apply", nft_apply)
    monkeypatch.setattr(fabric_apply.routes, "sync_routes", lambda *a, **k: None)
    monkeypatch.setattr(fabric_apply.WgControl, "sync", lambda *a, **k: None)
    monkeypatch.setattr(fabric_apply.exportsapply, "apply", lambda t, previous, nft: None)  # its own tests
    one, two = FabricState(LOCAL, (GPU,)), FabricState(LOCAL, (GPU, CPU))
    refuse = False
    fabric_apply.apply(two, one)
    assert sent == [nat.render_delta(one, two)] and '"delete":{"table"' not in sent[0]
    sent.clear()
    refuse = True
    fabric_apply.apply(two, one)
    assert sent == [nat.render_delta(one, two), nat.render_text(two)]  # then the whole-table replace
