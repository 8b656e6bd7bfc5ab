"""What the rendered manifests promise, checked against each other and the real config loader.

The gateway config inside the ConfigMap is parsed by gateway.config (the code
the daemon runs), and every number the manifests repeat (ports, paths, the
Service the agents dial) is compared with it, so manifests and daemon cannot
drift apart silently.
"""

from __future__ import annotations

import ipaddress
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml
from deploykit import container, find, gateway_config_text

from gateway import config as gwconfig

ALL = ["base", "gpu", "lab", "gpu+host-network"]
Rendered = dict[str, list[dict[str, Any]]]


def _load(resources: list[dict[str, Any]], env: dict[str, str] | None = None) -> gwconfig.Config:
    return gwconfig.parse(yaml.safe_load(gateway_config_text(resources)), env or {})


def _pod(workload: dict[str, Any]) -> dict[str, Any]:
    spec: dict[str, Any] = workload["spec"]["template"]["spec"]
    return spec


@pytest.mark.parametrize("name", ALL)
def test_configmap_loads_with_the_real_loader(rendered: Rendered, name: str) -> None:
    cfg = _load(rendered[name])
    assert cfg.wireguard.implementation == "auto"
    assert cfg.pod_cidrs and cfg.service_cidrs
    # The env the Deployment sets (pod IP from the downward API) is accepted too.
    pod_ip = str(next(ipaddress.ip_network(cfg.pod_cidrs[0]).hosts()))
    assert _load(rendered[name], {"CROSSWIRE_POD_IP": pod_ip}).gateway_ip == pod_ip


def test_overlays_are_the_two_sides_of_a_peering(rendered: Rendered) -> None:
    gpu, lab = _load(rendered["gpu"]), _load(rendered["lab"])
    assert (gpu.cluster_id, lab.cluster_id) == ("gpu", "lab")
    # The case the project exists for: both sides on the same kubeadm ranges.
    assert gpu.pod_cidrs == lab.pod_cidrs == ("10.244.0.0/16",)
    assert gpu.service_cidrs == lab.service_cidrs == ("10.96.0.0/12",)


def test_a_broken_config_is_refused_by_the_loader(rendered: Rendered) -> None:
    raw = yaml.safe_load(gateway_config_text(rendered["gpu"]))
    raw["pod_cidrs"] = ["10.244.0.0/33"]
    with pytest.raises(gwconfig.ConfigError, match=r"pod_cidrs\[0\]"):
        gwconfig.parse(raw, {})


@pytest.mark.parametrize("name", ALL)
def test_gateway_deployment(rendered: Rendered, name: str) -> None:
    res = rendered[name]
    cfg = _load(res)
    dep = find(res, "Deployment", "crosswire-gateway")
    assert dep["spec"]["replicas"] == 1
    assert dep["spec"]["strategy"] == {"type": "Recreate"}
    pod = _pod(dep)
    gw = container(dep, "gateway")
    sc = gw["securityContext"]
    assert sc["capabilities"] == {"drop": ["ALL"], "add": ["NET_ADMIN"]}
    assert sc["allowPrivilegeEscalation"] is False and sc["privileged"] is False
    assert sc["readOnlyRootFilesystem"] is True
    # Only the one-shot sysctl init container is privileged, and it runs no daemon.
    inits = pod.get("initContainers", [])
    assert [c["name"] for c in inits] == ["forwarding"]
    assert "ip_forward" in " ".join(inits[0]["command"])

    # --config points at the file the ConfigMap volume provides.
    args = gw["args"]
    assert args[:2] == ["gateway", "run"]
    config_path = args[args.index("--config") + 1]
    mounts = {m["name"]: m for m in gw["volumeMounts"]}
    vols = {v["name"]: v for v in pod["volumes"]}
    assert config_path == mounts["config"]["mountPath"] + "/gateway.yaml"
    # The CLI in `kubectl exec` reads the same file (API URL, state_dir).
    env = {e["name"]: e.get("value") for e in gw["env"]}
    assert env["CROSSWIRE_CONFIG"] == config_path
    assert mounts["config"]["readOnly"] is True
    # state_dir on the PersistentVolumeClaim.
    assert mounts["state"]["mountPath"] == cfg.state_dir
    pvc = find(res, "PersistentVolumeClaim", vols["state"]["persistentVolumeClaim"]["claimName"])
    assert pvc["spec"]["accessModes"] == ["ReadWriteOnce"]
    # The UAPI sockets of the dataplane container; the TUN device is that container's only.
    assert mounts["wireguard-run"]["mountPath"] == "/var/run/wireguard"
    assert "tun" not in mounts

    # Ports and probes agree with the config.
    ports = {p["name"]: p for p in gw["ports"]}
    assert "wireguard" not in ports  # the dataplane container's (test_dataplane_container)
    assert ports["peering"]["containerPort"] == cfg.listen_host_port[1]
    assert ports["operator"]["containerPort"] == cfg.operator_host_port[1]
    # Health on the operator listener: a flood of the published port never fails the probes.
    for probe, path in (("livenessProbe", "/healthz"), ("readinessProbe", "/readyz"), ("startupProbe", "/healthz")):
        assert gw[probe]["httpGet"] == {"path": path, "port": "operator"}, probe

    assert pod["automountServiceAccountToken"] is False
    assert pod["enableServiceLinks"] is False
    assert pod["serviceAccountName"] == "crosswire-gateway"


@pytest.mark.parametrize("name", ALL)
def test_dataplane_container(rendered: Rendered, name: str) -> None:
    """Issue 20: crosswire-wg runs in a container of its own, sharing the pod's network
    namespace and the state volume; the gateway adopts it (wireguard.supervise: false)."""
    res = rendered[name]
    cfg = _load(res)
    assert cfg.wireguard.supervise is False and cfg.wireguard.standby is True
    dep = find(res, "Deployment", "crosswire-gateway")
    pod = _pod(dep)
    # Two containers (their order does not matter: the gateway waits for the data plane).
    assert sorted(c["name"] for c in pod["containers"]) == ["dataplane", "gateway"]
    dp, gw = container(dep, "dataplane"), container(dep, "gateway")
    assert dp["image"] == gw["image"]
    args = dp["args"]
    assert args[:2] == ["dataplane", "run"]
    assert args[args.index("--config") + 1] == gw["args"][gw["args"].index("--config") + 1]
    dmounts = {m["name"]: m for m in dp["volumeMounts"]}
    gmounts = {m["name"]: m for m in gw["volumeMounts"]}
    # The same state directory (saved configuration) and UAPI socket directory as the gateway.
    for shared in ("config", "state", "wireguard-run"):
        assert dmounts[shared]["mountPath"] == gmounts[shared]["mountPath"], shared
    assert dmounts["state"]["mountPath"] == cfg.state_dir
    vols = {v["name"]: v for v in pod["volumes"]}
    assert dmounts["tun"]["mountPath"] == "/dev/net/tun"
    assert vols["tun"]["hostPath"] == {"path": "/dev/net/tun", "type": "CharDevice"}
    ports = {p["name"]: p for p in dp["ports"]}
    assert ports["wireguard"] == {"name": "wireguard", "containerPort": cfg.wireguard.listen_port,
                                  "protocol": "UDP"}
    sc = dp["securityContext"]
    assert sc["capabilities"] == {"drop": ["ALL"], "add": ["NET_ADMIN"]}
    assert sc["allowPrivilegeEscalation"] is False and sc["privileged"] is False
    assert sc["readOnlyRootFilesystem"] is True and sc["seccompProfile"] == {"type": "RuntimeDefault"}
    # Resources of its own: CPU for the packets, memory for the process and its standby.
    assert dp["resources"]["requests"]["cpu"] and dp["resources"]["limits"]["memory"]
    # No probe may restart it: that would cost the traffic this container exists to keep.
    assert not {"livenessProbe", "startupProbe"} & set(dp)


def test_pod_ip_from_the_downward_api(rendered: Rendered) -> None:
    env = {e["name"]: e for e in container(find(rendered["gpu"], "Deployment"), "gateway")["env"]}
    assert env["CROSSWIRE_POD_IP"]["valueFrom"] == {"fieldRef": {"fieldPath": "status.podIP"}}


def test_host_network_component(rendered: Rendered) -> None:
    pod = _pod(find(rendered["gpu+host-network"], "Deployment"))
    assert pod["hostNetwork"] is True
    assert pod["dnsPolicy"] == "ClusterFirstWithHostNet"
    # status.podIP would be the node IP, outside pod_cidrs: the gateway detects its address.
    gw = next(c for c in pod["containers"] if c["name"] == "gateway")
    assert "CROSSWIRE_POD_IP" not in {e["name"] for e in gw.get("env", [])}
    # Everything else is the plain gpu Deployment.
    plain = _pod(find(rendered["gpu"], "Deployment"))
    assert "hostNetwork" not in plain


@pytest.mark.parametrize("name", ALL)
def test_service_exposes_wireguard_and_peering(rendered: Rendered, name: str) -> None:
    res = rendered[name]
    cfg = _load(res)
    svc = find(res, "Service", "crosswire-gateway")
    dep = find(res, "Deployment", "crosswire-gateway")
    assert svc["spec"]["selector"] == dep["spec"]["selector"]["matchLabels"]
    ports = {p["name"]: p for p in svc["spec"]["ports"]}
    # Published: WireGuard and the peering listener, nothing else.
    assert {n: (p["protocol"], p["targetPort"]) for n, p in ports.items()} == {
        "wireguard": ("UDP", "wireguard"), "peering": ("TCP", "peering")}
    # Every container port is some Service's target; the others are ClusterIP only.
    inside = [find(res, "Service", n)["spec"] for n in ("crosswire-dns", "crosswire-operator")]
    assert all(s["type"] == "ClusterIP" for s in inside)
    assert {p["targetPort"] for p in ports.values()} | {p["targetPort"] for s in inside for p in s["ports"]} == \
        {p["name"] for c in _pod(dep)["containers"] for p in c.get("ports", [])}
    # Only crosswire-gateway leaves the cluster.
    assert [r["metadata"]["name"] for r in res if r["kind"] == "Service" and
            r["spec"].get("type", "ClusterIP") != "ClusterIP"] == ["crosswire-gateway"]
    kind = svc["spec"]["type"]
    assert kind in ("LoadBalancer", "NodePort")
    # What peers are told to dial (config) is what the Service opens.
    endpoint_port = gwconfig.split_host_port(cfg.wireguard_endpoint(), "wireguard.endpoint")[1]
    advertise_port = urlsplit(cfg.advertise_url()).port
    if kind == "NodePort":
        assert endpoint_port == ports["wireguard"]["nodePort"]
        assert advertise_port == ports["peering"]["nodePort"]
    else:
        assert endpoint_port == ports["wireguard"]["port"]
        assert advertise_port == ports["peering"]["port"]
    assert urlsplit(cfg.advertise_url()).scheme == "https"


def test_nodeport_switch(rendered: Rendered) -> None:
    assert find(rendered["gpu"], "Service", "crosswire-gateway")["spec"]["type"] == "LoadBalancer"
    svc = find(rendered["lab"], "Service", "crosswire-gateway")["spec"]
    assert svc["type"] == "NodePort"
    assert all(30000 <= p["nodePort"] <= 32767 for p in svc["ports"])


@pytest.mark.parametrize("name", ALL)
def test_agent_daemonset(rendered: Rendered, name: str) -> None:
    res = rendered[name]
    ds = find(res, "DaemonSet", "crosswire-agent")
    pod = _pod(ds)
    assert pod["hostNetwork"] is True
    assert pod["dnsPolicy"] == "ClusterFirstWithHostNet"
    assert pod["tolerations"] == [{"operator": "Exists"}]  # every taint
    agent = container(ds, "agent")
    assert agent["securityContext"]["capabilities"] == {"drop": ["ALL"], "add": ["NET_ADMIN"]}
    assert agent["securityContext"]["allowPrivilegeEscalation"] is False
    # Same image as the gateway.
    assert agent["image"] == container(find(res, "Deployment"), "gateway")["image"]
    # `crosswire agent run --gateway URL`, URL = the operator Service (inside the cluster).
    args = agent["args"]
    assert args[:2] == ["agent", "run"]
    url = urlsplit(args[args.index("--gateway") + 1])
    svc = find(res, "Service", "crosswire-operator")
    port = next(p["port"] for p in svc["spec"]["ports"] if p["name"] == "operator")
    assert url.hostname == f"{svc['metadata']['name']}.{svc['metadata']['namespace']}.svc"
    assert url.port == port and url.scheme == "http"


@pytest.mark.parametrize("name", ALL)
def test_least_privilege_identity(rendered: Rendered, name: str) -> None:
    res = rendered[name]
    # No API access at all: no RBAC objects, no tokens mounted.
    assert not [r for r in res if r["kind"] in ("Role", "ClusterRole", "RoleBinding",
                                                  "ClusterRoleBinding")]
    for sa in (r for r in res if r["kind"] == "ServiceAccount"):
        assert sa["automountServiceAccountToken"] is False
    ns = find(res, "Namespace", "crosswire")
    # NET_ADMIN, hostPath and hostNetwork are beyond "baseline": say so, or admission refuses.
    assert ns["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "privileged"


@pytest.mark.parametrize("name", ["gpu", "lab"])
def test_overlays_set_the_image(rendered: Rendered, name: str) -> None:
    for w in (find(rendered[name], "Deployment"), find(rendered[name], "DaemonSet")):
        for c in _pod(w)["containers"] + _pod(w).get("initContainers", []):
            assert c["image"] == "ghcr.io/crosswire/crosswire:0.1.0"


def test_gpu_load_balancer_admits_the_lab_cluster(rendered: Rendered) -> None:
    """gpu's loadBalancerSourceRanges let lab's nodes (where lab's traffic leaves) in."""
    ranges = find(rendered["gpu"], "Service", "crosswire-gateway")["spec"]["loadBalancerSourceRanges"]
    lab_egress = ipaddress.ip_address(urlsplit(_load(rendered["lab"]).advertise_url()).hostname or "")
    assert any(lab_egress in ipaddress.ip_network(r) for r in ranges), (lab_egress, ranges)


@pytest.mark.parametrize("name", ALL)
def test_network_policy_keeps_the_operator_port_in(rendered: Rendered, name: str) -> None:
    """The operator port admits the nodes (kubelet, node agents) and monitoring only; every
    other port of the gateway pod stays open (peering, WireGuard, forwarded traffic)."""
    res = rendered[name]
    cfg = _load(res)
    pol = find(res, "NetworkPolicy", "crosswire-gateway")["spec"]
    dep = find(res, "Deployment", "crosswire-gateway")
    assert pol["podSelector"]["matchLabels"] == dep["spec"]["selector"]["matchLabels"]
    assert pol["policyTypes"] == ["Ingress"]
    op = cfg.operator_host_port[1]
    open_rule, op_rule = pol["ingress"]
    assert "from" not in open_rule
    tcp = [(p["port"], p.get("endPort", p["port"])) for p in open_rule["ports"] if p["protocol"] == "TCP"]
    assert not any(lo <= op <= hi for lo, hi in tcp)
    assert any(lo <= cfg.listen_host_port[1] <= hi for lo, hi in tcp)
    assert {(p["protocol"], p["port"], p.get("endPort")) for p in open_rule["ports"]} >= {
        ("UDP", 1, 65535), ("SCTP", 1, 65535)}
    assert op_rule["ports"] == [{"protocol": "TCP", "port": op}]
    nodes = [f["ipBlock"]["cidr"] for f in op_rule["from"] if "ipBlock" in f]
    assert [f["namespaceSelector"] for f in op_rule["from"] if "namespaceSelector" in f] == [
        {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}]
    if name != "base":  # the overlays name their own nodes' network (reserved_cidrs)
        assert nodes and set(nodes) <= set(cfg.reserved_cidrs), (nodes, cfg.reserved_cidrs)
