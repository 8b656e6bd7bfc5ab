"""The lab's topology parsing and address plan (pure)."""

from __future__ import annotations

import ipaddress

import pytest
from labkit import render
from labkit.topology import TopologyError, default_topology, parse, plan


def test_default_is_two_identical_clusters() -> None:
    p = plan("cwlab", default_topology())
    assert [c.id for c in p.clusters] == ["gpu", "lab"]
    for c in p.clusters:
        assert c.spec.pod_cidr == "10.244.0.0/16" and c.spec.service_cidr == "10.96.0.0/12"
        assert [n.pod_subnet for n in c.nodes] == ["10.244.0.0/24", "10.244.1.0/24"]
        assert len(c.pods) == 3 and c.gateway is not None and c.gateway.node == "n1"
        assert [s.ip for s in c.spec.services] == ["10.96.0.10"]
        for pod in c.pods:
            assert ipaddress.ip_address(pod.ip) in ipaddress.ip_network(c.node(pod.node).pod_subnet)
    # Names never collide between instances or clusters, and interfaces fit in 15 chars.
    ns = p.namespaces()
    assert len(ns) == len(set(ns)) and all(n.startswith("cwlab-") for n in ns)
    assert {c.wg_interface for c in p.clusters} == {"cwlabw0", "cwlabw1"}
    assert not set(ns) & set(plan("other", default_topology()).namespaces())
    assert p.ns_of("lab", "p3") == "cwlab-lab-p3" and p.ns_of("gpu", "gw") == "cwlab-gpu-gw"
    # Each IPAM has a pool of its own, so the two sides name each other with different
    # numbers (the demo shows the translation); a topology without clusters is the same
    # two clusters sharing everything, the default one adds gpu's exports.
    assert [c.spec.ipam_pools for c in p.clusters] == [("100.96.0.0/11",), ("100.64.0.0/11",)]
    assert parse({}) == parse(None)
    assert [c.exports is None for c in parse(None).clusters] == [True, True]
    gpu_exports = default_topology().clusters[0].exports
    assert gpu_exports is not None and [e["name"] for e in gpu_exports] == ["web.default", "trainer.ml"]
    # trainer.ml is pod p3, the one the demo calls and traces.
    assert gpu_exports[1]["addresses"] == [dict((q.name, q.ip) for q in p.cluster("gpu").pods)["p3"]]
    same = parse({"clusters": [{"id": "gpu"}, {"id": "lab"}]})
    assert [c.ipam_pools for c in same.clusters] == [(), ()]  # tests/lab's SAME_NUMBERS case


def test_pods_skip_the_gateway_ip() -> None:
    t = parse({"clusters": [{"id": "a", "gateway_ip": "10.244.0.10"}]})
    c = plan("x", t).clusters[0]
    assert c.gateway is not None and c.gateway.ip == "10.244.0.10"
    assert "10.244.0.10" not in [p.ip for p in c.pods]


def test_containment_and_partial_ranges_plan() -> None:
    t = parse({"clusters": [{"id": "a", "pod_cidr": "10.0.0.0/8"},
                            {"id": "b", "pod_cidr": "10.244.128.0/17", "nodes": 3,
                             "pods_per_node": 1}]})
    a, b = plan("x", t).clusters
    assert [n.pod_subnet for n in a.nodes] == ["10.0.0.0/24", "10.0.1.0/24"]
    assert [n.pod_subnet for n in b.nodes] == ["10.244.128.0/24", "10.244.129.0/24", "10.244.130.0/24"]
    assert b.gateway is not None and b.gateway.ip == "10.244.128.2"


@pytest.mark.parametrize("bad", [
    [],
    {"clusters": []},
    {"clusters": [{"id": "a"}, {"id": "a"}]},
    {"clusters": [{"id": "A-b"}]},
    {"clusters": [{"id": "a", "pod_cidr": "10.244.0.1/16"}]},
    {"clusters": [{"id": "a", "pod_cidr": "fd00::/48"}]},
    {"clusters": [{"id": "a", "nodes": 3, "pods_per_node": [1, 1]}]},
    {"clusters": [{"id": "a", "pod_cidr": "10.244.0.0/25"}]},
    {"clusters": [{"id": "a", "services": [{"name": "s", "ip": "10.0.0.1"}]}]},
    {"clusters": [{"id": "a", "gateway_ip": "10.244.1.2"}]},
    {"clusters": [{"id": "a", "bogus": 1}]},
    {"clusterz": []},
    {"clusters": [{"id": "a", "wireguard": "kernel"}]},
    {"clusters": [{"id": "a", "peer_ranges": ["10.0.0.0/8"]}]},
])
def test_bad_topologies_are_rejected(bad: object) -> None:
    with pytest.raises(TopologyError):
        parse(bad)


def test_bad_lab_names_are_rejected() -> None:
    for name in ("", "Upper", "has-dash", "waytoolongname"):
        with pytest.raises(TopologyError):
            plan(name, default_topology())


def test_renderers() -> None:
    lab = plan("x", parse({"clusters": [{"id": "a", "cilium_check": True, "masquerade": True}]}))
    c = lab.clusters[0]
    kp = render.kubeproxy_ruleset(c)
    assert "ip daddr 10.96.0.10 tcp dport 80 dnat ip to numgen random mod 3" in kp
    assert "0 : 10.244.0.10 . 8080, 1 : 10.244.0.11 . 8080, 2 : 10.244.1.10 . 8080" in kp
    assert 'iifname "vgw" ip saddr != 10.244.0.2 counter drop' in render.cilium_ruleset(c)
    cfg = render.gateway_config(lab, c, "/tmp/s")
    assert cfg["wireguard"]["interface"] == "xw0" and cfg["masquerade"] is True
    assert cfg["api"]["advertise"] == "https://203.0.113.11:8080"
    assert cfg["api"]["operator_listen"] == "10.244.0.2:8081"  # the pod address: never the internet leg
    assert cfg["wireguard"]["endpoint"] == "203.0.113.11:51820"
    assert "192.168.10.0/24" in cfg["reserved_cidrs"] and cfg["gateway_ip"] == "10.244.0.2"
    # The gateway's own validator accepts what the lab writes.
    from gateway.config import parse as parse_config

    gc = parse_config(cfg, env={})
    assert gc.advertise_url() == "https://203.0.113.11:8080" and gc.gateway_ip == "10.244.0.2"


def test_peer_ranges_reach_the_gateway_and_widen_what_the_agents_route() -> None:
    from gateway.config import parse as parse_config

    lab = plan("x", parse({"clusters": [
        {"id": "a"},
        {"id": "b", "ipam_pools": ["100.64.0.0/10", "11.0.0.0/8"],
         "peer_ranges": {"allow": ["10.0.0.0/8", "198.18.0.0/15"], "max_ranges": 4}}]}))
    a, b = lab.clusters
    assert "peer_ranges" not in render.gateway_config(lab, a, "/tmp/s")
    assert a.spec.agent_allow() == ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "100.64.0.0/10", "fd00::/8")
    gc = parse_config(render.gateway_config(lab, b, "/tmp/s"), env={})
    assert gc.peer_ranges.allow == ("10.0.0.0/8", "198.18.0.0/15") and gc.peer_ranges.max_ranges == 4
    assert b.spec.agent_allow() == ("10.0.0.0/8", "198.18.0.0/15", "100.64.0.0/10", "11.0.0.0/8")


def test_hub_topology_by_name_fits_the_internet_segment_and_interface_names() -> None:
    from labkit.topology import TOPOLOGY_DIR, load, resolve

    # `lab up --topology hub` finds netns-lab/topologies/hub.yaml; a path still works.
    assert resolve("hub") == TOPOLOGY_DIR / "hub.yaml"
    assert load("hub") == load(str(TOPOLOGY_DIR / "hub.yaml"))
    with pytest.raises(TopologyError, match="hub"):  # the error lists the known names
        load("nosuchtopology")
    t = load("hub")
    hub, spokes = t.clusters[0], t.clusters[1:]
    assert hub.id == "hub" and hub.ipam_views == "sparse" and len(spokes) == 30
    assert hub.exports == ({"name": "web.default", "ports": ["80/tcp"], "addresses": ["10.96.0.10"]},)
    for c in t.clusters:
        assert (c.pod_cidr, c.service_cidr, c.ipam_pools, c.nodes) == (
            "10.244.0.0/16", "10.96.0.0/12", ("100.64.0.0/10",), 1)
        assert c.agent_interval == 5.0
    assert all(c.ipam_views == "full" and c.exports is None and len(c.pods_per_node) == 1 for c in spokes)
    # The longest lab name: 31 gateways get distinct internet addresses inside 203.0.113.0/24
    # (.11 .. .41), and every interface name stays unique and within IFNAMSIZ (15).
    p = plan("abcdefghij", t)
    inet = ipaddress.ip_network(t.internet)
    ips = [ipaddress.ip_address(c.internet_ip) for c in p.clusters]
    assert len(set(ips)) == 31 and all(ip in inet and ip != inet.broadcast_address for ip in ips)
    wg = [c.wg_interface for c in p.clusters]
    assert len(set(wg)) == 31 and max(map(len, wg)) <= 15
    ns = p.namespaces()
    assert len(ns) == len(set(ns))
    # The round trip through the lab's state file keeps the agent interval.
    from labkit.lab import topology_to_data

    assert parse(topology_to_data(t)) == t


def test_agent_interval_and_the_internet_segments_room() -> None:
    t = parse({"agent_interval": 3, "clusters": [{"id": "a"}, {"id": "b", "agent_interval": 0.5}]})
    assert [c.agent_interval for c in t.clusters] == [3.0, 0.5]
    assert parse({}).clusters[0].agent_interval == 1.0
    for bad in ({"agent_interval": 0}, {"agent_interval": "5"},
                {"clusters": [{"id": "a", "agent_interval": 120}]}):
        with pytest.raises(TopologyError, match="agent_interval"):
            parse(bad)
    # A /28 holds .11 .. .14 below its broadcast address: 4 gateways, not 5.
    parse({"internet": "203.0.113.0/28", "clusters": [{"id": f"c{i}"} for i in range(4)]})
    with pytest.raises(TopologyError, match="room for 4 gateways"):
        parse({"internet": "203.0.113.0/28", "clusters": [{"id": f"c{i}"} for i in range(5)]})
