"""What ``/api/v1/exports`` and ``/api/v1/imports`` show (read only).

``exports``: ours, and per peer which of them it may reach and what the policy
refused from it. ``imports``: what each peer shares with us, with the
addresses in our view of that peer and the DNS names it is found under.
``imported_services`` is the typed snapshot the DNS answers are made from.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Protocol

from fabric.exports.model import Allowed, ExportPolicy
from fabric.exports.policy import FORWARD, allowed_comment, allows, counter_name, drop_comment
from fabric.nat.trace import EXPORT, ExportCheck, ExportPoint, Step
from gateway.exports.imports import ImportedService, imported
from gateway.ipam_adapter import ordered

if TYPE_CHECKING:
    from gateway.config import Config
    from gateway.ipam_adapter import Views
    from gateway.reconciler import Reconciler
    from gateway.state import StateStore


class ReadModel(Protocol):
    """What these views read from ``gateway.readmodel.ReadModel``, which calls them: a
    protocol, so that this module does not import the one importing it (a circle)."""

    config: Config
    store: StateStore
    views: Views
    reconciler: Reconciler

    def nat(self) -> list[dict[str, Any]]: ...
    def export_denied(self) -> dict[str, dict[str, int]] | None: ...


def exposure(read: ReadModel) -> str:
    return "all" if read.config.exports is None else "exports"


def exports(read: ReadModel) -> dict[str, Any]:
    state = read.reconciler.exports
    out: dict[str, Any] = {"exposure": exposure(read), "exports": [], "peers": []}
    if state is None or read.config.exports is None:
        return out
    domain = state.resolver.cluster_domain
    for e in read.config.exports:
        out["exports"].append({**e.to_body(state.resolver.addresses(e)), "dns_name": e.dns_name(domain),
                               "resolved": e.addresses is None, "resolve_error": state.resolver.error(e)})
    try:  # the named counters alone (the whole NAT report would list every peer's rules)
        denied = read.export_denied() or {}
    except Exception:
        denied = {}
    grants = state.grants()
    for cid, _, _ in read.store.peer_index()[0]:  # IDs only: store.peers() parses every peer's views
        out["peers"].append({"cluster_id": cid, "all": cid not in grants,
                             "exports": [e.name for e in state.shared_with(cid, grants)],
                             "denied": denied.get(cid) or {"packets": 0, "bytes": 0}})
    return out


def imported_services(read: ReadModel) -> tuple[ImportedService, ...]:
    state = read.reconciler.exports
    if state is None:
        return ()
    bodies = {cid: body for cid, (body, _) in state.imports().items()}
    views = {cid: ordered(read.views.views(cid)) for cid in bodies}
    return imported(bodies, views)


def imports(read: ReadModel) -> dict[str, Any]:
    state = read.reconciler.exports
    received = {cid: t for cid, (_, t) in state.imports().items()} if state is not None else {}
    items = []
    zone = read.config.dns.zone
    for s in imported_services(read):
        everyone, own = s.dns_names(zone)
        items.append({"peer": s.peer, "name": s.name, "ports": None if s.ports is None else list(s.ports),
                      "addresses": list(s.addresses), "dns_names": [everyone, own],
                      "received": received.get(s.peer)})
    return {"zone": zone, "imports": items}


def export_check(me: str, wg: str, policy: ExportPolicy | None,
                 imports: Mapping[str, list[dict[str, Any]]]) -> ExportCheck:
    """The trace's export verdict (fabric.nat.trace): on this gateway from the policy it
    programs (``policy``), at a peer's gateway from what that peer told us it exports
    to us (``imports``, real addresses in its terms). No step where everything is shared."""
    shares = {p.cluster_id: p for p in policy.peers} if policy is not None else {}

    def check(pt: ExportPoint) -> Step | None:
        what = f"{pt.dst} {pt.proto}" + (f"/{pt.dport}" if pt.dport else "")
        if pt.at == me:
            share = shares.get(pt.peer)
            if share is None:
                return None
            hit = allows(share.allowed, str(pt.dst), pt.proto, pt.dport)
            table = policy.table if policy is not None else ""
            if hit is not None:
                given = hit.network + (f" {hit.port}/{hit.proto}" if hit.proto else " (every port)")
                return Step(EXPORT, me, f"{what} is in what {pt.peer} was given ({given}): passes ({table})",
                            "", "", chain=FORWARD, rule=f'"{allowed_comment(wg, "ip" if pt.dst.version == 4 else "ip6")}"',
                            element=f"@allowed_v{pt.dst.version}")
            return Step(EXPORT, me, f"{what} was not exported to {pt.peer}: dropped ({table})", "", "",
                        chain=FORWARD, rule=f'"{drop_comment(wg)}"', counted=counter_name(pt.peer), drop=True)
        body = imports.get(pt.at)  # at the peer's gateway (``at``), for us (``pt.peer``)
        if body is None:
            return None
        for e in body:
            ports = e.get("ports")
            entries = [Allowed(a) for a in e["addresses"]] if ports is None else [
                Allowed(a, str(p).split("/")[1], int(str(p).split("/")[0])) for a in e["addresses"] for p in ports]
            if allows(entries, str(pt.dst), pt.proto, pt.dport) is not None:
                return Step(EXPORT, pt.at, f"{what} is {pt.at}'s export {e['name']} to {me}: its policy passes it",
                            "", "", chain=FORWARD)
        return Step(EXPORT, pt.at, f"{what} is not among what {pt.at} exports to {me} "
                    "(crosswire imports): its gateway drops it", "", "", chain=FORWARD, drop=True)

    return check
