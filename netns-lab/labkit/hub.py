"""The hub lab (``topologies/hub.yaml``): peer every spoke with the hub, and what the hub sees.

Peering is the operator's: ``crosswire token create`` in the hub's gateway
pod, ``crosswire peer add -`` (token on stdin) in the spoke's, one token per
spoke. The spokes peer concurrently (a few at a time: each peering is two CLI
runs and an exchange the hub's gateway serves, on a small machine CPU is the
limit). Readings go through the gateways' API (``/api/v1/peers``), one request
per poll for all of the hub's peers.
"""

from __future__ import annotations

import ipaddress
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from . import ops
from .lab import Lab, LabError
from .probe import eventually_json

BY_NAME = "http://web.default.svc.clusterset.local/"  # the hub's export, through a spoke's cluster DNS


def spokes(lab: Lab, hub: str = "hub") -> list[str]:
    return [c.id for c in lab.plan.clusters if c.id != hub]


# What a failed ``peer add`` says when the hub's answer came too late (a stalled machine:
# the exchange's HTTP timeout is 10 s); the spoke rolled back, so a new token may be tried.
TRANSIENT = ("Timeout", "timed out", "cannot reach")


def peer_one(lab: Lab, hub: str, spoke: str, attempts: int = 2) -> int:
    """A fresh single-use token from the hub, redeemed by the spoke (``peer add -``); how many
    tries it took. A try that failed on a timeout is retried with a new token, as an operator
    would; a retry that finds the peering made after all ("already peered") counts as done."""
    for attempt in range(1, attempts + 1):
        try:
            out = ops.peer_add(lab, spoke, ops.token_create(lab, hub))
        except LabError as e:
            if attempt > 1 and "is already peered" in str(e):
                return attempt
            if attempt == attempts or not any(t in str(e) for t in TRANSIENT):
                raise
            continue
        if f"peered with {hub}" not in out:
            raise LabError(f"[{spoke}] peer add printed no 'peered with {hub}': {out!r}")
        return attempt
    raise AssertionError("unreachable")


def peer_spokes(lab: Lab, hub: str, ids: Sequence[str], workers: int = 3) -> dict[str, int]:
    """Peer every spoke in ``ids`` with ``hub``, ``workers`` at a time; {spoke: tries}."""
    with ThreadPoolExecutor(max_workers=workers) as pool:
        futures = {s: pool.submit(peer_one, lab, hub, s) for s in ids}
        return {s: f.result() for s, f in futures.items()}


def wait_peered(lab: Lab, hub: str, ids: Sequence[str], within: float = 90) -> dict[str, dict[str, Any]]:
    """Until the hub reports every spoke connected and every spoke the hub; the hub's peers."""
    end = time.monotonic() + within
    pending = set(ids)
    while pending:  # the spokes' side, one API read each
        for s in sorted(pending):
            p = _peer_or_none(lab, s, hub)
            if p is not None and p.get("state") == "connected":
                pending.discard(s)
        if pending and time.monotonic() > end:
            raise LabError(f"spokes {sorted(pending)} not connected to {hub} after {within:.0f}s")
        if pending:
            time.sleep(0.5)
    while True:  # the hub's side: one read for all of them
        peers = {p["cluster_id"]: p for p in ops.api(lab, hub, "/api/v1/peers", timeout=10)}
        down = [s for s in ids if peers.get(s, {}).get("state") != "connected"]
        if not down:
            return peers
        if time.monotonic() > end:
            raise LabError(f"{hub} reports {down} not connected after {within:.0f}s")
        time.sleep(0.5)


def _peer_or_none(lab: Lab, cid: str, peer_id: str) -> dict[str, Any] | None:
    try:
        return ops.peer(lab, cid, peer_id)
    except LabError:
        return None


def egress_blocks(peers: dict[str, dict[str, Any]]) -> dict[str, list[ipaddress.IPv4Network | ipaddress.IPv6Network]]:
    """The hub's egress block(s) per peer (``our_views`` of kind egress): its names for the
    peer's clients, into which the peer translates everything it sends the hub."""
    return {cid: [ipaddress.ip_network(v["view"]) for v in p.get("our_views") or [] if v["kind"] == "egress"]
            for cid, p in peers.items()}


def call_by_name(lab: Lab, spoke: str, member: str = "p1", within: float = 30) -> dict[str, Any]:
    """A spoke pod's ``curl`` of the hub's export by name (``{"pod", "cluster", "client"}``)."""
    return eventually_json(lab, spoke, member, BY_NAME, within=within)


def client_address(seen: dict[str, Any]) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    """The client address the answering pod reported (``a.b.c.d:port``)."""
    return ipaddress.ip_address(str(seen["client"]).rsplit(":", 1)[0].strip("[]"))
