"""``lab demo``: the README's first run, end to end, with a verdict.

Builds the default lab (gpu and lab, both 10.244.0.0/16 + 10.96.0.0/12),
peers it with the operator CLI, then from lab's pods curls a gpu pod and the
gpu service through lab's views, and checks that the right pod answered and
that it saw the client as gpu's view of lab. Exit 0 only if all of it held.
"""

from __future__ import annotations

import json
import time
from typing import Any

from . import ops
from .lab import Lab, LabError, teardown
from .probe import eventually_json
from .topology import POD_PORT, default_topology


def _say(msg: str) -> None:
    print(msg, flush=True)


def run_demo(name: str, keep: bool = False) -> int:
    t0 = time.monotonic()
    lab = Lab(name, default_topology())
    if lab.is_up():
        _say(f"== lab {name!r} was up; removing it first")
        teardown(name)
    _say("== building clusters gpu and lab (both pods 10.244.0.0/16, services 10.96.0.0/12)")
    ok = False
    try:
        lab.up(log=lambda m: _say(f"   {m}"))
        ok = _peer_and_check(lab)
    except LabError as e:
        _say(f"FAILED: {e}")
    finally:
        took = time.monotonic() - t0
        if keep:
            _say(f"== lab left up: `netns-lab/lab --name {name} status`, `... down`")
        else:
            teardown(name)
        _say(f"== demo {'PASSED' if ok else 'FAILED'} in {took:.1f}s")
    return 0 if ok else 1


def _peer_and_check(lab: Lab) -> bool:
    gpu, labc = lab.plan.cluster("gpu"), lab.plan.cluster("lab")
    _say("== gpu$ crosswire token create")
    token = ops.token_create(lab, "gpu")
    _say(f"   {token[:24]}... (one line, secret inside; shown truncated)")
    _say("== lab$ crosswire peer add - <<< <token>")
    _say("   " + ops.peer_add(lab, "lab", token).strip().replace("\n", "\n   "))
    ops.wait_connected(lab, "lab", "gpu")
    ops.wait_connected(lab, "gpu", "lab")
    ops.wait_agents(lab)
    for cid, other in (("lab", "gpu"), ("gpu", "lab")):
        p = ops.peer(lab, cid, other)
        views = ", ".join(f"{v['kind']} {v['real']} -> {v['view']}" for v in p["our_views"])
        _say(f"   {cid} sees {other} as: {views}")

    checks: list[tuple[str, bool]] = []
    # 1: lab pod on the non-gateway node -> gpu pod on gpu's non-gateway node.
    client, target = labc.pods[-1], gpu.pods[-1]
    dst = ops.view_of(lab, "lab", "gpu", target.ip)
    want_client = ops.view_of(lab, "gpu", "lab", client.ip)
    checks.append(_curl(lab, client.name, f"http://{dst}:{POD_PORT}/", f"gpu/{target.name}",
                        want_client, f"pod {target.name} ({target.ip})"))
    # 2: lab pod -> gpu's service (gpu's kube-proxy stand-in picks a pod).
    client, svc = labc.pods[0], gpu.spec.services[0]
    dst = ops.view_of(lab, "lab", "gpu", svc.ip)
    want_client = ops.view_of(lab, "gpu", "lab", client.ip)
    checks.append(_curl(lab, client.name, f"http://{dst}:{svc.port}/", "gpu/", want_client,
                        f"service {svc.name} ({svc.ip}:{svc.port})"))
    # 3: the same service by name, once lab's gateway reports it as an import.
    by_name = curl_by_name(lab)
    if by_name is not None:
        checks.append(by_name)

    for cid in ("lab", "gpu"):
        _say(f"== {cid}: GET /api/v1/nat")
        _say(_nat_table(ops.api(lab, cid, "/api/v1/nat")))
    for name, passed in checks:
        _say(f"   [{'ok' if passed else 'FAIL'}] {name}")
    return all(p for _, p in checks)


def curl_by_name(lab: Lab) -> tuple[str, bool] | None:
    """lab pod -> ``http://web.default.svc.clusterset.local/``: gpu's exported ``web`` by name.

    The pod's resolver is lab's cluster DNS (dnsmasq, labkit/clusterdns.py),
    which forwards ``clusterset.local`` to lab's gateway; the gateway answers
    with its view address of gpu's service. Skipped (None) while lab's gateway
    reports no ``web.default`` import in ``GET /api/v1/imports``, so the demo
    stays green on a gateway without exports.
    """
    try:
        imports = ops.api(lab, "lab", "/api/v1/imports")
    except (LabError, ValueError):
        imports = None
    if not imports or "web.default" not in json.dumps(imports):
        _say("== (skipped) curl by name: lab's gateway reports no import web.default (GET /api/v1/imports)")
        return None
    client = lab.plan.cluster("lab").pods[0]
    want_client = ops.view_of(lab, "gpu", "lab", client.ip)
    return _curl(lab, client.name, "http://web.default.svc.clusterset.local/", "gpu/", want_client,
                 "service web, by name")


def _curl(lab: Lab, pod: str, url: str, want_pod: str, want_client: str, what: str) -> tuple[str, bool]:
    _say(f"== lab/{pod}$ curl {url}    # gpu's {what}")
    try:
        seen = eventually_json(lab, "lab", pod, url, within=20)
    except AssertionError as e:
        _say(f"   no answer: {e}")
        return (f"lab/{pod} -> gpu {what}", False)
    _say(f"   {json.dumps(seen)}")
    got_client = seen["client"].rsplit(":", 1)[0]
    good = seen["pod"].startswith(want_pod) and got_client == want_client
    _say(f"   answered by {seen['pod']}, which saw the client as {got_client} "
         f"(gpu's view of lab/{pod}: {want_client})")
    return (f"lab/{pod} -> gpu {what}: answered by {seen['pod']}, client seen as {got_client}", good)


def _nat_table(doc: Any) -> str:
    """The NAT API answer as an operator reads it: one line per rule, with counters."""
    lines = [f"   table {doc.get('table')}"]
    for p in doc.get("peers", []):
        if not isinstance(p, dict):
            continue
        lines.append(f"   peer {p.get('cluster_id')}:")
        for r in p.get("rules", []):
            lines.append(f"     {r.get('chain', ''):<12} {r.get('packets', 0):>6} pkts "
                         f"{r.get('bytes', 0):>9} B  {r.get('comment', '')}")
    return "\n".join(lines)
