from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from gateway.config import ConfigError, load, parse

BASE: dict[str, Any] = {"cluster_id": "gpu", "pod_cidrs": ["10.244.0.0/16"], "service_cidrs": ["10.96.0.0/12"]}


def bad(msg: str, env: dict[str, str] | None = None, **over: Any) -> None:
    with pytest.raises(ConfigError) as e:
        parse({**BASE, **over}, env=env or {})
    assert str(e.value) == msg


def test_defaults() -> None:
    c = parse(BASE, env={})
    assert c.wireguard.interface == "crosswire0" and c.wireguard.listen_port == 51820
    assert c.wireguard.implementation == "auto" and c.wireguard.mtu == 1420
    assert c.api.listen == "0.0.0.0:8080" and c.masquerade is False and c.ipam_pools is None
    assert c.reserved_cidrs == ()


def test_messages_name_key_and_problem() -> None:
    bad("pod_cidrs[1]: '10.244.0.0/33' is not a valid CIDR", pod_cidrs=["10.0.0.0/8", "10.244.0.0/33"])
    bad("pod_cidrs[0]: '10.244.0.1/16' has host bits set", pod_cidrs=["10.244.0.1/16"])
    bad("pod_cidrs: at least one CIDR is required", pod_cidrs=[])
    bad("service_cidrs: expected a list of CIDRs, got int", service_cidrs=5)
    bad("cluster_id: 'GPU_1' must be a DNS label (lowercase letters, digits, '-', 1-63 chars)", cluster_id="GPU_1")
    bad("wireguard.listen_port: 70000 is out of range 1-65535", wireguard={"listen_port": 70000})
    bad("wireguard.listen_port: 'x' is not an integer", wireguard={"listen_port": "x"})
    bad("wireguard.implementation: 'boringtun' is not one of auto, userspace, kernel, wireguard-go",
        wireguard={"implementation": "boringtun"})
    bad("wireguard.interface: 'this-name-is-too-long' is not a valid interface name (1-15 chars)",
        wireguard={"interface": "this-name-is-too-long"})
    bad("wireguard.endpoint: endpoint 'nohost': expected host:port with a port 1-65535",
        wireguard={"endpoint": "nohost"})
    bad("wireguard.endpoint: endpoint '[::1': unbalanced brackets", wireguard={"endpoint": "[::1"})
    bad("wireguard.mtu: 100 is out of range 1280-9000", wireguard={"mtu": 100})
    # One range, the one the data plane accepts: 1000 used to pass here and fail there.
    bad("wireguard.mtu: 1000 is out of range 1280-9000", wireguard={"mtu": 1000})
    bad("wireguard.mtuu: unknown key", wireguard={"mtuu": 1})
    bad("ipam.pools[0]: 'nope' is not a valid CIDR", ipam={"pools": ["nope"]})
    bad("api.listen: port 99999 is out of range 1-65535", api={"listen": ":99999"})
    bad("api.listen: 'localhost:http' has no valid port", api={"listen": "localhost:http"})
    bad("api.advertise: 'ftp://x' is not an http(s)://host:port URL", api={"advertise": "ftp://x"})
    bad("api.operator_listen: '127.0.0.1:8080' overlaps api.listen (0.0.0.0:8080); the operator surface "
        "needs a socket of its own", api={"operator_listen": "127.0.0.1:8080"})
    bad("api.operator_listen: 'x' is not host:port", api={"operator_listen": "x"})
    bad("masquerade: 'maybe' is not true or false", masquerade="maybe")
    bad("gateway_ip: 10.1.2.3 is not inside pod_cidrs", gateway_ip="10.1.2.3")
    bad("gateway_ip: 'x' is not an IP address", gateway_ip="x")
    bad("colour: unknown key", colour="blue")
    bad("service_cidrs[0]: 10.244.0.0/20 overlaps pod_cidrs[0] 10.244.0.0/16 (a cluster's ranges must be disjoint)",
        service_cidrs=["10.244.0.0/20"])
    with pytest.raises(ConfigError, match=r"^cluster_id: required$"):
        parse({"pod_cidrs": ["10.0.0.0/8"]}, env={})


def test_env_overrides() -> None:
    env = {"CROSSWIRE_CLUSTER_ID": "lab", "CROSSWIRE_POD_CIDRS": "10.244.0.0/16, fd00::/48",
           "CROSSWIRE_WIREGUARD_LISTEN_PORT": "51999", "CROSSWIRE_MASQUERADE": "true",
           "CROSSWIRE_GATEWAY_IP": "10.244.0.5", "CROSSWIRE_POD_IP": "10.244.1.7",
           "CROSSWIRE_API_ADVERTISE": "http://gw.lab:8080"}
    c = parse(BASE, env=env)
    assert c.cluster_id == "lab" and c.pod_cidrs == ("10.244.0.0/16", "fd00::/48")
    assert c.wireguard.listen_port == 51999 and c.masquerade is True
    assert c.gateway_ip == "10.244.1.7"  # the downward API wins
    assert c.advertise_url() == "https://gw.lab:8080"  # the listener speaks TLS
    assert c.wireguard_endpoint() == "gw.lab:51999"
    bad("pod_cidrs[0]: 'x' is not a valid CIDR", env={"CROSSWIRE_POD_CIDRS": "x"})


def test_default_peering_url_reaches_the_peer() -> None:
    # listen 0.0.0.0, an endpoint, no advertise: the URL used to carry the pod IP,
    # inside the overlapping pod range, so `peer add` elsewhere reached its own gateway.
    c = parse({**BASE, "gateway_ip": "10.244.0.9", "wireguard": {"endpoint": "203.0.113.10:51820"}}, env={})
    assert c.advertise_url() == "https://203.0.113.10:8080" and c.advertise_problem() is None
    c = parse({**BASE, "wireguard": {"endpoint": "[2001:db8::1]:51820"}}, env={})
    assert c.advertise_url() == "https://[2001:db8::1]:8080"
    c = parse({**BASE, "gateway_ip": "10.244.0.9"}, env={})
    assert c.advertise_problem() == (
        "api.advertise: the peering URL https://10.244.0.9:8080 lies inside this cluster's own range "
        "10.244.0.0/16, which peers cannot reach; set api.advertise (or wireguard.endpoint) to an "
        "address other clusters reach")
    for url, why in (("http://127.0.0.1:8080", "is a loopback address"), ("http://[::]:8080", "is unspecified"),
                     ("http://10.96.0.10:8080", "inside this cluster's own range 10.96.0.0/12")):
        problem = parse({**BASE, "api": {"advertise": url}}, env={}).advertise_problem()
        assert problem is not None and why in problem and problem.startswith("api.advertise: "), url
    assert parse({**BASE, "api": {"advertise": "http://gw.gpu.example:8080"}}, env={}).advertise_problem() is None


def test_load_file(tmp_path: Path) -> None:
    p = tmp_path / "c.yaml"
    p.write_text("cluster_id: gpu\npod_cidrs: [10.244.0.0/16]\nwireguard:\n  endpoint: 192.0.2.1:51820\n")
    c = load(p, env={})
    assert c.wireguard_endpoint() == "192.0.2.1:51820"
    p.write_text("cluster_id: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load(p, env={})
    with pytest.raises(ConfigError, match="cannot read"):
        load(tmp_path / "missing.yaml", env={})


def test_duplicate_yaml_keys_are_refused(tmp_path: Path) -> None:
    p = tmp_path / "c.yaml"
    p.write_text("cluster_id: gpu\npod_cidrs: [10.244.0.0/16]\ncluster_id: lab\n")
    with pytest.raises(ConfigError, match=r"^cluster_id: given twice \(line 3\)"):
        load(p, env={})
    p.write_text("cluster_id: gpu\npod_cidrs: [10.244.0.0/16]\nwireguard:\n  mtu: 1420\n  mtu: 1280\n")
    with pytest.raises(ConfigError, match=r"^mtu: given twice \(line 5\)"):
        load(p, env={})


def test_pool_overlapping_local_ranges_is_refused_naming_both() -> None:
    bad("ipam.pools[1]: 10.0.0.0/8 overlaps pod_cidrs[0] 10.244.0.0/16 "
        "(views must never collide with local ranges)", ipam={"pools": ["100.64.0.0/10", "10.0.0.0/8"]})
    bad("ipam.pools[0]: 10.96.0.0/16 overlaps service_cidrs[0] 10.96.0.0/12 "
        "(views must never collide with local ranges)", ipam={"pools": ["10.96.0.0/16"]})
    bad("ipam.pools[0]: 192.168.10.0/23 overlaps reserved_cidrs[0] 192.168.10.0/24 "
        "(views must never collide with local ranges)",
        ipam={"pools": ["192.168.10.0/23"]}, reserved_cidrs=["192.168.10.0/24"])
    # The default pools are wide and carved by the IPAM: not refused.
    assert parse(BASE, env={}).ipam_pools is None


def test_daemon_startup_errors_are_clear(tmp_path: Path) -> None:
    from gateway.daemon import StartupError, build

    (tmp_path / "file").write_text("")
    cfg = parse({**BASE, "state_dir": str(tmp_path / "file" / "sub")}, env={})
    with pytest.raises(StartupError, match=r"^state_dir .*/file/sub: .*Not a directory"):
        build(cfg, None)
    sd = tmp_path / "sd"
    (sd / "ipam.db").mkdir(parents=True)  # not a database
    with pytest.raises(StartupError, match=r"/sd/ipam.db: "):
        build(parse({**BASE, "state_dir": str(sd)}, env={}), None)


def test_gateway_ip6_key_env_and_validation() -> None:
    base = {"cluster_id": "a", "pod_cidrs": ["10.244.0.0/16", "fd00::/48"]}
    assert parse(base, env={}).gateway_ip6 is None
    assert parse({**base, "gateway_ip6": "fd00::0010"}, env={}).gateway_ip6 == "fd00::10"
    env = {"CROSSWIRE_GATEWAY_IP6": "fd00::1", "CROSSWIRE_POD_IP6": "fd00::2"}
    assert parse(base, env=env).gateway_ip6 == "fd00::2"  # the downward API wins
    for bad, msg in (("10.244.0.1", "not an IPv6 address"), ("fd01::1", "not inside pod_cidrs")):
        with pytest.raises(ConfigError, match=f"gateway_ip6: .*{msg}"):
            parse({**base, "gateway_ip6": bad}, env={})
    with pytest.raises(ConfigError, match="gateway_ip6: gateway_ip is already IPv6"):
        parse({**base, "gateway_ip": "fd00::3", "gateway_ip6": "fd00::4"}, env={})


def test_operator_listener_defaults_to_loopback_and_is_overridable() -> None:
    c = parse(BASE, env={})
    assert c.api.operator_listen == "127.0.0.1:8081" and c.operator_host_port == ("127.0.0.1", 8081)
    c = parse(BASE, env={"CROSSWIRE_API_OPERATOR_LISTEN": "0.0.0.0:9090"})
    assert c.operator_host_port == ("0.0.0.0", 9090)
    # an advertise URL from before TLS names the same listener, now over TLS
    assert parse({**BASE, "api": {"advertise": "http://gw:8080"}}, env={}).advertise_url() == "https://gw:8080"
    # same port on another address is fine (the peering listener on the underlay only)
    c = parse({**BASE, "api": {"listen": "198.18.0.1:8080", "operator_listen": "127.0.0.1:8080"}}, env={})
    assert c.operator_host_port == ("127.0.0.1", 8080)


def test_standby_and_supervise_keys() -> None:
    # Issue 20: a standby by default; supervise off only where the data plane runs apart.
    c = parse(BASE, env={})
    assert c.wireguard.standby is True and c.wireguard.supervise is True
    c = parse({**BASE, "wireguard": {"standby": False, "supervise": "false"}}, env={})
    assert c.wireguard.standby is False and c.wireguard.supervise is False
    c = parse(BASE, env={"CROSSWIRE_WIREGUARD_STANDBY": "0", "CROSSWIRE_WIREGUARD_SUPERVISE": "no"})
    assert c.wireguard.standby is False and c.wireguard.supervise is False
    for key in ("standby", "supervise"):
        with pytest.raises(ConfigError, match=rf"^wireguard\.{key}: 'maybe' is not true or false"):
            parse({**BASE, "wireguard": {key: "maybe"}}, env={})
