"""The peering exchange: tokens, join (B side), peer add (A side), channel messages,
removal, key rotation and the announcements a restart may need.

Every change is stored first (one SQLite transaction, IPAM in step) and ends
with ``await reconciler.reconcile()``, so when an operation returns, our data
plane is programmed. The wire format is :mod:`gateway.peering` (sans-IO); the
HTTP side, :mod:`gateway.channel`.
"""

from __future__ import annotations

import ipaddress
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from fabric.model import RangeMap
from gateway import announce, peering
from gateway.channel import PeerChannel, parse_pins
from gateway.config import Config
from gateway.errors import GatewayError
from gateway.exports.config import ExportsError, parse_names
from gateway.exports.imports import parse_body as parse_exports_body
from gateway.ipam_adapter import Views, ViewsError, ordered
from gateway.peering import PeeringError, views_body
from gateway.peerranges.state import PeerRanges
from gateway.readmodel import peer_summary
from gateway.reconciler import Reconciler
from gateway.sparse import SparseError, claims, mode_of
from gateway.state import PeerRecord, StateStore
from gateway.tokens import TokenError, TokenRecord, check_usable, decode, new_token

log = logging.getLogger("crosswire.gateway")

NONCE_TTL = 2 * peering.WINDOW


@dataclass
class Exchange:
    config: Config
    store: StateStore
    views: Views
    reconciler: Reconciler
    channel: PeerChannel
    clock: Callable[[], float] = time.time
    # The gate for every range a peer announces (policy, token grant, quota, approval).
    peer_ranges: PeerRanges | None = None

    def __post_init__(self) -> None:
        if self.peer_ranges is None:
            self.peer_ranges = PeerRanges(self.config.peer_ranges, self.store)

    @property
    def ranges_gate(self) -> PeerRanges:
        assert self.peer_ranges is not None
        return self.peer_ranges

    # --- identity ---------------------------------------------------------------------------

    def our_ranges(self) -> list[tuple[str, str]]:
        return [("pod", c) for c in self.config.pod_cidrs] + \
               [("service", c) for c in self.config.service_cidrs]

    def side(self) -> peering.Side:
        return peering.Side(cluster_id=self.config.cluster_id, public_key=self.store.public_key(),
                            endpoint=self.config.wireguard_endpoint(),
                            ranges=tuple(self.our_ranges()), gateway_ip=self.reconciler.gateway_ip,
                            url=self.config.advertise_url())

    def check_views_of_us(self, views: list[RangeMap], status: int = 502) -> None:
        """The peer's views must be of our ranges (502 when a peer answered so, 400 when it asked):
        whole ranges (full), or addresses inside them and egress blocks (sparse)."""
        mine = set(self.our_ranges())
        nets = [ipaddress.ip_network(c) for _, c in mine]
        for m in views:
            real = ipaddress.ip_network(m.real)
            if m.kind in ("pod", "service"):
                ok = (m.kind, m.real) in mine
            elif m.kind == "egress":
                ok = int(real.network_address) == 0
            else:
                ok = any(real.version == n.version and real.subnet_of(n) for n in nets)  # type: ignore[arg-type]
            if not ok:
                raise GatewayError(f"peer sent a view of {m.kind} range {m.real}, which is not ours", status)

    # --- our views of a peer (ipam.views) ---------------------------------------------------

    def _imports_of(self, peer: str) -> list[dict[str, Any]]:
        exports = self.reconciler.exports
        got = exports.imports().get(peer) if exports is not None else None
        return got[0] if got else []

    def allocate_views(self, peer: str, ranges: tuple[tuple[str, str], ...] | list[tuple[str, str]],
                  gateway_ip: str | None, *, replace: bool = False,
                  imports: list[dict[str, Any]] | None = None) -> list[RangeMap]:
        """Our views of ``peer``, in the mode its views already have (a peering keeps its
        mode across upgrades and config changes), else in ``ipam.views``."""
        cfg = self.config.ipam
        mode = mode_of(self.views.views(peer)) or cfg.views
        if mode == "full":
            return self.views.allocate(peer, list(ranges), replace=replace)
        try:
            want = claims(cfg, ranges, gateway_ip, self._imports_of(peer) if imports is None else imports)
        except SparseError as e:
            raise ViewsError(str(e)) from None
        return self.views.allocate(peer, want, replace=True, hold=cfg.quarantine)

    def _check_takes_our_mode(self, other: peering.Side, token_hint: str) -> None:
        """A peer from before sparse views cannot take a sparse gateway's views of it:
        refused before anything is allocated, naming the way out (upgrade it)."""
        mode = mode_of(self.views.views(other.cluster_id)) or self.config.ipam.views
        if mode == "sparse" and "egress" not in other.view_kinds:
            raise GatewayError(
                f"{self.config.cluster_id} views new peers sparsely (ipam.views: sparse), but "
                f"{other.cluster_id} runs a crosswire release from before sparse views (it takes only "
                f"pod and service views): upgrade {other.cluster_id}, then peer again {token_hint}", 422)

    # --- tokens -----------------------------------------------------------------------------

    def create_token(self, ttl: float, reusable: bool, exports: list[str] | None = None,
                     ranges: list[str] | None = None) -> dict[str, Any]:
        names = None if exports is None else self.export_names(exports)
        cidrs = None if ranges is None else self.ranges_gate.token_cidrs(ranges)
        problem = self.config.advertise_problem()
        if problem is not None:
            # A token whose URL leads nowhere fails only later, in the other cluster.
            raise GatewayError(problem, 409)
        now = self.clock()
        # The token names the URL as http://: a gateway from before TLS then reaches our
        # listener in plain HTTP and is told to upgrade (426); upgraded ones use https + pin.
        url = self.config.advertise_url()
        tok = new_token("http://" + url.split("://", 1)[1], self.config.cluster_id, self.store.public_key(),
                        ttl=ttl, now=now, tls_pin=(self.channel.own_pins() or (None,))[0])
        self.store.add_token(TokenRecord(token_id=tok.token_id, verifier=tok.verifier, created=now,
                                         expires=tok.expires, reusable=reusable))
        if names is not None and self.reconciler.exports is not None:
            self.reconciler.exports.set_token_names(tok.token_id, names)
        if cidrs is not None:
            self.ranges_gate.set_token_cidrs(tok.token_id, cidrs)
        log.info("token %s created (expires in %.0fs, reusable=%s)", tok.token_id, ttl, reusable)
        return {"token": tok.encode(), "token_id": tok.token_id, "expires": tok.expires,
                "reusable": reusable, "url": url}

    def list_tokens(self) -> list[dict[str, Any]]:
        now = self.clock()
        out = []
        for t in self.store.tokens():
            state = "expired" if now >= t.expires else ("used" if t.uses and not t.reusable else "active")
            # Stored before TTLs were bounded, an expiry may be inf: JSON has no inf.
            expires = t.expires if math.isfinite(t.expires) else None
            out.append({"token_id": t.token_id, "created": t.created, "expires": expires,
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
        me, my_key = self.config.cluster_id, self.store.public_key()
        token_id = peering.peek_token_id(envelope)
        try:
            rec = check_usable(self.store.token(token_id), now)
        except TokenError as e:
            raise GatewayError(str(e), 403) from None
        req = peering.verify_join(envelope, rec.verifier, me, my_key, now)
        other = req.side
        if other.cluster_id == me or other.public_key == my_key:
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
        self.ranges_gate.require(other.cluster_id, other.ranges, self.ranges_gate.token_grant(token_id), "join")
        self._check_takes_our_mode(other, "(this token stays valid)")

        eph = peering.Ephemeral.generate()
        allocated = False
        try:
            with self.store.tx() as db:
                if not self.store.remember_nonce(db, req.nonce, now + NONCE_TTL, now):
                    raise PeeringError("replayed join request (nonce already seen)", 401)
                if not self.store.use_token(db, token_id):
                    raise GatewayError("token was already used", 403)
                try:
                    ours = self.allocate_views(other.cluster_id, other.ranges, other.gateway_ip, imports=[])
                except ViewsError as e:
                    log.warning("peering: cannot allocate views of %s: %s", other.cluster_id, e)
                    raise GatewayError(f"cannot allocate views of {other.cluster_id}: {e.for_peer()}"
                                       f"{self._hint(e)}", 422) from None
                allocated = True
                env, keys = peering.build_join_response(req, rec.verifier, self.side(), ours, eph, now)
                self.store.put_peer(db, PeerRecord(
                    cluster_id=other.cluster_id, public_key=other.public_key, endpoint=other.endpoint,
                    url=other.url, gateway_ip=other.gateway_ip, ranges=other.ranges, their_views=None,
                    channel_key=keys.channel_key, psk=keys.psk, created=now))
                if self.reconciler.exports is not None:  # the token's share of our exports
                    self.reconciler.exports.grant_from_token(db, token_id, other.cluster_id)
                self.ranges_gate.grant_from_token(db, token_id, other.cluster_id)
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
        if token.cluster_id == self.config.cluster_id or token.public_key == self.store.public_key():
            raise GatewayError("refusing to peer with myself (the token is this gateway's own)", 409)
        existing = self.store.peer(token.cluster_id)
        if existing is not None:
            if existing.public_key != token.public_key:
                raise GatewayError(f"cluster {token.cluster_id} is already peered under another key", 409)
            raise GatewayError(f"cluster {token.cluster_id} is already peered", 409)
        if self.store.peer_by_key(token.public_key) is not None:
            raise GatewayError("that WireGuard key already belongs to another peer", 409)
        if token.tls_pin is None:
            raise GatewayError(
                f"this token carries no TLS certificate pin: {token.cluster_id}'s gateway issued it before "
                f"it spoke TLS on its peering listener. Upgrade {token.cluster_id}'s gateway and run "
                "`crosswire token create` there again", 400)
        pins = (token.tls_pin,)
        why = self.config.unreachable_from_peers(token.url)
        if why is not None:
            raise GatewayError(
                f"the token's peering URL {token.url} {why}: from here it leads back to this "
                f"cluster, not to {token.cluster_id}; {token.cluster_id}'s gateway must set "
                "api.advertise and issue a new token", 400)

        eph = peering.Ephemeral.generate()
        request = peering.build_join(token, self.side(), eph, now)
        url = "https://" + token.url.split("://", 1)[-1]  # peering listeners speak only TLS
        answer = await self.channel.post(url + "/api/v1/peering/join", request, pins)
        t_join = time.monotonic()
        resp = peering.verify_join_response(answer, token, request, eph, self.clock())
        other = resp.side
        self.check_views_of_us(resp.views_of_us)
        try:
            self.ranges_gate.require(other.cluster_id, other.ranges, None, f"{other.cluster_id}'s ranges")
            self._check_takes_our_mode(other, "with a new token")
        except GatewayError:
            await self.channel.notify_remove(other.cluster_id, other.url, resp.keys.channel_key)
            raise
        try:
            ours = self.allocate_views(other.cluster_id, other.ranges, other.gateway_ip, imports=[])
        except ViewsError as e:
            # B already holds a pending peer for us: tell it to drop it.
            await self.channel.notify_remove(other.cluster_id, other.url, resp.keys.channel_key, pins)
            raise GatewayError(f"cannot allocate views of {other.cluster_id}: {e}{self._hint(e)}",
                               422) from None
        rec = PeerRecord(cluster_id=other.cluster_id, public_key=other.public_key,
                         endpoint=other.endpoint, url=other.url, gateway_ip=other.gateway_ip,
                         ranges=other.ranges, their_views=tuple(resp.views_of_us),
                         channel_key=resp.keys.channel_key, psk=resp.keys.psk, created=now)
        try:
            with self.store.tx() as db:
                self.store.put_peer(db, rec)
                self.store.set_peer_pins(rec.cluster_id, pins, db)
        except BaseException:
            self.views.release(other.cluster_id)
            raise
        t_store = time.monotonic()
        await self.reconciler.reconcile()
        t_apply = time.monotonic()
        # Tell B our views of it; B programs its side before it acknowledges.
        try:
            await self.channel.send(rec, "views", {"views": views_body(ours)})
        except GatewayError as e:
            # Leave nothing half-done: B drops its pending entry (if it can hear us), we forget B.
            await self.channel.notify_remove(other.cluster_id, other.url, rec.channel_key, pins)
            self.forget(other.cluster_id)
            await self.reconciler.reconcile()
            raise GatewayError(f"peering with {other.cluster_id} failed at the last step and was "
                               f"rolled back: {e}", e.status) from None
        t_end = time.monotonic()
        log.info("peering: peered with %s in %.3fs (join %.3f, views+store %.3f, apply %.3f, confirm %.3f)",
                 other.cluster_id, t_end - t0, t_join - t0, t_store - t_join, t_apply - t_store,
                 t_end - t_apply)
        stored = self.store.peer(other.cluster_id) or rec
        return peer_summary(stored, ordered(self.views.views(stored.cluster_id)), self.clock())

    # --- channel messages (receiver) --------------------------------------------------------

    async def handle_message(self, envelope: object) -> dict[str, Any]:
        now = self.clock()
        me = self.config.cluster_id
        sender = peering.peek_sender(envelope)
        peer = self.store.peer(sender)
        if peer is None:
            # Answered exactly as a bad MAC from a known peer: the peering port does not
            # tell anyone (the internet, another peer) which cluster IDs are peered here.
            log.warning("peering: message from unknown peer %r refused", sender[:64])
            raise GatewayError(peering.AUTH_FAILED, 401)
        msg = peering.verify_message(envelope, peer.channel_key, me, now)
        with self.store.tx() as db:
            if not self.store.remember_nonce(db, msg.nonce, now + NONCE_TTL, now):
                raise GatewayError("replayed message (nonce already seen)", 401)
        payload: dict[str, Any] = {}
        pins = parse_pins(msg.body.get("tls_pins"))
        if pins is not None and msg.type != "remove":
            self.store.set_peer_pins(sender, pins)  # its listener's certificate(s), under the channel MAC
        if self.channel.own_pins():
            payload["tls_pins"] = list(self.channel.own_pins())
        if msg.type == "views":
            views = peering.parse_views(msg.body.get("views"), "views")
            self.check_views_of_us(views, 400)
            self.store.update_peer(sender, their_views=tuple(views))
        elif msg.type == "ranges":
            # The sender's *full* current set: ranges it dropped release their views
            # here (same IPAM transaction), so a removal needs no re-peering.
            ranges = list(dict.fromkeys(peering.parse_ranges(msg.body.get("ranges"))))
            gw_ip = peering.check_ip(msg.body.get("gateway_ip"), "gateway_ip")
            gate = self.ranges_gate
            gate.require(sender, ranges, gate.grant(sender), "range change")
            if gate.policy.approval == "manual" and set(ranges) != set(peer.ranges):
                gate.set_pending(sender, ranges, gw_ip, now)  # the operator approves (peerranges.admin)
                log.warning("peer %s: range change pending approval (crosswire peer ranges %s): %s", sender,
                            sender, ", ".join(f"{k} {c}" for k, c in ranges))
                payload["pending_approval"] = f"{me} requires an operator's approval of range changes"
            else:
                try:
                    self.allocate_views(sender, ranges, gw_ip or peer.gateway_ip, replace=True)
                except ViewsError as e:
                    log.warning("peer %s: cannot allocate views of the announced ranges: %s", sender, e)
                    raise GatewayError(f"cannot allocate views of the announced ranges: {e.for_peer()}",
                                       422) from None
                self.store.update_peer(sender, ranges=tuple(ranges), gateway_ip=gw_ip or peer.gateway_ip)
                gate.clear_pending(sender)
                payload["views_of_you"] = views_body(ordered(self.views.views(sender)))
        elif msg.type == "key":
            new_key = peering.check_public_key(msg.body.get("public_key"))
            # Our own key, or another peer's, would make WireGuard's cryptokey routing
            # ambiguous (the sync of every peer then fails): refuse, change nothing.
            if new_key == self.store.public_key():
                raise GatewayError("public_key: that is this gateway's own key", 409)
            owner = self.store.peer_by_key(new_key)
            if owner is not None and owner.cluster_id != sender:
                raise GatewayError("that WireGuard key already belongs to another peer", 409)
            endpoint = peering.check_endpoint(msg.body.get("endpoint", peer.endpoint))
            self.store.update_peer(sender, public_key=new_key, endpoint=endpoint or peer.endpoint)
        elif msg.type == "endpoint":
            # The sender's WireGuard endpoint and/or peering URL changed (config
            # change across a restart); authenticated by the channel key like the rest.
            endpoint = peering.check_endpoint(msg.body.get("endpoint"))
            url = msg.body.get("url")
            if not isinstance(url, str) or not url.startswith(("http://", "https://")):
                raise GatewayError("url: expected an http(s) URL", 400)
            self.store.update_peer(sender, endpoint=endpoint, url=url.rstrip("/"))
        elif msg.type == "remove":
            self.forget(sender)
        elif msg.type == "exports" and self.reconciler.exports is not None:
            # What the sender shares with us (real addresses, inside its ranges).
            body = parse_exports_body(msg.body.get("exports"), peer.ranges)
            if mode_of(self.views.views(sender)) == "sparse":
                # Exports drive a sparse peer's views: allocate (or hold) just the
                # changed addresses before storing, so a refusal changes nothing.
                try:
                    self.allocate_views(sender, peer.ranges, peer.gateway_ip, replace=True, imports=body)
                except ViewsError as e:
                    log.warning("peer %s: cannot view its exports: %s", sender, e)
                    raise GatewayError(f"cannot view the exports of {sender}: {e.for_peer()}", 422) from None
                payload["views_of_you"] = views_body(ordered(self.views.views(sender)))
            self.reconciler.exports.set_imports(sender, body, now)
        # Acknowledge what is programmed, not just stored: the sender reports a change
        # our data plane has not taken yet as pending (the reconcile loop retries it).
        applied = await self.reconciler.reconcile()
        payload["applied"] = applied
        if not applied:
            # Not the reconciler's error: it may name another peer (an endpoint, a view).
            payload["pending"] = f"{me}'s data plane has not taken the change yet (its log says why); it retries"
        log.info("peer %s: %s %s", sender, msg.type, "applied" if applied else "stored, apply pending")
        return peering.build_reply(peer.channel_key, msg, me, payload, self.clock())

    def _hint(self, e: ViewsError) -> str:
        if "exhausted" in str(e) and self.config.ipam.views == "full":
            return ("; a gateway that views many peers should set ipam.views: sparse (a view address "
                    "per export and a small egress block per peer instead of whole ranges)")
        return ""

    def took_views(self, peer: PeerRecord, reply: dict[str, Any]) -> None:
        """A reply that carries the peer's new views of us (``views_of_you``): store them."""
        if "views_of_you" not in reply:
            return
        try:
            views = peering.parse_views(reply.get("views_of_you"), "views_of_you")
        except PeeringError as e:
            raise GatewayError(f"bad reply from {peer.cluster_id}: {e}", 502) from None
        self.check_views_of_us(views)
        self.store.update_peer(peer.cluster_id, their_views=tuple(views))

    def forget(self, cluster_id: str) -> None:
        """Drop a peer and release our views of it (no message, no reconcile)."""
        self.store.delete_peer(cluster_id)
        self.views.release(cluster_id, hold=self.config.ipam.quarantine)
        if self.reconciler.exports is not None:
            self.reconciler.exports.forget(cluster_id)
        self.ranges_gate.forget(cluster_id)

    # --- admin operations -------------------------------------------------------------------

    def export_names(self, names: list[str]) -> tuple[str, ...]:
        """Names of our exports (a token's or a peer's share), checked against the config."""
        if self.config.exports is None:
            raise GatewayError("exports: this gateway has no exports configured (it shares all of its "
                               "ranges with every peer)", 409)
        try:
            return parse_names(names, self.config.exports)
        except ExportsError as e:
            raise GatewayError(str(e), 400) from None

    async def set_peer_exports(self, cluster_id: str, names: list[str] | None) -> dict[str, Any]:
        """Change what one peer may reach (None: every export); only its part of the policy changes."""
        checked = None if names is None else self.export_names(names)
        if names is None and self.config.exports is None:
            self.export_names([])  # refuses with the reason
        if self.store.peer(cluster_id) is None:
            raise GatewayError(f"no peer {cluster_id!r}", 404)
        assert self.reconciler.exports is not None
        self.reconciler.exports.set_grant(cluster_id, checked)
        applied = await self.reconciler.reconcile()
        log.info("peer %s: exports set to %s", cluster_id, "all" if checked is None else ",".join(checked))
        return {"cluster_id": cluster_id, "exports": [e.name for e in self.reconciler.exports.shared_with(cluster_id)],
                "all": checked is None, "applied": applied}

    async def remove_peer(self, cluster_id: str) -> dict[str, Any]:
        peer = self.store.peer(cluster_id)
        if peer is None:
            raise GatewayError(f"no peer {cluster_id!r}", 404)
        notified = await self.channel.notify_remove(peer.cluster_id, peer.url, peer.channel_key)
        self.forget(cluster_id)
        await self.reconciler.reconcile()
        log.info("peer %s removed (peer notified: %s)", cluster_id, notified)
        return {"removed": cluster_id, "peer_notified": notified}

    # Key rotation and what a restart may need to tell peers: gateway/announce.py.

    async def rotate_key(self) -> dict[str, Any]:
        return await announce.rotate_key(self)

    async def announce_ranges(self) -> dict[str, str]:
        return await announce.announce_ranges(self)

    async def announce_endpoint(self) -> dict[str, str]:
        return await announce.announce_endpoint(self)
