"""Cross-cluster checks shared by the demo and the end-to-end tests.

Each check asks a lab pod's HTTP server who answered and which client
address it saw, and compares both with what the views say they must be.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from dataclasses import dataclass
from typing import Any

from . import ops
from .lab import Lab
from .podserver import stream
from .probe import download_sha, eventually_json, upload_sha
from .topology import POD_PORT


@dataclass(frozen=True)
class Seen:
    pod: str
    client: str
    expected_client: str
    url: str


def host(ip: str) -> str:
    """``ip`` as the host part of a URL (IPv6 in brackets)."""
    return f"[{ip}]" if ":" in ip else ip


def expected_client(lab: Lab, src_cid: str, src_member: str, dst_cid: str, family: int = 4) -> str:
    """The address the destination must see for a client in ``src_cid``.

    A pod is seen as the destination's view of its real IP. A node's host
    network: the gateway's own node sends from its address on the pod veth
    (inside the pod CIDR, as flannel's cni0 address is), so it is seen like a
    pod; other nodes send from their underlay address, which the gateway
    SNATs to its own pod IP, so they are seen as the view of that. With
    ``masquerade`` on the destination side everything arrives from the
    destination gateway's own pod IP. ``family`` 6: the same with the IPv6
    addresses of a dual-stack lab.
    """
    src, dst = lab.plan.cluster(src_cid), lab.plan.cluster(dst_cid)
    assert src.gateway is not None and dst.gateway is not None
    v6 = family == 6
    if dst.spec.masquerade:
        return str(dst.gateway.ip6 if v6 else dst.gateway.ip)
    pods = {p.name: p.ip6 if v6 else p.ip for p in src.pods}
    if src_member in pods:
        real = pods[src_member]
    elif src_member == src.gateway.node:
        node = src.node(src_member)
        real = node.pod_gw6 if v6 else node.pod_gw
    else:
        real = src.gateway.ip6 if v6 else src.gateway.ip
    assert real is not None, f"{src_cid} has no IPv{family} address for {src_member}"
    return ops.view_of(lab, dst_cid, src_cid, real)


def pod_to_pod(lab: Lab, src_cid: str, src_member: str, dst_cid: str, dst_pod: str,
               within: float = 20, family: int = 4) -> Seen:
    """``src_member`` (a pod or a node) of ``src_cid`` fetches ``dst_pod`` of ``dst_cid``
    (over IPv6 with ``family`` 6)."""
    target = {p.name: p for p in lab.plan.cluster(dst_cid).pods}[dst_pod]
    real = target.ip6 if family == 6 else target.ip
    assert real is not None, f"{dst_cid}/{dst_pod} has no IPv{family} address"
    url = f"http://{host(ops.view_of(lab, src_cid, dst_cid, real))}:{POD_PORT}/"
    seen = eventually_json(lab, src_cid, src_member, url, within=within)
    want = expected_client(lab, src_cid, src_member, dst_cid, family)
    got = seen["client"].rsplit(":", 1)[0]
    assert seen["pod"] == f"{dst_cid}/{dst_pod}", f"{url} answered by {seen['pod']}"
    assert got == want, f"{dst_cid}/{dst_pod} saw {src_cid}/{src_member} as {got}, expected {want}"
    return Seen(seen["pod"], got, want, url)


def pod_to_service(lab: Lab, src_cid: str, src_member: str, dst_cid: str, tries: int = 12,
                   family: int = 4) -> set[str]:
    """Fetch ``dst_cid``'s first service through ``src_cid``'s view (its IPv6 address with
    ``family`` 6); the set of pods that answered."""
    svc = lab.plan.cluster(dst_cid).spec.services[0]
    real = svc.ip6 if family == 6 else svc.ip
    assert real is not None, f"{dst_cid}/{svc.name} has no IPv{family} address"
    url = f"http://{host(ops.view_of(lab, src_cid, dst_cid, real))}:{svc.port}/"
    want = expected_client(lab, src_cid, src_member, dst_cid, family)
    answered = set()
    for _ in range(tries):
        seen = eventually_json(lab, src_cid, src_member, url)
        assert seen["cluster"] == dst_cid, f"{url} answered by {seen}"
        assert seen["client"].rsplit(":", 1)[0] == want
        answered.add(seen["pod"])
    return answered


def transfer_both_ways(lab: Lab, a: str, a_pod: str, b: str, b_pod: str, n: int,
                       family: int = 4) -> dict[str, Any]:
    """n bytes a<-b (download) and a->b (upload), both checked by sha256 (over IPv6 with ``family`` 6)."""
    target = {p.name: p for p in lab.plan.cluster(b).pods}[b_pod]
    real = target.ip6 if family == 6 else target.ip
    assert real is not None, f"{b}/{b_pod} has no IPv{family} address"
    base = f"http://{host(ops.view_of(lab, a, b, real))}:{POD_PORT}"
    want_down = hashlib.sha256(stream(n)).hexdigest()
    got_down = download_sha(lab, a, a_pod, f"{base}/bytes?n={n}")
    assert got_down == want_down, f"download of {n} B from {b}/{b_pod} corrupted or short"
    with tempfile.NamedTemporaryFile(prefix="cwlab-", dir="/tmp") as f:
        data = os.urandom(n)
        f.write(data)
        f.flush()
        up = upload_sha(lab, a, a_pod, f"{base}/sha256", f.name)
    assert up["bytes"] == n and up["sha256"] == hashlib.sha256(data).hexdigest(), up
    return {"down_sha256": got_down, "up": up}
