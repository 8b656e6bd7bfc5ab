"""Kernel WireGuard, for real, in a VM (see conftest.py): interop with crosswire-wg and ``auto``.

Each test runs one script inside the guest (tests/vm/guest/) under a hard
timeout; its JSON report names every check, so a failure says which.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
from vmkit import TIMES, JobResult, Vm

# Above pytest's default: the first test also pays the VM's boot, the gateway
# tests their start (each step has its own hard timeout inside the guest).
pytestmark = pytest.mark.timeout(1800)


def failed(res: JobResult) -> str:
    bad = [c for c in res.report.get("checks", []) if not c["ok"]]
    return (f"rc={res.rc} error={res.report.get('error')}\nfailed checks: {json.dumps(bad, indent=1)}\n"
            f"stdout tail:\n{res.out[-2000:]}\nstderr tail:\n{res.err[-3000:]}")


def passed(res: JobResult, name: str) -> dict[str, Any]:
    TIMES[name] = res.seconds
    print(json.dumps(res.report))  # shown with -s, and on failure
    assert res.rc == 0 and res.report.get("ok") is True, failed(res)
    return res.report


def test_crosswire_wg_and_kernel_wireguard_interoperate(vm: Vm) -> None:
    """v4 and v6 inside and outside, each side initiating, full MTU, checksummed MBs, wg show agreeing."""
    rep = passed(vm.python("interop.py", timeout=420), "interop")
    names = [c["name"] for c in rep["checks"]]
    assert len(names) == 2 * 11 + 3, names  # every check of both phases ran
    assert any("kernel initiates" in n for n in names) and any("crosswire-wg initiates" in n for n in names)


def test_auto_chooses_the_kernel_inside_the_vm(vm: Vm) -> None:
    res = vm.python("auto.py", timeout=180)
    TIMES["auto"] = res.seconds
    assert res.rc == 0, failed(res)
    rep = res.report
    assert rep["implementation"] == "kernel" and rep["display"] == "kernel", rep
    assert rep["reason"].startswith("auto: kernel WireGuard module"), rep
    assert rep["link_kind_wireguard"] and rep["marked"] and rep["alive"], rep
    assert rep["control"] == "NetlinkWgControl" and rep["device_answers"] is True, rep
    assert rep["removed"], rep


@pytest.fixture(scope="module")
def gateways(vm: Vm) -> Iterator[JobResult]:
    """Gateway a (implementation: kernel) and b (crosswire-wg) peered in the guest, for the tests below."""
    res = vm.python("gateways.py", "up", timeout=1200)
    try:
        yield res
    finally:
        if not vm.broken:
            # Shell, not another Python start (seconds under emulation): every namespace in
            # the guest is one a scenario made, and the guest is ours alone.
            vm.run("for ns in $(ip netns list | cut -d' ' -f1); do ip netns pids $ns | xargs -r kill -9; "
                   "ip netns del $ns; done; rm -rf /run/cw-vm-gw /run/cw-vm-gateways.json", timeout=120)


def test_two_gateways_one_kernel_one_crosswire_wg(gateways: JobResult) -> None:
    """Peered by token, same 10.244/16 and 10.96/12 on both: pod to pod both ways, views seen."""
    rep = passed(gateways, "gateways")
    assert any("sees a's pod under b's view" in c["name"] for c in rep["checks"]), rep


def test_key_rotation_on_the_kernel_side_with_traffic(vm: Vm, gateways: JobResult) -> None:
    assert gateways.report.get("ok"), "the gateways did not come up (see the test above)"
    passed(vm.python("gateways.py", "rotate", timeout=300), "rotation")


def test_restart_adopts_the_kernel_interface(vm: Vm, gateways: JobResult) -> None:
    assert gateways.report.get("ok"), "the gateways did not come up (see the test above)"
    passed(vm.python("gateways.py", "restart", timeout=900), "restart")


def test_drift_repair_and_peer_removal_on_the_kernel(vm: Vm, gateways: JobResult) -> None:
    assert gateways.report.get("ok"), "the gateways did not come up (see the test above)"
    passed(vm.python("gateways.py", "repair", timeout=300), "repair")
