"""``lab page``'s forwarder: the host's 127.0.0.1:PORT to a port on a namespace's
own loopback (where a lab gateway's API listens), both directions, many requests."""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
import sys
import threading
import time

import httpx
from labkit.pageforward import serve
from nsutil import Namespaces, sh

SERVER = """
import http.server, sys
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = (self.path * 2000).encode()
        self.send_response(200); self.send_header("Content-Length", str(len(body))); self.end_headers()
        self.wfile.write(body)
    def log_message(self, *a): pass
http.server.ThreadingHTTPServer(("127.0.0.1", 18081), H).serve_forever()
"""


def test_forwards_the_host_loopback_into_the_namespace(netns: Namespaces) -> None:
    ns = netns.add("pg")
    server = subprocess.Popen(["ip", "netns", "exec", ns, sys.executable, "-c", SERVER], start_new_session=True)
    loop = asyncio.new_event_loop()
    port: list[int] = []
    task: list[asyncio.Task[None]] = []

    def run() -> None:
        task.append(loop.create_task(serve(ns, 18081, 0, port.append)))
        with contextlib.suppress(asyncio.CancelledError):
            loop.run_until_complete(task[0])

    t = threading.Thread(target=run, daemon=True)
    t.start()
    try:
        deadline = time.monotonic() + 20
        while not port or sh("curl", "-fs", "-o", "/dev/null", "http://127.0.0.1:18081/", ns=ns,
                             check=False).returncode:
            assert time.monotonic() < deadline and server.poll() is None, "server or forwarder did not start"
            time.sleep(0.1)
        # the server listens only inside ns: what answers here came through the forwarder
        with httpx.Client(base_url=f"http://127.0.0.1:{port[0]}", timeout=10) as c:
            for i in range(20):
                r = c.get(f"/p{i}")
                assert r.status_code == 200 and r.text == f"/p{i}" * 2000
    finally:
        loop.call_soon_threadsafe(task[0].cancel)
        t.join(timeout=10)
        loop.close()
        server.kill()
        server.wait(timeout=10)
