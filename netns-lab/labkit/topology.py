"""Lab topology: the YAML an operator writes, and the address plan derived from it.

Pure: no namespaces are touched here. ``load`` validates the YAML and
``plan`` turns it into concrete names and addresses, so the builder, the
tests and ``status`` all agree on who lives where.

YAML (every key optional; defaults give the two-cluster demo)::

    internet: 203.0.113.0/24          # the segment only gateway pods attach to
    clusters:
      - id: gpu
        pod_cidr: 10.244.0.0/16       # nodes get consecutive /24s of it
        service_cidr: 10.96.0.0/12
        node_cidr: 192.168.10.0/24    # the cluster underlay
        nodes: 2
        pods_per_node: [2, 1]         # or one int for every node
        services: [{name: web, port: 80}]   # ip defaults to service_cidr + 10
        gateway_ip: 10.244.0.2        # the gateway pod (on node 1)
        masquerade: false
        cilium_check: false           # emulate Cilium's source-IP check
        ipam_pools: []                # passed to the gateway's ipam.pools
        wireguard: userspace          # or wireguard-go (the reference implementation)
        exports: [{name: web.default, ports: [80/tcp]}]   # the gateway's ``exports``
                                      # (absent: share everything); a lab service's
                                      # name without addresses gets its fixed IP

The default topology (``lab up`` without a file, ``lab demo``) has gpu export
its ``web`` service on 80/tcp; ``parse(None)`` is the same two clusters
sharing everything.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

POD_PORT = 8080  # every lab pod's HTTP server; services map their port to it
API_PORT = 8080  # gateway HTTP API, on the gateway pod
WG_PORT = 51820
NAME_RE = re.compile(r"^[a-z][a-z0-9]{0,9}$")  # lab instance name: short, interface-safe
CID_RE = re.compile(r"^[a-z][a-z0-9]{0,7}$")


class TopologyError(ValueError):
    pass


@dataclass(frozen=True)
class Service:
    name: str
    ip: str
    port: int


@dataclass(frozen=True)
class ClusterSpec:
    id: str
    pod_cidr: str = "10.244.0.0/16"
    service_cidr: str = "10.96.0.0/12"
    node_cidr: str = "192.168.10.0/24"
    nodes: int = 2
    pods_per_node: tuple[int, ...] = (2, 1)
    services: tuple[Service, ...] = ()
    gateway_ip: str | None = None
    masquerade: bool = False
    cilium_check: bool = False
    ipam_pools: tuple[str, ...] = ()
    wireguard: str = "userspace"  # the gateway's wireguard.implementation
    exports: tuple[dict[str, Any], ...] | None = None  # the gateway's exports (None: share everything)


@dataclass(frozen=True)
class Topology:
    clusters: tuple[ClusterSpec, ...]
    internet: str = "203.0.113.0/24"


# ------------------------------------------------------------------ plan


@dataclass(frozen=True)
class Pod:
    name: str  # e.g. "p1", "gw"
    ns: str
    ip: str
    node: str  # node name ("n1")
    host_if: str  # the node-side veth


@dataclass(frozen=True)
class Node:
    name: str
    ns: str
    underlay_ip: str
    pod_subnet: str
    pod_gw: str  # the node's address on its pod veths (pods' default route)


@dataclass
class ClusterPlan:
    spec: ClusterSpec
    index: int
    switch_ns: str
    nodes: list[Node] = field(default_factory=list)
    pods: list[Pod] = field(default_factory=list)
    gateway: Pod | None = None
    internet_ip: str = ""
    wg_interface: str = ""

    @property
    def id(self) -> str:
        return self.spec.id

    @property
    def api_url(self) -> str:
        assert self.gateway is not None
        return f"http://{self.gateway.ip}:{API_PORT}"

    @property
    def public_api_url(self) -> str:
        return f"http://{self.internet_ip}:{API_PORT}"

    def node(self, name: str) -> Node:
        for n in self.nodes:
            if n.name == name:
                return n
        raise KeyError(name)


@dataclass
class LabPlan:
    name: str
    topology: Topology
    internet_ns: str
    clusters: list[ClusterPlan]

    def cluster(self, cid: str) -> ClusterPlan:
        for c in self.clusters:
            if c.id == cid:
                return c
        raise TopologyError(f"no cluster {cid!r} in this lab")

    def namespaces(self) -> list[str]:
        out = [self.internet_ns]
        for c in self.clusters:
            out.append(c.switch_ns)
            out += [n.ns for n in c.nodes]
            out += [p.ns for p in c.pods]
            if c.gateway:
                out.append(c.gateway.ns)
        return out

    def ns_of(self, cid: str, name: str) -> str:
        """Namespace of a node (n1), a pod (p1) or the gateway pod (gw) of a cluster."""
        c = self.cluster(cid)
        for n in c.nodes:
            if n.name == name:
                return n.ns
        for p in [*c.pods, *([c.gateway] if c.gateway else [])]:
            if p.name == name:
                return p.ns
        raise TopologyError(f"no node or pod {name!r} in cluster {cid!r}")


def default_topology() -> Topology:
    return parse({"clusters": [{"id": "gpu", "exports": [{"name": "web.default", "ports": ["80/tcp"]}]},
                               {"id": "lab"}]})


def _net(v: Any, what: str) -> ipaddress.IPv4Network:
    try:
        n = ipaddress.ip_network(str(v), strict=True)
    except ValueError as e:
        raise TopologyError(f"{what}: {e}") from e
    if not isinstance(n, ipaddress.IPv4Network):
        raise TopologyError(f"{what}: the lab builds IPv4 clusters only")
    return n


def parse(data: Any) -> Topology:
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise TopologyError("topology must be a mapping")
    unknown = set(data) - {"clusters", "internet"}
    if unknown:
        raise TopologyError(f"unknown topology keys: {sorted(unknown)}")
    internet = str(data.get("internet", "203.0.113.0/24"))
    _net(internet, "internet")
    raw = data.get("clusters")
    if raw is None:
        raw = [{"id": "gpu"}, {"id": "lab"}]
    if not isinstance(raw, list) or not raw:
        raise TopologyError("clusters must be a non-empty list")
    clusters = tuple(_cluster(c) for c in raw)
    ids = [c.id for c in clusters]
    if len(set(ids)) != len(ids):
        raise TopologyError(f"duplicate cluster ids: {ids}")
    return Topology(clusters, internet)


_CLUSTER_KEYS = {"id", "pod_cidr", "service_cidr", "node_cidr", "nodes", "pods_per_node",
                 "services", "gateway_ip", "masquerade", "cilium_check", "ipam_pools", "wireguard",
                 "exports"}
WG_IMPLEMENTATIONS = ("userspace", "wireguard-go")


def _cluster(d: Any) -> ClusterSpec:
    if not isinstance(d, dict) or "id" not in d:
        raise TopologyError("each cluster needs an id")
    cid = str(d["id"])
    if not CID_RE.match(cid):
        raise TopologyError(f"cluster id {cid!r}: 1-8 chars, [a-z][a-z0-9]*")
    unknown = set(d) - _CLUSTER_KEYS
    if unknown:
        raise TopologyError(f"cluster {cid}: unknown keys {sorted(unknown)}")
    pod = _net(d.get("pod_cidr", "10.244.0.0/16"), f"{cid}.pod_cidr")
    svc = _net(d.get("service_cidr", "10.96.0.0/12"), f"{cid}.service_cidr")
    node = _net(d.get("node_cidr", "192.168.10.0/24"), f"{cid}.node_cidr")
    nodes = d.get("nodes", 2)
    if not isinstance(nodes, int) or not 1 <= nodes <= 8:
        raise TopologyError(f"{cid}.nodes: 1..8")
    if pod.prefixlen > 24 or 2 ** (24 - pod.prefixlen) < nodes:
        raise TopologyError(f"{cid}.pod_cidr {pod} too small for {nodes} /24 node subnets")
    ppn = d.get("pods_per_node", [2, 1] if nodes == 2 else 1)
    if isinstance(ppn, int):
        ppn = [ppn] * nodes
    if (not isinstance(ppn, list) or len(ppn) != nodes
            or not all(isinstance(x, int) and 0 <= x <= 50 for x in ppn)):
        raise TopologyError(f"{cid}.pods_per_node: an int or a list of {nodes} ints (0..50)")
    services = []
    for i, s in enumerate(d.get("services", [{"name": "web", "port": 80}])):
        if not isinstance(s, dict) or not isinstance(s.get("name"), str):
            raise TopologyError(f"{cid}.services[{i}]: needs a name")
        ip = str(s.get("ip", svc.network_address + 10 + i))
        if ipaddress.ip_address(ip) not in svc:
            raise TopologyError(f"{cid}.services[{i}]: {ip} outside {svc}")
        port = s.get("port", 80)
        if not isinstance(port, int) or not 0 < port < 65536:
            raise TopologyError(f"{cid}.services[{i}]: bad port")
        services.append(Service(s["name"], ip, port))
    gw = d.get("gateway_ip")
    if gw is not None:
        if ipaddress.ip_address(str(gw)) not in node_subnet(pod, 0):
            raise TopologyError(f"{cid}.gateway_ip {gw} must lie in node 1's pod subnet")
        gw = str(gw)
    pools = d.get("ipam_pools", [])
    if not isinstance(pools, list):
        raise TopologyError(f"{cid}.ipam_pools: a list of CIDRs")
    for p in pools:
        ipaddress.ip_network(str(p))
    wg = d.get("wireguard", "userspace")
    if wg not in WG_IMPLEMENTATIONS:
        raise TopologyError(f"{cid}.wireguard: one of {', '.join(WG_IMPLEMENTATIONS)}")
    exports = _exports(cid, d.get("exports"), services)
    return ClusterSpec(id=cid, wireguard=wg, exports=exports, pod_cidr=str(pod), service_cidr=str(svc), node_cidr=str(node),
                       nodes=nodes, pods_per_node=tuple(ppn), services=tuple(services),
                       gateway_ip=gw, masquerade=bool(d.get("masquerade", False)),
                       cilium_check=bool(d.get("cilium_check", False)),
                       ipam_pools=tuple(str(p) for p in pools))


def _exports(cid: str, raw: Any, services: list[Service]) -> tuple[dict[str, Any], ...] | None:
    """The cluster's exports as its gateway config gets them (the gateway checks them).

    The lab has no cluster DNS: an export named after one of its services
    (``web.default``) without ``addresses`` gets that service's fixed IP, what
    ``web.default.svc.cluster.local`` would resolve to.
    """
    if raw is None:
        return None
    if not isinstance(raw, list) or not all(isinstance(e, dict) and isinstance(e.get("name"), str) for e in raw):
        raise TopologyError(f"{cid}.exports: a list of {{name, ports, addresses}}")
    ips = {f"{s.name}.default": s.ip for s in services}
    return tuple({**e, "addresses": [ips[e["name"]]]} if "addresses" not in e and e["name"] in ips else dict(e)
                 for e in raw)


def node_subnet(pod: ipaddress.IPv4Network, k: int) -> ipaddress.IPv4Network:
    """Node k's pod subnet: the k-th /24 of the cluster's pod CIDR."""
    return ipaddress.IPv4Network((int(pod.network_address) + k * 256, 24))


def load(path: str | Path | None) -> Topology:
    if path is None:
        return default_topology()
    try:
        data = yaml.safe_load(Path(path).read_text())
    except (OSError, yaml.YAMLError) as e:
        raise TopologyError(f"{path}: {e}") from e
    return parse(data)


def plan(name: str, topo: Topology) -> LabPlan:
    """Names and addresses for every namespace, interface and process of lab ``name``."""
    if not NAME_RE.match(name):
        raise TopologyError(f"lab name {name!r}: 1-10 chars, [a-z][a-z0-9]*")
    inet = ipaddress.ip_network(topo.internet)
    clusters = []
    for ci, spec in enumerate(topo.clusters):
        cp = ClusterPlan(spec=spec, index=ci, switch_ns=f"{name}-{spec.id}-sw",
                         internet_ip=str(inet.network_address + 11 + ci),
                         wg_interface=f"{name}w{ci}")
        underlay = ipaddress.IPv4Network(spec.node_cidr)
        pod_net = ipaddress.IPv4Network(spec.pod_cidr)
        gw_ip = spec.gateway_ip or str(node_subnet(pod_net, 0).network_address + 2)
        pod_no = 0
        for k in range(spec.nodes):
            sub = node_subnet(pod_net, k)
            node = Node(name=f"n{k + 1}", ns=f"{name}-{spec.id}-n{k + 1}",
                        underlay_ip=str(underlay.network_address + 11 + k),
                        pod_subnet=str(sub), pod_gw=str(sub.network_address + 1))
            cp.nodes.append(node)
            host = sub.network_address + 10
            for _ in range(spec.pods_per_node[k]):
                if str(host) == gw_ip:
                    host += 1
                pod_no += 1
                pname = f"p{pod_no}"
                cp.pods.append(Pod(pname, f"{name}-{spec.id}-{pname}", str(host), node.name,
                                   f"v{pname}"))
                host += 1
        cp.gateway = Pod("gw", f"{name}-{spec.id}-gw", gw_ip, "n1", "vgw")
        clusters.append(cp)
    return LabPlan(name=name, topology=topo, internet_ns=f"{name}-inet", clusters=clusters)
