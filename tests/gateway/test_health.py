from __future__ import annotations

import asyncio
import socket

from gateway.config import HealthConfig
from gateway.health import FAIL_AFTER, EchoResponder, HealthTracker, Prober


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
    assert h.report(0.99)["gpu"]["state"] == "connected"  # not settled yet (< FAIL_AFTER)
    assert h.report(1.0)["gpu"]["state"] == "impaired"  # 0.5 s after the first lost probe
    h.due(1.0)
    t = 1.5
    while t < 3.1:
        h.due(t)
        t += 0.5
    assert h.report(3.1)["gpu"]["state"] == "error"
    (_, _, p1), = h.due(3.5)
    h.on_reply(p1, 3.52)
    assert h.report(3.53)["gpu"]["state"] == "connected"


def test_impaired_within_half_a_second_of_the_first_unanswered_probe() -> None:
    # Issue 20: "connected" used to last up to ~1.5 s into an outage. Now the verdict
    # comes FAIL_AFTER (0.5 s) after the first lost probe, whatever the interval.
    assert FAIL_AFTER <= 0.5
    for interval in (0.5, 1.0, 2.0):
        h = HealthTracker(interval=interval, timeout=5.0)
        h.set_peers({"gpu": "100.64.0.10"}, now=0.0)
        (_, _, p0), = h.due(0.0)
        h.on_reply(p0, 0.02)
        lost_at = interval  # the outage starts after the first answer
        assert h.due(lost_at)
        assert h.report(lost_at + FAIL_AFTER - 0.01)["gpu"]["state"] == "connected"
        assert h.report(lost_at + FAIL_AFTER)["gpu"]["state"] == "impaired", interval


def test_slow_answer_counts_once_it_arrives() -> None:
    # A reply later than FAIL_AFTER (a very long path) reads impaired for a moment,
    # then connected again with its true RTT: the verdict is early, not final.
    h = HealthTracker(interval=1.0, timeout=5.0)
    h.set_peers({"gpu": "100.64.0.10"}, now=0.0)
    (_, _, p0), = h.due(0.0)
    h.on_reply(p0, 0.01)
    (_, _, p1), = h.due(1.0)
    assert h.report(1.6)["gpu"]["state"] == "impaired"
    assert h.on_reply(p1, 1.7)
    r = h.report(1.71)["gpu"]
    assert r["state"] == "connected" and r["rtt_ms"] == 700.0


def test_default_interval_is_half_a_second() -> None:
    # The probe traffic this costs is stated in gateway/DESIGN.md ("Health").
    assert HealthTracker().interval == 0.5
    assert HealthConfig().interval == 0.5


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
