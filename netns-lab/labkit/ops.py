"""Operator actions on a running lab, done the way an operator does them.

Peering goes through the ``crosswire`` CLI inside the gateway pod (``token
create`` on one side, ``peer add`` on the other); reading goes through the
gateway's HTTP API from inside the cluster. ``view_of`` maps a peer's real
address into the caller's address space with the views the gateway reports.
"""

from __future__ import annotations

import ipaddress
import json
import time
from typing import Any

from .lab import Lab, LabError, http, run, tool_env, venv_bin


def crosswire(lab: Lab, cid: str, *args: str, timeout: float = 60, stdin: str | None = None) -> str:
    """Run the operator CLI in cluster ``cid``'s gateway pod, against its own config."""
    c = lab.plan.cluster(cid)
    assert c.gateway is not None
    cmd = ["env", f"PATH={tool_env()['PATH']}", f"CROSSWIRE_CONFIG={lab.gateway_config_path(c)}",
           str(venv_bin() / "crosswire"), *args]
    p = run(*cmd, ns=c.gateway.ns, check=False, timeout=timeout, input=stdin)
    if p.returncode != 0:
        raise LabError(f"[{cid}] crosswire {' '.join(args[:2])} failed ({p.returncode}): "
                       f"{p.stderr.strip() or p.stdout.strip()}")
    return p.stdout


def token_create(lab: Lab, cid: str) -> str:
    out = crosswire(lab, cid, "token", "create")
    for word in out.split():
        if word.startswith("cw1."):
            return word
    raise LabError(f"[{cid}] `crosswire token create` printed no token")


def peer_add(lab: Lab, cid: str, token: str) -> str:
    # On stdin, as operators should: never in the process arguments.
    return crosswire(lab, cid, "peer", "add", "-", stdin=token)


def api(lab: Lab, cid: str, path: str, timeout: float = 5) -> Any:
    c = lab.plan.cluster(cid)
    code, body = http(c.nodes[0].ns, f"{c.api_url}{path}", timeout=timeout)
    if code != 200:
        raise LabError(f"[{cid}] GET {path} -> {code} {body[:200]!r}")
    return json.loads(body)


def peer(lab: Lab, cid: str, peer_id: str) -> dict[str, Any]:
    for p in api(lab, cid, "/api/v1/peers"):
        if p.get("cluster_id") == peer_id:
            data: dict[str, Any] = p
            return data
    raise LabError(f"[{cid}] has no peer {peer_id!r}")


def translate(ip: str, views: list[dict[str, str]]) -> str | None:
    """An address in the peer's space -> ours, prefix for prefix through its view."""
    addr = ipaddress.ip_address(ip)
    for v in views:
        real, view = ipaddress.ip_network(v["real"]), ipaddress.ip_network(v["view"])
        if addr.version == real.version and addr in real:
            return str(ipaddress.ip_address(int(view.network_address) + int(addr) - int(real.network_address)))
    return None


def view_of(lab: Lab, cid: str, peer_id: str, real_ip: str) -> str:
    """How cluster ``cid`` addresses ``real_ip`` of cluster ``peer_id``."""
    got = translate(real_ip, peer(lab, cid, peer_id)["our_views"])
    if got is None:
        raise LabError(f"[{cid}] no view of {peer_id}'s {real_ip}")
    return got


def wait_connected(lab: Lab, cid: str, peer_id: str, within: float = 60) -> dict[str, Any]:
    end = time.monotonic() + within
    last: Any = None
    while time.monotonic() < end:
        try:
            last = peer(lab, cid, peer_id)
            if last.get("state") == "connected":
                return dict(last)
        except (LabError, ValueError) as e:
            last = str(e)
        time.sleep(0.5)
    raise LabError(f"[{cid}] peer {peer_id} not connected after {within:.0f}s: {last}")


def wait_agents(lab: Lab, within: float = 20) -> None:
    """Until every node's agent has routed every CIDR its gateway publishes."""
    from fabric.agent import AGENT_PROTO

    end = time.monotonic() + within
    for c in lab.plan.clusters:
        want = set(api(lab, c.id, "/api/v1/routes")["cidrs"])
        for n in c.nodes:
            while True:
                # ip -j shows a host route without its /32 (/128): compare networks.
                have = {str(ipaddress.ip_network(r["dst"])) for family in ("-4", "-6")  # dual stack too
                        for r in json.loads(run("ip", "-j", family, "route", "show", "proto",
                                                str(AGENT_PROTO), ns=n.ns).stdout or "[]")}
                if want <= have:
                    break
                if time.monotonic() > end:
                    raise LabError(f"[{c.id}/{n.name}] agent routes {sorted(have)}, want {sorted(want)}")
                time.sleep(0.2)


def peer_all(lab: Lab) -> None:
    """Full mesh: for every pair, the first creates a token, the second adds it."""
    ids = [c.id for c in lab.plan.clusters]
    for i, a in enumerate(ids):
        for b in ids[i + 1:]:
            peer_add(lab, b, token_create(lab, a))
    for a in ids:
        for b in ids:
            if a != b:
                wait_connected(lab, a, b)
    wait_agents(lab)
