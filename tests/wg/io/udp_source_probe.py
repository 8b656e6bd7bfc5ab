"""Run inside a fresh namespace (lo up) by test_udp_source.py: exercises fabric.wg.udp's
packet-info handling on loopback and prints what it saw as JSON."""

from __future__ import annotations

import collections
import json
import select
import socket
import sys

sys.path.insert(0, sys.argv[1])

from fabric.wg import udp
from fabric.wg.messages import Endpoint


def main() -> None:
    s4, s6, port = udp.bind_pair(0, 0)
    assert s6 is not None
    out: dict[str, object] = {}
    counters: collections.defaultdict[str, int] = collections.defaultdict(int)
    for fam, sock, dst in ((socket.AF_INET, s4, "127.0.0.2"), (socket.AF_INET6, s6, "::1")):
        peer = socket.socket(fam, socket.SOCK_DGRAM)
        peer.bind((dst if fam == socket.AF_INET6 else "127.0.0.1", 0))
        peer.settimeout(5)
        # One UDP_SEGMENT send of 4 x 100 bytes: loopback hands it to the GRO socket whole.
        peer.sendmsg([bytes(range(100)) * 4], [(udp.SOL_UDP, udp.UDP_SEGMENT, (100).to_bytes(2, "little"))],
                     0, (dst, port))
        got: list[tuple[int, list[object]]] = []

        def on_datagram(d: bytes, src: Endpoint, now: float, got: list[tuple[int, list[object]]] = got) -> None:
            got.append((len(d), list(src)))

        ready = select.poll()
        ready.register(sock.fileno(), select.POLLIN)
        select.select([sock], [], [], 5)
        udp.read_batch(sock, ready, on_datagram, 0.0, 8, counters)
        out[f"read{fam}"] = [(n, [s[0], s[1], bytes(s[2]).hex() if len(s) > 2 else None])
                             for n, s in got]
        # Sending from a local address we do not have: forget it and send from the kernel's choice.
        gone = socket.inet_pton(fam, "192.0.2.99" if fam == socket.AF_INET else "fd00::99")
        here = peer.getsockname()
        ep: Endpoint = (here[0], here[1], gone)
        forgotten: list[object] = []
        outbox: collections.deque[tuple[bytes, Endpoint]] = collections.deque([(b"hello", ep)])
        udp.send_each(outbox, s4, s6, counters, forgotten.append)
        data, src = peer.recvfrom(100)
        # And a sticky one that works: sent from the address it names.
        sticky: Endpoint = (here[0], here[1], socket.inet_pton(fam, dst))
        outbox.append((b"again", sticky))
        outbox.append((b"again", sticky))
        udp.send_gso(outbox, s4, s6, counters, forgotten.append)
        srcs = [peer.recvfrom(100)[1][0] for _ in range(2)]
        out[f"send{fam}"] = {"forgotten": len(forgotten), "data": data.decode(), "from": src[0],
                             "sticky_from": srcs}
    out["counters"] = dict(counters)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
