"""IP forwarding sysctls: set at startup where possible, warned about and reported by /readyz otherwise."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Any

import pytest

from gateway import forwarding
from tests.gateway.conftest import make_config


def fake_proc(root: Path, v4: str = "0", v6: str = "0") -> Path:
    (root / "net/ipv4").mkdir(parents=True)
    (root / "net/ipv6/conf/all").mkdir(parents=True)
    (root / "net/ipv4/ip_forward").write_text(v4 + "\n")
    (root / "net/ipv6/conf/all/forwarding").write_text(v6 + "\n")
    return root


def test_wanted_depends_on_ipv6_ranges(tmp_path: Path) -> None:
    assert forwarding.wanted(make_config("a", tmp_path)) == ("net.ipv4.ip_forward",)
    dual = make_config("a", tmp_path, pod_cidrs=["10.244.0.0/16", "fd00::/48"])
    assert forwarding.wanted(dual) == ("net.ipv4.ip_forward", "net.ipv6.conf.all.forwarding")


def test_enable_sets_and_check_reports(tmp_path: Path) -> None:
    root = fake_proc(tmp_path / "sys")
    names = (forwarding.IPV4, forwarding.IPV6)
    assert forwarding.check(names, root) == [
        "IP forwarding is off (net.ipv4.ip_forward=0)", "IP forwarding is off (net.ipv6.conf.all.forwarding=0)"]
    assert forwarding.enable(names, root) == []
    assert (root / "net/ipv4/ip_forward").read_text().strip() == "1"
    assert (root / "net/ipv6/conf/all/forwarding").read_text().strip() == "1"
    assert forwarding.check(names, root) == []


def test_unwritable_sysctl_warns_by_name_and_continues(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    root = fake_proc(tmp_path / "sys", v4="1")
    # a directory where the file should be: the write fails like a read-only /proc/sys does
    (root / "net/ipv6/conf/all/forwarding").unlink()
    (root / "net/ipv6/conf/all/forwarding").mkdir()
    with caplog.at_level(logging.WARNING, logger="crosswire.forwarding"):
        problems = forwarding.enable((forwarding.IPV4, forwarding.IPV6), root)
    assert len(problems) == 1 and problems[0].startswith("net.ipv6.conf.all.forwarding: cannot set it to 1")
    assert "cannot set net.ipv6.conf.all.forwarding=1" in caplog.text
    assert (root / "net/ipv4/ip_forward").read_text().strip() == "1"  # the other one is untouched
    assert forwarding.check((forwarding.IPV6,), root) == [
        "IP forwarding is off (net.ipv6.conf.all.forwarding=unreadable)"]


def test_readyz_not_ready_while_forwarding_is_off(clusters: Any, tmp_path: Path) -> None:
    gpu = clusters("gpu")
    root = fake_proc(tmp_path / "sys")
    gpu.gw.reconciler.forwarding, gpu.gw.reconciler.sysctl_root = (forwarding.IPV4,), root

    async def go() -> None:
        assert await gpu.gw.reconciler.reconcile()
        r = await gpu.call("GET", "/readyz", auth=False)
        assert r.status_code == 503 and "net.ipv4.ip_forward=0" in r.json()["reason"]
        (root / "net/ipv4/ip_forward").write_text("1\n")
        assert (await gpu.call("GET", "/readyz", auth=False)).status_code == 200

    asyncio.run(go())
