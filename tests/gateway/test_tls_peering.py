"""TLS on the peering listener, pinned by the token: the identity, the pinned client
against a real TLS listener on loopback, and the pins travelling over the channel."""

from __future__ import annotations

import asyncio
import os
import stat
from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI, Request

from gateway import pinhttp
from gateway.tlsid import CURRENT, TlsIdentity, is_pin


def test_identity_is_made_once_private_and_rotates(tmp_path: Path) -> None:
    t = TlsIdentity(tmp_path, "gpu")
    assert is_pin(t.pin) and t.pins() == (t.pin,)
    assert stat.S_IMODE(os.stat(tmp_path / CURRENT).st_mode) == 0o600
    assert TlsIdentity(tmp_path, "gpu").pin == t.pin  # loaded, not remade
    nxt = t.prepare()
    assert nxt != t.pin and t.pins() == (t.pin, nxt)
    assert TlsIdentity(tmp_path, "gpu").pins() == (t.pin, nxt)  # a restart mid-rotation keeps both
    t.abandon()
    assert t.pins() == (t.pin,)
    nxt = t.prepare()
    ctx = t.server_context()
    assert t.commit() == nxt and t.pins() == (nxt,) and t.server_context() is ctx


class Listener:
    """A FastAPI app behind the daemon's own server with TLS, on a free loopback port."""

    def __init__(self, tls: TlsIdentity) -> None:
        from gateway.httpserver import listen, make_server

        self.seen: list[Any] = []
        app = FastAPI()

        @app.post("/api/v1/peering/message")
        async def message(request: Request) -> dict[str, Any]:
            self.seen.append(await request.json())
            return {"ok": True}

        self.sock = listen("127.0.0.1", 0)
        self.url = f"https://127.0.0.1:{self.sock.getsockname()[1]}/api/v1/peering/message"
        self.server = make_server(app, "127.0.0.1", 0, ssl_context=tls.server_context())


def test_pinned_client_accepts_only_the_pinned_key(tmp_path: Path) -> None:
    tls = TlsIdentity(tmp_path / "b", "b")
    other = TlsIdentity(tmp_path / "x", "x")
    lst = Listener(tls)

    async def go() -> None:
        task = asyncio.create_task(lst.server.serve(sockets=[lst.sock]))
        try:
            while not lst.server.started:
                await asyncio.sleep(0.02)
            assert await pinhttp.post(lst.url, {"n": 1}, (tls.pin,)) == (200, "OK", {"ok": True})
            # during a rotation either pin is accepted
            assert (await pinhttp.post(lst.url, {"n": 2}, (other.pin, tls.pin)))[0] == 200
            with pytest.raises(pinhttp.PinError, match=f"fingerprint {tls.pin}, not the pinned {other.pin}"):
                await pinhttp.post(lst.url, {"secret-ish": 3}, (other.pin,))
            # a peering from before TLS: no pin, the channel MAC is the check
            assert (await pinhttp.post(lst.url, {"n": 4}, ()))[0] == 200
            # the certificate rotates in place: new handshakes present the new key
            new = tls.prepare()
            tls.commit()
            assert (await pinhttp.post(lst.url, {"n": 5}, (new,)))[0] == 200
            with pytest.raises(pinhttp.PinError):
                await pinhttp.post(lst.url, {"n": 6}, (other.pin,))
        finally:
            lst.server.should_exit = True
            await task

    asyncio.run(go())
    # the refused requests never reached the listener's application
    assert [m for m in lst.seen] == [{"n": 1}, {"n": 2}, {"n": 4}, {"n": 5}]


def test_pins_travel_over_the_channel(clusters: Any) -> None:
    from tests.gateway.test_two_gateways import peer

    gpu, lab = clusters("gpu"), clusters("lab")

    async def go() -> None:
        await peer(lab, gpu)  # lab redeemed gpu's token
        assert lab.store.peer_pins("gpu") == (gpu.gw.tls.pin,)  # from the token
        assert gpu.store.peer_pins("lab") == (lab.gw.tls.pin,)  # from lab's first message
        # A peering made before TLS: nothing pinned on either side. The next message
        # (any type) carries the sender's pins; the reply, the receiver's.
        for c in (gpu, lab):
            with c.store.tx() as db:
                db.execute("DELETE FROM peer_pins")
        p = lab.store.peer("gpu")
        assert p is not None
        await lab.gw.exchange.channel.send(p, "pins", {})
        assert lab.store.peer_pins("gpu") == (gpu.gw.tls.pin,)
        assert gpu.store.peer_pins("lab") == (lab.gw.tls.pin,)
        # removing a peer forgets its pins
        await lab.call("DELETE", "/api/v1/peers/gpu")
        assert lab.store.peer_pins("gpu") == () and gpu.store.peer_pins("lab") == ()

    asyncio.run(go())


def test_certificate_rotation_tells_every_peer_first(clusters: Any) -> None:
    from tests.gateway.test_two_gateways import peer

    gpu, lab, cpu = clusters("gpu"), clusters("lab"), clusters("cpu")

    async def go() -> None:
        await peer(lab, gpu)
        await peer(cpu, gpu)
        old = gpu.gw.tls.pin
        r = await gpu.call("POST", "/api/v1/tls/rotate")
        assert r.status_code == 200, r.text
        new = r.json()["tls_pin"]
        assert new != old and gpu.gw.tls.pins() == (new,)
        assert sorted(r.json()["peers_informed"]) == ["cpu", "lab"] and r.json()["peers_pending"] == {}
        assert lab.store.peer_pins("gpu") == (new,) and cpu.store.peer_pins("gpu") == (new,)
        # the channel keeps working both ways
        assert (await lab.call("POST", "/api/v1/key/rotate")).status_code == 200
        assert (await gpu.call("POST", "/api/v1/key/rotate")).status_code == 200
        # one peer unreachable: aborted, nothing changed, the others back on the current pin
        gone = lab.router.pop("http://cpu:8080")
        r = await gpu.call("POST", "/api/v1/tls/rotate")
        assert r.status_code == 502 and "aborted" in r.json()["detail"]
        assert gpu.gw.tls.pins() == (new,) and lab.store.peer_pins("gpu") == (new,)
        lab.router["http://cpu:8080"] = gone

    asyncio.run(go())


def test_a_peering_from_before_tls_finds_its_upgraded_peer() -> None:
    """Stored URL http://, no pin (peered before TLS), the peer now speaks only TLS: the
    plain attempt fails, the same host and port over TLS (no pin yet) carries the
    message, and the MAC'd reply's pins are stored; from then on it is pinned."""
    import httpx

    from gateway import peering
    from gateway.channel import PeerChannel
    from gateway.state import PeerRecord

    key = b"k" * 32
    pin = "P" * 43
    calls: list[tuple[str, tuple[str, ...]]] = []
    learned: dict[str, tuple[str, ...]] = {}

    def refusing_http() -> httpx.AsyncClient:
        def handler(request: httpx.Request) -> httpx.Response:
            raise httpx.RemoteProtocolError("Server disconnected without sending a response.", request=request)
        return httpx.AsyncClient(transport=httpx.MockTransport(handler))

    async def tls_post(url: str, body: dict[str, Any], pins: tuple[str, ...]) -> tuple[int, str, Any]:
        calls.append((url, pins))
        msg = peering.verify_message(body, key, "gpu", 1000.0)
        assert msg.body["tls_pins"] == ["O" * 43]  # ours travel with the message
        return 200, "OK", peering.build_reply(key, msg, "gpu", {"tls_pins": [pin]}, 1000.0)

    ch = PeerChannel("lab", lambda: 1000.0, refusing_http, tls_post=tls_post,
                     pins_of=lambda cid: learned.get(cid, ()), learn_pins=learned.__setitem__,
                     own_pins=lambda: ("O" * 43,))
    peer = PeerRecord(cluster_id="gpu", public_key="x", endpoint=None, url="http://gpu.example:8080",
                      gateway_ip=None, ranges=(), their_views=(), channel_key=key, psk=b"")

    async def go() -> None:
        await ch.send(peer, "pins", {})
        await ch.send(peer, "pins", {})
        await ch.aclose()

    asyncio.run(go())
    assert learned == {"gpu": (pin,)}
    assert calls == [("https://gpu.example:8080/api/v1/peering/message", ()),  # migration: unpinned once
                     ("https://gpu.example:8080/api/v1/peering/message", (pin,))]  # then pinned, TLS only


def test_plain_http_on_the_peering_port_only_for_peerings_from_before_tls(clusters: Any) -> None:
    """A gateway from before TLS peering speaks plain HTTP to the peering port: its
    channel messages (a peering made then, no pin stored) are served, a join is refused
    naming the fix (426), and so is plain HTTP from a peer that told us its pin."""
    import httpx

    from gateway import peering
    from tests.gateway.test_two_gateways import peer

    gpu, lab = clusters("gpu"), clusters("lab")

    async def go() -> None:
        await peer(lab, gpu)
        p = lab.store.peer("gpu")
        assert p is not None

        async def plain(path: str, body: dict[str, Any]) -> httpx.Response:
            async with httpx.AsyncClient(transport=httpx.ASGITransport(app=gpu.peering_app),
                                         base_url="http://gpu:8080") as c:
                return await c.post(path, json=body)

        r = await plain("/api/v1/peering/join", {"body": {"token_id": "x"}, "mac": "x"})
        assert r.status_code == 426 and "speaks TLS" in r.json()["detail"]
        msg = peering.build_message(p.channel_key, "lab", "gpu", "views", {"views": []}, lab.clock())
        r = await plain("/api/v1/peering/message", msg)
        assert r.status_code == 426 and "uses TLS already" in r.json()["detail"]  # lab pinned itself at gpu
        # The same sender without its channel key learns nothing, not even that it is peered here.
        forged = {**msg, "mac": "00" * 32}
        r = await plain("/api/v1/peering/message", forged)
        ghost = await plain("/api/v1/peering/message", {**forged, "body": {**forged["body"], "from": "ghost"}})
        assert (r.status_code, r.json()) == (ghost.status_code, ghost.json()) and r.status_code == 401
        with gpu.store.tx() as db:  # a peering from before TLS: nothing pinned
            db.execute("DELETE FROM peer_pins")
        r = await plain("/api/v1/peering/message", msg)
        assert r.status_code == 200, r.text

    asyncio.run(go())


def test_announcement_gives_an_unpinned_peer_the_plain_url(clusters: Any) -> None:
    """A peer that never told us a pin may predate TLS: it is told the http:// form of our
    new URL (which our listener serves its messages); a pinned peer the https:// one."""
    from tests.gateway.test_two_gateways import peer

    gpu, lab = clusters("gpu"), clusters("lab")

    async def go() -> None:
        await peer(lab, gpu)
        await lab.gw.exchange.announce_endpoint()  # the first start: recorded
        with lab.store.tx() as db:
            db.execute("DELETE FROM peer_pins")  # as if gpu had never told lab its pin
        lab.close()
        lab.over = {"api": {"listen": "127.0.0.1:8080", "advertise": "https://lab-new:8080"}}
        lab.open()
        lab.router["http://lab-new:8080"] = lab.peering_app
        assert await lab.gw.exchange.announce_endpoint() == {"gpu": "ok"}
        assert gpu.store.peer("lab").url == "http://lab-new:8080"  # type: ignore[union-attr]
        assert lab.store.peer_pins("gpu") == (gpu.gw.tls.pin,)  # ... and the reply pinned gpu
        lab.close()
        lab.over = {"api": {"listen": "127.0.0.1:8080", "advertise": "https://lab-3:8080"}}
        lab.open()
        lab.router["http://lab-3:8080"] = lab.peering_app
        assert await lab.gw.exchange.announce_endpoint() == {"gpu": "ok"}
        assert gpu.store.peer("lab").url == "https://lab-3:8080"  # type: ignore[union-attr]

    asyncio.run(go())


def test_token_pin_is_checked_and_old_readers_still_read_the_token() -> None:
    """The pin has a tag of its own (h); the legacy tag (t) covers the legacy fields, so a
    gateway from before TLS still decodes a new token (and is then told to upgrade)."""
    import hashlib
    import hmac
    import json

    from gateway.tokens import TokenError, b64d, b64e, decode, new_token

    tok = new_token("http://gpu:8080", "gpu", "K" * 44, ttl=60, now=0.0, tls_pin="P" * 43)
    text = tok.encode()
    assert decode(text).tls_pin == "P" * 43
    doc = json.loads(b64d(text[4:]))
    # the previous release's check: HMAC over (u, c, k, i, e) only
    legacy = json.dumps([doc["u"], doc["c"], doc["k"], doc["i"], doc["e"]], separators=(",", ":")).encode()
    secret = b64d(doc["s"])
    assert hmac.compare_digest(hmac.new(secret, legacy, hashlib.sha256).digest()[:16], b64d(doc["t"]))
    doc["f"] = "Q" * 43  # an edited pin is caught
    edited = "cw1." + b64e(json.dumps(doc).encode())
    with pytest.raises(TokenError, match="tampered"):
        decode(edited)
