"""The node agent's pure logic: parsing the gateway's answer, next hop, diff."""

from __future__ import annotations

import ipaddress

import pytest

from fabric.agent import desired_routes, resolve_nexthop
from fabric.agent_api import RoutesError, parse_routes
from fabric.routes import NextHop, Plan, plan

N = ipaddress.ip_network


def test_parse_sorts_dedups_and_validates() -> None:
    p = parse_routes({"gateway_ip": "10.244.0.2",
                      "cidrs": ["100.80.0.0/12", "100.64.0.0/16", "100.64.0.0/16"]})
    assert str(p.gateway_ip) == "10.244.0.2"
    assert p.cidrs == (N("100.64.0.0/16"), N("100.80.0.0/12"))


@pytest.mark.parametrize("body", [
    None, [], "x",
    {"cidrs": []},
    {"gateway_ip": 5, "cidrs": []},
    {"gateway_ip": "10.0.0.300", "cidrs": []},
    {"gateway_ip": "10.0.0.1", "cidrs": "100.64.0.0/16"},
    {"gateway_ip": "10.0.0.1", "cidrs": [1]},
    {"gateway_ip": "10.0.0.1", "cidrs": ["100.64.0.1/16"]},  # host bits set
    {"gateway_ip": "10.0.0.1", "cidrs": ["100.64.0.0/16", "nonsense"]},
    {"gateway_ip": "10.0.0.1", "cidrs": ["0.0.0.0/0"]},
])
def test_parse_rejects_bad_answers(body: object) -> None:
    with pytest.raises(RoutesError):
        parse_routes(body)


def test_nexthop_on_gateway_node_and_elsewhere() -> None:
    gw = ipaddress.ip_address("10.244.0.2")
    # Own node: the pod is directly on a veth, so route via the pod itself.
    assert resolve_nexthop(gw, {"oif": 7, "gateway": None}) == NextHop("10.244.0.2", 7)
    # Other node: follow the underlay next hop to the gateway's node.
    assert resolve_nexthop(gw, {"oif": 2, "gateway": "192.168.10.11"}) == NextHop("192.168.10.11", 2)
    with pytest.raises(RoutesError):
        resolve_nexthop(gw, {})


def test_desired_per_family() -> None:
    p = parse_routes({"gateway_ip": "10.244.0.2", "cidrs": ["100.64.0.0/16", "fd00:1::/48"]})
    h4, h6 = NextHop("10.244.0.2", 3), NextHop("fd00:244::2", 3)
    assert desired_routes(p, {4: h4}) == {N("100.64.0.0/16"): h4}  # no IPv6 gateway: v4 only
    p6 = parse_routes({"gateway_ip": "10.244.0.2", "gateway_ip6": "fd00:244::2",
                       "cidrs": ["100.64.0.0/16", "fd00:1::/48"]})
    assert [str(g) for g in p6.gateways()] == ["10.244.0.2", "fd00:244::2"]
    assert desired_routes(p6, {4: h4, 6: h6}) == {N("100.64.0.0/16"): h4, N("fd00:1::/48"): h6}
    with pytest.raises(RoutesError):
        parse_routes({"gateway_ip": "10.244.0.2", "gateway_ip6": "10.0.0.1", "cidrs": []})


def test_plan_keeps_routes_of_an_unresolved_family() -> None:
    h4, h6 = NextHop("10.244.0.2", 3), NextHop("fd00:244::2", 3)
    present = {N("100.64.0.0/16"): h4, N("fd00:1::/48"): h6, N("100.66.0.0/16"): h4}
    p = plan({N("100.64.0.0/16"): h4}, present, keep_families=frozenset({6}))
    assert p.remove == (N("100.66.0.0/16"),) and p.add == ()


def test_plan_adds_removes_and_replaces_moved_routes() -> None:
    a, b = NextHop("10.244.0.2", 3), NextHop("192.168.10.11", 2)
    present = {N("100.64.0.0/16"): a, N("100.80.0.0/12"): a, N("100.66.0.0/16"): a}
    desired = {N("100.64.0.0/16"): a, N("100.80.0.0/12"): b, N("100.65.0.0/16"): a}
    p = plan(desired, present)
    assert p.add == ((N("100.65.0.0/16"), a), (N("100.80.0.0/12"), b))
    assert p.remove == (N("100.66.0.0/16"),)
    assert not p.empty


def test_plan_is_empty_when_converged_and_removes_all_when_nothing_published() -> None:
    a = NextHop("10.244.0.2", 3)
    state = {N("100.64.0.0/16"): a}
    assert plan(state, state) == Plan()
    assert plan(state, state).empty
    assert plan({}, state).remove == (N("100.64.0.0/16"),)


def test_fetch_routes_reuses_the_agents_client() -> None:
    # The agent keeps one httpx client (a client per poll costs ~20 ms of CPU); every poll
    # goes through it, and an error answer still changes nothing.
    import httpx

    from fabric.agent_api import fetch_routes

    seen: list[str] = []
    status = [200]

    def handler(req: httpx.Request) -> httpx.Response:
        seen.append(str(req.url))
        return httpx.Response(status[0], json={"gateway_ip": "10.244.0.2", "cidrs": ["100.64.0.0/16"]})

    with httpx.Client(transport=httpx.MockTransport(handler)) as http:
        for _ in range(2):
            p = fetch_routes("http://gw:8080/", http=http)
            assert p.cidrs == (N("100.64.0.0/16"),)
        status[0] = 500
        with pytest.raises(RoutesError, match="500"):
            fetch_routes("http://gw:8080", http=http)
    assert seen == ["http://gw:8080/api/v1/routes"] * 3


def test_screen_keeps_private_views_and_names_why_it_refuses_the_rest() -> None:
    from fabric.agent import parse_cidr_list, screen
    from fabric.model import PEER_SPACE

    allow = parse_cidr_list(",".join(PEER_SPACE), "--allow")
    local = (N("192.168.10.0/24"), N("10.244.0.1/32"))
    gw = (ipaddress.ip_address("10.244.0.2"), ipaddress.ip_address("fd00:244::2"))
    cidrs = [N(c) for c in ("100.64.0.0/16", "fd00:1::/48", "8.8.8.0/24", "2001:db8::/48", "192.168.0.0/16",
                            "10.244.0.0/30", "10.244.0.0/31", "172.16.0.0/12")]
    kept, refused = screen(cidrs, allow, local, gw)
    assert kept == (N("100.64.0.0/16"), N("fd00:1::/48"), N("172.16.0.0/12"))
    assert refused == {
        N("8.8.8.0/24"): "outside the address space routed to peers (--allow 10.0.0.0/8,172.16.0.0/12,"
                         "192.168.0.0/16,100.64.0.0/10,fd00::/8)",
        N("2001:db8::/48"): refused[N("8.8.8.0/24")],
        N("192.168.0.0/16"): "overlaps this node's local range 192.168.10.0/24",
        N("10.244.0.0/30"): "overlaps this node's local range 10.244.0.1/32",
        N("10.244.0.0/31"): "overlaps this node's local range 10.244.0.1/32"}
    # The gateway's own address inside a published CIDR would loop the route.
    assert screen([N("10.244.0.0/31"), N("10.244.0.2/31")], allow, (), gw)[1] == {
        N("10.244.0.2/31"): "holds the gateway's own address"}
    with pytest.raises(ValueError, match="--local: "):
        parse_cidr_list("10.0.0.1/8", "--local")
