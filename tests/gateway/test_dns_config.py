"""The `dns:` config section (gateway/dns/config.py) through the real loader."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway import config as gwconfig
from gateway.dns.config import DnsConfig

BASE = {"cluster_id": "lab", "pod_cidrs": ["10.244.0.0/16"]}


def parse(dns: object, env: dict[str, str] | None = None) -> DnsConfig:
    raw = dict(BASE) if dns is None else {**BASE, "dns": dns}
    return gwconfig.parse(raw, env or {}).dns


def test_defaults() -> None:
    d = parse(None)
    assert d == DnsConfig("cluster.local", "clusterset.local", "0.0.0.0:53")
    assert d.listen_host_port == ("0.0.0.0", 53)
    assert parse({}) == d


def test_values_and_empty_listen_disables() -> None:
    d = parse({"cluster_domain": "Corp.Example.", "zone": "mesh.example", "listen": "[::]:5353"})
    assert (d.cluster_domain, d.zone, d.listen_host_port) == ("corp.example", "mesh.example", ("::", 5353))
    assert parse({"listen": ""}).listen is None and parse({"listen": ""}).listen_host_port is None


def test_env_overrides() -> None:
    d = parse({"listen": "0.0.0.0:53"}, {"CROSSWIRE_DNS_LISTEN": "10.244.0.2:5353",
                                         "CROSSWIRE_DNS_ZONE": "mesh.example",
                                         "CROSSWIRE_DNS_CLUSTER_DOMAIN": ""})
    assert (d.listen, d.zone, d.cluster_domain) == ("10.244.0.2:5353", "mesh.example", "cluster.local")


@pytest.mark.parametrize(("dns", "message"), [
    ("clusterset.local", r"^dns: expected a mapping"),
    ({"zone": "bad_name.local"}, r"^dns\.zone: 'bad_name\.local' is not a valid domain name"),
    ({"zone": ""}, r"^dns\.zone: expected a domain name"),
    ({"zone": 5}, r"^dns\.zone: expected a domain name"),
    ({"zone": "a." * 130 + "local"}, r"^dns\.zone: .* is not a valid domain name"),
    ({"cluster_domain": "-x.local"}, r"^dns\.cluster_domain: '-x\.local' is not a valid domain name"),
    ({"zone": "cluster.local"}, r"^dns\.zone: 'cluster\.local' is dns\.cluster_domain"),
    ({"listen": "53"}, r"^dns\.listen: '53' is not IP:port"),
    ({"listen": "dns.example:53"}, r"^dns\.listen: 'dns\.example' is not an IP address"),
    ({"listen": "0.0.0.0:0"}, r"^dns\.listen: '0' is not a port"),
    ({"listen": "0.0.0.0:70000"}, r"^dns\.listen: '70000' is not a port"),
    ({"listen": 53}, r"^dns\.listen: expected IP:port"),
    ({"listens": "0.0.0.0:53"}, r"^dns\.listens: unknown key"),
])
def test_bad_values_name_the_key(dns: object, message: str) -> None:
    with pytest.raises(gwconfig.ConfigError, match=message):
        parse(dns)


def test_the_daemon_refuses_a_bad_dns_section(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from gateway.cli import main

    cfg = tmp_path / "gw.yaml"
    cfg.write_text("cluster_id: lab\npod_cidrs: [10.244.0.0/16]\ndns: {listen: 'localhost:53'}\n"
                   f"state_dir: {tmp_path / 'sd'}\n")
    assert main(["gateway", "run", "--config", str(cfg)]) == 2
    assert "config error: dns.listen: 'localhost' is not an IP address" in capsys.readouterr().err
    assert not (tmp_path / "sd").exists()
