"""The HTTP server in every lab pod (stdlib only; run by path inside a pod namespace).

``GET /`` answers ``{"pod": NAME, "cluster": ID, "client": "IP:PORT"}``: who
answered and which source address it saw, so the lab can check both the
destination rewrite (which pod answered) and the source rewrite (the client
must appear as the receiver's view of the sender).
``GET /bytes?n=N`` streams N deterministic bytes (the sha256 counter stream
below); ``POST /sha256`` answers the length and sha256 of the request body.
Together they check large TCP transfers in both directions end to end.
"""

from __future__ import annotations

import argparse
import hashlib
import ipaddress
import json
import socket
import socketserver
import sys
from http.server import BaseHTTPRequestHandler, HTTPServer
from urllib.parse import parse_qs, urlparse

CHUNK = 65536


def stream_block(i: int) -> bytes:
    """Block i of the deterministic stream: 32 * 2048 bytes from sha256 of a counter."""
    seed = hashlib.sha256(i.to_bytes(8, "big")).digest()
    return seed * 2048


def stream(n: int) -> bytes:
    """The first n bytes of the stream (for clients checking a download)."""
    out = bytearray()
    i = 0
    while len(out) < n:
        out += stream_block(i)
        i += 1
    return bytes(out[:n])


class ThreadingServer(socketserver.ThreadingMixIn, HTTPServer):
    daemon_threads = True
    allow_reuse_address = True


class DualStackServer(ThreadingServer):
    """One socket for IPv4 and IPv6 clients (dual-stack lab pods)."""

    address_family = socket.AF_INET6

    def server_bind(self) -> None:
        self.socket.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        super().server_bind()


def client_ip(host: str) -> str:
    """The client's address as sent: an IPv4 client of the dual-stack socket
    arrives as ::ffff:a.b.c.d, reported as a.b.c.d."""
    addr = ipaddress.ip_address(host.split("%")[0])
    mapped = getattr(addr, "ipv4_mapped", None)
    return str(mapped or addr)


def make_handler(pod: str, cluster: str) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def _send(self, code: int, body: bytes, ctype: str = "application/json") -> None:
            self.send_response(code)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self) -> None:
            url = urlparse(self.path)
            if url.path == "/":
                who = {"pod": pod, "cluster": cluster,
                       "client": f"{client_ip(self.client_address[0])}:{self.client_address[1]}"}
                self._send(200, (json.dumps(who) + "\n").encode())
            elif url.path == "/bytes":
                try:
                    n = int(parse_qs(url.query).get("n", ["0"])[0])
                except ValueError:
                    n = -1
                if not 0 <= n <= 1 << 31:
                    self._send(400, b'{"error": "n must be 0..2^31"}\n')
                    return
                self.send_response(200)
                self.send_header("Content-Type", "application/octet-stream")
                self.send_header("Content-Length", str(n))
                self.end_headers()
                i, left = 0, n
                while left > 0:
                    block = stream_block(i)[:left]
                    self.wfile.write(block)
                    left -= len(block)
                    i += 1
            else:
                self._send(404, b'{"error": "not found"}\n')

        def do_POST(self) -> None:
            if urlparse(self.path).path != "/sha256":
                self._send(404, b'{"error": "not found"}\n')
                return
            try:
                left = int(self.headers.get("Content-Length", "-1"))
            except ValueError:
                left = -1
            if left < 0:
                self._send(411, b'{"error": "Content-Length required"}\n')
                return
            h, total = hashlib.sha256(), 0
            while left > 0:
                data = self.rfile.read(min(CHUNK, left))
                if not data:
                    break
                h.update(data)
                total += len(data)
                left -= len(data)
            body = {"pod": pod, "bytes": total, "sha256": h.hexdigest(),
                    "client": f"{client_ip(self.client_address[0])}:{self.client_address[1]}"}
            self._send(200, (json.dumps(body) + "\n").encode())

        def log_message(self, format: str, *args: object) -> None:
            sys.stderr.write(f"{client_ip(self.client_address[0])} {format % args}\n")

    return Handler


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="lab pod HTTP server")
    ap.add_argument("--name", required=True)
    ap.add_argument("--cluster", required=True)
    ap.add_argument("--port", type=int, default=8080)
    a = ap.parse_args(argv)
    handler = make_handler(a.name, a.cluster)
    srv: ThreadingServer
    try:
        srv = DualStackServer(("::", a.port), handler)
    except OSError:  # IPv6 disabled in this namespace: IPv4 only
        srv = ThreadingServer(("0.0.0.0", a.port), handler)
    srv.serve_forever()
    return 0


if __name__ == "__main__":
    sys.exit(main())
