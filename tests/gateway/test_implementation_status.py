"""/api/v1/status and /metrics say which WireGuard implementation serves the interface, and why."""

from __future__ import annotations

import asyncio
from typing import Any

from fabric.dataplane import Dataplane
from fabric.wgselect import Choice


def test_status_and_metrics_show_the_choice_and_reason(clusters: Any) -> None:
    gpu = clusters("gpu", wireguard={"interface": "cw-gpu", "implementation": "auto"})
    reason = "auto: kernel WireGuard module loaded by modprobe"
    gpu.fabric.implementation = lambda: {"configured": "auto", "implementation": "kernel",
                                         "name": "kernel", "reason": reason}

    async def go() -> None:
        st = (await gpu.call("GET", "/api/v1/status", auth=False)).json()
        assert st["implementation"] == "kernel" and st["implementation_reason"] == reason
        m = (await gpu.call("GET", "/metrics", auth=False)).text
        assert ('crosswire_wireguard_implementation{implementation="kernel",configured="auto",'
                f'reason="{reason}"}} 1') in m

    asyncio.run(go())


def test_a_data_plane_that_cannot_say_reports_the_configuration(clusters: Any) -> None:
    gpu = clusters("gpu")  # FakeFabric has no implementation()

    async def go() -> None:
        st = (await gpu.call("GET", "/api/v1/status", auth=False)).json()
        assert st["implementation"] == "wireguard-go" and st["implementation_reason"] == "unknown"

    asyncio.run(go())


def test_dataplane_reports_its_process_choice() -> None:
    dp = Dataplane("cwimpl0", "userspace", 1420, "crosswire")
    assert dp.implementation() == {"configured": "userspace", "implementation": "userspace",
                                   "name": "crosswire-wg", "reason": "configured: implementation userspace"}
    dp.process._choice = Choice("kernel", "auto: kernel WireGuard module loaded")
    assert dp.implementation()["name"] == "kernel"
    assert type(dp.process.control()).__name__ == "NetlinkWgControl"
