"""The HTTP side of the peering channel: POST to a peer, authenticate its answer.

Peering listeners speak TLS: an ``https`` URL goes through
:func:`gateway.pinhttp.post`, which accepts only the peer's pinned certificate
(from the token, then learned over the channel: every message carries the
sender's pins as ``tls_pins`` and every reply the receiver's). Plain ``http``
(tests, and peerings from before TLS: tried once, then https) goes through one
``httpx.AsyncClient`` for the daemon's lifetime. Transport failures and refusals become
:class:`GatewayError` with the status the API should answer with (a peer's
5xx becomes 502). The message format itself is :mod:`gateway.peering`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import httpx

from gateway import peering, pinhttp
from gateway.errors import GatewayError
from gateway.peering import PeeringError
from gateway.state import PeerRecord
from gateway.tlsid import is_pin

log = logging.getLogger("crosswire.gateway")

HttpFactory = Callable[[], httpx.AsyncClient]
TlsPost = Callable[[str, dict[str, Any], tuple[str, ...]], Awaitable[tuple[int, str, Any]]]


def _no_pins(_: str) -> tuple[str, ...]:
    return ()


def parse_pins(value: object) -> tuple[str, ...] | None:
    """A ``tls_pins`` field: 1-2 pins, or None when absent or malformed."""
    if not isinstance(value, list) or not 0 < len(value) <= 2 or not all(is_pin(p) for p in value):
        return None
    return tuple(value)


def default_http() -> httpx.AsyncClient:
    return httpx.AsyncClient(timeout=httpx.Timeout(10.0, connect=5.0), follow_redirects=False)


@dataclass
class PeerChannel:
    cluster_id: str  # ours: the sender of every message
    clock: Callable[[], float] = time.time
    http: HttpFactory = default_http
    # https: pinned TLS (None: https also through ``http``, as in-process tests do)
    tls_post: TlsPost | None = pinhttp.post
    pins_of: Callable[[str], tuple[str, ...]] = _no_pins  # a peer's pins (state.db)
    learn_pins: Callable[[str, tuple[str, ...]], None] = lambda cid, pins: None
    own_pins: Callable[[], tuple[str, ...]] = lambda: ()
    _client: httpx.AsyncClient | None = field(default=None, init=False, repr=False)

    def client(self) -> httpx.AsyncClient:
        if self._client is None or self._client.is_closed:
            self._client = self.http()
        return self._client

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    async def post(self, url: str, body: dict[str, Any], pins: tuple[str, ...] = ()) -> dict[str, Any]:
        """POST to a peer. ``pins``: the certificates an https URL may present (empty: any,
        only for peerings made before TLS; their MAC'd channel is the check)."""
        if url.startswith("https://") and self.tls_post is not None:
            try:
                status, reason, data = await self.tls_post(url, body, pins)
            except pinhttp.PinError as e:
                raise GatewayError(f"refusing peer at {url}: {e} (a token from another gateway, or a "
                                   "listener in between)", 502) from None
            except (OSError, TimeoutError, ValueError) as e:
                raise GatewayError(f"cannot reach peer at {url}: {type(e).__name__}: {e}", 502) from None
        else:
            try:
                r = await self.client().post(url, json=body)
            except httpx.HTTPError as e:
                raise GatewayError(f"cannot reach peer at {url}: {type(e).__name__}: {e}", 502) from None
            try:
                data = r.json()
            except ValueError:
                data = None
            status, reason = r.status_code, r.reason_phrase
        if status >= 400:
            detail = data.get("detail") if isinstance(data, dict) else None
            raise GatewayError(f"peer refused: {detail or reason}", status if status < 500 else 502)
        if not isinstance(data, dict):
            raise GatewayError(f"peer at {url} answered with something that is not JSON", 502)
        return data

    async def send(self, peer: PeerRecord, type_: str, payload: dict[str, Any],
                   pins_override: tuple[str, ...] | None = None) -> dict[str, Any]:
        """One channel message to ``peer``; returns the authenticated reply's payload."""
        own = self.own_pins()
        msg = peering.build_message(peer.channel_key, self.cluster_id, peer.cluster_id, type_,
                                    {**payload, **({"tls_pins": list(own)} if own else {})}, self.clock())
        pins = pins_override if pins_override is not None else self.pins_of(peer.cluster_id)
        url = peer.url
        if pins and url.startswith("http://"):
            url = "https://" + url[len("http://"):]  # a pinned peer is only ever spoken to over TLS
        path = "/api/v1/peering/message"
        try:
            answer = await self.post(url + path, msg, pins)
        except GatewayError as e:
            if pins or not url.startswith("http://") or self.tls_post is None or e.status != 502:
                raise
            # A peering made before TLS whose peer has been upgraded since: same host
            # and port, now TLS; the MAC'd reply tells us its pin.
            answer = await self.post("https://" + url[len("http://"):] + path, msg, ())
        try:
            reply = peering.verify_reply(answer, peer.channel_key, msg, self.cluster_id, self.clock())
        except PeeringError as e:
            raise GatewayError(f"bad reply from {peer.cluster_id}: {e}", 502) from None
        learned = parse_pins(reply.get("tls_pins"))
        if learned is not None and learned != pins and type_ != "remove":
            self.learn_pins(peer.cluster_id, learned)  # authenticated by the channel key
        return reply

    async def notify_remove(self, cluster_id: str, url: str, channel_key: bytes,
                            pins: tuple[str, ...] | None = None) -> bool:
        """Tell a peer (maybe one not stored yet) to forget us; False if it could not be told."""
        tmp = PeerRecord(cluster_id=cluster_id, public_key="", endpoint=None, url=url, gateway_ip=None,
                         ranges=(), their_views=None, channel_key=channel_key, psk=b"")
        try:
            await self.send(tmp, "remove", {}, pins)
            return True
        except GatewayError as e:
            log.warning("could not tell %s about the removal: %s", cluster_id, e)
            return False
