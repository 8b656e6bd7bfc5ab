"""Program the export table (``fabric.exports.policy``) through libnftables.

``apply(policy, previous, nft, nft_table)``: with a policy, the table holds
exactly it (a delta for the peers that changed when ``previous`` is what the
kernel holds, else the whole table in one batch); without one (no ``exports``
configured), a table of ours left from an earlier run is removed and nothing
else happens. A table of that name crosswire did not create (no marker set) is
never changed or deleted.
"""

from __future__ import annotations

from typing import Any

from fabric.exports import policy as exportpolicy
from fabric.exports.model import ExportPolicy
from fabric.nat.names import FAMILY, MARKER_SET
from fabric.nft import Nft, NftError


class ExportTableError(RuntimeError):
    """The export table could not be programmed; the message names it."""


def _owner(nft: Nft, name: str) -> str:
    if nft.has_set(FAMILY, name, MARKER_SET):
        return "ours"
    return "foreign" if name in nft.tables(FAMILY) else "absent"


def _counters(nft: Nft, name: str) -> dict[str, Any] | None:
    try:
        return nft.list_counters(FAMILY, name)
    except NftError:
        return None


def _problems(policy: ExportPolicy, nft: Nft) -> list[str]:
    counters = _counters(nft, policy.table)
    if counters is None:
        return [f"nft table {FAMILY} {policy.table} missing"]
    chains = {exportpolicy.FORWARD} if nft.has_chain(FAMILY, policy.table, exportpolicy.FORWARD) else set()
    return exportpolicy.problems(policy, counters, chains)


def apply(policy: ExportPolicy | None, previous: ExportPolicy | None, nft: Nft, nft_table: str) -> None:
    name = exportpolicy.table_name(nft_table)
    try:
        if policy is None:
            if nft.has_set(FAMILY, name, MARKER_SET):  # ours, left by a run with exports
                nft.delete_table(FAMILY, name)
            return
        if previous is not None and previous == policy and not _problems(policy, nft):
            return  # unchanged and intact: the counters keep counting
        owner = _owner(nft, name)
        if owner == "foreign":
            raise ExportTableError(
                f"exports: table {FAMILY} {name} exists and was not created by crosswire; crosswire never "
                "changes or deletes tables it did not create: remove that table or choose another nft_table")
        if previous is not None and owner == "ours":
            delta = exportpolicy.render_delta(previous, policy)
            if delta is not None:
                try:
                    nft.apply(delta)
                    return
                except NftError:
                    pass  # the kernel does not hold ``previous``: rewrite the table
        nft.apply(exportpolicy.render_text(policy))
    except NftError as e:
        raise ExportTableError(f"nftables table {FAMILY} {name}: {e}") from None


def remove(nft_table: str, nft: Nft) -> None:
    name = exportpolicy.table_name(nft_table)
    if _owner(nft, name) == "ours":
        nft.delete_table(FAMILY, name)


def denied(policy: ExportPolicy | None, nft: Nft) -> dict[str, dict[str, int]]:
    """Per peer, what its drop rule counted; empty without a policy."""
    if policy is None:
        return {}
    return exportpolicy.denied(policy, _counters(nft, policy.table) or {})


def problems(policy: ExportPolicy | None, nft: Nft) -> list[str]:
    """What the kernel lacks of ``policy`` (for /readyz; empty without a policy)."""
    return [] if policy is None else _problems(policy, nft)
