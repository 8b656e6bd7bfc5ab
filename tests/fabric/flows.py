"""Many concurrent flows from one pod to echo.py's server: ``flows.py udp|tcp HOST PORT N BASE FIRST_PORT``.

Flow i binds source port FIRST_PORT+i and sends BASE+i+1 bytes; all flows are
open at once (UDP: every datagram sent before any answer is read; TCP: every
connection established and its data sent before any is half-closed). Prints one
JSON list: per flow [source port, bytes sent, the server's answer or null]. The
server answers "NAME PEER_IP PEER_PORT NBYTES MSS": NBYTES names the flow, so a
reply delivered to the wrong socket shows.
"""

from __future__ import annotations

import json
import select
import socket
import sys
import threading
import time


def udp(host: str, port: int, n: int, base: int, first: int) -> list[list[object]]:
    socks = []
    for i in range(n):
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.bind(("0.0.0.0", first + i))
        socks.append(s)
    answers: dict[int, str] = {}
    index = {s.fileno(): i for i, s in enumerate(socks)}
    for _ in range(10):  # retries for datagrams lost to the handshake or a full queue
        pending = [i for i in range(n) if i not in answers]
        if not pending:
            break
        for i in pending:
            socks[i].sendto(b"x" * (base + i + 1), (host, port))
        deadline = time.monotonic() + 1.5
        while len(answers) < n and time.monotonic() < deadline:
            ready, _, _ = select.select([socks[i] for i in range(n) if i not in answers], [], [], 0.2)
            for s in ready:
                answers[index[s.fileno()]] = s.recv(4096).decode()
    return [[first + i, base + i + 1, answers.get(i)] for i in range(n)]


def tcp(host: str, port: int, n: int, base: int, first: int) -> list[list[object]]:
    answers: list[str | None] = [None] * n
    barrier = threading.Barrier(n, timeout=60)

    def flow(i: int) -> None:
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("0.0.0.0", first + i))
        s.settimeout(60)
        try:
            s.connect((host, port))
            s.sendall(b"y" * (base + i + 1))
            barrier.wait()  # every connection open at once before any ends
            s.shutdown(socket.SHUT_WR)
            out = b""
            while chunk := s.recv(4096):
                out += chunk
            answers[i] = out.decode()
        except (OSError, threading.BrokenBarrierError) as e:
            print(f"flow {i} (port {first + i}): {e!r}", file=sys.stderr)
            barrier.abort()
        finally:
            s.close()

    threads = [threading.Thread(target=flow, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(90)
    return [[first + i, base + i + 1, answers[i]] for i in range(n)]


if __name__ == "__main__":
    proto, host, port, n, base, first = sys.argv[1], sys.argv[2], *map(int, sys.argv[3:7])
    print(json.dumps((udp if proto == "udp" else tcp)(host, port, n, base, first)))
