"""DNS for imported services in the manifests: the gateway's listener, the ClusterIP Service
crosswire-dns in front of it, and the CoreDNS server block that forwards the zone there, all
checked against the gateway config the real loader reads from the ConfigMap."""

from __future__ import annotations

import re
from typing import Any

import pytest
import yaml
from deploykit import REPO, container, find, gateway_config_text

from gateway import config as gwconfig

ALL = ["base", "gpu", "lab", "gpu+host-network"]
COREDNS = REPO / "deploy" / "kubernetes" / "coredns" / "clusterset.server"
Rendered = dict[str, list[dict[str, Any]]]


def _load(resources: list[dict[str, Any]]) -> gwconfig.Config:
    return gwconfig.parse(yaml.safe_load(gateway_config_text(resources)), {})


@pytest.mark.parametrize("name", ALL)
def test_dns_service_reaches_the_gateways_listener(rendered: Rendered, name: str) -> None:
    res = rendered[name]
    cfg = _load(res)
    listen = cfg.dns.listen_host_port
    assert listen is not None, "dns.listen must be set in the shipped configs"
    host, port = listen
    assert host == "0.0.0.0"  # the Service reaches the pod IP
    assert port >= 1024, "the container has no CAP_NET_BIND_SERVICE: dns.listen needs an unprivileged port"
    dep = find(res, "Deployment", "crosswire-gateway")
    svc = find(res, "Service", "crosswire-dns")
    assert svc["spec"]["selector"] == dep["spec"]["selector"]["matchLabels"]
    # Only inside the cluster: no load balancer, no node port, no external IP.
    assert svc["spec"]["type"] == "ClusterIP" and "externalIPs" not in svc["spec"]
    assert not any("nodePort" in p for p in svc["spec"]["ports"])
    targets = {(p["port"], p["protocol"]): p["targetPort"] for p in svc["spec"]["ports"]}
    assert set(targets) == {(53, "UDP"), (53, "TCP")}
    cports = {p["name"]: p for p in container(dep, "gateway")["ports"]}
    for (_, proto), target in targets.items():
        assert (cports[target]["containerPort"], cports[target]["protocol"]) == (port, proto)


@pytest.mark.parametrize("name", ALL)
def test_the_public_gateway_service_does_not_publish_dns(rendered: Rendered, name: str) -> None:
    ports = find(rendered[name], "Service", "crosswire-gateway")["spec"]["ports"]
    assert not [p for p in ports if p["port"] == 53 or str(p.get("targetPort", "")).startswith("dns")]


def _server_blocks(text: str) -> list[tuple[str, int, list[str]]]:
    """(zone, port, directive lines) of each server block of a Corefile snippet."""
    body = "\n".join(line.split("#", 1)[0].rstrip() for line in text.splitlines())
    blocks = re.findall(r"^([A-Za-z0-9.-]+):(\d+) \{\n(.*?)^\}", body, re.M | re.S)
    return [(z, int(p), [ln.strip() for ln in b.splitlines() if ln.strip()]) for z, p, b in blocks]


@pytest.mark.parametrize("name", ALL)
def test_coredns_forwards_the_zone_to_the_dns_service(rendered: Rendered, name: str) -> None:
    cfg = _load(rendered[name])
    svc = find(rendered[name], "Service", "crosswire-dns")
    [(zone, port, directives)] = _server_blocks(COREDNS.read_text())
    assert (zone, port) == (cfg.dns.zone, 53)
    ports = {p["port"] for p in svc["spec"]["ports"]}
    assert directives == ["errors", f"forward . CROSSWIRE_DNS_IP:{ports.pop()}"]
    assert not ports


def test_readme_walks_through_the_coredns_step() -> None:
    text = (REPO / "deploy" / "README.md").read_text()
    assert "deploy/kubernetes/coredns/clusterset.server" in text
    assert "CROSSWIRE_DNS_IP" in text and "svc crosswire-dns" in text
