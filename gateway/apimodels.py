"""What the API publishes about its answers: response models and every status per operation.

These models only *document* the bodies (``responses=`` in gateway.api);
handlers still return their dicts unchanged, so a model can never reshape an
answer (e.g. add ``"gateway_ip6": null`` where the key is absent today).
Every error, whoever raises it (GatewayError/PeeringError, validation, the
body limit, FastAPI's own body parser) is ``{"detail": "<reason>"}``: one
``Error`` model replaces FastAPI's default 422 ``HTTPValidationError`` (a list
of objects crosswire never sends).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

ERROR_REF = "#/components/schemas/Error"


class Error(BaseModel):
    """Every error answer: one human-readable reason, never the request body echoed."""

    model_config = ConfigDict(extra="forbid")
    detail: str


class Health(BaseModel):
    status: Literal["ok"]


class Readiness(BaseModel):
    ready: bool
    reason: str = Field(description='"ok", or why the data plane is not (yet) what the state says')


class Range(BaseModel):
    kind: Literal["pod", "service"]
    cidr: str


# pod/service: a whole range (ipam.views: full); export/gateway/egress: sparse views.
ViewKind = Literal["pod", "service", "export", "gateway", "egress"]


class View(BaseModel):
    kind: ViewKind = Field(description="pod, service (full views); export, gateway, egress (sparse views; "
                           "egress: real 0.0.0.0/N or ::/N, the block the peer's clients are named by)")
    real: str
    view: str


class ReconcileStats(BaseModel):
    runs: int
    errors: int
    dataplane_restarts: int
    last_error: str | None
    last_ok: float | None
    verifies: int = Field(description="Drift checks of the data plane (the reconcile loop's, /readyz's).")
    verify_cpu_s: float = Field(description="CPU seconds those checks took.")


class Status(BaseModel):
    cluster_id: str
    public_key: str
    endpoint: str | None
    url: str
    interface: str
    implementation: str = Field(description="what serves the interface: kernel, crosswire-wg or wireguard-go "
                                "(wireguard.implementation auto: the kernel when its module is there)")
    implementation_reason: str = Field(description="why this implementation (auto's choice)")
    gateway_ip: str | None
    gateway_ip6: str | None
    pod_cidrs: list[str]
    service_cidrs: list[str]
    ready: bool
    ready_reason: str
    uptime_s: float
    peers: int
    peers_by_state: dict[str, int]
    reconcile: ReconcileStats
    exposure: Literal["all", "exports"] = Field(
        description="all: peers reach the whole pod and service ranges; exports: only what is exported to them")
    tls_pins: list[str] = Field(default=[], description="SHA-256 of the peering listener's public key "
                                "(base64url; what tokens pin); two during a certificate rotation")


class PeerSummary(BaseModel):
    cluster_id: str
    public_key: str
    endpoint: str | None
    url: str | None
    state: Literal["pending", "connecting", "connected", "impaired", "error"]
    latest_handshake: float | None
    handshake_age_s: float | None
    rx_bytes: int
    tx_bytes: int
    rtt_ms: float | None
    loss: float | None
    probe_ip: str | None
    ranges: list[Range]
    our_views: list[View]
    their_views: list[View] | None = Field(description="null until the peer sent its views of us")
    views_mode: Literal["full", "sparse"] | None = Field(description="how we view this peer (ipam.views)")
    their_views_mode: Literal["full", "sparse"] | None = Field(description="how the peer views us")
    reach: str = Field(description="what our pods can reach at this peer, under which addresses")


class NatPeer(BaseModel):
    cluster_id: str
    egress_chain: str
    ingress_chain: str
    remote: list[View]
    local: list[View]
    rules: list[dict[str, Any]] = Field(description="nftables rules with handles and counters")
    host_network: list[dict[str, Any]]
    not_offered: dict[str, Any] | None = Field(
        default=None, description="the last rule of the peer's ingress chain: what it sent to addresses not "
                                  "offered to it, dropped (chain, comment, handle, packets, bytes)")
    export_denied: dict[str, int] | None = Field(
        default=None, description="packets and bytes from this peer the gateway dropped: to the gateway itself "
                                   "(the guard, always), to addresses not offered to it (not_offered) and, "
                                   "with exports, what it was not given")


class NatDrop(BaseModel):
    chain: str
    comment: str
    packets: int
    bytes: int
    handle: int | None


class Nat(BaseModel):
    table: str
    peers: list[NatPeer]
    drops: list[NatDrop] = Field(default_factory=list, description=(
        "the table's drop rules (base chains) with their counters: traffic no peer's mapping took"))


class Paging(BaseModel):
    total: int = Field(description="rows before paging (1 with ?peer=, 0 for a pending peer's NAT)")
    offset: int
    limit: int | None


class PeerPage(Paging):
    peers: list[PeerSummary]


class NatPage(Nat, Paging):
    pass


class PeersSummary(BaseModel):
    version: str = Field(description="digest of the peers, their states and views: changes when they do "
                         "(not with counters)")
    peers: int
    peers_by_state: dict[str, int]
    rx_bytes: int = Field(description="WireGuard bytes received from every peer")
    tx_bytes: int
    endpoint_errors: int = Field(description="peers programmed without an endpoint (it did not resolve)")


class PagePoll(BaseModel):
    """/api/v1/page: what the operator page asks every poll, in one answer. Each part is
    exactly what its own request answers (named in the field's description)."""
    peers_summary: PeersSummary = Field(description="/api/v1/peers?summary=true")
    nat_summary: NatSummary = Field(description="/api/v1/nat?summary=true")
    peers: PeerPage = Field(description="/api/v1/peers?limit=&offset=")
    selected: PeerPage | None = Field(description="/api/v1/peers?peer=: only when that peer is not on the "
                                                  "page's rows (null: on them, none asked, or unknown)")
    nat: NatPage | None = Field(description="/api/v1/nat?peer= (null: none asked, or unknown)")


class Counted(BaseModel):
    packets: int
    bytes: int


class NatSummary(BaseModel):
    table: str
    version: str = Field(description="digest of the table's mappings: changes when a peer's mappings do")
    peers: int
    mappings: int = Field(description="ranges mapped, both directions, every peer")
    rules: int = Field(description="NAT rule rows (/api/v1/nat's rules)")
    host_network: int
    exports: int | None = Field(description="exports configured (null: no exports, peers reach everything)")
    drops: list[NatDrop]
    dropped: Counted = Field(description="what the drop rules counted")
    export_denied: Counted | None = Field(description="what the policy table dropped, every peer, since it was "
                                                      "written (one counter the kernel sums: removed peers' drops "
                                                      "stay in it): to the gateway itself (the guard) and, with "
                                                      "exports, what was not given (each peer's row adds its "
                                                      "not_offered drops)")


class TraceStep(BaseModel):
    step: int
    kind: str = Field(description="route, mss-clamp, peer, snat, tunnel, dnat, export, masquerade, deliver or drop")
    at: str = Field(description="the cluster whose gateway does it")
    text: str
    src: str = Field(description="the packet's source after this step")
    dst: str
    chain: str | None = Field(description="the nftables chain of the rule")
    rule: str | None = Field(description="the rule's comment, as `nft list` shows it")
    element: str | None = Field(description="the map element that matched")
    counted: str | None = Field(description="the chain counting every packet of this mapping")
    drop: bool


class TraceEnds(BaseModel):
    src: str
    dst: str


class Trace(BaseModel):
    src: str
    dst: str
    proto: Literal["tcp", "udp", "icmp"]
    dport: int | None
    cluster_id: str
    direction: Literal["egress", "ingress"] | None
    peer: str | None
    verdict: Literal["delivered", "dropped", "no-peer", "local"]
    reason: str
    delivered: TraceEnds | None = Field(description="the packet as the destination receives it")
    steps: list[TraceStep]


class Allocation(BaseModel):
    peer: str
    kind: ViewKind
    real: str
    view: str
    remapped: bool


class Held(BaseModel):
    peer: str
    kind: ViewKind
    real: str
    view: str
    until: float


class Conflict(BaseModel):
    peer: str
    view: str
    overlaps: Any


class Ipam(BaseModel):
    pools: list[str]
    local: dict[str, list[str]]
    allocations: list[Allocation]
    conflicts: list[Conflict]
    quarantined: list[Held] = Field(description="released sparse views, held until `until` (epoch s) "
                                    "so that no stale DNS answer reaches another service")


class Routes(BaseModel):
    gateway_ip: str | None
    cidrs: list[str]
    gateway_ip6: str | None = Field(default=None, description="only on dual-stack gateways")
    version: str = Field(description="short hex digest of this route set (the same set, the same version, "
                                     "also across restarts): pass it as ?after= to wait for the next one")


class SignedEnvelope(BaseModel):
    body: dict[str, Any]
    mac: str


class TokenCreated(BaseModel):
    token: str = Field(description="the line to pass to `crosswire peer add` (shown once)")
    token_id: str
    expires: float
    reusable: bool
    url: str


class TokenInfo(BaseModel):
    token_id: str
    created: float
    expires: float
    reusable: bool
    uses: int
    state: Literal["active", "used", "expired"]


class TokenRevoked(BaseModel):
    revoked: str


class PeerRemoved(BaseModel):
    removed: str
    peer_notified: bool


class KeyRotated(BaseModel):
    public_key: str
    peers_informed: list[str]
    peers_pending: dict[str, str]


class TlsRotated(BaseModel):
    tls_pin: str = Field(description="the peering listener's new pin")
    peers_informed: list[str]
    peers_pending: dict[str, str] = Field(description="peers not yet told that the old pin is gone (they "
                                          "accept both until the next message)")


REASONS = {
    304: "Not modified: the answer's ETag is one the client named in If-None-Match",
    400: "Malformed request or refused input",
    401: "Missing or wrong credential (admin Bearer token, or a message MAC), or a replay",
    403: "Unknown, used or foreign token",
    404: "No such token or peer",
    408: "Request body not received in time",
    409: "Conflicts with the current state (already peered, own key, unusable peering URL)",
    413: "Request body too large",
    422: "Request body does not match the schema, or its values cannot be used",
    426: "Plain HTTP on the peering listener from a gateway that must use TLS",
    502: "A peer gateway could not be reached or gave a bad answer",
    503: "The gateway holds api.max_watchers route long-polls already: retry after Retry-After seconds",
}


def errors(*codes: int) -> dict[int | str, dict[str, Any]]:
    """The error statuses of an operation; 408/413 (the body limit) apply to every one."""
    out: dict[int | str, dict[str, Any]] = {}
    for c in sorted({*codes, 408, 413}):
        if c == 304:  # no body
            out[c] = {"description": REASONS[c], "headers": ETAG}
            continue
        entry: dict[str, Any] = {"description": REASONS[c],
                                 "content": {"application/json": {"schema": {"$ref": ERROR_REF}}}}
        if c == 401:
            entry["headers"] = {"WWW-Authenticate": {"schema": {"type": "string"},
                                                     "description": "Bearer (admin operations)"}}
        out[c] = entry
    return out


def watchers_full() -> dict[int | str, dict[str, Any]]:
    """503 of GET /api/v1/routes?after=: the watcher limit, with Retry-After."""
    entry = errors(503)[503]
    entry["headers"] = {"Retry-After": {"schema": {"type": "string"}, "description": "seconds"}}
    return {503: entry}


def ok(model: Any, status: int = 200, description: str = "Success",
       headers: dict[str, Any] | None = None) -> dict[int | str, dict[str, Any]]:
    return {status: {"model": model, "description": description, **({"headers": headers} if headers else {})}}


ETAG = {"ETag": {"schema": {"type": "string"},
                 "description": "digest of the body: send it back in If-None-Match to get 304 while unchanged"}}
