"""The IPv6 half of a dual-stack lab cluster (pure: the commands, not their running).

A cluster with ``pod_cidr6`` gets, beside its IPv4 plumbing and on the same
links, the same layout in IPv6 (netns-lab/DESIGN.md, "Dual stack"):

- each node's ``eth0`` an address in ``node_cidr6``; nodes route each other's
  pod /64s via those (flannel host-gw style, as for IPv4);
- each pod (the gateway pod too) a /128 on ``eth0`` and a default route via
  its node's ``pod_gw6``, which the node holds on every pod veth with a /128
  route per pod (Calico style, as for IPv4);
- IPv6 forwarding on every node and in the gateway pod.

Addresses are added with ``nodad``: duplicate address detection would hold
each one tentative (unusable as a source) for a second or more, and every
address here is unique by construction.
"""

from __future__ import annotations

from .topology import ClusterPlan

Command = tuple[str, list[str]]  # (namespace, argv)

FORWARD6 = ["sysctl", "-qw", "net.ipv6.conf.all.forwarding=1"]


def commands(c: ClusterPlan) -> list[Command]:
    """Every command that gives cluster ``c`` its IPv6 side, in order; [] for an IPv4-only cluster."""
    spec = c.spec
    if not spec.pod_cidr6 or c.gateway is None:
        return []
    assert spec.node_cidr6 is not None
    out: list[Command] = []
    plen = spec.node_cidr6.split("/")[1]
    for n in c.nodes:
        out.append((n.ns, FORWARD6))
        out.append((n.ns, ["ip", "-6", "addr", "add", f"{n.underlay_ip6}/{plen}", "dev", "eth0", "nodad"]))
    for n in c.nodes:
        if spec.service_cidr6:  # as for IPv4: host-network clients need a route before the output DNAT
            out.append((n.ns, ["ip", "-6", "route", "add", spec.service_cidr6, "dev", "eth0"]))
        for o in c.nodes:
            if o is not n:
                out.append((n.ns, ["ip", "-6", "route", "add", str(o.pod_subnet6), "via", str(o.underlay_ip6)]))
    for pod in [*c.pods, c.gateway]:
        node = c.node(pod.node)
        out += [
            (node.ns, ["ip", "-6", "addr", "add", f"{node.pod_gw6}/128", "dev", pod.host_if, "nodad"]),
            (node.ns, ["ip", "-6", "route", "add", f"{pod.ip6}/128", "dev", pod.host_if]),
            (pod.ns, ["ip", "-6", "addr", "add", f"{pod.ip6}/128", "dev", "eth0", "nodad"]),
            (pod.ns, ["ip", "-6", "route", "add", str(node.pod_gw6), "dev", "eth0"]),
            (pod.ns, ["ip", "-6", "route", "add", "default", "via", str(node.pod_gw6), "dev", "eth0"]),
        ]
    out.append((c.gateway.ns, FORWARD6))
    return out
