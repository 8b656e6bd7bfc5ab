"""The controller's handle on the data plane (fabric package), behind a small protocol.

``SystemFabric`` calls the real fabric modules (Dataplane, apply, WgControl,
nat.mappings + with_counters, apply.verify); tests pass a fake with the same methods. All
methods block (netlink, libnftables, UAPI), so the controller runs them in a
worker thread.
"""

from __future__ import annotations

from typing import Any, Protocol, cast

from fabric.model import FabricState


class FabricDriver(Protocol):
    def ensure_up(self) -> None: ...
    def alive(self) -> bool: ...
    def apply(self, state: FabricState, previous: FabricState | None) -> None: ...
    def stop(self) -> None: ...
    def peer_stats(self) -> dict[str, dict[str, Any]]: ...
    def nat(self, state: FabricState) -> list[dict[str, Any]]: ...
    def verify(self, state: FabricState) -> list[str]: ...


class SystemFabric:
    """The real data plane in the current network namespace."""

    def __init__(self, interface: str, implementation: str, mtu: int, nft_table: str,
                 log_path: str | None = None) -> None:
        from fabric.dataplane import Dataplane

        self.interface = interface
        self.nft_table = nft_table
        self.dataplane = Dataplane(interface, cast(Any, implementation), mtu,
                                   log_path=log_path)

    def ensure_up(self) -> None:
        self.dataplane.ensure_up()

    def alive(self) -> bool:
        return bool(self.dataplane.alive())

    def apply(self, state: FabricState, previous: FabricState | None) -> None:
        from fabric.apply import apply

        apply(state, previous)

    def stop(self) -> None:
        self.dataplane.stop()

    def peer_stats(self) -> dict[str, dict[str, Any]]:
        from fabric.wgctl import WgControl

        return dict(WgControl(self.interface).show())

    def nat(self, state: FabricState) -> list[dict[str, Any]]:
        from fabric.nat import FAMILY, mappings, with_counters
        from fabric.nft import Nft, NftError

        try:
            listing = Nft().list_table(FAMILY, self.nft_table)
        except NftError:
            listing = {}  # table missing: rules show handle None and zero counters
        return with_counters(mappings(state), listing)

    def verify(self, state: FabricState) -> list[str]:
        from fabric.apply import verify

        return verify(state)
