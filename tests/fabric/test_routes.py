"""fabric.routes without sockets: the plan, CIDR parsing, and the rtnetlink messages it sends."""

from __future__ import annotations

import ipaddress

import pytest
from pyroute2.netlink.rtnl.rtmsg import rtmsg

from fabric.routes import (
    ROUTE_PROTO,
    RTNH_F_ONLINK,
    NextHop,
    RouteError,
    parse_cidrs,
    plan,
    route_message,
)


def test_route_plan() -> None:
    n = ipaddress.ip_network
    dev = NextHop(None, 7)  # the gateway's routes point into its WireGuard device
    p = plan(dict.fromkeys(parse_cidrs(["100.64.0.0/16", "fd64::/48"]), dev),
             dict.fromkeys({n("100.64.0.0/16"), n("100.80.0.0/12")}, dev))
    assert p.add == ((n("fd64::/48"), dev),) and p.remove == (n("100.80.0.0/12"),)
    assert plan({}, {}).add == ()
    with pytest.raises(RouteError, match="not a valid CIDR"):
        parse_cidrs(["100.64.0.1/16"])


@pytest.mark.parametrize(("net", "hop", "scope", "flags"), [
    ("100.64.0.0/16", NextHop(None, 7), 253, 0),  # into the device: scope link
    ("fd64::/48", NextHop("fe80::1", 3), 0, RTNH_F_ONLINK),  # through a router, onlink
])
def test_route_message_decodes_as_the_kernel_reads_it(net: str, hop: NextHop, scope: int,
                                                      flags: int) -> None:
    data = route_message(24, 0x405, 9, ipaddress.ip_network(net), hop, proto=ROUTE_PROTO, table=254)
    m = rtmsg(data)
    m.decode()
    assert m["header"]["type"] == 24 and m["header"]["sequence_number"] == 9
    assert m["header"]["length"] == len(data)
    assert (m["proto"], m["table"], m["scope"], m["flags"]) == (ROUTE_PROTO, 254, scope, flags)
    assert f"{m.get_attr('RTA_DST')}/{m['dst_len']}" == net
    assert m.get_attr("RTA_OIF") == hop.oif and m.get_attr("RTA_GATEWAY") == hop.via
    assert m.get_attr("RTA_TABLE") == 254
