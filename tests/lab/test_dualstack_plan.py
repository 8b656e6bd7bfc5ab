"""The dual-stack lab topology (pure): parsing, the IPv6 address plan, the IPv6 plumbing
commands, the kube-proxy stand-in's ip6 table and the gateway config."""

from __future__ import annotations

import ipaddress
from pathlib import Path

import pytest
from labkit import dualstack, render
from labkit.lab import topology_to_data
from labkit.topology import TopologyError, load, parse, plan

DUALSTACK_YAML = Path(__file__).resolve().parents[2] / "netns-lab" / "topologies" / "dualstack.yaml"


def test_dualstack_yaml_plans_the_same_ranges_on_both_sides() -> None:
    p = plan("x", load(DUALSTACK_YAML))
    assert [c.id for c in p.clusters] == ["gpu", "lab"]
    for c in p.clusters:
        assert c.spec.pod_cidr6 == "fd00::/48" and c.spec.service_cidr6 == "fd00:96::/112"
        assert c.spec.node_cidr6 == "fd00:192:168:10::/64"
        assert [n.pod_subnet6 for n in c.nodes] == ["fd00::/64", "fd00:0:0:1::/64"]
        assert [n.pod_gw6 for n in c.nodes] == ["fd00::1", "fd00:0:0:1::1"]
        assert [n.underlay_ip6 for n in c.nodes] == ["fd00:192:168:10::b", "fd00:192:168:10::c"]
        # Each pod's IPv6 address carries its IPv4 host offset in its node's /64.
        assert [(p.ip, p.ip6) for p in c.pods] == [
            ("10.244.0.10", "fd00::a"), ("10.244.0.11", "fd00::b"), ("10.244.1.10", "fd00:0:0:1::a")]
        assert c.gateway is not None and c.gateway.ip6 == "fd00::2"
        assert [(s.ip, s.ip6) for s in c.spec.services] == [("10.96.0.10", "fd00:96::a")]
        for pod in c.pods:
            assert ipaddress.ip_address(pod.ip6 or "") in ipaddress.ip_network(c.node(pod.node).pod_subnet6 or "")


def test_ipv4_only_clusters_are_unchanged() -> None:
    c = plan("x", parse({"clusters": [{"id": "a"}]})).clusters[0]
    assert c.spec.pod_cidr6 is None and c.spec.node_cidr6 is None
    assert all(p.ip6 is None for p in c.pods) and c.gateway is not None and c.gateway.ip6 is None
    assert dualstack.commands(c) == []
    assert "ip6" not in render.kubeproxy_ruleset(c)
    cfg = render.gateway_config(plan("x", parse({"clusters": [{"id": "a"}]})), c, "/tmp/s")
    assert "gateway_ip6" not in cfg and cfg["pod_cidrs"] == ["10.244.0.0/16"]


def test_state_round_trip_keeps_the_ipv6_plan() -> None:
    # `lab down`/`status` re-read the topology from state.json (dataclasses as dicts, None included).
    t = load(DUALSTACK_YAML)
    assert parse(topology_to_data(t)) == t
    gw = parse({"clusters": [{"id": "a", "gateway_ip": "10.244.0.20", "pod_cidr6": "fd10:1::/56",
                              "services": [{"name": "s", "port": 81, "ip6": "fd00:96::1:5"}],
                              "service_cidr6": "fd00:96::/108", "node_cidr6": "fd99::/120"}]})
    c = plan("x", gw).clusters[0]
    assert c.gateway is not None and c.gateway.ip6 == "fd10:1::14"
    assert c.spec.services[0].ip6 == "fd00:96::1:5" and c.nodes[1].underlay_ip6 == "fd99::c"
    assert parse(topology_to_data(gw)) == gw


@pytest.mark.parametrize("extra, message", [
    ({"pod_cidr6": "10.244.0.0/16"}, "pod_cidr6: must be IPv6"),
    ({"pod_cidr6": "fd00::1/48"}, "host bits set"),
    ({"pod_cidr6": "fd00::/65"}, "too small for 2 /64 node subnets"),
    ({"pod_cidr6": "fd00::/64"}, "too small for 2 /64 node subnets"),
    ({"service_cidr6": "fd00:96::/112"}, "service_cidr6: needs pod_cidr6"),
    ({"node_cidr6": "fd99::/64"}, "node_cidr6: needs pod_cidr6"),
    ({"pod_cidr6": "fd00::/48", "service_cidr6": "fd00:0:0:5::/112"}, "overlaps pod_cidr6"),
    ({"pod_cidr6": "fd00::/48", "node_cidr6": "fd00:0:0:9::/64"}, "overlaps pod_cidr6"),
    ({"pod_cidr6": "fd00::/48", "node_cidr6": "fd99::/125"}, "too small for 2 nodes"),
    ({"pod_cidr6": "fd00::/48", "services": [{"name": "s", "ip6": "fd00:96::1"}]}, "ip6 needs service_cidr6"),
    ({"pod_cidr6": "fd00::/48", "service_cidr6": "fd00:96::/112",
      "services": [{"name": "s", "ip6": "fd00:97::1"}]}, "outside fd00:96::/112"),
    ({"pod_cidr6": "fd00::/48", "service_cidr6": "fd00:96::/112",
      "services": [{"name": "s", "ip6": "nope"}]}, r"services\[0\].ip6"),
    ({"pod_cidr": "fd00::/48"}, "must be IPv4"),
])
def test_bad_dual_stack_topologies_are_rejected(extra: dict[str, object], message: str) -> None:
    with pytest.raises(TopologyError, match=message):
        parse({"clusters": [{"id": "a", **extra}]})


def test_plumbing_commands() -> None:
    c = plan("x", load(DUALSTACK_YAML)).cluster("gpu")
    cmds = [(ns, " ".join(argv)) for ns, argv in dualstack.commands(c)]
    # Every address without duplicate address detection: usable at once.
    assert all("nodad" in a for _, a in cmds if " addr add " in a)
    assert ("x-gpu-n1", "ip -6 addr add fd00:192:168:10::b/64 dev eth0 nodad") in cmds
    assert ("x-gpu-n1", "ip -6 route add fd00:0:0:1::/64 via fd00:192:168:10::c") in cmds
    assert ("x-gpu-n2", "ip -6 route add fd00::/64 via fd00:192:168:10::b") in cmds
    assert ("x-gpu-n2", "ip -6 route add fd00:96::/112 dev eth0") in cmds
    # The gateway pod: its /128, the node's end of its veth, and forwarding.
    assert ("x-gpu-n1", "ip -6 addr add fd00::1/128 dev vgw nodad") in cmds
    assert ("x-gpu-n1", "ip -6 route add fd00::2/128 dev vgw") in cmds
    assert ("x-gpu-gw", "ip -6 addr add fd00::2/128 dev eth0 nodad") in cmds
    assert ("x-gpu-gw", "ip -6 route add default via fd00::1 dev eth0") in cmds
    assert ("x-gpu-gw", "sysctl -qw net.ipv6.conf.all.forwarding=1") in cmds
    assert ("x-gpu-p3", "ip -6 route add default via fd00:0:0:1::1 dev eth0") in cmds
    # Addresses before the routes that use them, per namespace.
    pod = [a for ns, a in cmds if ns == "x-gpu-p3"]
    assert pod.index("ip -6 addr add fd00:0:0:1::a/128 dev eth0 nodad") < pod.index(
        "ip -6 route add fd00:0:0:1::1 dev eth0") < pod.index("ip -6 route add default via fd00:0:0:1::1 dev eth0")


def test_kubeproxy_and_gateway_config_for_dual_stack() -> None:
    lab = plan("x", load(DUALSTACK_YAML))
    c = lab.cluster("lab")
    kp = render.kubeproxy_ruleset(c)
    assert "table ip cwlab-kubeproxy {" in kp and "table ip6 cwlab-kubeproxy {" in kp
    assert "ip daddr 10.96.0.10 tcp dport 80 dnat ip to numgen random mod 3" in kp
    assert ("ip6 daddr fd00:96::a tcp dport 80 dnat ip6 to numgen random mod 3 map "
            "{ 0 : fd00::a . 8080, 1 : fd00::b . 8080, 2 : fd00:0:0:1::a . 8080 }") in kp
    assert "ct status dnat ip6 saddr . ip6 daddr { fd00::a . fd00::a," in kp
    cfg = render.gateway_config(lab, c, "/tmp/s")
    assert cfg["pod_cidrs"] == ["10.244.0.0/16", "fd00::/48"]
    assert cfg["service_cidrs"] == ["10.96.0.0/12", "fd00:96::/112"]
    assert "fd00:192:168:10::/64" in cfg["reserved_cidrs"]
    assert cfg["gateway_ip"] == "10.244.0.2" and cfg["gateway_ip6"] == "fd00::2"
    from gateway.config import parse as parse_config

    gc = parse_config(cfg, env={})  # the gateway's own validator accepts it
    assert gc.gateway_ip6 == "fd00::2" and "fd00::/48" in gc.pod_cidrs
