"""Program a FabricState: WireGuard peers, routes and the nftables table.

Everything is validated before anything changes (bad input: a clear error and
nothing touched). Then, in an order that never sends a packet down a path that
is not ready:

- adding/keeping peers: NAT table first (the rewrites exist before any route
  attracts traffic), then WireGuard peers, then routes;
- when peers or views go away: routes first (stop attracting traffic), then
  WireGuard, then the NAT table.

Every step is a full sync, so applying the same state again changes nothing.
The nft table: with ``previous`` given and nothing the NAT table depends on
changed (e.g. only keys or endpoints did) and the kernel's table still holding
every rule, it is left alone so its counters keep counting; when only some
peers changed (added, removed, other views) one batch changes just their
chains, rules and elements (``nat.render_delta``); otherwise, when the kernel
refuses that batch (its table is not what ``previous`` made), on a damaged
table (drift) or with ``previous=None`` (start-up) it is replaced wholly in
one batch.

Ownership: a table of that name that crosswire did not create (it lacks the
marker set ``nat.MARKER_SET``) is never replaced, changed or deleted:
apply fails naming it (``TableOwnershipError``), remove and a table rename
leave it alone. ``claim_table`` is the start-up check (and the upgrade path).
"""

from __future__ import annotations

import contextlib
from collections.abc import Collection
from typing import Any, Literal

from fabric import nat, nftdump, routes
from fabric.exports import apply as exportsapply
from fabric.exports.guard import table_of
from fabric.model import FabricState
from fabric.nft import Nft, NftError, in_netns
from fabric.wgctl import WgControl, WgError, key_hex
from fabric.wgnetlink import NetlinkWgControl

# One control object per interface, so endpoints set earlier are remembered
# (a peer that roamed is not pulled back on every reconcile). UAPI unless the
# data plane registered another (the kernel's netlink, ``use_control``).
_controls: dict[str, WgControl | NetlinkWgControl] = {}


class ApplyError(RuntimeError):
    """Programming the data plane failed; the message names the step."""


class TableOwnershipError(ApplyError):
    """A table of the configured name exists and was not created by crosswire."""


def _foreign_table(name: str) -> TableOwnershipError:
    return TableOwnershipError(
        f"nft_table: table {nat.FAMILY} {name} exists and was not created by crosswire; crosswire never "
        "replaces, changes or deletes tables it did not create: choose another nft_table or remove that table")


def table_owner(nft: Nft, name: str) -> Literal["absent", "ours", "foreign"]:
    """Whose table ``inet name`` is; NftError when nftables cannot be asked at all."""
    if nft.has_set(nat.FAMILY, name, nat.MARKER_SET):
        return "ours"  # the common case: one small listing
    # Rare (first start, or a foreign table): listing the tables costs more
    # (~0.3 s beside a 1000-peer table) as libnftables loads the whole ruleset.
    return "foreign" if name in nft.tables(nat.FAMILY) else "absent"


def claim_table(name: str, adopt_unmarked: bool, *, netns: str | None = None) -> str:
    """Check, before anything changes, that table ``inet name`` is absent or ours.

    ``adopt_unmarked``: the state directory holds this gateway's state, so a table
    without the marker but with every base chain a rendering has (what a version
    before the marker made) is ours: the marker is added now. Returns "absent",
    "ours" or "adopted"; raises TableOwnershipError for any other table.
    """
    nft = Nft(netns)
    owner = table_owner(nft, name)
    if owner != "foreign":
        return owner
    if adopt_unmarked:
        listed = nft.list_table(nat.FAMILY, name).get("nftables", [])
        hooks = {c["chain"]["name"]: c["chain"].get("hook") for c in listed if "chain" in c}
        if all(hooks.get(chain) == hook for chain, hook in nat.BASE_CHAINS.items()):
            nft.apply({"nftables": [{"add": {"set": {"family": nat.FAMILY, "table": name,
                                                     "name": nat.MARKER_SET, "type": "ipv4_addr"}}}]})
            return "adopted"
    raise _foreign_table(name)


def _control(interface: str) -> WgControl | NetlinkWgControl:
    return _controls.setdefault(interface, WgControl(interface))


def use_control(interface: str, control: WgControl | NetlinkWgControl) -> None:
    """Drive ``interface`` through ``control`` (the kernel's netlink instead of UAPI)."""
    _controls[interface] = control


def endpoint_problems(interface: str) -> tuple[dict[str, str], float | None]:
    """Peers whose endpoint the last sync could not program (cluster_id -> why), and
    the monotonic time at which a sync may retry the earliest of them."""
    wg = _controls.get(interface)
    if wg is None:
        return {}, None
    return dict(wg.endpoint_problems), wg.retry_at()


def _views(state: FabricState) -> set[str]:
    return {v for p in state.peers for v in p.routed()}


def validate(state: FabricState) -> None:
    """Check everything up front. ``nat.build`` keeps what it validated (keyed by
    the state), so rendering and verifying this state afterwards build nothing again."""
    try:
        nat.build(state)
        routes.parse_cidrs(_views(state))
        key_hex(state.local.private_key, "private key")
        for p in state.peers:
            key_hex(p.public_key, f"peer {p.cluster_id} public key")
            if p.preshared_key:
                key_hex(p.preshared_key, f"peer {p.cluster_id} preshared key")
    except (nat.NatError, routes.RouteError, WgError) as e:
        raise ApplyError(f"invalid fabric state: {e}") from None


def nat_inputs(state: FabricState) -> tuple[Any, ...]:
    """The part of a state that the NAT table is made of (keys and endpoints are not in it)."""
    lo = state.local
    return (lo.interface, lo.nft_table, lo.mtu, lo.pod_cidrs, lo.service_cidrs, lo.gateway_ip, lo.masquerade,
            lo.gateway_ip6, tuple((p.cluster_id, p.remote, p.local) for p in state.peers))


def order(state: FabricState, previous: FabricState | None) -> tuple[str, str, str]:
    """Which step first: when peers or views go away, stop attracting traffic first."""
    shrinking = previous is not None and not (
        {p.public_key for p in previous.peers} <= {p.public_key for p in state.peers}
        and _views(previous) <= _views(state))
    return ("routes", "wireguard", "nat") if shrinking else ("nat", "wireguard", "routes")


def apply(state: FabricState, previous: FabricState | None = None, *, netns: str | None = None) -> None:
    """Program ``state`` (``previous``: what was programmed last, to clean up and order)."""
    validate(state)
    local = state.local
    nft = Nft(netns)

    def do_nat() -> None:
        try:
            if (previous is not None and nat_inputs(previous) == nat_inputs(state)
                    and _nat_problem(state, nft) is None):
                return  # unchanged and intact: keep the table and its counters
            delta = nat.render_delta(previous, state) if previous is not None else None
            if delta is not None:
                try:
                    nft.apply(delta)  # only the peers that changed
                    return
                except NftError:
                    pass  # the kernel's table is not what ``previous`` made: replace it wholly
            nft.apply(nat.render_text(state))
        except NftError as e:
            raise ApplyError(f"nftables table inet {local.nft_table}: {e}") from None

    def do_wg() -> None:
        try:
            _control(local.interface).sync(local, state.peers)
        except WgError as e:
            raise ApplyError(f"WireGuard {local.interface}: {e}") from None

    def do_routes() -> None:
        try:
            routes.sync_routes(local.interface, _views(state), netns=netns)
        except routes.RouteError as e:
            raise ApplyError(f"routes via {local.interface}: {e}") from None

    def do_policy() -> None:
        # Before anything attracts a new peer's traffic, so the guard (and, with exports,
        # the filter) holds from its first packet (a peer missing is dropped: fail closed).
        try:
            exportsapply.apply(table_of(state), table_of(previous) if previous is not None else None, nft)
        except exportsapply.ExportTableError as e:
            raise ApplyError(str(e)) from None

    try:
        if table_owner(nft, local.nft_table) == "foreign":
            raise _foreign_table(local.nft_table)  # before the policy table: nothing half-applied
    except NftError as e:
        raise ApplyError(f"nftables table inet {local.nft_table}: {e}") from None
    do_policy()
    steps = {"nat": do_nat, "wireguard": do_wg, "routes": do_routes}
    for name in order(state, previous):
        steps[name]()

    if previous is not None:
        old = previous.local
        if old.interface != local.interface:
            with contextlib.suppress(routes.RouteError):
                routes.remove_routes(old.interface, netns=netns)
            _controls.pop(old.interface, None)
        if old.nft_table != local.nft_table:
            with contextlib.suppress(NftError):
                if table_owner(nft, old.nft_table) == "ours":
                    nft.delete_table(nat.FAMILY, old.nft_table)
                exportsapply.remove(old.nft_table, nft)


def remove(state: FabricState, *, netns: str | None = None) -> None:
    """Undo ``apply``: routes, WireGuard peers, the nft table if it is ours (the interface stays)."""
    local = state.local
    routes.remove_routes(local.interface, netns=netns)
    with contextlib.suppress(WgError):
        _control(local.interface).sync(local, ())
    nft = Nft(netns)
    if table_owner(nft, local.nft_table) == "ours":
        nft.delete_table(nat.FAMILY, local.nft_table)
    exportsapply.remove(local.nft_table, nft)


# Peers whose counting and host-network elements one GET asks for: the kernel answers
# each element in a message of its own, and a socket buffer holds about this many peers'.
PEERS_PER_GET = 100


def nat_listing(state: FabricState, only: Collection[str] | None = None) -> dict[str, Any]:
    """The NAT table as ``nat.with_counters`` reads it, from the kernel's dumps in the
    current namespace: every rule (one dump) and the counting and host-network elements
    of the peers (``only``: these), PEERS_PER_GET peers a GET. ~3x cheaper than
    libnftables' JSON listing, which renders the whole table first (1,000 peers: ~0.15 s
    against ~0.5 s). Raises OSError (nftdump.DumpError) when the kernel refuses: the table
    or an element missing, or no dumps here."""
    table = state.local.nft_table
    items = nftdump.rules(nat.FAMILY, table, None)
    ids = [p.cluster_id for p in state.peers if only is None or p.cluster_id in only]
    for i in range(0, len(ids), PEERS_PER_GET):
        _, sets, maps = nat.listed_objects(state, set(ids[i:i + PEERS_PER_GET]))
        items += nftdump.listing(nat.FAMILY, table, (), sets, maps)["nftables"]
    return {"nftables": items}


def _nat_problem(state: FabricState, nft: Nft, netns: str | None = None) -> str | None:
    """None when every rule and host-network element of ``state`` is in the kernel's table."""
    table = state.local.nft_table
    try:  # the kernel's dumps; what they refuse (drift, no dumps) libnftables lists
        listed = nat_listing(state) if netns is None else in_netns(netns, lambda: nat_listing(state))
    except (OSError, NftError):
        try:
            listed = nft.list_table(nat.FAMILY, table)
        except NftError:
            return f"nft table inet {table} missing"
    joined = nat.with_counters(nat.mappings(state), listed)
    missing = sum((r["handle"] is None) + (r["count_handle"] is None) for m in joined for r in m["rules"])
    missing += sum(not h["present"] for m in joined for h in m["host_network"])
    missing += sum(m["not_offered"]["handle"] is None for m in joined if m.get("not_offered"))
    base = {r["rule"]["chain"] for r in listed.get("nftables", []) if "rule" in r}
    if not {"prerouting", "postrouting", "mss-clamp", "count"} <= base:
        return f"nft table {table}: base chain rules missing"
    return f"nft table {table}: {missing} mapping rules/elements missing" if missing else None


def verify(state: FabricState, *, netns: str | None = None) -> list[str]:
    """What differs between the kernel and ``state`` (empty: programmed as the state says)."""
    problems: list[str] = []
    local = state.local
    nat_problem = _nat_problem(state, Nft(netns), netns)
    if nat_problem:
        problems.append(nat_problem)
    problems += exportsapply.problems(table_of(state), Nft(netns))
    try:
        present = routes.list_routes(local.interface, netns=netns)
        if present != routes.parse_cidrs(_views(state)):
            problems.append(f"routes via {local.interface} differ from the peers' views")
    except routes.RouteError as e:
        problems.append(str(e))
    try:
        peers = set(_control(local.interface).show())
        if peers != {p.public_key for p in state.peers}:
            problems.append(f"WireGuard {local.interface}: peers differ from the state")
    except WgError as e:
        problems.append(str(e))
    return problems
