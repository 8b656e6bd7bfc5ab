"""fabric.wg.udp's sticky source on loopback in a fresh namespace: reads carry the local
address they arrived at (one cmsg set for a whole GRO read), sends leave from it, and a
local address that is gone is forgotten and the datagram sent from the kernel's choice."""

from __future__ import annotations

import json
import os
import socket

import pytest
from nsutil import Namespaces, sh
from wgpair import PYTHON, REPO

pytestmark = pytest.mark.root
PROBE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "udp_source_probe.py")


def test_reads_carry_local_address_and_stale_ones_fall_back(netns: Namespaces) -> None:
    ns = netns.add("cwu")
    out = json.loads(sh(PYTHON, PROBE, REPO, ns=ns).stdout)
    v4, v6 = str(int(socket.AF_INET)), str(int(socket.AF_INET6))
    # 127.0.0.2 is ours (lo holds 127/8) but not the socket's bound address: only packet info tells.
    assert [(n, s[0], s[2]) for n, s in out[f"read{v4}"]] == [(100, "127.0.0.1", "7f000002")] * 4
    assert [(n, s[0], s[2]) for n, s in out[f"read{v6}"]] == [(100, "::1", "0" * 31 + "1")] * 4
    assert out["counters"].get("io_gro_reads") == 2  # one read each, split in four
    for fam, kernel_choice, sticky in ((v4, "127.0.0.1", "127.0.0.2"), (v6, "::1", "::1")):
        sent = out[f"send{fam}"]
        assert sent["forgotten"] == 1 and sent["data"] == "hello" and sent["from"] == kernel_choice
        assert sent["sticky_from"] == [sticky, sticky]
    assert "io_udp_send_error" not in out["counters"], out["counters"]
