from __future__ import annotations

import asyncio
import socket

from gateway.health import EchoResponder, HealthTracker, Prober


def test_states_rtt_loss() -> None:
    h = HealthTracker(interval=1.0, timeout=5.0)
    h.set_peers({"gpu": "100.64.0.10"}, now=0.0)
    assert h.report(0.0)["gpu"]["state"] == "connecting"
    (cid, ip, probe), = h.due(0.0)
    assert (cid, ip) == ("gpu", "100.64.0.10") and h.due(0.5) == []
    assert h.on_reply(probe, 0.012)
    assert not h.on_reply(probe, 0.02)  # duplicate
    r = h.report(0.1)["gpu"]
    assert r["state"] == "connected" and r["rtt_ms"] == 12.0 and r["loss"] == 0.0
    # peer goes silent at t=1: error well within 10 s
    t = 1.0
    while t < 7.0:
        h.due(t)
        t += 1.0
    r = h.report(7.0)["gpu"]
    assert r["state"] == "error" and r["loss"] is not None and r["loss"] > 0.5
    # and back when it answers again
    (_, _, p2), = h.due(7.0)
    h.on_reply(p2, 7.01)
    assert h.report(7.02)["gpu"]["state"] == "connected"


def test_failing_probes_show_impaired_before_error() -> None:
    # Never "connected" while the probe is failing: a 1.3 s data-plane restart used to
    # stay "connected" throughout (error only after `timeout` of silence).
    h = HealthTracker(interval=0.5, timeout=3.0)
    h.set_peers({"gpu": "100.64.0.10"}, now=0.0)
    (_, _, p0), = h.due(0.0)
    h.on_reply(p0, 0.01)
    assert h.report(0.4)["gpu"]["state"] == "connected"
    h.due(0.5)  # unanswered from here on
    assert h.report(1.4)["gpu"]["state"] == "connected"  # not settled yet (< 1 s)
    h.due(1.0)
    assert h.report(1.5)["gpu"]["state"] == "impaired"
    t = 1.5
    while t < 3.1:
        h.due(t)
        t += 0.5
    assert h.report(3.1)["gpu"]["state"] == "error"
    (_, _, p1), = h.due(3.5)
    h.on_reply(p1, 3.52)
    assert h.report(3.53)["gpu"]["state"] == "connected"


def test_never_answering_peer_goes_to_error() -> None:
    h = HealthTracker(interval=1.0, timeout=5.0)
    h.set_peers({"gpu": "100.64.0.10"}, now=0.0)
    assert h.report(9.9)["gpu"]["state"] == "connecting"
    assert h.report(10.0)["gpu"]["state"] == "error"


def test_foreign_and_malformed_replies_ignored() -> None:
    h = HealthTracker()
    h.set_peers({"gpu": "100.64.0.10"}, now=0.0)
    (_, _, p), = h.due(0.0)
    assert not h.on_reply(b"CWP1" + b"\x00" * 16, 0.1)
    assert not h.on_reply(p[:-1], 0.1)
    assert not h.on_reply(b"x" * 20, 0.1)
    h.set_peers({}, now=1.0)
    assert not h.on_reply(p, 1.0)  # peer removed
    assert h.report(1.0) == {}


def test_echo_responder_and_prober_over_loopback() -> None:
    async def go() -> None:
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
        s.close()
        echo = EchoResponder(port)
        await echo.start()
        loop = asyncio.get_running_loop()
        h = HealthTracker(interval=0.05, timeout=1.0)
        h.set_peers({"self": "127.0.0.1"}, loop.time())
        prober = Prober(h, port, "127.0.0.1", loop.time)
        try:
            for _ in range(40):
                await prober.tick()
                await asyncio.sleep(0.02)
                if h.report(loop.time())["self"]["state"] == "connected":
                    break
            assert h.report(loop.time())["self"]["state"] == "connected"
            # garbage is dropped and counted, not echoed
            t, _ = await loop.create_datagram_endpoint(asyncio.DatagramProtocol, remote_addr=("127.0.0.1", port))
            t.sendto(b"hello")
            await asyncio.sleep(0.05)
            t.close()
            assert echo.dropped == 1 and echo.echoed >= 1
        finally:
            prober.close()
            echo.close()

    asyncio.run(go())
