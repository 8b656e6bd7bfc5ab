"""The data plane of one gateway, behind one facade: what the control plane calls.

``Dataplane`` owns the WireGuard implementation process or link
(:class:`fabric.wgprocess.WgProcess`) and programs WireGuard, routes and NAT
from a :class:`fabric.model.FabricState` through :mod:`fabric.apply`; it also
answers what the gateway reports: WireGuard peer stats, the NAT mappings with
their counters, and drift (``verify``). Every method blocks (netlink,
libnftables, UAPI): async callers run them in a worker thread.
"""

from __future__ import annotations

from typing import Any

from fabric import apply as fabric_apply
from fabric import nat
from fabric.model import FabricState
from fabric.nft import Nft, NftError
from fabric.wgctl import WgControl
from fabric.wgprocess import Implementation, WgProcess


class Dataplane:
    """The real data plane in the current network namespace."""

    def __init__(self, interface: str, implementation: Implementation, mtu: int, nft_table: str,
                 log_path: str | None = None) -> None:
        self.interface = interface
        self.nft_table = nft_table
        self.process = WgProcess(interface, implementation, mtu, log_path=log_path)

    def ensure_up(self) -> None:
        self.process.ensure_up()

    def alive(self) -> bool:
        return self.process.alive()

    def apply(self, state: FabricState, previous: FabricState | None) -> None:
        fabric_apply.apply(state, previous)

    def stop(self) -> None:
        self.process.stop()

    def peer_stats(self) -> dict[str, dict[str, Any]]:
        return dict(WgControl(self.interface).show())

    def nat(self, state: FabricState) -> list[dict[str, Any]]:
        try:
            listing = Nft().list_table(nat.FAMILY, self.nft_table)
        except NftError:
            listing = {}  # table missing: rules show handle None and zero counters
        return nat.with_counters(nat.mappings(state), listing)

    def verify(self, state: FabricState) -> list[str]:
        return fabric_apply.verify(state)

    def endpoint_problems(self) -> tuple[dict[str, str], float | None]:
        """Peers programmed without their endpoint (why), and when to retry (monotonic)."""
        return fabric_apply.endpoint_problems(self.interface)
