"""The hub lab (issue 23, "Prove it"): one sparse hub serving 30 spokes from 100.64.0.0/10.

``netns-lab/topologies/hub.yaml``: every cluster on pods 10.244.0.0/16 and
services 10.96.0.0/12 with ``ipam_pools: [100.64.0.0/10]`` alone; the hub
(``ipam_views: sparse``) exports ``web.default`` on 80/tcp, the spokes are on
the defaults (full views). Every spoke peers by token with the CLI only, a
pod in every spoke calls ``web.default.svc.clusterset.local`` through its
cluster DNS (which forwards ``clusterset.local`` to its own gateway), and the
hub's server must have seen each spoke's client inside the egress block the
hub gave that spoke. A hub pod that is not exported stays unreachable.
"""

from __future__ import annotations

import ipaddress
import itertools
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from labkit import exportcheck, hub, ops
from labkit.lab import Lab, run
from labkit.topology import load

pytestmark = [pytest.mark.root, pytest.mark.slow]

POOL = ipaddress.ip_network("100.64.0.0/10")
HOST = "web.default.svc.clusterset.local"


def _visit(lab: Lab, spoke: str) -> dict[str, Any]:
    """From the spoke's client pod: the HTTP answer by name, then what the name resolved to
    (through the pod's resolv.conf: the spoke's dnsmasq, then its gateway's DNS), and the
    spoke's own view of the hub's service address."""
    seen = hub.call_by_name(lab, spoke, "p1", within=45)
    out = run("getent", "ahostsv4", HOST, ns=lab.plan.ns_of(spoke, "p1"), check=False, timeout=10).stdout
    svc = lab.plan.cluster("hub").spec.services[0]
    return {"seen": seen, "resolved": {line.split()[0] for line in out.splitlines() if line.strip()},
            "view": ops.view_of(lab, spoke, "hub", svc.ip)}


def test_sparse_hub_serves_thirty_spokes_by_name_and_names_each(make_lab: Callable[..., Lab]) -> None:
    t0 = time.monotonic()
    lab = make_lab(load("hub"))
    t_up = time.monotonic()
    ids = hub.spokes(lab)
    assert len(ids) >= 30

    tries = hub.peer_spokes(lab, "hub", ids)
    peers = hub.wait_peered(lab, "hub", ids)
    t_peer = time.monotonic()
    for s in ids:
        assert (peers[s]["views_mode"], peers[s]["their_views_mode"]) == ("sparse", "full"), peers[s]

    # The hub names each spoke's clients by an IPv4 egress block of its own, from its one pool;
    # the 30 blocks are disjoint, so an address in one names exactly one spoke.
    blocks = hub.egress_blocks(peers)
    for s in ids:
        assert len(blocks[s]) == 1 and blocks[s][0].version == 4 and blocks[s][0].subnet_of(POOL), (s, blocks[s])
    ordered = sorted((blocks[s][0] for s in ids), key=lambda b: int(b.network_address))
    for a, b in itertools.pairwise(ordered):
        assert int(a.broadcast_address) < int(b.network_address), f"egress blocks {a} and {b} overlap"

    with ThreadPoolExecutor(max_workers=8) as pool:
        got = dict(zip(ids, pool.map(lambda s: _visit(lab, s), ids), strict=True))
    t_calls = time.monotonic()
    for s in ids:
        seen = got[s]["seen"]
        assert seen["cluster"] == "hub" and seen["pod"] == "hub/p1", (s, seen)
        client = hub.client_address(seen)
        assert client in blocks[s][0], f"hub saw {s}'s client as {client}, outside its egress block {blocks[s][0]}"
        # The name came from the spoke's own gateway: its view of the hub's service.
        assert got[s]["resolved"] == {got[s]["view"]}, (s, got[s])

    # The hub exports its web service, not the pod behind it: a spoke calling that pod through
    # its (full) view of the hub's pods gets no answer, and the hub counts the drop for that spoke.
    for s in (ids[0], ids[-1]):
        r = exportcheck.try_unexported_pod(lab, s, "p1", "hub", "p1")
        assert not r.answered, f"{r.url} answered although hub/p1 is not exported"
        assert r.after > r.before, r

    retried = sorted(s for s, n in tries.items() if n > 1)
    print(f"\nhub lab: up {t_up - t0:.1f}s, {len(ids)} spokes peered and connected in {t_peer - t_up:.1f}s"
          f" (retried after a timeout: {retried or 'none'}), by-name calls {t_calls - t_peer:.1f}s,"
          f" total {time.monotonic() - t0:.1f}s")
