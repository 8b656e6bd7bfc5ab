"""Sparse views through real nftables and WireGuard (issue 23): two gateways in namespaces.

Both clusters use pods 10.244.0.0/16 and services 10.96.0.0/12. Each views the other
sparse: through one /32 per exported address, one for the peer's gateway, and an
egress block that names the peer's clients.

* hub views spoke: export 10.244.3.3 (pod s0) as 100.64.9.1, spoke's gateway
  10.244.0.2 as 100.64.9.2, two more exports as 100.64.8.1-2 (spoke renders its
  four single addresses as one map rule per direction), spoke's clients as the
  /30 100.64.9.4-7. The hub's
  state also holds a stale view 100.64.9.3 of 10.244.3.4, which spoke does not
  export (spoke's state lacks it): what a withdrawn export looks like.
* spoke views hub: export 10.244.2.7 (pod h1) as 100.70.0.5, hub's gateway
  10.244.0.1 as 100.70.0.6, hub's clients as the /29 100.70.1.0-7; IPv6: h1's
  fd00::2:7 as fd70::5, and the hub names spoke's IPv6 clients by fd64::9:0/126.

Five spoke client pods share the hub's four addresses for them, binding the same
source ports: the kernel must pick other ports for some, and every flow must get
its own answer.
"""

from __future__ import annotations

import contextlib
import dataclasses
import ipaddress
import json
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import pytest
from fabric_topo import PORT, Side, add_pod, ask, make_side, program, start_echo, summed
from nsutil import Namespaces, require_root, sh

from fabric import nat, nftdump
from fabric.apply import verify
from fabric.model import FabricState, LocalFabric, PeerFabric, RangeMap
from fabric.nft import Nft, in_netns

pytestmark = pytest.mark.root

FLOWS = __file__.replace("test_netns_sparse.py", "flows.py")
PODS, SVCS, PODS6 = "10.244.0.0/16", "10.96.0.0/12", "fd00::/48"
HUB_BLOCK, SPOKE_BLOCK = "100.64.9.4/30", "100.70.1.0/29"  # each side's name for the other's clients
HUB_BLOCK6 = "fd64::9:0/126"


def rm(*triples: tuple[str, str, str]) -> tuple[RangeMap, ...]:
    return tuple(RangeMap(k, r, v) for k, r, v in triples)  # type: ignore[arg-type]


# Four single addresses: spoke DNATs them through one map rule; the hub's two get a rule each.
SPOKE_SEEN_BY_HUB = rm(("export", "10.244.3.3/32", "100.64.9.1/32"), ("gateway", "10.244.0.2/32", "100.64.9.2/32"),
                       ("export", "10.96.0.30/32", "100.64.8.1/32"), ("export", "10.96.0.31/32", "100.64.8.2/32"),
                       ("egress", "0.0.0.0/30", HUB_BLOCK), ("egress", "::/126", HUB_BLOCK6))
STALE = rm(("export", "10.244.3.4/32", "100.64.9.3/32"))  # the hub's view of something spoke does not export
HUB_SEEN_BY_SPOKE = rm(("export", "10.244.2.7/32", "100.70.0.5/32"), ("gateway", "10.244.0.1/32", "100.70.0.6/32"),
                       ("egress", "0.0.0.0/29", SPOKE_BLOCK), ("export", "fd00::2:7/128", "fd70::5/128"),
                       ("egress", "::/126", "fd70::1:0/126"))
HUB_SEEN_FULL = rm(("pod", PODS, "100.65.0.0/16"), ("service", SVCS, "100.112.0.0/12"))


def state(me: Side, peer: Side, remote: tuple[RangeMap, ...], mine: tuple[RangeMap, ...]) -> FabricState:
    local = LocalFabric(cluster_id=me.cluster_id, interface=me.wg, listen_port=51820, private_key=me.priv,
                        pod_cidrs=(PODS, PODS6), service_cidrs=(SVCS,), gateway_ip=me.gateway_ip)
    return FabricState(local, (PeerFabric(peer.cluster_id, peer.pub, peer.endpoint, remote=remote, local=mine,
                                          persistent_keepalive=0),))


@dataclasses.dataclass
class Pair:
    hub: Side
    spoke: Side
    clients: list[str]


def program_sparse(p: Pair) -> None:
    program(p.hub, state(p.hub, p.spoke, SPOKE_SEEN_BY_HUB + STALE, HUB_SEEN_BY_SPOKE))
    program(p.spoke, state(p.spoke, p.hub, HUB_SEEN_BY_SPOKE, SPOKE_SEEN_BY_HUB))


@pytest.fixture(scope="module")
def pair() -> Iterator[Pair]:
    require_root("wireguard-go", "nft", "ping")
    n = Namespaces()
    sides: list[Side] = []
    try:
        hub = make_side(n, "hub", "198.18.0.1", "10.244.0.1", "wireguard-go")
        sides.append(hub)
        spoke = make_side(n, "spoke", "198.18.0.2", "10.244.0.2", "wireguard-go")
        sides.append(spoke)
        n.veth(hub.gw, spoke.gw, "198.18.0.1/24", "198.18.0.2/24", name="u")
        hub.pods["h1"] = add_pod(n, hub.gw, "10.244.2.7", "10.244.0.1", "fd00::2:7", "fd00::ff")
        hub.pods["h2"] = add_pod(n, hub.gw, "10.244.2.8", "10.244.0.1")
        spoke.pods["s0"] = add_pod(n, spoke.gw, "10.244.3.3", "10.244.0.2")
        spoke.pods["s4"] = add_pod(n, spoke.gw, "10.244.3.4", "10.244.0.2")  # not exported
        clients = [add_pod(n, spoke.gw, f"10.244.1.{i}", "10.244.0.2", f"fd00::1:{i}", "fd00::fe")
                   for i in range(1, 6)]
        for side in (hub, spoke):
            for name, pod in side.pods.items():
                start_echo(pod, name)
            side.dataplane.ensure_up()
        p = Pair(hub, spoke, clients)
        program_sparse(p)
        yield p
    finally:
        for side in sides:
            with contextlib.suppress(Exception):
                side.dataplane.stop()
        n.cleanup()


def in_net(addr: str, net: str) -> bool:
    return ipaddress.ip_address(addr) in ipaddress.ip_network(net)


def prerouting_drops(side: Side) -> int:
    listed = Nft(side.gw).list_chain("inet", "crosswire", "prerouting")
    return sum(d["packets"] for d in nat.drops([listed]))


def not_offered(side: Side) -> int:
    """What the one peer of ``side`` sent to addresses not offered to it (its own drop rule)."""
    assert side.state is not None
    listed = Nft(side.gw).list_table("inet", "crosswire")
    return int(nat.with_counters(nat.mappings(side.state), listed)[0]["not_offered"]["packets"])


def test_client_reaches_exported_address_through_its_view(pair: Pair) -> None:
    # spoke pod -> spoke's /32 view of the hub's export; the hub sees it from its block for spoke.
    for proto in ("udp", "tcp"):
        name, seen, *_ = ask(pair.clients[0], proto, "100.70.0.5")
        assert name == "h1" and in_net(seen, HUB_BLOCK), (proto, seen)
    # The other way: hub pod -> hub's view of spoke's export, seen from spoke's block for the hub.
    name, seen, *_ = ask(pair.hub.pods["h2"], "tcp", "100.64.9.1")
    assert name == "s0" and in_net(seen, SPOKE_BLOCK)
    # IPv6: a /128 view of the hub's pod; the hub sees spoke's client in its /126 block.
    name, seen, *_ = ask(pair.clients[3], "tcp", "fd70::5")
    assert name == "h1" and in_net(seen, HUB_BLOCK6), seen
    # Host network (the spoke gateway itself) to the hub's pod: the block takes it too.
    out = sh("ping", "-c", "2", "-W", "2", "100.70.0.5", ns=pair.spoke.gw, timeout=20)
    assert " 0% packet loss" in out.stdout
    # The hub's gateway itself (its sparse gateway view) is out of the spoke's reach: the guard.
    assert sh("ping", "-c", "1", "-W", "1", "100.70.0.6", ns=pair.spoke.gw, check=False).returncode != 0
    for side in (pair.hub, pair.spoke):
        assert side.state is not None and verify(side.state, netns=side.gw) == []


def _flows(pair: Pair, proto: str, per_pod: int) -> list[tuple[int, list[Any]]]:
    procs = [subprocess.Popen(["ip", "netns", "exec", pod, sys.executable, FLOWS, proto, "100.70.0.5", str(PORT),
                               str(per_pod), str(k * per_pod), "41000"], stdout=subprocess.PIPE, text=True)
             for k, pod in enumerate(pair.clients)]
    out = []
    for k, proc in enumerate(procs):
        stdout, _ = proc.communicate(timeout=150)
        assert proc.returncode == 0
        out += [(k, flow) for flow in json.loads(stdout)]
    return out


@pytest.mark.parametrize(("proto", "per_pod"), [("udp", 80), ("tcp", 40)])
def test_many_flows_through_a_small_block_do_not_collide(pair: Pair, proto: str, per_pod: int) -> None:
    """Five pods x the same source ports, at once, through four addresses: every flow
    answered, each answer its own, every tuple the server saw unique."""
    flows = _flows(pair, proto, per_pod)
    assert len(flows) == 5 * per_pod
    seen: dict[tuple[str, int], int] = {}
    by_pod: dict[int, set[str]] = {}
    moved = 0
    for k, (sport, sent, answer) in flows:
        assert answer is not None, f"pod {k} flow from port {sport}: no answer"
        name, ip, port, nbytes, _ = answer.split()
        assert (name, int(nbytes)) == ("h1", sent), "an answer reached the wrong flow"
        assert in_net(ip, HUB_BLOCK)
        assert (ip, int(port)) not in seen, f"tuple {ip}:{port} used twice"
        seen[(ip, int(port))] = k
        by_pod.setdefault(k, set()).add(ip)
        moved += int(port) != sport
    # persistent: one client keeps one address; five clients on four addresses share
    # one, with the same source ports, so the kernel had to move ports.
    assert all(len(ips) == 1 for ips in by_pod.values()), by_pod
    assert len({ip for ips in by_pod.values() for ip in ips}) <= 4
    assert moved >= per_pod


def test_not_offered_destinations_are_dropped_and_counted(pair: Pair) -> None:
    # The hub's stale view of a spoke pod that spoke does not export: spoke drops it,
    # counted against the hub (the last rule of spoke's from-hub), not on prerouting's
    # drop, which is left with sources in no peer's view.
    before, base = not_offered(pair.spoke), prerouting_drops(pair.spoke)
    assert ask(pair.hub.pods["h2"], "udp", "100.64.9.3", check=False) == []
    # Into spoke's egress block for the hub (it names the hub's clients, offers nothing).
    assert ask(pair.hub.pods["h2"], "udp", "100.64.9.5", check=False) == []
    assert not_offered(pair.spoke) - before >= 10  # 5 tries each
    assert prerouting_drops(pair.spoke) == base
    # From spoke into the block naming the hub's clients: the hub drops it, against spoke.
    before = not_offered(pair.hub)
    assert ask(pair.clients[1], "udp", "100.70.1.3", check=False) == []
    assert not_offered(pair.hub) - before >= 5
    # The drop rules as the kernel's chain dumps give them (what /api/v1/nat reads): the same
    chains = ("prerouting", "postrouting")
    dumped = nat.drops([in_netns(pair.hub.gw, lambda: nftdump.listing("inet", "crosswire", chains))])
    assert dumped == nat.drops(Nft(pair.hub.gw).list_chain("inet", "crosswire", c) for c in chains)
    assert dumped and all(isinstance(d["handle"], int) for d in dumped), dumped
    # The export next to it still answers: the drops were per address, not per peer.
    assert ask(pair.hub.pods["h2"], "udp", "100.64.9.1")[0] == "s0"


def test_per_export_counters_from_the_kernel(pair: Pair) -> None:
    assert pair.spoke.state is not None
    ask(pair.hub.pods["h2"], "tcp", "100.64.9.1", nbytes=100_000)
    ask(pair.clients[0], "udp", "100.70.0.5")
    rows = nat.with_counters(nat.mappings(pair.spoke.state), Nft(pair.spoke.gw).list_table("inet", "crosswire"))
    by = {(r["direction"], r["kind"], r.get("element")): r for r in rows[0]["rules"]}
    exp = by[("ingress", "export", "100.64.9.1 : 10.244.3.3")]
    assert exp["handle"] is not None and exp["bytes"] >= 100_000  # its element of spoke's counting set
    # spoke's exported pod opening a connection keeps its own view (the map rule), not the block.
    assert ask(pair.spoke.pods["s0"], "udp", "100.70.0.5")[:2] == ["h1", "100.64.9.1"]
    rows = nat.with_counters(nat.mappings(pair.spoke.state), Nft(pair.spoke.gw).list_table("inet", "crosswire"))
    out = next(r for r in rows[0]["rules"] if r.get("element") == "10.244.3.3 : 100.64.9.1")
    assert out["map_connections"] >= 1 and out["packets"] > exp["packets"]
    block = next(r for r in rows[0]["rules"] if r["kind"] == "egress" and r["view"] == HUB_BLOCK)
    assert block["shows"] == "any source -> 100.64.9.4-100.64.9.7" and block["packets"] > 0
    assert block["connections"] >= 1
    # One peer's rows from its own chains, counting sets and host maps (what /api/v1/nat?peer=
    # lists): the same rows, counters and handles as from the whole table.
    cid = pair.spoke.state.peers[0].cluster_id
    chains, sets, maps = nat.listed_objects(pair.spoke.state, {cid})
    assert sets, sets  # the counting sets are listed too
    alone = nat.with_counters(nat.mappings(pair.spoke.state, {cid}),
                              Nft(pair.spoke.gw).list_objects("inet", "crosswire", chains, sets, maps))
    assert alone == rows
    # ... and from the kernel's own dumps (fabric.nftdump), which the gateway reads them with
    dumped = in_netns(pair.spoke.gw, lambda: nftdump.listing("inet", "crosswire", chains, sets, maps))
    assert nat.with_counters(nat.mappings(pair.spoke.state, {cid}), dumped) == rows
    # ... and every peer's from one table-wide rule dump and the elements (a scrape, the full report)
    everything = in_netns(pair.spoke.gw, lambda: {"nftables": nftdump.rules("inet", "crosswire", None) + nftdump.listing(
        "inet", "crosswire", (), sets, maps)["nftables"]})
    assert nat.with_counters(nat.mappings(pair.spoke.state), everything) == rows
    # /metrics' sums from the same dumps, without the rows: what the rows add up to
    per, dropped = nat.totals(pair.spoke.state, everything, {cid: {"packets": 2, "bytes": 0}})
    assert per == summed(rows) and any(pk > 0 for _, _, pk, _, _ in per)
    assert dropped == {cid: 2 + rows[0]["not_offered"]["packets"]}


def test_mixed_spoke_views_hub_full(pair: Pair) -> None:
    """The hub still views spoke sparse, spoke views the hub full (whole ranges)."""
    try:
        program(pair.hub, state(pair.hub, pair.spoke, SPOKE_SEEN_BY_HUB, HUB_SEEN_FULL))
        program(pair.spoke, state(pair.spoke, pair.hub, HUB_SEEN_FULL, SPOKE_SEEN_BY_HUB))
        # Any hub pod through the full view; the hub still sees spoke's clients in the block.
        name, seen, *_ = ask(pair.clients[2], "tcp", "100.65.2.8")
        assert name == "h2" and in_net(seen, HUB_BLOCK)
        # The hub's pods reach spoke's export from their full view (100.65.x.y).
        name, seen, *_ = ask(pair.hub.pods["h1"], "udp", "100.64.9.1")
        assert (name, seen) == ("s0", "100.65.2.7")
    finally:
        program_sparse(pair)
    assert ask(pair.clients[2], "udp", "100.70.0.5")[0] == "h1"


def test_delta_of_a_sparse_peer_in_the_kernel() -> None:
    """One sparse peer's exports change among full peers: the delta (its chains, its
    counting set, its collapsed keys) leaves the table a whole render makes."""
    require_root("nft")
    local = LocalFabric(cluster_id="spoke", interface="wg0", listen_port=51820, private_key="A" * 43 + "=",
                        pod_cidrs=(PODS,), service_cidrs=(SVCS,), gateway_ip="10.244.0.2")

    def peer(cid: str, remote: tuple[RangeMap, ...], mine: tuple[RangeMap, ...]) -> PeerFabric:
        return PeerFabric(cid, "A" * 43 + "=", None, remote=remote, local=mine)

    full = tuple(peer(f"f{i}", rm(("pod", PODS, f"100.{80 + i}.0.0/16")), HUB_SEEN_FULL) for i in range(3))
    before = FabricState(local, (peer("hub", HUB_SEEN_BY_SPOKE, SPOKE_SEEN_BY_HUB), *full))
    moved = rm(("export", "10.96.0.32/32", "100.64.8.3/32"))  # one export more, one view of us more
    after = FabricState(local, (peer("hub", HUB_SEEN_BY_SPOKE + rm(("export", "10.96.0.11/32", "100.70.0.7/32")),
                                     SPOKE_SEEN_BY_HUB + moved), *full))
    with contextlib.ExitStack() as stack:
        n = Namespaces()
        stack.callback(n.cleanup)
        ns, ref = n.add("cwd"), n.add("cwd")
        Nft(ns).apply(nat.render_text(before))
        delta = nat.render_delta(before, after)
        assert delta is not None and '"delete":{"set"' in delta
        Nft(ns).apply(delta)
        Nft(ref).apply(nat.render_text(after))

        def listing(x: str) -> list[str]:
            return sorted(line.strip() for line in sh("nft", "list", "table", "inet", "crosswire", ns=x).stdout.splitlines())

        got = listing(ns)
        assert got == listing(ref)
        assert any("10.96.0.32" in line and "@exp-hub-v4" not in line for line in got)  # in the set's elements
        assert any("100.70.0.6-100.70.0.7" in line or "100.70.0.6/31" in line for line in got)  # collapsed key
