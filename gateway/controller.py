"""The gateway's brain: peering bookkeeping, desired data-plane state, reconcile.

Owns nothing but references: config, the SQLite store, the views (IPAM), the
fabric driver, the health tracker and an HTTP client factory for talking to
peers. The FastAPI app (``gateway.api``) and the daemon (``gateway.daemon``)
call into it; tests build two of them with a fake fabric and wire their HTTP
clients to each other's ASGI apps.

Reconcile: ``desired()`` is a pure function of config + store + views. Every
change (peering, removal, key rotation) ends with ``await reconcile()``, which
brings up the data plane if it is missing or died, then ``apply(desired,
previous)``; the daemon loop also calls it when the data plane died or the
kernel drifted from the state (see gateway.daemon).
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from fabric.model import FabricState, LocalFabric, PeerFabric, RangeMap, map_into
from gateway import forwarding as forwarding_mod
from gateway import peering
from gateway.config import Config
from gateway.fabric_driver import FabricDriver
from gateway.health import HealthTracker
from gateway.peering import PeeringError
from gateway.state import PeerRecord, StateStore, public_key_of, wg_keypair
from gateway.tokens import TokenError, TokenRecord, check_usable, decode, new_token
from gateway.views import Views, ViewsError

log = logging.getLogger("crosswire.gateway")

NONCE_TTL = 2 * peering.WINDOW
HANDSHAKE_STALE = 180.0  # WireGuard REJECT_AFTER_TIME: no valid session after this


class GatewayError(Exception):
    """A refused operation: ``status`` is the HTTP status, the message is safe to show."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


@dataclass
class ReconcileStats:
    runs: int = 0
    errors: int = 0
    restarts: int = 0
    last_error: str | None = None
    last_ok: float | None = None
    ok: bool = False


def translate(ip: str | None, views: list[tuple[str, str, str]]) -> str | None:
    """An address in the peer's space -> ours, through the view containing it."""
    if ip is None:
        return None
    addr = ipaddress.ip_address(ip)
    for _, real, view in views:
        rn, vn = ipaddress.ip_network(real), ipaddress.ip_network(view)
        if addr.version == rn.version and addr in rn:
            return str(map_into(addr, rn, vn))
    return None


HttpFactory = Callable[[], httpx.AsyncClient]


def default_http() -> httpx.AsyncClient:
    return httpx.AsyncClient(timeout=httpx.Timeout(10.0, connect=5.0), follow_redirects=False)


@dataclass
class Gateway:
    config: Config
    store: StateStore
    views: Views
    fabric: FabricDriver
    clock: Callable[[], float] = time.time
    http: HttpFactory = default_http
    health: HealthTracker = field(default_factory=HealthTracker)
    stats: ReconcileStats = field(default_factory=ReconcileStats)
    applied: FabricState | None = None
    gateway_ip: str | None = None
    gateway_ip6: str | None = None  # dual stack: the next hop node agents use for IPv6 views
    # Forwarding sysctls /readyz requires to be 1 (the daemon sets them; see gateway.forwarding).
    forwarding: tuple[str, ...] = ()
    sysctl_root: Path = forwarding_mod.PROC_SYS

    def __post_init__(self) -> None:
        self._lock = asyncio.Lock()
        self._http_client: httpx.AsyncClient | None = None
        self._private_key = self.store.private_key()
        self.public_key = public_key_of(self._private_key)
        if self.gateway_ip is None:
            self.gateway_ip = self.config.gateway_ip
        if self.gateway_ip6 is None:
            self.gateway_ip6 = self.config.gateway_ip6
        self.started = self.clock()

    # --- identity ---------------------------------------------------------------------------

    @property
    def cluster_id(self) -> str:
        return self.config.cluster_id

    def our_ranges(self) -> list[tuple[str, str]]:
        return [("pod", c) for c in self.config.pod_cidrs] + \
               [("service", c) for c in self.config.service_cidrs]

    def side(self) -> peering.Side:
        return peering.Side(cluster_id=self.cluster_id, public_key=self.public_key,
                            endpoint=self.config.wireguard_endpoint(),
                            ranges=tuple(self.our_ranges()), gateway_ip=self.gateway_ip,
                            url=self.config.advertise_url())

    # --- desired state ----------------------------------------------------------------------

    def desired(self) -> FabricState:
        local = LocalFabric(
            cluster_id=self.cluster_id, interface=self.config.wireguard.interface,
            listen_port=self.config.wireguard.listen_port, private_key=self._private_key,
            mtu=self.config.wireguard.mtu, pod_cidrs=self.config.pod_cidrs,
            service_cidrs=self.config.service_cidrs, gateway_ip=self.gateway_ip,
            masquerade=self.config.masquerade, nft_table=self.config.nft_table)
        peers = []
        all_views = self.views.all_views()
        for p in self.store.peers():
            if p.their_views is None:
                continue  # pending: the peer has not told us its views of us yet
            ours = sorted(all_views.get(p.cluster_id, []))
            peers.append(PeerFabric(
                cluster_id=p.cluster_id, public_key=p.public_key, endpoint=p.endpoint,
                preshared_key=p.psk_b64,
                remote=tuple(RangeMap(k, r, v) for k, r, v in ours),  # type: ignore[arg-type]
                local=tuple(RangeMap(k, r, v) for k, r, v in p.their_views),  # type: ignore[arg-type]
                probe_ip=translate(p.gateway_ip, ours)))
        return FabricState(local=local, peers=tuple(peers))

    def probe_targets(self, state: FabricState | None = None) -> dict[str, str]:
        st = state or self.desired()
        return {p.cluster_id: p.probe_ip for p in st.peers if p.probe_ip}

    async def reconcile(self, *, force: bool = False) -> bool:
        """Make the data plane match the desired state; True if it does afterwards."""
        async with self._lock:
            want = self.desired()
            self.stats.runs += 1
            try:
                alive = await asyncio.to_thread(self.fabric.alive)
                if not alive:
                    if self.applied is not None:
                        self.stats.restarts += 1
                        log.warning("data plane %s is down; restarting it", self.config.wireguard.interface)
                    await asyncio.to_thread(self.fabric.ensure_up)
                    force = True
                    previous = None
                else:
                    previous = self.applied
                if force or want != self.applied:
                    t0 = time.monotonic()
                    await asyncio.to_thread(self.fabric.apply, want, previous)
                    log.info("applied %d peers in %.3fs", len(want.peers), time.monotonic() - t0)
                self.applied = want
                self.stats.ok = True
                self.stats.last_ok = self.clock()
                self.stats.last_error = None
            except Exception as e:
                self.stats.errors += 1
                self.stats.ok = False
                self.stats.last_error = f"{type(e).__name__}: {e}"
                log.error("reconcile failed: %s", self.stats.last_error)
                self.applied = None  # unknown: apply from scratch next time
                return False
            self.health.set_peers(self.probe_targets(want), self.clock())
            return True

    def ready(self) -> tuple[bool, str]:
        if not self.stats.ok or self.applied is None:
            return False, self.stats.last_error or "data plane not programmed yet"
        if self.applied != self.desired():
            return False, "state changed since the last apply"
        if not self.fabric.alive():
            return False, "data plane is not running"
        off = forwarding_mod.check(self.forwarding, self.sysctl_root)
        if off:
            return False, "; ".join(off)
        try:
            problems = self.fabric.verify(self.applied)
        except Exception as e:
            problems = [f"cannot verify the data plane: {type(e).__name__}: {e}"]
        if problems:
            return False, "; ".join(problems)
        return True, "ok"

    # --- tokens -----------------------------------------------------------------------------

    def create_token(self, ttl: float, reusable: bool) -> dict[str, Any]:
        now = self.clock()
        tok = new_token(self.config.advertise_url(), self.cluster_id, self.public_key, ttl=ttl, now=now)
        self.store.add_token(TokenRecord(token_id=tok.token_id, verifier=tok.verifier, created=now,
                                         expires=tok.expires, reusable=reusable))
        log.info("token %s created (expires in %.0fs, reusable=%s)", tok.token_id, ttl, reusable)
        return {"token": tok.encode(), "token_id": tok.token_id, "expires": tok.expires,
                "reusable": reusable, "url": tok.url}

    def list_tokens(self) -> list[dict[str, Any]]:
        now = self.clock()
        out = []
        for t in self.store.tokens():
            state = "expired" if now >= t.expires else ("used" if t.uses and not t.reusable else "active")
            out.append({"token_id": t.token_id, "created": t.created, "expires": t.expires,
                        "reusable": t.reusable, "uses": t.uses, "state": state})
        return out

    def revoke_token(self, token_id: str) -> dict[str, Any]:
        if not self.store.delete_token(token_id):
            raise GatewayError(f"no token {token_id!r}", 404)
        log.info("token %s revoked", token_id)
        return {"revoked": token_id}

    # --- B side: join -----------------------------------------------------------------------

    def handle_join(self, envelope: object) -> dict[str, Any]:
        """Answer a join request; all checks pass or nothing changes."""
        now = self.clock()
        token_id = peering.peek_token_id(envelope)
        rec = self.store.token(token_id)
        try:
            rec = check_usable(rec, now)
        except TokenError as e:
            raise GatewayError(str(e), 403) from None
        req = peering.verify_join(envelope, rec.verifier, self.cluster_id, self.public_key, now)
        other = req.side
        if other.cluster_id == self.cluster_id or other.public_key == self.public_key:
            raise GatewayError("refusing to peer with myself (same cluster ID or key)", 409)
        existing = self.store.peer(other.cluster_id)
        if existing is not None:
            if existing.public_key != other.public_key:
                raise GatewayError(f"cluster {other.cluster_id} is already peered under another key", 409)
            if existing.their_views is not None:
                raise GatewayError(f"cluster {other.cluster_id} is already peered; remove it first", 409)
            # Same key, still pending: the joiner never completed (crashed, timed out)
            # and retries; its row is replaced and its IPAM views are reused.
        elif self.store.peer_by_key(other.public_key) is not None:
            raise GatewayError("that WireGuard key already belongs to another peer", 409)

        eph = peering.Ephemeral.generate()
        allocated = False
        try:
            with self.store.tx() as db:
                if not self.store.remember_nonce(db, req.nonce, now + NONCE_TTL, now):
                    raise PeeringError("replayed join request (nonce already seen)", 401)
                row = db.execute("SELECT uses, reusable FROM tokens WHERE token_id=?", (token_id,)).fetchone()
                if row is None or (not row[1] and row[0] > 0):
                    raise GatewayError("token was already used", 403)
                try:
                    ours = self.views.allocate(other.cluster_id, list(other.ranges))
                except ViewsError as e:
                    raise GatewayError(f"cannot allocate views of {other.cluster_id}: {e}", 422) from None
                allocated = True
                env, keys = peering.build_join_response(req, rec.verifier, self.side(), ours, eph, now)
                self.store.put_peer(db, PeerRecord(
                    cluster_id=other.cluster_id, public_key=other.public_key, endpoint=other.endpoint,
                    url=other.url, gateway_ip=other.gateway_ip, ranges=other.ranges, their_views=None,
                    channel_key=keys.channel_key, psk=keys.psk, created=now))
                db.execute("UPDATE tokens SET uses = uses + 1 WHERE token_id=?", (token_id,))
        except BaseException:
            if allocated and existing is None:
                self.views.release(other.cluster_id)
            raise
        log.info("peering: %s joined with token %s (pending its views of us)", other.cluster_id, token_id)
        return env

    # --- A side: peer add -------------------------------------------------------------------

    async def peer_add(self, token_text: str) -> dict[str, Any]:
        t0 = time.monotonic()
        now = self.clock()
        try:
            token = decode(token_text, now=now)
        except TokenError as e:
            raise GatewayError(str(e), 400) from None
        if token.cluster_id == self.cluster_id or token.public_key == self.public_key:
            raise GatewayError("refusing to peer with myself (the token is this gateway's own)", 409)
        existing = self.store.peer(token.cluster_id)
        if existing is not None:
            if existing.public_key != token.public_key:
                raise GatewayError(f"cluster {token.cluster_id} is already peered under another key", 409)
            raise GatewayError(f"cluster {token.cluster_id} is already peered", 409)
        if self.store.peer_by_key(token.public_key) is not None:
            raise GatewayError("that WireGuard key already belongs to another peer", 409)

        eph = peering.Ephemeral.generate()
        request = peering.build_join(token, self.side(), eph, now)
        answer = await self._post(token.url + "/api/v1/peering/join", request)
        t_join = time.monotonic()
        resp = peering.verify_join_response(answer, token, request, eph, self.clock())
        other = resp.side
        self._check_views_of_us(resp.views_of_us)
        try:
            ours = self.views.allocate(other.cluster_id, list(other.ranges))
        except ViewsError as e:
            # B already holds a pending peer for us: tell it to drop it.
            await self._notify_remove(other.cluster_id, other.url, resp.keys.channel_key)
            raise GatewayError(f"cannot allocate views of {other.cluster_id}: {e}", 422) from None
        rec = PeerRecord(cluster_id=other.cluster_id, public_key=other.public_key,
                         endpoint=other.endpoint, url=other.url, gateway_ip=other.gateway_ip,
                         ranges=other.ranges, their_views=tuple(resp.views_of_us),
                         channel_key=resp.keys.channel_key, psk=resp.keys.psk, created=now)
        try:
            with self.store.tx() as db:
                self.store.put_peer(db, rec)
        except BaseException:
            self.views.release(other.cluster_id)
            raise
        t_store = time.monotonic()
        await self.reconcile()
        t_apply = time.monotonic()
        # Tell B our views of it; B programs its side before it acknowledges.
        try:
            await self.send(rec, "views", {"views": [{"kind": k, "real": r, "view": v} for k, r, v in ours]})
        except GatewayError as e:
            # Leave nothing half-done: B drops its pending entry (if it can hear us), we forget B.
            await self._notify_remove(other.cluster_id, other.url, rec.channel_key)
            self._forget(other.cluster_id)
            await self.reconcile()
            raise GatewayError(f"peering with {other.cluster_id} failed at the last step and was "
                               f"rolled back: {e}", e.status) from None
        t_end = time.monotonic()
        log.info("peering: peered with %s in %.3fs (join %.3f, views+store %.3f, apply %.3f, confirm %.3f)",
                 other.cluster_id, t_end - t0, t_join - t0, t_store - t_join, t_apply - t_store,
                 t_end - t_apply)
        return self.peer_summary(self.store.peer(other.cluster_id) or rec)

    def _check_views_of_us(self, views: list[tuple[str, str, str]], status: int = 502) -> None:
        """The peer's views must be of our ranges (502 when a peer answered so, 400 when it asked)."""
        mine = set(self.our_ranges())
        for k, real, _ in views:
            if (k, real) not in mine:
                raise GatewayError(f"peer sent a view of {k} range {real}, which is not ours", status)

    # --- channel ----------------------------------------------------------------------------

    def _client(self) -> httpx.AsyncClient:
        # One client for the daemon's lifetime: building one (TLS context) costs ~0.1 s.
        if self._http_client is None or self._http_client.is_closed:
            self._http_client = self.http()
        return self._http_client

    async def aclose(self) -> None:
        if self._http_client is not None:
            await self._http_client.aclose()
            self._http_client = None

    async def _post(self, url: str, body: dict[str, Any]) -> dict[str, Any]:
        try:
            r = await self._client().post(url, json=body)
        except httpx.HTTPError as e:
            raise GatewayError(f"cannot reach peer at {url}: {type(e).__name__}: {e}", 502) from None
        try:
            data = r.json()
        except ValueError:
            data = None
        if r.status_code >= 400:
            detail = data.get("detail") if isinstance(data, dict) else None
            status = r.status_code if r.status_code < 500 else 502
            raise GatewayError(f"peer refused: {detail or r.reason_phrase}", status)
        if not isinstance(data, dict):
            raise GatewayError(f"peer at {url} answered with something that is not JSON", 502)
        return data

    async def send(self, peer: PeerRecord, type_: str, payload: dict[str, Any]) -> dict[str, Any]:
        msg = peering.build_message(peer.channel_key, self.cluster_id, peer.cluster_id, type_,
                                    payload, self.clock())
        answer = await self._post(peer.url + "/api/v1/peering/message", msg)
        try:
            return peering.verify_reply(answer, peer.channel_key, msg, self.cluster_id, self.clock())
        except PeeringError as e:
            raise GatewayError(f"bad reply from {peer.cluster_id}: {e}", 502) from None

    async def _notify_remove(self, cluster_id: str, url: str, channel_key: bytes) -> bool:
        tmp = PeerRecord(cluster_id=cluster_id, public_key="", endpoint=None, url=url, gateway_ip=None,
                         ranges=(), their_views=None, channel_key=channel_key, psk=b"")
        try:
            await self.send(tmp, "remove", {})
            return True
        except GatewayError as e:
            log.warning("could not tell %s about the removal: %s", cluster_id, e)
            return False

    async def handle_message(self, envelope: object) -> dict[str, Any]:
        now = self.clock()
        sender = peering.peek_sender(envelope)
        peer = self.store.peer(sender)
        if peer is None:
            raise GatewayError(f"unknown peer {sender}", 403)
        msg = peering.verify_message(envelope, peer.channel_key, self.cluster_id, now)
        with self.store.tx() as db:
            if not self.store.remember_nonce(db, msg.nonce, now + NONCE_TTL, now):
                raise GatewayError("replayed message (nonce already seen)", 401)
        payload: dict[str, Any] = {}
        if msg.type == "views":
            views = peering.parse_views(msg.body.get("views"), "views")
            self._check_views_of_us(views, 400)
            self.store.update_peer(sender, their_views=tuple(views))
        elif msg.type == "ranges":
            # The sender's *full* current set: ranges it dropped release their views
            # here (same IPAM transaction), so a removal needs no re-peering.
            ranges = list(dict.fromkeys(peering.parse_ranges(msg.body.get("ranges"))))
            gw_ip = peering.check_ip(msg.body.get("gateway_ip"), "gateway_ip")
            try:
                self.views.allocate(sender, ranges, replace=True)
            except ViewsError as e:
                raise GatewayError(f"cannot allocate views of the announced ranges: {e}", 422) from None
            self.store.update_peer(sender, ranges=tuple(ranges), gateway_ip=gw_ip or peer.gateway_ip)
            payload["views_of_you"] = [{"kind": k, "real": r, "view": v}
                                       for k, r, v in sorted(self.views.views(sender))]
        elif msg.type == "key":
            new_key = peering.check_public_key(msg.body.get("public_key"))
            owner = self.store.peer_by_key(new_key)
            if owner is not None and owner.cluster_id != sender:
                raise GatewayError("that WireGuard key already belongs to another peer", 409)
            endpoint = msg.body.get("endpoint", peer.endpoint)
            self.store.update_peer(sender, public_key=new_key,
                                   endpoint=endpoint if isinstance(endpoint, str) else peer.endpoint)
        elif msg.type == "endpoint":
            # The sender's WireGuard endpoint and/or peering URL changed (config
            # change across a restart); authenticated by the channel key like the rest.
            endpoint = msg.body.get("endpoint")
            if endpoint is not None and (not isinstance(endpoint, str) or ":" not in endpoint):
                raise GatewayError("endpoint: expected host:port or null", 400)
            url = msg.body.get("url")
            if not isinstance(url, str) or not url.startswith(("http://", "https://")):
                raise GatewayError("url: expected an http(s) URL", 400)
            self.store.update_peer(sender, endpoint=endpoint, url=url.rstrip("/"))
        elif msg.type == "remove":
            self._forget(sender)
        await self.reconcile()
        log.info("peer %s: %s applied", sender, msg.type)
        return peering.build_reply(peer.channel_key, msg, self.cluster_id, payload, self.clock())

    def _forget(self, cluster_id: str) -> None:
        self.store.delete_peer(cluster_id)
        self.views.release(cluster_id)

    # --- admin operations -------------------------------------------------------------------

    async def remove_peer(self, cluster_id: str) -> dict[str, Any]:
        peer = self.store.peer(cluster_id)
        if peer is None:
            raise GatewayError(f"no peer {cluster_id!r}", 404)
        notified = await self._notify_remove(peer.cluster_id, peer.url, peer.channel_key)
        self._forget(cluster_id)
        await self.reconcile()
        log.info("peer %s removed (peer notified: %s)", cluster_id, notified)
        return {"removed": cluster_id, "peer_notified": notified}

    async def rotate_key(self) -> dict[str, Any]:
        """New WireGuard key: announce it to every peer first, then switch to it."""
        priv, pub = wg_keypair()
        told, failed = [], {}
        for p in self.store.peers():
            try:
                await self.send(p, "key", {"public_key": pub, "endpoint": self.config.wireguard_endpoint()})
                told.append(p.cluster_id)
            except GatewayError as e:
                failed[p.cluster_id] = str(e)
        if failed:
            # Peers that did not learn the new key would lose us: roll the others back.
            for cid in told:
                p2 = self.store.peer(cid)
                if p2 is not None:
                    try:
                        await self.send(p2, "key", {"public_key": self.public_key,
                                                    "endpoint": self.config.wireguard_endpoint()})
                    except GatewayError as e:
                        log.error("could not roll back the key announcement to %s: %s", cid, e)
            raise GatewayError("key rotation aborted, unreachable peers: " +
                               "; ".join(f"{k}: {v}" for k, v in failed.items()), 502)
        self.store.set_private_key(priv)
        self._private_key = priv
        self.public_key = pub
        await self.reconcile()
        log.info("WireGuard key rotated; %d peers informed", len(told))
        return {"public_key": pub, "peers_informed": told}

    async def announce_ranges(self) -> dict[str, str]:
        """Tell peers our full range set when it differs from what they have views of.

        The message carries the whole set, not a delta: the receiver allocates
        views of added ranges and releases those of dropped ones.
        """
        result = {}
        mine = self.our_ranges()
        for p in self.store.peers():
            if p.their_views is None:
                continue
            if {(k, r) for k, r, _ in p.their_views} == set(mine):
                continue
            try:
                body = await self.send(p, "ranges", {"ranges": [{"kind": k, "cidr": c} for k, c in mine],
                                                     "gateway_ip": self.gateway_ip})
                views = peering.parse_views(body.get("views_of_you"), "views_of_you")
                self._check_views_of_us(views)
                self.store.update_peer(p.cluster_id, their_views=tuple(views))
                result[p.cluster_id] = "ok"
            except (GatewayError, PeeringError) as e:
                result[p.cluster_id] = str(e)
        await self.reconcile()
        return result

    async def announce_endpoint(self) -> dict[str, str]:
        """Tell every peer our WireGuard endpoint and peering URL if they changed.

        The last values every peer acknowledged are kept in state.db; they are
        updated only when all peers acknowledged, so a peer that was unreachable
        is told on the next attempt (resending to the others is harmless).
        """
        endpoint, url = self.config.wireguard_endpoint(), self.config.advertise_url()
        last = self.store.announced()
        if last == {"endpoint": endpoint, "url": url}:
            return {}
        live = [p for p in self.store.peers() if p.their_views is not None]
        if last is None and not live:
            # First start: peers that join later learn both in the join itself.
            self.store.set_announced(endpoint, url)
            return {}
        result = {}
        for p in live:
            try:
                await self.send(p, "endpoint", {"endpoint": endpoint, "url": url})
                result[p.cluster_id] = "ok"
            except GatewayError as e:
                result[p.cluster_id] = str(e)
        if all(v == "ok" for v in result.values()):
            self.store.set_announced(endpoint, url)
        return result

    # --- read-only views --------------------------------------------------------------------

    def peer_summary(self, p: PeerRecord, stats: dict[str, dict[str, Any]] | None = None,
                     health: dict[str, dict[str, Any]] | None = None) -> dict[str, Any]:
        s = (stats or {}).get(p.public_key, {})
        h = (health or {}).get(p.cluster_id, {})
        now = self.clock()
        hs = s.get("last_handshake")
        ours = sorted(self.views.views(p.cluster_id))
        if p.their_views is None:
            state = "pending"
        elif h.get("state"):
            state = h["state"]
        elif hs:  # no probe target (peer gateway IP unknown): judge by the WireGuard handshake
            state = "connected" if now - hs < HANDSHAKE_STALE else "error"
        else:
            state = "connecting"
        return {
            "cluster_id": p.cluster_id, "public_key": p.public_key, "endpoint": s.get("endpoint") or p.endpoint,
            "url": p.url, "state": state,
            "latest_handshake": hs or None,
            "handshake_age_s": round(now - hs, 3) if hs else None,
            "rx_bytes": s.get("rx_bytes", 0), "tx_bytes": s.get("tx_bytes", 0),
            "rtt_ms": h.get("rtt_ms"), "loss": h.get("loss"), "probe_ip": translate(p.gateway_ip, ours),
            "ranges": [{"kind": k, "cidr": c} for k, c in p.ranges],
            "our_views": [{"kind": k, "real": r, "view": v} for k, r, v in ours],
            "their_views": None if p.their_views is None else
            [{"kind": k, "real": r, "view": v} for k, r, v in p.their_views],
        }

    def peer_stats(self) -> dict[str, dict[str, Any]]:
        try:
            return self.fabric.peer_stats()
        except Exception as e:
            log.debug("peer stats unavailable: %s", e)
            return {}

    def peers(self) -> list[dict[str, Any]]:
        stats = self.peer_stats()
        health = self.health.report(self.clock())
        return [self.peer_summary(p, stats, health) for p in self.store.peers()]

    def status(self) -> dict[str, Any]:
        ready, why = self.ready()
        peers = self.peers()
        by_state: dict[str, int] = {}
        for p in peers:
            by_state[p["state"]] = by_state.get(p["state"], 0) + 1
        return {
            "cluster_id": self.cluster_id, "public_key": self.public_key,
            "endpoint": self.config.wireguard_endpoint(), "url": self.config.advertise_url(),
            "interface": self.config.wireguard.interface,
            "implementation": self.config.wireguard.implementation,
            "gateway_ip": self.gateway_ip, "gateway_ip6": self.gateway_ip6,
            "pod_cidrs": list(self.config.pod_cidrs), "service_cidrs": list(self.config.service_cidrs),
            "ready": ready, "ready_reason": why, "uptime_s": round(self.clock() - self.started, 3),
            "peers": len(peers), "peers_by_state": by_state,
            "reconcile": {"runs": self.stats.runs, "errors": self.stats.errors,
                          "dataplane_restarts": self.stats.restarts, "last_error": self.stats.last_error,
                          "last_ok": self.stats.last_ok},
        }

    def nat(self) -> list[dict[str, Any]]:
        return self.fabric.nat(self.desired())

    def ipam(self) -> dict[str, Any]:
        return self.views.snapshot()

    def routes(self) -> dict[str, Any]:
        all_views = self.views.all_views()
        cidrs = sorted({v for p in self.store.peers() if p.their_views is not None
                        for _, _, v in all_views.get(p.cluster_id, [])})
        out: dict[str, Any] = {"gateway_ip": self.gateway_ip, "cidrs": cidrs}
        # Node agents route IPv6 views via gateway_ip6; only meaningful (and only
        # accepted by fabric.agent) when gateway_ip itself is the IPv4 address.
        if self.gateway_ip6 is not None and (
                self.gateway_ip is None or ipaddress.ip_address(self.gateway_ip).version == 4):
            out["gateway_ip6"] = self.gateway_ip6
        return out
