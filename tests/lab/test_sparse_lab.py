"""Sparse views end to end: a mixed pair (gpu views lab sparsely, lab views gpu in full), both
directions, by name, with the real gateways, crosswire-wg, nftables and the clusters' DNS."""

from __future__ import annotations

import ipaddress
from collections.abc import Callable

import pytest
from labkit import ops
from labkit.lab import Lab
from labkit.probe import eventually_json

pytestmark = [pytest.mark.root, pytest.mark.slow]

WEB = [{"name": "web.default", "ports": ["80/tcp"]}]
POOL = ["100.64.0.0/10"]


def test_mixed_pair_sparse_one_way_full_the_other(make_lab: Callable[..., Lab]) -> None:
    lab = make_lab({"clusters": [
        {"id": "gpu", "ipam_views": "sparse", "ipam_pools": POOL, "nodes": 1, "pods_per_node": 2, "exports": WEB},
        {"id": "lab", "ipam_pools": POOL, "nodes": 1, "pods_per_node": 2, "exports": WEB}]})
    ops.peer_all(lab)  # gpu issues the token, lab redeems it
    at_gpu = ops.peer(lab, "gpu", "lab")
    at_lab = ops.peer(lab, "lab", "gpu")
    assert (at_gpu["views_mode"], at_gpu["their_views_mode"]) == ("sparse", "full")
    assert (at_lab["views_mode"], at_lab["their_views_mode"]) == ("full", "sparse")
    # gpu addresses nothing of lab's pod range: only its egress block, its gateway and (soon) its export.
    assert {v["kind"] for v in at_gpu["our_views"]} <= {"egress", "gateway", "export"}
    (block,) = [ipaddress.ip_network(v["view"]) for v in at_gpu["our_views"] if v["kind"] == "egress"]
    assert block.prefixlen == 28 and block.subnet_of(ipaddress.ip_network(POOL[0]))

    # lab -> gpu: by name through lab's DNS; gpu sees the client inside lab's egress block.
    seen = eventually_json(lab, "lab", "p1", "http://gpu.web.default.svc.clusterset.local/", within=30)
    assert seen["pod"].startswith("gpu/"), seen
    assert ipaddress.ip_address(seen["client"].rsplit(":", 1)[0]) in block, (seen, block)

    # gpu -> lab: lab exports its web; gpu reaches it by name at the view address it gave it,
    # and lab sees gpu's pod through lab's full view of gpu.
    seen = eventually_json(lab, "gpu", "p1", "http://lab.web.default.svc.clusterset.local/", within=30)
    assert seen["pod"].startswith("lab/"), seen
    gpu_p1 = {p.name: p.ip for p in lab.plan.cluster("gpu").pods}["p1"]
    assert seen["client"].rsplit(":", 1)[0] == ops.view_of(lab, "lab", "gpu", gpu_p1)
    at_gpu = ops.peer(lab, "gpu", "lab")
    web_ip = lab.plan.cluster("lab").spec.services[0].ip
    (export,) = [v for v in at_gpu["our_views"] if v["kind"] == "export"]
    assert export["real"] == f"{web_ip}/32"
    imports = ops.api(lab, "gpu", "/api/v1/imports")["imports"]
    assert [(i["peer"], i["name"], i["addresses"]) for i in imports] == [("lab", "web.default", [export["view"]])]
    assert at_gpu["reach"] == f"sparse: web.default at {export['view'].split('/')[0]}"

    # gpu's trace of that request names the view address's DNAT at lab.
    tr = ops.crosswire(lab, "gpu", "trace", gpu_p1, export["view"].split("/")[0], "--proto", "tcp",
                       "--port", "80")
    assert "delivered" in tr and web_ip in tr, tr
