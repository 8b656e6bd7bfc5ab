"""``lab demo``: the README's first run, end to end, with a verdict.

Builds the default lab (gpu and lab, both 10.244.0.0/16 + 10.96.0.0/12, each
IPAM with a pool of its own), peers it with the operator CLI, then from lab's
pods curls a gpu pod and the gpu service through lab's views, and checks that
the right pod answered and that it saw the client as gpu's view of lab. It
shows that first request in both clusters' numbers and the gateway's own
``crosswire trace`` of it, which must predict what the server saw. gpu
exports only its web service and that one pod (the default topology's
``exports``), so a curl of another gpu pod must be refused by gpu's gateway
and counted on lab's denied counter. Exit 0
only if all of it held.
"""

from __future__ import annotations

import ipaddress
import json
import time
from typing import Any

from . import exportcheck, ops
from .lab import Lab, LabError, teardown
from .probe import eventually_json
from .topology import POD_PORT, Pod, default_topology


def _say(msg: str) -> None:
    print(msg, flush=True)


def run_demo(name: str, keep: bool = False) -> int:
    t0 = time.monotonic()
    lab = Lab(name, default_topology())
    if lab.is_up():
        _say(f"== lab {name!r} was up; removing it first")
        teardown(name)
    pools = ", ".join(f"{c.id} {' '.join(c.spec.ipam_pools) or 'default'}" for c in lab.plan.clusters)
    _say(f"== building clusters gpu and lab (both pods 10.244.0.0/16, services 10.96.0.0/12; views from "
         f"IPAM pools {pools})")
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
    # 1: lab pod on the non-gateway node -> gpu pod on gpu's non-gateway node (exported as
    # trainer.ml in the default topology), shown in both clusters' numbers and traced.
    client, target = labc.pods[-1], gpu.pods[-1]
    dst = ops.view_of(lab, "lab", "gpu", target.ip)
    want_client = ops.view_of(lab, "gpu", "lab", client.ip)
    checks.append(_curl(lab, client.name, f"http://{dst}:{POD_PORT}/", f"gpu/{target.name}",
                        want_client, f"pod {target.name} ({target.ip})"))
    _show_translation(lab, client, target)
    checks.append(_trace_request(lab, client.ip, dst, POD_PORT, want_client, target.ip))
    # 2: with gpu's exports, another gpu pod is refused and counted.
    if gpu.spec.exports is not None:
        checks.append(exportcheck.demo_refusal(lab, _say, target=gpu.pods[1].name))
    # 3: lab pod -> gpu's service (gpu's kube-proxy stand-in picks a pod).
    client, svc = labc.pods[0], gpu.spec.services[0]
    dst = ops.view_of(lab, "lab", "gpu", svc.ip)
    want_client = ops.view_of(lab, "gpu", "lab", client.ip)
    checks.append(_curl(lab, client.name, f"http://{dst}:{svc.port}/", "gpu/", want_client,
                        f"service {svc.name} ({svc.ip}:{svc.port})"))
    # 4: the same service by name (gpu exports it, so lab imports it).
    if gpu.spec.exports is not None:
        checks.append(curl_by_name(lab))

    for cid in ("lab", "gpu"):
        _say(f"== {cid}: GET /api/v1/nat")
        _say(_nat_table(ops.api(lab, cid, "/api/v1/nat")))
    for name, passed in checks:
        _say(f"   [{'ok' if passed else 'FAIL'}] {name}")
    return all(p for _, p in checks)


def curl_by_name(lab: Lab) -> tuple[str, bool]:
    """lab pod -> ``http://web.default.svc.clusterset.local/``: gpu's exported ``web`` by name.

    The pod's resolver is lab's cluster DNS (dnsmasq, labkit/clusterdns.py),
    which forwards ``clusterset.local`` to lab's gateway; the gateway answers
    with its view address of gpu's service, learned over the peering channel
    (``GET /api/v1/imports``).
    """
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
        if isinstance(p.get("export_denied"), dict):
            lines.append(f"     {'dropped':<12} {p['export_denied'].get('packets', 0):>6} pkts "
                         f"{p['export_denied'].get('bytes', 0):>9} B  from {p.get('cluster_id')}: not exported, "
                         "not offered, or to the gateway itself")
        for r in p.get("rules", []):
            lines.append(f"     {r.get('chain', ''):<12} {r.get('packets', 0):>6} pkts "
                         f"{r.get('bytes', 0):>9} B  {r.get('comment', '')}")
    return "\n".join(lines)


def _pod_view(views: list[dict[str, str]], ip: str) -> dict[str, str]:
    addr = ipaddress.ip_address(ip)
    for v in views:
        if addr in ipaddress.ip_network(v["real"]):
            return v
    raise LabError(f"no view holds {ip}")


def _show_translation(lab: Lab, client: Pod, target: Pod) -> None:
    """The first request in both clusters' numbers: the client, the address it called,
    the address the server saw it from, and the views mapping one to the other."""
    there = _pod_view(ops.peer(lab, "lab", "gpu")["our_views"], target.ip)  # lab's view of gpu's pods
    back = _pod_view(ops.peer(lab, "gpu", "lab")["our_views"], client.ip)  # gpu's view of lab's pods
    called = ops.view_of(lab, "lab", "gpu", target.ip)
    seen = ops.view_of(lab, "gpu", "lab", client.ip)
    rows = [(f"client lab/{client.name}", client.ip, "its address in lab"),
            (f"calls gpu/{target.name} at", called, f"lab's view of gpu's pods: {there['real']} -> {there['view']}"),
            (f"server gpu/{target.name}", target.ip, "its address in gpu"),
            ("server sees the client as", seen, f"gpu's view of lab's pods: {back['real']} -> {back['view']}")]
    _say("== the translation: each cluster names the other in numbers of its own")
    w = max(len(r[0]) for r in rows), max(len(r[1]) for r in rows)
    for label, addr, why in rows:
        _say(f"   {label:<{w[0]}}  {addr:<{w[1]}}  {why}")


def _trace_request(lab: Lab, src: str, dst: str, port: int, want_src: str, want_dst: str) -> tuple[str, bool]:
    """``crosswire trace`` of that request in lab's gateway pod, as an operator runs it; it
    must end where the request did (the server saw the client as ``want_src``)."""
    args = ("trace", src, dst, "--port", str(port))
    _say(f"== lab/gw$ crosswire {' '.join(args)}    # the request above, step by step")
    _say("   " + ops.crosswire(lab, "lab", *args).rstrip().replace("\n", "\n   "))
    doc = json.loads(ops.crosswire(lab, "lab", *args, "--json"))
    got = doc.get("delivered") or {}
    good = doc.get("verdict") == "delivered" and got == {"src": want_src, "dst": want_dst}
    return (f"crosswire trace {src} {dst}: {doc.get('verdict')}, to {got.get('dst')} from {got.get('src')} "
            f"(the server saw {want_src})", good)
