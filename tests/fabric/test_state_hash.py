"""FabricState hashes once (lru_caches key on it at every read) and stays a value:
equal states hash and compare equal, a pickled one carries no hash over."""

from __future__ import annotations

import dataclasses
import pickle

from fabric.model import FabricState, LocalFabric, PeerFabric, RangeMap


def _state(endpoint: str = "192.0.2.2:51820") -> FabricState:
    local = LocalFabric(cluster_id="lab", interface="cw-lab", listen_port=51820, private_key="k" * 43 + "=",
                        pod_cidrs=("10.244.0.0/16",), service_cidrs=("10.96.0.0/12",))
    peer = PeerFabric(cluster_id="gpu", public_key="p" * 43 + "=", endpoint=endpoint,
                      remote=(RangeMap("pod", "10.244.0.0/16", "100.65.0.0/16"),),
                      local=(RangeMap("pod", "10.244.0.0/16", "100.64.0.0/16"),))
    return FabricState(local=local, peers=(peer,))


def test_equal_states_hash_alike_and_the_hash_is_kept() -> None:
    a, b = _state(), _state()
    assert a == b and hash(a) == hash(b) and a is not b
    assert a.__dict__["_hash"] == hash(a)  # computed once, then read
    other = dataclasses.replace(a, peers=(dataclasses.replace(a.peers[0], endpoint="192.0.2.9:51820"),))
    assert other != a and "_hash" not in other.__dict__  # a new state hashes afresh
    assert len({a, b, other}) == 2


def test_a_pickled_state_carries_no_hash() -> None:
    a = _state()
    hash(a)
    c = pickle.loads(pickle.dumps(a))
    assert "_hash" not in c.__dict__ and c == a and hash(c) == hash(a)
