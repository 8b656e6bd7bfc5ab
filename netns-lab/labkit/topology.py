"""Lab topology: the YAML an operator writes, and the address plan derived from it.

Pure: no namespaces are touched here. ``load`` validates the YAML and
``plan`` turns it into concrete names and addresses, so the builder, the
tests and ``status`` all agree on who lives where.

YAML (every key optional; defaults give the two-cluster demo)::

    internet: 203.0.113.0/24          # the segment only gateway pods attach to (cluster i: .11+i)
    agent_interval: 1                 # default of every cluster's agent_interval
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
        ipam_pools: []                # passed to the gateway's ipam.pools (default topology: gpu
                                      # 100.96.0.0/11, lab 100.64.0.0/11, so their views differ)
        ipam_views: full              # or sparse: view peers through what they export (a hub)
        wireguard: userspace          # or wireguard-go (the reference implementation)
        agent_interval: 1             # the agents' --interval: polls of a gateway from before the watch
        # Dual stack (optional): IPv6 ranges beside the IPv4 ones. Node k gets the
        # k-th /64 of pod_cidr6; every pod (and the gateway) gets the IPv4 host
        # offset in its node's /64; services get ip6 (default service_cidr6 + 10).
        pod_cidr6: fd00::/48
        service_cidr6: fd00:96::/112
        node_cidr6: fd00:192:168:10::/64   # the default when pod_cidr6 is set
        exports: [{name: web.default, ports: [80/tcp]}]   # the gateway's ``exports``
                                      # (absent: share everything); a lab service's
                                      # name without addresses gets its fixed IP
        peer_ranges: {max_view_addresses: {ipv4: /7}}   # the gateway's ``peer_ranges``
                                      # (absent: its defaults); the node agents route
                                      # views inside its ``allow`` and ``ipam_pools``

The default topology (``lab up`` without a file, ``lab demo``) has gpu export
its ``web`` service on 80/tcp and one pod (``trainer.ml``, p3 on 8080/tcp);
``parse(None)`` is the same two clusters sharing everything. ``load`` takes
a file path or the bare name of a file in ``netns-lab/topologies/``
(``hub`` is ``netns-lab/topologies/hub.yaml``).
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

POD_PORT = 8080  # every lab pod's HTTP server; services map their port to it
API_PORT = 8080  # the gateway's peering listener (TLS), published on its internet leg
OPERATOR_PORT = 8081  # the gateway's operator listener, on its pod address only
WG_PORT = 51820
NAME_RE = re.compile(r"^[a-z][a-z0-9]{0,9}$")  # lab instance name: short, interface-safe
CID_RE = re.compile(r"^[a-z][a-z0-9]{0,7}$")
TOPOLOGY_DIR = Path(__file__).resolve().parent.parent / "topologies"
TOPOLOGY_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9_-]*$")  # a bare name: netns-lab/topologies/<name>.yaml
FIRST_INTERNET_HOST = 11  # cluster i's gateway is internet + 11 + i


class TopologyError(ValueError):
    pass


@dataclass(frozen=True)
class Service:
    name: str
    ip: str
    port: int
    ip6: str | None = None  # dual stack: the service's IPv6 address


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
    ipam_views: str = "full"  # the gateway's ipam.views (full | sparse)
    wireguard: str = "userspace"  # the gateway's wireguard.implementation
    agent_interval: float = 1.0  # the agents' --interval (s): they watch; polls only a pre-watch gateway
    pod_cidr6: str | None = None  # dual stack (see the module docstring)
    service_cidr6: str | None = None
    node_cidr6: str | None = None
    exports: tuple[dict[str, Any], ...] | None = None  # the gateway's exports (None: share everything)
    peer_ranges: dict[str, Any] | None = None  # the gateway's peer_ranges (None: its defaults)

    def agent_allow(self) -> tuple[str, ...]:
        """What the node agents may route: the views come from the pools (remaps) or are
        peer ranges the gateway accepted (identity), inside ``peer_ranges.allow``."""
        from fabric.model import PEER_SPACE

        allow = (self.peer_ranges or {}).get("allow") or PEER_SPACE
        return tuple(dict.fromkeys([*map(str, allow), *self.ipam_pools]))


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
    ip6: str | None = None  # dual stack


@dataclass(frozen=True)
class Node:
    name: str
    ns: str
    underlay_ip: str
    pod_subnet: str
    pod_gw: str  # the node's address on its pod veths (pods' default route)
    # Dual stack: the same three for IPv6.
    underlay_ip6: str | None = None
    pod_subnet6: str | None = None
    pod_gw6: str | None = None


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
        return f"http://{self.gateway.ip}:{OPERATOR_PORT}"  # the operator listener

    @property
    def public_api_url(self) -> str:
        return f"https://{self.internet_ip}:{API_PORT}"  # the peering listener

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


# The demo's two clusters: the same ranges, but each IPAM carves its views from a
# pool of its own, so the two sides name each other with different numbers (lab
# reaches gpu's pods under 100.64.0.0/16, gpu sees lab's under 100.96.0.0/16) and
# the demo's output shows the translation. Both IPAMs on the default pools pick the
# same numbers for each other: tests/lab keeps that case (SAME_NUMBERS).
DEFAULT_CLUSTERS: tuple[dict[str, Any], ...] = ({"id": "gpu", "ipam_pools": ["100.96.0.0/11"]},
                                                {"id": "lab", "ipam_pools": ["100.64.0.0/11"]})


def default_topology() -> Topology:
    # gpu exports its web service and one pod (p3, node 2's first pod, which the
    # demo calls and traces); the demo shows another gpu pod refused.
    gpu_exports = [{"name": "web.default", "ports": ["80/tcp"]},
                   {"name": "trainer.ml", "addresses": ["10.244.1.10"], "ports": [f"{POD_PORT}/tcp"]}]
    clusters = [dict(c, exports=gpu_exports) if c["id"] == "gpu" else dict(c) for c in DEFAULT_CLUSTERS]
    return parse({"clusters": clusters})


def _net(v: Any, what: str) -> ipaddress.IPv4Network:
    try:
        n = ipaddress.ip_network(str(v), strict=True)
    except ValueError as e:
        raise TopologyError(f"{what}: {e}") from e
    if not isinstance(n, ipaddress.IPv4Network):
        raise TopologyError(f"{what}: must be IPv4 (IPv6 ranges go in pod_cidr6 / service_cidr6 / node_cidr6)")
    return n


def _net6(v: Any, what: str) -> ipaddress.IPv6Network:
    try:
        n = ipaddress.ip_network(str(v), strict=True)
    except ValueError as e:
        raise TopologyError(f"{what}: {e}") from e
    if not isinstance(n, ipaddress.IPv6Network):
        raise TopologyError(f"{what}: must be IPv6")
    return n


def _v6_ranges(cid: str, d: dict[str, Any], nodes: int) -> tuple[
        ipaddress.IPv6Network | None, ipaddress.IPv6Network | None, ipaddress.IPv6Network | None]:
    """The dual-stack keys, checked: (pod_cidr6, service_cidr6, node_cidr6), all None without pod_cidr6."""
    if d.get("pod_cidr6") is None:
        extra = [k for k in ("service_cidr6", "node_cidr6") if d.get(k) is not None]
        if extra:
            raise TopologyError(f"{cid}.{extra[0]}: needs pod_cidr6 (dual stack)")
        return None, None, None
    pod6 = _net6(d["pod_cidr6"], f"{cid}.pod_cidr6")
    if pod6.prefixlen > 64 or 2 ** (64 - pod6.prefixlen) < nodes:
        raise TopologyError(f"{cid}.pod_cidr6 {pod6} too small for {nodes} /64 node subnets")
    svc6 = None if d.get("service_cidr6") is None else _net6(d["service_cidr6"], f"{cid}.service_cidr6")
    node6 = _net6(d.get("node_cidr6") or DEFAULT_NODE_CIDR6, f"{cid}.node_cidr6")
    if node6.num_addresses < 16 + nodes:
        raise TopologyError(f"{cid}.node_cidr6 {node6} too small for {nodes} nodes")
    named = [("pod_cidr6", pod6), ("service_cidr6", svc6), ("node_cidr6", node6)]
    for i, (ka, a) in enumerate(named):
        for kb, b in named[i + 1:]:
            if a is not None and b is not None and a.overlaps(b):
                raise TopologyError(f"{cid}.{kb} {b} overlaps {ka} {a}")
    return pod6, svc6, node6


def parse(data: Any) -> Topology:
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise TopologyError("topology must be a mapping")
    unknown = set(data) - {"clusters", "internet", "agent_interval"}
    if unknown:
        raise TopologyError(f"unknown topology keys: {sorted(unknown)}")
    internet = str(data.get("internet", "203.0.113.0/24"))
    inet = _net(internet, "internet")
    interval = _interval(data.get("agent_interval", 1.0), "agent_interval")
    raw = data.get("clusters")
    if raw is None:
        raw = [dict(c) for c in DEFAULT_CLUSTERS]
    if not isinstance(raw, list) or not raw:
        raise TopologyError("clusters must be a non-empty list")
    clusters = tuple(_cluster(c, interval) for c in raw)
    ids = [c.id for c in clusters]
    if len(set(ids)) != len(ids):
        raise TopologyError(f"duplicate cluster ids: {ids}")
    # Gateways sit at internet + 11 + i; the last one must stay below the broadcast address.
    if FIRST_INTERNET_HOST + len(clusters) > inet.num_addresses - 1:
        raise TopologyError(f"internet {inet}: room for {max(0, inet.num_addresses - 1 - FIRST_INTERNET_HOST)} "
                            f"gateways (from .{FIRST_INTERNET_HOST}), not {len(clusters)}")
    return Topology(clusters, internet)


def _interval(v: Any, what: str) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0.1 <= v <= 60:
        raise TopologyError(f"{what}: seconds between agent polls, 0.1..60")
    return float(v)


_CLUSTER_KEYS = {"id", "pod_cidr", "service_cidr", "node_cidr", "nodes", "pods_per_node",
                 "services", "gateway_ip", "masquerade", "cilium_check", "ipam_pools", "ipam_views", "wireguard",
                 "agent_interval", "pod_cidr6", "service_cidr6", "node_cidr6",
                 "exports", "peer_ranges"}
DEFAULT_NODE_CIDR6 = "fd00:192:168:10::/64"
WG_IMPLEMENTATIONS = ("userspace", "wireguard-go")


def _cluster(d: Any, agent_interval: float = 1.0) -> ClusterSpec:
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
    pod6, svc6, node6 = _v6_ranges(cid, d, nodes)
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
        ip6 = s.get("ip6")
        if ip6 is not None and svc6 is None:
            raise TopologyError(f"{cid}.services[{i}]: ip6 needs service_cidr6")
        if svc6 is not None:
            try:
                addr6 = ipaddress.IPv6Address(str(ip6)) if ip6 is not None else svc6.network_address + 10 + i
            except ValueError as e:
                raise TopologyError(f"{cid}.services[{i}].ip6: {e}") from e
            ip6 = str(addr6)
            if addr6 not in svc6:
                raise TopologyError(f"{cid}.services[{i}]: {ip6} outside {svc6}")
        services.append(Service(s["name"], ip, port, ip6))
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
    views = d.get("ipam_views", "full")
    if views not in ("full", "sparse"):
        raise TopologyError(f"{cid}.ipam_views: full or sparse")
    wg = d.get("wireguard", "userspace")
    if wg not in WG_IMPLEMENTATIONS:
        raise TopologyError(f"{cid}.wireguard: one of {', '.join(WG_IMPLEMENTATIONS)}")
    exports = _exports(cid, d.get("exports"), services)
    interval = _interval(d.get("agent_interval", agent_interval), f"{cid}.agent_interval")
    peer_ranges = d.get("peer_ranges")
    if peer_ranges is not None and not isinstance(peer_ranges, dict):
        raise TopologyError(f"{cid}.peer_ranges: a mapping (the gateway's peer_ranges)")
    return ClusterSpec(id=cid, wireguard=wg, exports=exports, agent_interval=interval,
                       pod_cidr=str(pod), service_cidr=str(svc), node_cidr=str(node),
                       nodes=nodes, pods_per_node=tuple(ppn), services=tuple(services),
                       gateway_ip=gw, masquerade=bool(d.get("masquerade", False)),
                       cilium_check=bool(d.get("cilium_check", False)),
                       ipam_pools=tuple(str(p) for p in pools), ipam_views=views, peer_ranges=peer_ranges,
                       pod_cidr6=str(pod6) if pod6 else None, service_cidr6=str(svc6) if svc6 else None,
                       node_cidr6=str(node6) if node6 else None)


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


def node_subnet6(pod6: ipaddress.IPv6Network, k: int) -> ipaddress.IPv6Network:
    """Dual stack: node k's IPv6 pod subnet, the k-th /64 of the cluster's pod_cidr6."""
    return ipaddress.IPv6Network((int(pod6.network_address) + (k << 64), 64))


def as_v6(ip4: str, subnet4: str, subnet6: str | None) -> str | None:
    """The IPv6 twin of a pod address: the same host offset in the node's /64."""
    if subnet6 is None:
        return None
    offset = int(ipaddress.IPv4Address(ip4)) - int(ipaddress.IPv4Network(subnet4).network_address)
    return str(ipaddress.IPv6Network(subnet6).network_address + offset)


def resolve(path: str | Path) -> Path:
    """A topology file: ``path`` itself if it names a file, else a bare name (``hub``) is
    ``netns-lab/topologies/<name>.yaml``."""
    p = Path(path)
    if p.is_file() or not TOPOLOGY_NAME_RE.match(str(path)):
        return p
    named = TOPOLOGY_DIR / f"{path}.yaml"
    if not named.is_file():
        known = sorted(f.stem for f in TOPOLOGY_DIR.glob("*.yaml"))
        raise TopologyError(f"topology {str(path)!r}: no such file, and not one of {', '.join(known)}")
    return named


def load(path: str | Path | None) -> Topology:
    if path is None:
        return default_topology()
    path = resolve(path)
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
                         internet_ip=str(inet.network_address + FIRST_INTERNET_HOST + ci),
                         wg_interface=f"{name}w{ci}")
        underlay = ipaddress.IPv4Network(spec.node_cidr)
        pod_net = ipaddress.IPv4Network(spec.pod_cidr)
        gw_ip = spec.gateway_ip or str(node_subnet(pod_net, 0).network_address + 2)
        pod6 = ipaddress.IPv6Network(spec.pod_cidr6) if spec.pod_cidr6 else None
        node6 = ipaddress.IPv6Network(spec.node_cidr6) if spec.node_cidr6 else None
        pod_no = 0
        for k in range(spec.nodes):
            sub = node_subnet(pod_net, k)
            sub6 = str(node_subnet6(pod6, k)) if pod6 else None
            node = Node(name=f"n{k + 1}", ns=f"{name}-{spec.id}-n{k + 1}",
                        underlay_ip=str(underlay.network_address + 11 + k),
                        pod_subnet=str(sub), pod_gw=str(sub.network_address + 1),
                        underlay_ip6=str(node6.network_address + 11 + k) if node6 else None,
                        pod_subnet6=sub6, pod_gw6=as_v6(str(sub.network_address + 1), str(sub), sub6))
            cp.nodes.append(node)
            host = sub.network_address + 10
            for _ in range(spec.pods_per_node[k]):
                if str(host) == gw_ip:
                    host += 1
                pod_no += 1
                pname = f"p{pod_no}"
                cp.pods.append(Pod(pname, f"{name}-{spec.id}-{pname}", str(host), node.name,
                                   f"v{pname}", as_v6(str(host), str(sub), sub6)))
                host += 1
        n1 = cp.nodes[0]
        cp.gateway = Pod("gw", f"{name}-{spec.id}-gw", gw_ip, "n1", "vgw",
                         as_v6(gw_ip, n1.pod_subnet, n1.pod_subnet6))
        clusters.append(cp)
    return LabPlan(name=name, topology=topo, internet_ns=f"{name}-inet", clusters=clusters)
