"""Gateway configuration: YAML file plus environment overrides, validated up front.

Every problem raises :class:`ConfigError` naming the key, e.g.
``pod_cidrs[1]: '10.244.0.0/33' is not a valid CIDR``; the daemon prints it and
exits non-zero before touching any state.

Environment overrides (applied over the file; lists are comma separated):

=================================  ==========================
``CROSSWIRE_CLUSTER_ID``           ``cluster_id``
``CROSSWIRE_POD_CIDRS``            ``pod_cidrs``
``CROSSWIRE_SERVICE_CIDRS``        ``service_cidrs``
``CROSSWIRE_RESERVED_CIDRS``       ``reserved_cidrs``
``CROSSWIRE_IPAM_POOLS``           ``ipam.pools``
``CROSSWIRE_IPAM_VIEWS``           ``ipam.views`` (full | sparse)
``CROSSWIRE_WIREGUARD_<KEY>``      ``wireguard.<key>`` (interface, listen_port, endpoint,
                                   implementation, mtu, standby, supervise)
``CROSSWIRE_API_LISTEN``           ``api.listen``
``CROSSWIRE_API_ADVERTISE``        ``api.advertise``
``CROSSWIRE_API_OPERATOR_LISTEN``  ``api.operator_listen``
``CROSSWIRE_STATE_DIR``            ``state_dir``
``CROSSWIRE_MASQUERADE``           ``masquerade`` (true/false)
``CROSSWIRE_GATEWAY_IP``           ``gateway_ip``
``CROSSWIRE_POD_IP``               ``gateway_ip`` (Kubernetes downward API; wins)
``CROSSWIRE_GATEWAY_IP6``          ``gateway_ip6``
``CROSSWIRE_POD_IP6``              ``gateway_ip6`` (downward API ``status.podIPs``; wins)
``CROSSWIRE_HEALTH_PORT``          ``health.port``
``CROSSWIRE_DNS_<KEY>``            ``dns.<key>`` (cluster_domain, zone, listen; gateway/dns/config.py)
=================================  ==========================
"""

from __future__ import annotations

import ipaddress
import os
import re
import socket
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, cast

from fabric.endpoints import EndpointError
from fabric.endpoints import parse as endpoint_syntax
from fabric.model import MTU_MAX, MTU_MIN
from gateway import configvalues as v

# Re-exported: callers catch config.ConfigError and split addresses with config.split_host_port.
from gateway.configvalues import ConfigError as ConfigError
from gateway.configvalues import split_host_port as split_host_port
from gateway.dns import config as dns_config
from gateway.dns.config import DnsConfig
from gateway.exports.config import Export, ExportsError, parse_exports
from gateway.peerranges import policy as range_policy
from gateway.peerranges.policy import RangePolicy

Implementation = Literal["auto", "userspace", "kernel", "wireguard-go"]
IMPLEMENTATIONS: tuple[str, ...] = ("auto", "userspace", "kernel", "wireguard-go")
_CLUSTER_ID = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")
_IFACE = re.compile(r"^[A-Za-z0-9_.-]{1,15}$")


@dataclass(frozen=True)
class WireguardConfig:
    interface: str = "crosswire0"
    listen_port: int = 51820
    endpoint: str | None = None  # host:port peers dial; derived from api.advertise if unset
    implementation: Implementation = "auto"
    mtu: int = 1420
    standby: bool = True  # crosswire-wg: a second process waits ready to take over (fabric/wg/standby.py)
    supervise: bool = True  # false: crosswire-wg runs in a container of its own (crosswire dataplane run)


@dataclass(frozen=True)
class ApiConfig:
    listen: str = "0.0.0.0:8080"  # the peering listener (TLS, peering endpoints only)
    advertise: str | None = None  # peering URL written into tokens (always https)
    # Everything else (read API, /metrics, page, admin, health): never published.
    operator_listen: str = "127.0.0.1:8081"
    max_connections: int = 256  # open at once; more are closed at once
    request_timeout: float = 10.0  # a connection must start a request within this, or is closed
    # Route long-polls (node agents) held at once on the operator listener; more get 503.
    max_watchers: int = 2048


@dataclass(frozen=True)
class HealthConfig:
    port: int = 51830  # UDP echo responder on the gateway's pod IP
    interval: float = 0.5  # per peer; an outage shows as "impaired" within ~1 s
    timeout: float = 5.0  # silence after which a peer is in state "error"
    # Probes a second for all peers together: beyond max_probe_rate * interval peers,
    # each is probed less often (gateway/health.py), so probing scales with a budget.
    max_probe_rate: float = 200.0


@dataclass(frozen=True)
class IpamConfig:
    """How this gateway views its peers (ipam/DESIGN.md, "Sparse views")."""

    # full: a whole-range view of each peer range; sparse: one view address per
    # address the peer exports to us, its gateway's address and an egress block.
    views: Literal["full", "sparse"] = "full"
    # The egress block's size: a /28 (16 addresses) per peer, a /124 for IPv6.
    egress_prefix: int = 28
    # Seconds a released sparse view is held before another export may get it:
    # far longer than the 2 s TTL of our DNS answers (a stale answer never
    # reaches a different service).
    quarantine: float = 60.0

    def egress_ranges(self, versions: set[int]) -> list[tuple[str, str]]:
        """The egress claims (kind, placeholder) for the given IP families."""
        host_bits = 32 - self.egress_prefix
        return ([("egress", f"0.0.0.0/{self.egress_prefix}")] if 4 in versions else []) + \
               ([("egress", f"::/{128 - host_bits}")] if 6 in versions else [])


@dataclass(frozen=True)
class Config:
    cluster_id: str
    pod_cidrs: tuple[str, ...]
    service_cidrs: tuple[str, ...] = ()
    reserved_cidrs: tuple[str, ...] = ()
    ipam_pools: tuple[str, ...] | None = None  # None: the IPAM's defaults (ipam.model.DEFAULT_POOLS)
    ipam: IpamConfig = field(default_factory=lambda: IpamConfig())
    wireguard: WireguardConfig = field(default_factory=WireguardConfig)
    api: ApiConfig = field(default_factory=ApiConfig)
    health: HealthConfig = field(default_factory=HealthConfig)
    state_dir: str = "/var/lib/crosswire"
    masquerade: bool = False
    gateway_ip: str | None = None
    # Dual stack: the pod's IPv6 address, published to node agents as the next hop
    # for IPv6 views (gateway_ip stays the IPv4 one).
    gateway_ip6: str | None = None
    nft_table: str = "crosswire"
    # None: peers reach the whole pod and service ranges; else only these (gateway.exports).
    exports: tuple[Export, ...] | None = None
    dns: DnsConfig = field(default_factory=DnsConfig)
    # What peers may announce (gateway.peerranges.policy): allow-list, quotas, approval.
    peer_ranges: RangePolicy = field(default_factory=RangePolicy)

    @property
    def listen_host_port(self) -> tuple[str, int]:
        return split_host_port(self.api.listen, "api.listen")

    @property
    def operator_host_port(self) -> tuple[str, int]:
        return split_host_port(self.api.operator_listen, "api.operator_listen")

    def advertise_url(self) -> str:
        """The peering URL peers use to reach this gateway's API.

        Without ``api.advertise`` and with an unspecified listen address, the
        host other clusters already dial is ``wireguard.endpoint``'s; the pod
        IP lies inside the (overlapping) pod range, which no peer can reach.
        """
        if self.api.advertise:
            # The peering listener speaks only TLS: an http:// URL from before it did
            # names the same host and port.
            return "https://" + self.api.advertise.rstrip("/").split("://", 1)[1]
        host, port = self.listen_host_port
        if host in ("0.0.0.0", "::", ""):
            if self.wireguard.endpoint:
                host = endpoint_syntax(self.wireguard.endpoint)[0]
            else:
                host = self.gateway_ip or socket.gethostname()
        return f"https://{v.bracket(host)}:{port}"

    def advertise_problem(self) -> str | None:
        """Why tokens carrying ``advertise_url()`` would lead nowhere (None: they can work)."""
        url = self.advertise_url()
        why = self.unreachable_from_peers(url)
        if why is None:
            return None
        return (f"api.advertise: the peering URL {url} {why}; set api.advertise (or wireguard.endpoint) "
                "to an address other clusters reach")

    def unreachable_from_peers(self, url: str) -> str | None:
        """Why ``url`` cannot name another cluster's gateway, seen from here (None: it may).

        A loopback or unspecified host, or one inside our own pod or service
        ranges, is an address every cluster has for itself: a request there
        reaches this cluster (or nothing), never the peer.
        """
        try:
            ip = ipaddress.ip_address(v.url_host(url))
        except ValueError:
            return None  # a name: only DNS can tell
        if ip.is_loopback:
            return "is a loopback address"
        if ip.is_unspecified:
            return "is unspecified"
        for c in self.pod_cidrs + self.service_cidrs:
            if ip in ipaddress.ip_network(c):
                return f"lies inside this cluster's own range {c}, which peers cannot reach"
        return None

    def wireguard_endpoint(self) -> str:
        if self.wireguard.endpoint:
            return self.wireguard.endpoint
        host = v.url_host(self.advertise_url())
        return f"{v.bracket(host)}:{self.wireguard.listen_port}"


_TOP_KEYS = {"cluster_id", "pod_cidrs", "service_cidrs", "reserved_cidrs", "ipam", "wireguard",
             "api", "state_dir", "masquerade", "gateway_ip", "gateway_ip6", "health", "nft_table",
             "exports", "dns", "peer_ranges"}
_WG_KEYS = {"interface", "listen_port", "endpoint", "implementation", "mtu", "standby", "supervise"}
_API_KEYS = {"listen", "advertise", "operator_listen", "max_connections", "request_timeout", "max_watchers"}
_HEALTH_KEYS = {"port", "interval", "timeout", "max_probe_rate"}


def _apply_env(raw: dict[str, Any], env: Mapping[str, str]) -> None:
    def put(path: str, value: str) -> None:
        node = raw
        *parents, leaf = path.split(".")
        for p in parents:
            sub = node.get(p)
            if not isinstance(sub, dict):
                sub = {}
                node[p] = sub
            node = sub
        node[leaf] = value

    simple = {
        "CROSSWIRE_CLUSTER_ID": "cluster_id",
        "CROSSWIRE_POD_CIDRS": "pod_cidrs",
        "CROSSWIRE_SERVICE_CIDRS": "service_cidrs",
        "CROSSWIRE_RESERVED_CIDRS": "reserved_cidrs",
        "CROSSWIRE_IPAM_POOLS": "ipam.pools",
        "CROSSWIRE_IPAM_VIEWS": "ipam.views",
        "CROSSWIRE_API_LISTEN": "api.listen",
        "CROSSWIRE_API_ADVERTISE": "api.advertise",
        "CROSSWIRE_API_OPERATOR_LISTEN": "api.operator_listen",
        "CROSSWIRE_STATE_DIR": "state_dir",
        "CROSSWIRE_MASQUERADE": "masquerade",
        "CROSSWIRE_GATEWAY_IP": "gateway_ip",
        "CROSSWIRE_POD_IP": "gateway_ip",  # after GATEWAY_IP: the downward API wins
        "CROSSWIRE_GATEWAY_IP6": "gateway_ip6",
        "CROSSWIRE_POD_IP6": "gateway_ip6",  # after GATEWAY_IP6, likewise
        "CROSSWIRE_HEALTH_PORT": "health.port",
    }
    simple.update({f"CROSSWIRE_WIREGUARD_{k.upper()}": f"wireguard.{k}" for k in sorted(_WG_KEYS)})
    for var, path in simple.items():
        if var in env and env[var] != "":
            put(path, env[var])


def _pod_address(value: Any, key: str, pod: tuple[str, ...], *, v6_only: bool) -> str | None:
    """An optional gateway address: an IP (IPv6 for ``v6_only``) inside the pod CIDRs."""
    if value is None:
        return None
    try:
        text = v.string(value, key)
        addr = ipaddress.IPv6Address(text) if v6_only else ipaddress.ip_address(text)
    except ValueError:
        kind = "an IPv6 address" if v6_only else "an IP address"
        raise ConfigError(f"{key}: {value!r} is not {kind}") from None
    if not any(addr in ipaddress.ip_network(c) for c in pod):
        raise ConfigError(f"{key}: {value} is not inside pod_cidrs")
    return str(addr)


def parse(raw: object, env: Mapping[str, str] | None = None) -> Config:
    """Validate a parsed YAML document (plus env overrides) into a :class:`Config`."""
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"config: expected a mapping at the top level, got {type(raw).__name__}")
    raw = dict(raw)
    _apply_env(raw, os.environ if env is None else env)
    for k in raw:
        if k not in _TOP_KEYS:
            raise ConfigError(f"{k}: unknown key")

    if "cluster_id" not in raw:
        raise ConfigError("cluster_id: required")
    cluster_id = raw["cluster_id"]
    if not isinstance(cluster_id, str) or not _CLUSTER_ID.match(cluster_id):
        raise ConfigError(
            f"cluster_id: {cluster_id!r} must be a DNS label (lowercase letters, digits, '-', 1-63 chars)")
    if "pod_cidrs" not in raw:
        raise ConfigError("pod_cidrs: required")
    pod = v.cidr_list(raw["pod_cidrs"], "pod_cidrs", required=True)
    svc = v.cidr_list(raw.get("service_cidrs"), "service_cidrs")
    own = [(f"pod_cidrs[{i}]", c) for i, c in enumerate(pod)] + \
          [(f"service_cidrs[{i}]", c) for i, c in enumerate(svc)]
    for i, (ka, a) in enumerate(own):
        for kb, b in own[i + 1:]:
            if ipaddress.ip_network(a).overlaps(ipaddress.ip_network(b)):
                raise ConfigError(f"{kb}: {b} overlaps {ka} {a} (a cluster's ranges must be disjoint)")
    reserved = v.cidr_list(raw.get("reserved_cidrs"), "reserved_cidrs")

    ipam = v.section(raw, "ipam", {"pools", "views", "egress_prefix", "quarantine"})
    pools = v.cidr_list(ipam["pools"], "ipam.pools", required=True) if "pools" in ipam else None
    mode = ipam.get("views", "full")
    if mode not in ("full", "sparse"):
        raise ConfigError(f"ipam.views: {mode!r} is not full or sparse")
    ipam_cfg = IpamConfig(
        views=cast(Literal["full", "sparse"], mode),
        # /24 (256 addresses) at most: the block only names one peer's clients;
        # /30 at least: a few addresses give the far side some spread (ClientIP affinity).
        egress_prefix=v.integer(ipam.get("egress_prefix", IpamConfig.egress_prefix), "ipam.egress_prefix", 24, 30),
        quarantine=v.number(ipam.get("quarantine", IpamConfig.quarantine), "ipam.quarantine", 10, 86400))
    # The default pools are wide (RFC 1918 and more) and the IPAM carves local
    # ranges out of them; a pool the operator names must not overlap them, or
    # the mistake would surface only at the first peering, as exhaustion.
    local = own + [(f"reserved_cidrs[{i}]", c) for i, c in enumerate(reserved)]
    for i, p in enumerate(pools or ()):
        for kl, c in local:
            if ipaddress.ip_network(p).overlaps(ipaddress.ip_network(c)):
                raise ConfigError(f"ipam.pools[{i}]: {p} overlaps {kl} {c} "
                                  "(views must never collide with local ranges)")

    wg = v.section(raw, "wireguard", _WG_KEYS)
    iface = wg.get("interface", WireguardConfig.interface)
    if not isinstance(iface, str) or not _IFACE.match(iface):
        raise ConfigError(f"wireguard.interface: {iface!r} is not a valid interface name (1-15 chars)")
    endpoint = wg.get("endpoint")
    if endpoint is not None:
        try:
            endpoint_syntax(v.string(endpoint, "wireguard.endpoint"))
        except EndpointError as e:
            raise ConfigError(f"wireguard.endpoint: {e}") from None
    impl = wg.get("implementation", "auto")
    if impl not in IMPLEMENTATIONS:
        raise ConfigError(f"wireguard.implementation: {impl!r} is not one of {', '.join(IMPLEMENTATIONS)}")
    wgc = WireguardConfig(
        interface=iface,
        listen_port=v.integer(wg.get("listen_port", 51820), "wireguard.listen_port", 1, 65535),
        endpoint=endpoint,
        implementation=cast(Implementation, impl),
        mtu=v.integer(wg.get("mtu", 1420), "wireguard.mtu", MTU_MIN, MTU_MAX),
        standby=v.boolean(wg.get("standby", True), "wireguard.standby"),
        supervise=v.boolean(wg.get("supervise", True), "wireguard.supervise"),
    )

    api = v.section(raw, "api", _API_KEYS)
    listen = v.string(api.get("listen", ApiConfig.listen), "api.listen")
    peering_hp = split_host_port(listen, "api.listen")
    operator = v.string(api.get("operator_listen", ApiConfig.operator_listen), "api.operator_listen")
    op_hp = split_host_port(operator, "api.operator_listen")
    wildcard = ("", "0.0.0.0", "::")
    if op_hp[1] == peering_hp[1] and \
            (op_hp[0] == peering_hp[0] or op_hp[0] in wildcard or peering_hp[0] in wildcard):
        raise ConfigError(f"api.operator_listen: {operator!r} overlaps api.listen ({listen}); "
                          "the operator surface needs a socket of its own")
    advertise = api.get("advertise")
    if advertise is not None:
        advertise = v.string(advertise, "api.advertise")
        if not re.match(r"^https?://[^/\s]+/?$", advertise):
            raise ConfigError(f"api.advertise: {advertise!r} is not an http(s)://host:port URL")

    h = v.section(raw, "health", _HEALTH_KEYS)
    health = HealthConfig(
        port=v.integer(h.get("port", HealthConfig.port), "health.port", 1, 65535),
        interval=v.number(h.get("interval", HealthConfig.interval), "health.interval", 0.05, 60),
        timeout=v.number(h.get("timeout", HealthConfig.timeout), "health.timeout", 0.1, 300),
        max_probe_rate=v.number(h.get("max_probe_rate", HealthConfig.max_probe_rate), "health.max_probe_rate",
                                1, 100000),
    )

    gateway_ip = _pod_address(raw.get("gateway_ip"), "gateway_ip", pod, v6_only=False)
    gateway_ip6 = _pod_address(raw.get("gateway_ip6"), "gateway_ip6", pod, v6_only=True)
    if gateway_ip6 is not None and gateway_ip is not None and \
            ipaddress.ip_address(gateway_ip).version == 6:
        raise ConfigError("gateway_ip6: gateway_ip is already IPv6 (gateway_ip6 is for dual stack)")

    table = raw.get("nft_table", "crosswire")
    if not isinstance(table, str) or not re.match(r"^[A-Za-z0-9_-]{1,64}$", table):
        raise ConfigError(f"nft_table: {table!r} is not a valid nftables table name")
    try:
        exports = None if raw.get("exports") is None else parse_exports(raw["exports"], pod + svc)
    except ExportsError as e:
        raise ConfigError(str(e)) from None
    try:
        dns = dns_config.parse(raw.get("dns"), os.environ if env is None else env)
    except dns_config.DnsConfigError as e:
        raise ConfigError(str(e)) from None
    try:
        peer_ranges = range_policy.parse(raw.get("peer_ranges"))
    except range_policy.PolicyError as e:
        raise ConfigError(str(e)) from None

    return Config(
        cluster_id=cluster_id,
        pod_cidrs=pod,
        service_cidrs=svc,
        reserved_cidrs=reserved,
        ipam_pools=pools,
        ipam=ipam_cfg,
        wireguard=wgc,
        api=ApiConfig(listen=listen, advertise=advertise, operator_listen=operator,
                      max_connections=v.integer(api.get("max_connections", ApiConfig.max_connections),
                                           "api.max_connections", 8, 65536),
                      request_timeout=v.number(api.get("request_timeout", ApiConfig.request_timeout),
                                             "api.request_timeout", 0.5, 300),
                      max_watchers=v.integer(api.get("max_watchers", ApiConfig.max_watchers),
                                             "api.max_watchers", 0, 65536)),
        health=health,
        state_dir=v.string(raw.get("state_dir", Config.state_dir), "state_dir"),
        masquerade=v.boolean(raw.get("masquerade", False), "masquerade"),
        gateway_ip=gateway_ip,
        gateway_ip6=gateway_ip6,
        nft_table=table,
        exports=exports,
        dns=dns,
        peer_ranges=peer_ranges,
    )


def load(path: str | Path, env: Mapping[str, str] | None = None) -> Config:
    import yaml  # here, not at the top: keeps `crosswire status` & co. quick to start

    try:
        text = Path(path).read_text()
    except OSError as e:
        raise ConfigError(f"config: cannot read {path}: {e.strerror}") from None
    try:
        raw = yaml.load(text, Loader=v.unique_keys_loader())  # a SafeLoader subclass
    except v.DuplicateKey as e:
        raise ConfigError(str(e)) from None
    except yaml.YAMLError as e:
        raise ConfigError(f"config: {path} is not valid YAML: {e}") from None
    return parse(raw, env)


def detect_gateway_ip(pod_cidrs: tuple[str, ...], version: int | None = None) -> str | None:
    """The first address of ours (this netns) inside pod_cidrs (of IP ``version``), via pyroute2."""
    from pyroute2 import IPRoute

    nets = [n for n in map(ipaddress.ip_network, pod_cidrs) if version in (None, n.version)]
    if not nets:
        return None
    with IPRoute() as ipr:
        for msg in ipr.get_addr():
            addr = msg.get_attr("IFA_ADDRESS")
            if addr is None:
                continue
            ip = ipaddress.ip_address(addr)
            if any(ip in n for n in nets):
                return str(ip)
    return None
