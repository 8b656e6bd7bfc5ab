"""Issue 22 end to end: two real gateways in namespaces (tests/gateway/gwharness.py),
a token that carries ranges, and a hostile ``ranges`` message sent by a peer that holds
a valid channel key. The refusal leaves routes, allowed IPs, IPAM and what node agents
get exactly as they were."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

from gwharness import OPERATOR, PODS, Gw, ping, two_gateways, view_of, wait_ping
from nsutil import Namespaces, require_root, sh

# A peer's software is its own: this one signs a `ranges` message with its real channel key.
HOSTILE = r"""
import json, sys, time, httpx
from gateway import peering
from gateway.state import StateStore
st = StateStore(sys.argv[1]); p = st.peer(sys.argv[2])
body = {"ranges": json.loads(sys.argv[3]), "gateway_ip": "10.244.0.10"}
msg = peering.build_message(p.channel_key, sys.argv[4], p.cluster_id, "ranges", body, time.time())
url = "https://" + p.url.split("://", 1)[1]  # the peering listener speaks TLS (this test plays the peer)
r = httpx.post(url + "/api/v1/peering/message", json=msg, timeout=10, verify=False)
print(json.dumps({"status": r.status_code, "body": r.json()}))
"""
OWN = [{"kind": "pod", "cidr": "10.244.0.0/16"}, {"kind": "pod", "cidr": "fd00::/48"},
       {"kind": "service", "cidr": "10.96.0.0/12"}]


def seen_by_peers(g: Gw) -> dict[str, Any]:
    """Everything on ``g`` a peer's ranges reach: routes, allowed IPs, IPAM, the agents' routes."""
    routes = sh("ip", "-j", "route", "show", "proto", "245", ns=g.ns).stdout
    routes6 = sh("ip", "-j", "-6", "route", "show", "proto", "245", ns=g.ns).stdout
    allowed = sh("wg", "show", g.iface, "allowed-ips", ns=g.ns).stdout
    agents = sh(sys.executable, "-c", "import httpx,sys; print(httpx.get(sys.argv[1]).text)",
                f"{OPERATOR}/api/v1/routes", ns=g.ns).stdout
    return {"routes": sorted(r["dst"] for r in json.loads(routes) + json.loads(routes6)),
            "allowed": sorted(allowed.split()), "ipam": g.cli_json("ipam", "show")["allocations"],
            "agents": json.loads(agents)}


def test_token_ranges_and_a_hostile_ranges_message_in_namespaces(netns: Namespaces, tmp_path: Path) -> None:
    require_root("wireguard-go", "wg", "nft", "ping")
    os.chmod(tmp_path, 0o700)
    with two_gateways(netns, tmp_path) as (a, b):
        # A token for a's pods only: a's join announces its service range too and is refused.
        narrow = b.cli("token", "create", "--ranges", "10.244.0.0/16,fd00::/48").stdout.strip()
        r = a.cli("peer", "add", narrow, check=False)
        assert r.returncode == 1 and "service 10.96.0.0/12: outside the ranges this peer's token allows " \
            "(10.244.0.0/16, fd00::/48) (HTTP 403)" in r.stderr, r.stderr
        assert b.cli_json("peer", "list") == [] and a.cli_json("peer", "list") == []
        r = b.cli("token", "create", "--ranges", "10.244.0.0/16,8.8.8.0/24", check=False)
        assert r.returncode == 1 and "ranges[1]: 8.8.8.0/24 is outside peer_ranges.allow" in r.stderr

        # The token b's operator meant: a peers, pods talk.
        a.cli("peer", "add", b.cli("token", "create", "--ranges", "10.244.0.0/16,fd00::/48,10.96.0.0/12")
              .stdout.strip())
        a_sees_b = a.cli_json("peer", "list")[0]["our_views"]
        wait_ping(a.pods[0], view_of(PODS[1], a_sees_b))
        shown = b.cli("peer", "ranges", "a").stdout
        assert "token ranges 10.244.0.0/16,fd00::/48,10.96.0.0/12" in shown and "no pending range change" in shown

        # The route hijack of issue 22, then the pool hog: refused with 403, nothing changes on b.
        before = seen_by_peers(b)
        for extra, limit in (([{"kind": "pod", "cidr": "8.8.8.0/24"}, {"kind": "pod", "cidr": "1.0.0.0/8"}],
                              "pod 8.8.8.0/24: outside the address space this gateway accepts from peers"),
                             ([{"kind": "pod", "cidr": "100.64.0.0/10"}, {"kind": "pod", "cidr": "172.16.0.0/12"}],
                              "pod 100.64.0.0/10: outside the ranges this peer's token allows")):
            out = json.loads(sh(sys.executable, "-c", HOSTILE, str(a.state_dir), "b", json.dumps(OWN + extra), "a",
                                ns=a.ns).stdout)
            assert out["status"] == 403 and limit in out["body"]["detail"], out
        assert seen_by_peers(b) == before
        assert not any(c.startswith(("8.", "1.", "100.64.0.0/10")) for c in before["agents"]["cidrs"])
        assert b.iface not in sh("ip", "route", "get", "8.8.8.8", ns=b.ns, check=False).stdout
        log = b.log.read_text()
        assert "WARNING" in log and "peer a: range change refused" in log and "pod 8.8.8.0/24" in log
        # Traffic between the two is untouched.
        assert ping(a.pods[0], view_of(PODS[1], a_sees_b))
