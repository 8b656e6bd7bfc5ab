"""``crosswire tls rotate``: a new peering certificate, every peer told before the switch.

1. A new key and certificate are made beside the current one (``tlsid.prepare``);
   from now on every channel message carries both pins.
2. Every peer gets a ``pins`` message with both and stores them: it then
   accepts either certificate. One unreachable peer aborts the rotation (the new
   key is deleted, the others are told the current pin alone again), as
   ``key rotate`` does.
3. The listener switches (``tlsid.commit``: the one SSL context reloads, new
   handshakes present the new certificate; open connections are not cut).
4. Every peer is told the new pin alone (best effort: a peer that misses it
   keeps accepting the old pin as well until the next message tells it).

Tokens issued before the rotation pin the old certificate and are refused by
``peer add`` afterwards with the pin mismatch named; issue new ones.
"""

from __future__ import annotations

import logging
from typing import Any

from gateway.errors import GatewayError
from gateway.exchange import Exchange
from gateway.peering import PeeringError
from gateway.tlsid import TlsIdentity

log = logging.getLogger("crosswire.gateway")


async def rotate(exchange: Exchange, tls: TlsIdentity) -> dict[str, Any]:
    live = [p for p in exchange.store.peers() if p.their_views is not None]
    new = tls.prepare()
    told: list[str] = []
    for p in live:
        try:
            await exchange.channel.send(p, "pins", {})
            told.append(p.cluster_id)
        except (GatewayError, PeeringError) as e:
            tls.abandon()
            for q in live:
                if q.cluster_id in told:
                    try:
                        await exchange.channel.send(q, "pins", {})
                    except (GatewayError, PeeringError) as e2:
                        log.warning("tls rotate: could not tell %s the rotation was aborted: %s", q.cluster_id, e2)
            raise GatewayError(f"certificate rotation aborted, nothing changed: {p.cluster_id} could not be "
                               f"told the new pin ({e})", 502) from None
    tls.commit()
    log.info("tls rotate: peering certificate switched to pin %s (%d peers told)", new, len(told))
    pending = {}
    for p in live:
        try:
            await exchange.channel.send(p, "pins", {})
        except (GatewayError, PeeringError) as e:
            pending[p.cluster_id] = str(e)  # it accepts both pins until told
    return {"tls_pin": new, "peers_informed": told, "peers_pending": pending}
