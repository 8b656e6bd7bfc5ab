"""Cookie interop probes, run inside a namespace next to a wireguard-go.

``probe`` (wireguard-go listens on 127.0.0.1:PORT): floods it with valid-mac1
initiations until it is under load, checks that it answers a fresh
initiation with a cookie reply our Device can open, and that the retry
carrying mac2 gets a real handshake response.

``serve`` (we listen on 127.0.0.1:PORT, wireguard-go initiates): our Device,
forced under load, answers with a cookie reply; wireguard-go's retransmitted
initiation must carry a mac2 we accept, and the session must come up.

Prints a JSON summary. argv: mode repo_dir our_private_hex their_public_hex port
"""

from __future__ import annotations

import contextlib
import json
import socket
import sys
import time


def serve(repo: str, priv_hex: str, their_hex: str, port: int) -> None:
    sys.path.insert(0, repo)
    from fabric.wg.device import Device
    from fabric.wg.uapi import handle

    now = time.monotonic
    dev = Device()
    reply = handle(
        dev,
        f"set=1\nprivate_key={priv_hex}\npublic_key={their_hex}\nallowed_ip=10.0.0.1/32\n\n", now()
    ).wire()
    assert reply == "errno=0\n\n", reply
    dev.load.force = True
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("127.0.0.1", port))
    s.settimeout(0.05)
    end = now() + 20
    while now() < end and not dev.inbox:
        try:
            data, addr = s.recvfrom(4096)
            dev.on_datagram(data, (addr[0], addr[1]), now())
        except TimeoutError:
            pass
        dev.on_timer(now())
        while dev.outbox:
            out, ep = dev.outbox.popleft()
            s.sendto(out, ep)
    c = dev.counters
    print(
        json.dumps(
            {
                "cookie_replies_sent": c["tx_cookie_reply"],
                "responses_sent": c["tx_handshake_response"],
                "handshake_complete": c["handshake_complete"],
                "inner_packets": len(dev.inbox),
                "drops": {k: v for k, v in c.items() if k.startswith("drop_") and v},
            }
        )
    )


def main() -> None:
    mode, repo, priv_hex, their_hex, port_s = sys.argv[1:6]
    if mode == "serve":
        serve(repo, priv_hex, their_hex, int(port_s))
        return
    sys.path.insert(0, repo)
    from fabric.wg.device import Device
    from fabric.wg.uapi import handle

    port = int(port_s)
    their = bytes.fromhex(their_hex)
    dev = Device()
    now = time.monotonic
    reply = handle(
        dev,
        f"set=1\nprivate_key={priv_hex}\npublic_key={their_hex}\n"
        f"endpoint=127.0.0.1:{port}\nallowed_ip=10.0.0.1/32\n\n",
        now(),
    ).wire()
    assert reply == "errno=0\n\n", reply
    peer = dev.peers[their]
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.setsockopt(socket.SOL_SOCKET, 33, 8 << 20)  # SO_RCVBUFFORCE: keep every reply
    s.bind(("127.0.0.1", 0))
    s.setblocking(False)

    def drain(seconds: float) -> None:
        end = now() + seconds
        while now() < end:
            try:
                data, addr = s.recvfrom(4096)
            except BlockingIOError:
                time.sleep(0.001)
                continue
            dev.on_datagram(data, (addr[0], addr[1]), now())
        dev.outbox.clear()

    def fresh_initiation() -> bytes:
        peer.last_sent_handshake = float("-inf")
        dev.send_initiation(peer, now(), is_retry=True)
        data, _ = dev.outbox.pop()
        return data

    def flood(msg: bytes, n: int) -> None:
        for _ in range(n):
            with contextlib.suppress(BlockingIOError):
                s.sendto(msg, ("127.0.0.1", port))

    init = fresh_initiation()
    # Valid-mac1 copies make wireguard-go's handshake queue (1024 deep) back up
    # past 1/8; too many would overflow it and drop our probe, so go in rounds.
    first = b""
    rounds = 0
    while not peer.cookie._cookie and rounds < 8:
        rounds += 1
        flood(init, 400)
        first = fresh_initiation()  # no mac2 yet
        s.sendto(first, ("127.0.0.1", port))
        drain(0.3)
    cookie_replies = dev.counters["rx_cookie_reply"]
    got_cookie = bool(peer.cookie._cookie)
    time.sleep(0.05)  # a newer TAI64N stamp than anything sent so far
    flood(init, 200)  # keep it loaded
    second = fresh_initiation()  # now with mac2 from the cookie
    # The same datagram a few times, in case a backed-up queue drops one; only
    # one can be consumed (the rest are timestamp replays).
    for _ in range(4):
        s.sendto(second, ("127.0.0.1", port))
        drain(0.25)
    drain(1.0)
    print(
        json.dumps(
            {
                "rounds": rounds,
                "cookie_replies": cookie_replies,
                "drop_unknown_index": dev.counters["drop_unknown_index"],
                "got_cookie": got_cookie,
                "mac2_present": second[-16:] != bytes(16),
                "first_had_mac2": first[-16:] != bytes(16),
                "drop_bad_cookie": dev.counters["drop_bad_cookie"],
                "handshake_complete": dev.counters["handshake_complete"],
                "rx_handshake_response": dev.counters["rx_handshake_response"],
            }
        )
    )


if __name__ == "__main__":
    main()
