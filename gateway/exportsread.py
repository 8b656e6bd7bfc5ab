"""What ``/api/v1/exports`` and ``/api/v1/imports`` show (read only).

``exports``: ours, and per peer which of them it may reach and what the policy
refused from it. ``imports``: what each peer shares with us, with the
addresses in our view of that peer and the DNS names it is found under.
``imported_services`` is the typed snapshot the DNS answers are made from.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from gateway.imports import ImportedService, imported
from gateway.ipam_adapter import ordered

if TYPE_CHECKING:
    from gateway.readmodel import ReadModel

ZONE = "clusterset.local"


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
    try:
        denied = {p["cluster_id"]: p.get("export_denied") for p in read.nat()}
    except Exception:
        denied = {}
    grants = state.grants()
    for p in read.store.peers():
        out["peers"].append({"cluster_id": p.cluster_id, "all": p.cluster_id not in grants,
                             "exports": [e.name for e in state.shared_with(p.cluster_id)],
                             "denied": denied.get(p.cluster_id) or {"packets": 0, "bytes": 0}})
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
    for s in imported_services(read):
        everyone, own = s.dns_names(ZONE)
        items.append({"peer": s.peer, "name": s.name, "ports": None if s.ports is None else list(s.ports),
                      "addresses": list(s.addresses), "dns_names": [everyone, own],
                      "received": received.get(s.peer)})
    return {"zone": ZONE, "imports": items}
