"""The HTTP side of the peering channel: POST to a peer, authenticate its answer.

One ``httpx.AsyncClient`` for the daemon's lifetime (building one, with its TLS
context, costs ~0.1 s). Transport failures and refusals become
:class:`GatewayError` with the status the API should answer with (a peer's
5xx becomes 502). The message format itself is :mod:`gateway.peering`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import httpx

from gateway import peering
from gateway.errors import GatewayError
from gateway.peering import PeeringError
from gateway.state import PeerRecord

log = logging.getLogger("crosswire.gateway")

HttpFactory = Callable[[], httpx.AsyncClient]


def default_http() -> httpx.AsyncClient:
    return httpx.AsyncClient(timeout=httpx.Timeout(10.0, connect=5.0), follow_redirects=False)


@dataclass
class PeerChannel:
    cluster_id: str  # ours: the sender of every message
    clock: Callable[[], float] = time.time
    http: HttpFactory = default_http
    _client: httpx.AsyncClient | None = field(default=None, init=False, repr=False)

    def client(self) -> httpx.AsyncClient:
        if self._client is None or self._client.is_closed:
            self._client = self.http()
        return self._client

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    async def post(self, url: str, body: dict[str, Any]) -> dict[str, Any]:
        try:
            r = await self.client().post(url, json=body)
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
        """One channel message to ``peer``; returns the authenticated reply's payload."""
        msg = peering.build_message(peer.channel_key, self.cluster_id, peer.cluster_id, type_,
                                    payload, self.clock())
        answer = await self.post(peer.url + "/api/v1/peering/message", msg)
        try:
            return peering.verify_reply(answer, peer.channel_key, msg, self.cluster_id, self.clock())
        except PeeringError as e:
            raise GatewayError(f"bad reply from {peer.cluster_id}: {e}", 502) from None

    async def notify_remove(self, cluster_id: str, url: str, channel_key: bytes) -> bool:
        """Tell a peer (maybe one not stored yet) to forget us; False if it could not be told."""
        tmp = PeerRecord(cluster_id=cluster_id, public_key="", endpoint=None, url=url, gateway_ip=None,
                         ranges=(), their_views=None, channel_key=channel_key, psk=b"")
        try:
            await self.send(tmp, "remove", {})
            return True
        except GatewayError as e:
            log.warning("could not tell %s about the removal: %s", cluster_id, e)
            return False
