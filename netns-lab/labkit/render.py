"""Pure renderers: the kube-proxy stand-in, the Cilium check and the gateway config.

kube-proxy stand-in: one nftables table per node, DNAT of every service
IP:port to a random endpoint pod (numgen), in prerouting (traffic from pods
and from the gateway) and output (the node's host network), and masquerade
for hairpin traffic, as kube-proxy's nftables mode does.

Cilium check: Cilium drops packets leaving a pod whose source is not that
pod's IP ("Invalid source ip DROPPED"). The lab emulates it on the gateway's
node with a prerouting rule on the gateway pod's veth, so a gateway that
delivers remote (remapped) sources into the cluster without ``masquerade``
is dropped there; drops are counted in ``nft list table inet cwlab-cilium``.
"""

from __future__ import annotations

from typing import Any

from .topology import API_PORT, OPERATOR_PORT, POD_PORT, WG_PORT, ClusterPlan, LabPlan

KUBEPROXY_TABLE = "cwlab-kubeproxy"
CILIUM_TABLE = "cwlab-cilium"


def kubeproxy_ruleset(c: ClusterPlan) -> str:
    out = _kubeproxy_table("ip", [(s.ip, s.port) for s in c.spec.services], [p.ip for p in c.pods])
    if c.spec.pod_cidr6:  # dual stack: the same for the IPv6 service addresses, in table ip6
        out += _kubeproxy_table("ip6", [(s.ip6, s.port) for s in c.spec.services if s.ip6],
                                [p.ip6 for p in c.pods if p.ip6])
    return out


def _kubeproxy_table(family: str, services: list[tuple[str, int]], eps: list[str]) -> str:
    rules = []
    for ip, port in services:
        if not eps:
            continue  # a service without endpoints: kube-proxy rejects; we let it time out
        m = ", ".join(f"{i} : {ep} . {POD_PORT}" for i, ep in enumerate(eps))
        rules.append(f"{family} daddr {ip} tcp dport {port} "
                     f"dnat {family} to numgen random mod {len(eps)} map {{ {m} }}")
    body = "\n".join(f"    {r}" for r in rules)
    # Hairpin: a pod reaching itself through a service would see its own address as
    # the source and drop the packet; kube-proxy masquerades that case, so do we.
    hairpin = ""
    if eps:
        pairs = ", ".join(f"{ep} . {ep}" for ep in eps)
        hairpin = ("  chain postrouting { type nat hook postrouting priority srcnat; policy accept;\n"
                   f"    ct status dnat {family} saddr . {family} daddr {{ {pairs} }} masquerade\n  }}\n")
    return (f"table {family} {KUBEPROXY_TABLE} {{\n"
            f"  chain services {{\n{body}\n  }}\n{hairpin}"
            "  chain prerouting { type nat hook prerouting priority dstnat; policy accept;\n"
            "    jump services\n  }\n"
            "  chain output { type nat hook output priority -100; policy accept;\n"
            "    jump services\n  }\n"
            "}\n")


def cilium_ruleset(c: ClusterPlan) -> str:
    assert c.gateway is not None
    return (f"table inet {CILIUM_TABLE} {{\n"
            "  chain from_pods { type filter hook prerouting priority raw; policy accept;\n"
            f'    iifname "{c.gateway.host_if}" ip saddr != {c.gateway.ip} counter drop '
            'comment "Invalid source ip DROPPED"\n'
            "  }\n}\n")


def gateway_config(lab: LabPlan, c: ClusterPlan, state_dir: str) -> dict[str, Any]:
    assert c.gateway is not None
    spec = c.spec
    cfg: dict[str, Any] = {
        "cluster_id": spec.id,
        "pod_cidrs": [spec.pod_cidr],
        "service_cidrs": [spec.service_cidr],
        # The underlay and the internet segment must never be handed out as views.
        "reserved_cidrs": [spec.node_cidr, lab.topology.internet],
        "wireguard": {
            "interface": c.wg_interface,
            "listen_port": WG_PORT,
            "endpoint": f"{c.internet_ip}:{WG_PORT}",
            "implementation": spec.wireguard,
        },
        # Peering on every address (the internet leg); the operator surface on the pod
        # address only, which the nodes and pods reach and the other clusters do not.
        "api": {"listen": f"0.0.0.0:{API_PORT}", "advertise": c.public_api_url,
                "operator_listen": f"{c.gateway.ip}:{OPERATOR_PORT}"},
        "state_dir": state_dir,
        "masquerade": spec.masquerade,
        "gateway_ip": c.gateway.ip,
    }
    if spec.ipam_pools:
        cfg["ipam"] = {"pools": list(spec.ipam_pools)}
    if spec.ipam_views != "full":
        cfg.setdefault("ipam", {})["views"] = spec.ipam_views
    if spec.pod_cidr6:  # dual stack: the IPv6 ranges beside the IPv4 ones
        cfg["pod_cidrs"].append(spec.pod_cidr6)
        if spec.service_cidr6:
            cfg["service_cidrs"].append(spec.service_cidr6)
        if spec.node_cidr6:
            cfg["reserved_cidrs"].append(spec.node_cidr6)
        cfg["gateway_ip6"] = c.gateway.ip6
    if spec.exports is not None:
        cfg["exports"] = [dict(e) for e in spec.exports]
    if spec.peer_ranges is not None:
        cfg["peer_ranges"] = dict(spec.peer_ranges)
    return cfg
