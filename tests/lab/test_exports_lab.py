"""Exports in the lab: gpu exports only its web service and pod p3 (the default topology) to lab."""

from __future__ import annotations

import re
import time
from collections.abc import Callable

import pytest
from labkit import checks, exportcheck, ops
from labkit.lab import Lab, http
from labkit.topology import default_topology

pytestmark = [pytest.mark.root, pytest.mark.slow]


def test_exported_service_passes_unexported_pod_is_refused_and_counted(make_lab: Callable[..., Lab]) -> None:
    lab = make_lab(default_topology())
    ops.peer_all(lab)  # gpu issues the token, lab redeems it
    assert ops.api(lab, "gpu", "/api/v1/status")["exposure"] == "exports"
    assert ops.api(lab, "lab", "/api/v1/status")["exposure"] == "all"
    # The export: gpu's web service, through lab's view of it, from both lab nodes.
    assert checks.pod_to_service(lab, "lab", "p1", "gpu", tries=3)
    assert checks.pod_to_service(lab, "lab", "p3", "gpu", tries=3)
    # The exported pod (trainer.ml: gpu/p3 on 8080/tcp).
    checks.pod_to_pod(lab, "lab", "p1", "gpu", "p3")
    # A gpu pod that was not exported: no answer, and lab's denied counter moved.
    r = exportcheck.try_unexported_pod(lab, "lab", "p1", "gpu", "p2")
    assert not r.answered, f"{r.url} answered although gpu/p2 is not exported"
    assert r.after > r.before, r
    gpu = lab.plan.cluster("gpu")
    code, metrics = http(gpu.nodes[0].ns, f"{gpu.api_url}/metrics")
    m = re.search(r'^crosswire_export_denied_packets_total\{peer="lab"\} (\d+)$', metrics, re.M)
    assert code == 200 and m is not None and int(m.group(1)) >= r.after, metrics[-2000:]
    # lab shares everything: gpu's pods reach lab's, and the replies pass gpu's policy.
    checks.pod_to_pod(lab, "gpu", "p1", "lab", "p3")
    # lab learned what gpu exports to it, in its own view of gpu.
    svc = lab.plan.cluster("gpu").spec.services[0]
    want = ops.view_of(lab, "lab", "gpu", svc.ip) + "/32"
    p3 = {q.name: q.ip for q in lab.plan.cluster("gpu").pods}["p3"]
    want_p3 = ops.view_of(lab, "lab", "gpu", p3) + "/32"
    end = time.monotonic() + 10
    while True:
        imports = ops.api(lab, "lab", "/api/v1/imports")["imports"]
        if imports or time.monotonic() > end:
            break
        time.sleep(0.2)
    assert [(i["peer"], i["name"], i["ports"], i["addresses"]) for i in imports] == [
        ("gpu", "trainer.ml", ["8080/tcp"], [want_p3]), ("gpu", "web.default", ["80/tcp"], [want])]
