"""bench/fleet.py's synthetic peers against a real gateway: three of them redeem a
reusable token of a real sparse hub (crosswire-wg, nftables) in a namespace,
hand-shake with its crosswire-wg through fabric/wg's Device, answer its
channel messages and its health probes, so the hub reads each one `connected`."""

from __future__ import annotations

import asyncio
import json
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from nsutil import namespaces, require_root

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "bench"))

from fleethub import OPERATOR, PEERS_IP, hub, in_namespace  # noqa: E402
from fleetpeers import Fleet, probe_reply  # noqa: E402


def test_probe_reply_swaps_addresses_and_ports() -> None:
    payload = b"CWP1" + bytes(16)
    probe = bytes.fromhex("4500003000004000401100000a0000016440000a") + bytes.fromhex("d431ca76001c0000") + payload
    reply = probe_reply(probe)
    assert reply is not None
    assert reply[12:16] == bytes.fromhex("6440000a") and reply[16:20] == bytes.fromhex("0a000001")
    assert reply[20:24] == bytes.fromhex("ca76d431") and reply[28:] == payload
    assert probe_reply(probe[:-1]) is None  # not a whole probe
    assert probe_reply(probe.replace(b"CWP1", b"XXXX")) is None


def _get(path: str) -> object:
    with urllib.request.urlopen(OPERATOR + path, timeout=10) as r:
        return json.loads(r.read())


def test_three_synthetic_peers_join_and_read_connected() -> None:
    require_root("nft")
    with tempfile.TemporaryDirectory() as tmp, namespaces() as n, hub(n, Path(tmp)) as h:
        token = h.cli("token", "create", "--reusable", "--ttl", "10m").stdout.strip()

        async def run() -> dict[str, object]:
            fleet = Fleet(PEERS_IP, 9000, 30000)
            await fleet.start()
            try:
                peers = [await fleet.add(f"s{i}") for i in range(3)]
                await asyncio.gather(*(p.join(token) for p in peers))
                deadline = time.monotonic() + 30
                while time.monotonic() < deadline:
                    got = await asyncio.to_thread(_get, "/api/v1/peers")
                    states = {p["cluster_id"]: p["state"] for p in got}  # type: ignore[attr-defined]
                    if states == {"s0": "connected", "s1": "connected", "s2": "connected"} and \
                            all(p.messages.get("exports") for p in peers):
                        break
                    await asyncio.sleep(0.3)
                return {"states": states, "answered": [p.probes_answered for p in peers],
                        "exports": [p.messages.get("exports", 0) for p in peers],
                        "handshakes": [p.device.peers[next(iter(p.device.peers))].last_handshake_ns
                                       for p in peers]}
            finally:
                await fleet.aclose()

        out = in_namespace(h.peers_ns, lambda: asyncio.run(run()))
        assert out["states"] == {"s0": "connected", "s1": "connected", "s2": "connected"}, out
        assert all(a > 0 for a in out["answered"]), out  # type: ignore[attr-defined]
        assert all(e > 0 for e in out["exports"]), out  # type: ignore[attr-defined]
        assert all(t > 0 for t in out["handshakes"]), out  # type: ignore[attr-defined]
