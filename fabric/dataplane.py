"""The data plane of one gateway, behind one facade: what the control plane calls.

``Dataplane`` owns the WireGuard implementation process or link
(:class:`fabric.wgprocess.WgProcess`) and programs WireGuard, routes and NAT
from a :class:`fabric.model.FabricState` through :mod:`fabric.apply`; it also
answers what the gateway reports: WireGuard peer stats, the NAT mappings with
their counters, and drift (``verify``). Every method blocks (netlink,
libnftables, UAPI): async callers run them in a worker thread.

``claim`` is the start-up check that the interface and the nft table of the
configured names are absent or crosswire's (never touch what crosswire did not
create); apply and the process supervisor refuse to change them otherwise too.
"""

from __future__ import annotations

import logging
from collections.abc import Collection, Mapping
from typing import Any

from fabric import apply as fabric_apply
from fabric import nat, nftdump
from fabric.exports import apply as exportsapply
from fabric.exports import policy as exportpolicy
from fabric.exports.guard import table_of
from fabric.model import FabricState
from fabric.nft import Nft, NftError
from fabric.wgprocess import Implementation, LinkOwnershipError, WgProcess, WgProcessError

log = logging.getLogger("crosswire.dataplane")

DROP_CHAINS = ("prerouting", "postrouting")  # where the table drops what no mapping took
# Up to this many peers asked for, their chains and sets are dumped one by one
# (fabric.nftdump); more, and one listing of the whole table is cheaper.
PER_PEER_LISTING = 100
# Up to this many peers' policy counters are read one by one (a GET each), more in one dump.
FEW_COUNTERS = 10


class OwnershipError(RuntimeError):
    """The link or nft table of the configured name exists and was not created by crosswire."""


class Dataplane:
    """The real data plane in the current network namespace."""

    def __init__(self, interface: str, implementation: Implementation, mtu: int, nft_table: str,
                 log_path: str | None = None, standby: bool = False, supervise: bool = True) -> None:
        self.interface = interface
        self.nft_table = nft_table
        self.process = WgProcess(interface, implementation, mtu, log_path=log_path, standby=standby,
                                 supervise=supervise)

    def implementation(self) -> dict[str, str]:
        """What serves the interface and why (``auto`` decides on first use; status, metrics)."""
        c = self.process.choice
        return {"configured": self.process.implementation, "implementation": c.implementation,
                "name": c.display, "reason": c.reason}

    def _use_control(self) -> None:
        fabric_apply.use_control(self.interface, self.process.control())

    def claim(self, adopt_unmarked: bool) -> None:
        """Refuse (OwnershipError, nothing changed) when the interface or the nft
        table exists and is not crosswire's; ``adopt_unmarked``: the state directory
        already holds this gateway's state, so what an earlier version left running
        without the mark is adopted and marked (see WgProcess.claim, apply.claim_table).

        A check that cannot be made (no netlink, no libnftables, no privileges) is
        logged and skipped: apply and the supervisor refuse foreign objects anyway.
        """
        try:
            how = self.process.claim(adopt_unmarked)
            log.debug("wireguard.interface %s: %s", self.interface, how)
        except LinkOwnershipError as e:
            raise OwnershipError(str(e)) from None
        except WgProcessError as e:
            log.warning("cannot check the link %s: %s", self.interface, e)
        try:
            how = fabric_apply.claim_table(self.nft_table, adopt_unmarked)
            log.debug("nft_table %s: %s", self.nft_table, how)
        except fabric_apply.TableOwnershipError as e:
            raise OwnershipError(str(e)) from None
        except NftError as e:
            log.warning("cannot check the nft table %s: %s", self.nft_table, e)

    def ensure_up(self) -> None:
        self._use_control()
        self.process.ensure_up()

    def alive(self) -> bool:
        return self.process.alive()

    def apply(self, state: FabricState, previous: FabricState | None) -> None:
        self._use_control()
        fabric_apply.apply(state, previous)

    def stop(self) -> None:
        self.process.stop()

    def peer_stats(self) -> Mapping[str, dict[str, Any]]:
        return self.process.control().show()

    def nat(self, state: FabricState, only: Collection[str] | None = None, *,
            denied: dict[str, dict[str, int]] | None = None) -> list[dict[str, Any]]:
        """``/api/v1/nat``'s peers with their counters; ``only``: just these peers, and
        the kernel is asked for their chains and sets alone when they are few. ``denied``:
        ``export_denied(state)`` read already (the gateway's snapshot), else read here."""
        listing: dict[str, Any] | None = None
        try:
            if only is not None and len(only) <= PER_PEER_LISTING:
                listing = nftdump.listing(nat.FAMILY, self.nft_table, *nat.listed_objects(state, only))
            else:
                listing = fabric_apply.nat_listing(state, only)
        except OSError as e:  # a chain missing (the table is not what the state says), or no dumps
            log.debug("counters from the kernel's dumps unavailable (%s): listing the table", e)
        if listing is None:
            try:
                listing = Nft().list_table(nat.FAMILY, self.nft_table)
            except NftError:
                listing = {}  # table missing: rules show handle None and zero counters
        peers = nat.with_counters(nat.mappings(state, only), listing)
        # Per peer, every packet of it the gateway dropped: what the policy table dropped
        # (the guard, and with exports what it was not given; fabric.exports.policy) plus,
        # from the NAT table, what it sent to addresses not offered to it.
        denied = self.export_denied(state, only) if denied is None else denied
        for p in peers:
            d = denied.get(p["cluster_id"], {"packets": 0, "bytes": 0})
            extra = p.get("not_offered") or {}
            p["export_denied"] = {"packets": d["packets"] + int(extra.get("packets", 0)),
                                  "bytes": d["bytes"] + int(extra.get("bytes", 0))}
        return peers

    def nat_totals(self, state: FabricState, *, denied: dict[str, dict[str, int]] | None = None
                   ) -> tuple[list[tuple[str, str, int, int, int]], dict[str, int]]:
        """What ``nat(state)``'s rows sum to per peer and chain, and each peer's dropped
        packets (/metrics), from the same dumps without building the rows."""
        try:
            listing = fabric_apply.nat_listing(state)
        except OSError as e:
            log.debug("counters from the kernel's dumps unavailable (%s): listing the table", e)
            try:
                listing = Nft().list_table(nat.FAMILY, self.nft_table)
            except NftError:
                listing = {}
        return nat.totals(state, listing, self.export_denied(state) if denied is None else denied)

    def export_denied(self, state: FabricState, only: Collection[str] | None = None) -> dict[str, dict[str, int]]:
        """Per peer (``only``: just these), what the policy table dropped (the guard, and
        with exports what the peer was not given): named counters, a few peers' read by
        name, else all of them in one dump."""
        t = table_of(state)
        try:  # the kernel's dumps of the counters alone: libnftables would load the table first
            if only is not None and len(only) <= FEW_COUNTERS:
                names = {exportpolicy.counter_name(c) for c in only}
                named = {n: c for n in names if (c := nftdump.counter(nat.FAMILY, t.table, n)) is not None}
                return exportpolicy.denied(t, named, only)
            return exportpolicy.denied(t, nftdump.counters(nat.FAMILY, t.table), only)
        except OSError as e:
            log.debug("policy counters: no dump (%s), listing them", e)
        try:
            return exportsapply.denied(t, Nft(), only)
        except NftError:
            return {}

    def denied_total(self, state: FabricState) -> dict[str, int]:
        """What the policy table dropped of every peer since it was written: one counter
        the kernel sums (the peers' own are 1,000 objects to read), else their sum."""
        t = table_of(state)
        try:
            total = nftdump.counter(nat.FAMILY, t.table, exportpolicy.TOTAL_COUNTER)
            if total is not None:
                return total
        except OSError as e:
            log.debug("policy total: no dump (%s), summing the peers'", e)
        per = self.export_denied(state).values()
        return {"packets": sum(d["packets"] for d in per), "bytes": sum(d["bytes"] for d in per)}

    def nat_drops(self) -> list[dict[str, Any]]:
        """The drop rules of the table's NAT base chains with their counters ([] without a table)."""
        try:  # the kernel's dumps of the two chains: libnftables would load the whole table first
            return nat.drops([nftdump.listing(nat.FAMILY, self.nft_table, DROP_CHAINS)])
        except OSError as e:
            log.debug("drop counters: no dump (%s), listing the chains", e)
        try:
            nft = Nft()
            return nat.drops(nft.list_chain(nat.FAMILY, self.nft_table, c) for c in DROP_CHAINS)
        except NftError:
            return []

    def verify(self, state: FabricState) -> list[str]:
        self._use_control()
        return fabric_apply.verify(state)

    def process_pid(self) -> int | None:
        """The pid of the process serving the interface (None: kernel, or none running)."""
        return self.process.pid()

    def endpoint_problems(self) -> tuple[dict[str, str], float | None]:
        """Peers programmed without their endpoint (why), and when to retry (monotonic)."""
        return fabric_apply.endpoint_problems(self.interface)
