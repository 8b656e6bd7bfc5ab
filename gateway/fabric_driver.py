"""The controller's handle on the data plane (fabric package), behind a small protocol.

``SystemFabric`` calls the real fabric modules (Dataplane, apply, WgControl,
nat.mappings + Nft counters); tests pass a fake with the same methods. All
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


def _walk_counters(node: object, out: dict[str, dict[str, int]]) -> None:
    """Collect {comment: {packets, bytes}} from nft JSON rules / map elements with counters."""
    if isinstance(node, dict):
        comment = node.get("comment")
        counter = node.get("counter")
        if isinstance(comment, str) and isinstance(counter, dict) and "packets" in counter:
            c = out.setdefault(comment, {"packets": 0, "bytes": 0})
            c["packets"] += int(counter.get("packets", 0))
            c["bytes"] += int(counter.get("bytes", 0))
        if isinstance(comment, str) and "expr" in node:
            for e in node["expr"]:
                if isinstance(e, dict) and isinstance(e.get("counter"), dict):
                    c = out.setdefault(comment, {"packets": 0, "bytes": 0})
                    c["packets"] += int(e["counter"].get("packets", 0))
                    c["bytes"] += int(e["counter"].get("bytes", 0))
        for v in node.values():
            _walk_counters(v, out)
    elif isinstance(node, list):
        for v in node:
            _walk_counters(v, out)


def counters_by_comment(listing: dict[str, Any]) -> dict[str, dict[str, int]]:
    out: dict[str, dict[str, int]] = {}
    _walk_counters(listing, out)
    return out


def attach_counters(mappings: list[dict[str, Any]], listing: dict[str, Any]) -> list[dict[str, Any]]:
    """Add kernel counters to each mapping: every comment the mapping names, summed."""
    by_comment = counters_by_comment(listing)
    out = []
    for m in mappings:
        comments: set[str] = set()
        _collect_comments(m, comments)
        total = {"packets": 0, "bytes": 0}
        per: dict[str, dict[str, int]] = {}
        for c in sorted(comments):
            if c in by_comment:
                per[c] = by_comment[c]
                total["packets"] += by_comment[c]["packets"]
                total["bytes"] += by_comment[c]["bytes"]
        out.append({**m, "counters": total, "counters_by_rule": per})
    return out


def _collect_comments(node: object, out: set[str]) -> None:
    if isinstance(node, dict):
        for k, v in node.items():
            if k in ("comment", "comments") and isinstance(v, str):
                out.add(v)
            elif k == "comments" and isinstance(v, list):
                out.update(x for x in v if isinstance(x, str))
            else:
                _collect_comments(v, out)
    elif isinstance(node, list):
        for v in node:
            _collect_comments(v, out)


class SystemFabric:
    """The real data plane in the current network namespace."""

    def __init__(self, interface: str, implementation: str, mtu: int, nft_table: str) -> None:
        from fabric.dataplane import Dataplane

        self.interface = interface
        self.nft_table = nft_table
        self.dataplane = Dataplane(interface, cast(Any, implementation), mtu)

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
        from fabric.nat import mappings
        from fabric.nft import Nft

        try:
            listing = Nft().list_table("inet", self.nft_table)
        except Exception:
            listing = {}
        return attach_counters(list(mappings(state)), listing)
