"""Tiny echo server/client for the namespace tests: the server reports who it saw.

server NAME PORT        UDP + TCP on [::]:PORT (dual stack), answers
                        "NAME PEER_IP PEER_PORT NBYTES MSS" (MSS: TCP only, else 0)
client udp|tcp HOST PORT [NBYTES]   prints the server's answer
hold HOST PORT NBYTES   TCP: sends NBYTES, prints "sent", waits for a line on stdin,
                        sends NBYTES more, then prints the server's answer
"""

from __future__ import annotations

import socket
import sys
import threading


def _peer_ip(addr: str) -> str:
    return addr[7:] if addr.startswith("::ffff:") else addr


def serve(name: str, port: int) -> None:
    udp = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
    udp.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
    udp.bind(("::", port))
    tcp = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
    tcp.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
    tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    tcp.bind(("::", port))
    tcp.listen(1024)  # flows.py opens hundreds of connections at once

    def udp_loop() -> None:
        while True:
            data, addr = udp.recvfrom(65535)
            udp.sendto(f"{name} {_peer_ip(addr[0])} {addr[1]} {len(data)} 0".encode(), addr)

    def handle(conn: socket.socket, addr: tuple[str, int]) -> None:
        with conn:
            mss = conn.getsockopt(socket.IPPROTO_TCP, socket.TCP_MAXSEG)
            n = 0
            while chunk := conn.recv(65536):
                n += len(chunk)
            conn.sendall(f"{name} {_peer_ip(addr[0])} {addr[1]} {n} {mss}".encode())

    threading.Thread(target=udp_loop, daemon=True).start()
    print("ready", flush=True)
    while True:
        conn, addr = tcp.accept()
        threading.Thread(target=handle, args=(conn, addr[:2]), daemon=True).start()


def client(proto: str, host: str, port: int, nbytes: int) -> None:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    if proto == "udp":
        s = socket.socket(family, socket.SOCK_DGRAM)
        s.settimeout(1.0)
        for _ in range(5):  # the first packet may race the handshake
            s.sendto(b"x" * max(nbytes, 1), (host, port))
            try:
                print(s.recv(4096).decode())
                return
            except TimeoutError:
                continue
        sys.exit("udp: no answer")
    s = socket.create_connection((host, port), timeout=10)
    payload = b"y" * 65536
    left = nbytes
    while left > 0:
        s.sendall(payload[: min(left, len(payload))])
        left -= min(left, len(payload))
    s.shutdown(socket.SHUT_WR)
    out = b""
    while chunk := s.recv(4096):
        out += chunk
    print(out.decode())


def hold(host: str, port: int, nbytes: int) -> None:
    s = socket.create_connection((host, port), timeout=30)
    s.sendall(b"z" * nbytes)
    print("sent", flush=True)
    sys.stdin.readline()
    s.sendall(b"z" * nbytes)
    s.shutdown(socket.SHUT_WR)
    out = b""
    while chunk := s.recv(4096):
        out += chunk
    print(out.decode(), flush=True)


if __name__ == "__main__":
    if sys.argv[1] == "hold":
        hold(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]))
    elif sys.argv[1] == "server":
        serve(sys.argv[2], int(sys.argv[3]))
    else:
        client(sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5]) if len(sys.argv) > 5 else 1)
