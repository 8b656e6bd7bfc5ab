"""Program the policy table (``fabric.exports.policy``) through libnftables.

``apply(table, previous, nft)``: the table holds exactly ``table`` (a delta for
the peers that changed when ``previous`` is what the kernel holds, else the
whole table in one batch). It always exists while crosswire runs: the guard
(its input chain) holds with or without ``exports``. A table of that name
crosswire did not create (no marker set) is never changed or deleted.
"""

from __future__ import annotations

from collections.abc import Collection
from typing import Any

from fabric.exports import policy as exportpolicy
from fabric.exports.model import PolicyTable
from fabric.nat.names import FAMILY, MARKER_SET
from fabric.nft import Nft, NftError


class ExportTableError(RuntimeError):
    """The policy table could not be programmed; the message names it."""


def _owner(nft: Nft, name: str) -> str:
    if nft.has_set(FAMILY, name, MARKER_SET):
        return "ours"
    return "foreign" if name in nft.tables(FAMILY) else "absent"


def _counters(nft: Nft, name: str) -> dict[str, Any] | None:
    try:
        return nft.list_counters(FAMILY, name)
    except NftError:
        return None


def _problems(t: PolicyTable, nft: Nft) -> list[str]:
    # The denied maps and the chains, not the counters: listing a table's counters
    # costs ~0.2 s beside a 1000-peer NAT table, the two maps ~10 ms each.
    try:
        maps = [nft.list_map(FAMILY, t.table, f"denied_v{v}") for v in (4, 6)]
    except NftError:
        return [f"nft table {FAMILY} {t.table} missing"]
    chains = {c for c in (exportpolicy.INPUT, exportpolicy.FORWARD) if nft.has_chain(FAMILY, t.table, c)}
    return exportpolicy.problems(t, exportpolicy.counted(maps), chains)


def apply(t: PolicyTable, previous: PolicyTable | None, nft: Nft) -> None:
    try:
        if previous is not None and previous == t and not _problems(t, nft):
            return  # unchanged and intact: the counters keep counting
        owner = _owner(nft, t.table)
        if owner == "foreign":
            raise ExportTableError(
                f"nft_table: table {FAMILY} {t.table} (the policy table beside it) exists and was not created "
                "by crosswire; crosswire never changes or deletes tables it did not create: remove that table "
                "or choose another nft_table")
        if previous is not None and owner == "ours":
            delta = exportpolicy.render_delta(previous, t)
            if delta is not None:
                try:
                    nft.apply(delta)
                    return
                except NftError:
                    pass  # the kernel does not hold ``previous``: rewrite the table
        nft.apply(exportpolicy.render_text(t))
    except NftError as e:
        raise ExportTableError(f"nftables table {FAMILY} {t.table}: {e}") from None


def remove(nft_table: str, nft: Nft) -> None:
    name = exportpolicy.table_name(nft_table)
    if _owner(nft, name) == "ours":
        nft.delete_table(FAMILY, name)


def denied(t: PolicyTable, nft: Nft, only: Collection[str] | None = None) -> dict[str, dict[str, int]]:
    """Per peer (``only``: just these), what the table dropped of it (the guard and the export filter)."""
    return exportpolicy.denied(t, exportpolicy.listed_counters(_counters(nft, t.table) or {}), only)


def problems(t: PolicyTable, nft: Nft) -> list[str]:
    """What the kernel lacks of ``t`` (for /readyz)."""
    return _problems(t, nft)
