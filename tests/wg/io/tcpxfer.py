"""A TCP bulk transfer whose content is verified end to end (run inside a namespace).

    tcpxfer.py recv BIND_ADDR PORT            -> prints "<bytes> <sha256>" when the sender closes
    tcpxfer.py send ADDR PORT NBYTES [RATE]   -> prints "<bytes> <sha256>" of what it sent

The sender streams pseudo-random data (a seeded generator, so nothing is held
in memory); RATE (bytes/s, optional) paces it so a transfer can be made to
span a key change or an address change. The receiver prints "listening" once
it accepts connections.
"""

from __future__ import annotations

import hashlib
import random
import socket
import sys
import time

CHUNK = 65536


def recv(addr: str, port: int) -> None:
    fam = socket.AF_INET6 if ":" in addr else socket.AF_INET
    with socket.socket(fam, socket.SOCK_STREAM) as srv:
        srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        srv.bind((addr, port))
        srv.listen(1)
        print("listening", flush=True)
        conn, _ = srv.accept()
        h = hashlib.sha256()
        total = 0
        with conn:
            while data := conn.recv(1 << 20):
                h.update(data)
                total += len(data)
    print(total, h.hexdigest(), flush=True)


def send(addr: str, port: int, nbytes: int, rate: float) -> None:
    rng = random.Random(nbytes)
    h = hashlib.sha256()
    start = time.monotonic()
    with socket.create_connection((addr, port), timeout=30) as s:
        s.settimeout(60)
        sent = 0
        while sent < nbytes:
            block = rng.randbytes(min(CHUNK, nbytes - sent))
            s.sendall(block)
            h.update(block)
            sent += len(block)
            if rate:
                ahead = sent / rate - (time.monotonic() - start)
                if ahead > 0:
                    time.sleep(ahead)
        s.shutdown(socket.SHUT_WR)
        s.recv(1)  # wait for the receiver to close: every byte has arrived
    print(sent, h.hexdigest(), flush=True)


if __name__ == "__main__":
    if sys.argv[1] == "recv":
        recv(sys.argv[2], int(sys.argv[3]))
    else:
        send(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]),
             float(sys.argv[5]) if len(sys.argv) > 5 else 0.0)
