"""Runs fabric.wg.daemon.Daemon around a scripted fake Device (run inside a namespace).

    fake_device_daemon.py IFACE STATS_PATH UAPI_DIR

The fake echoes every UDP datagram back to its sender, writes datagrams that
start with "tun:" to the TUN, and raises on a datagram that starts with
"boom" - so a test can check the loop survives a core bug and counts it,
without depending on the real WireGuard core. The daemon answers UAPI with
``fabric.wg.uapi.handle`` on a real Device; here the fake's scripted ``uapi``
replaces it (a "boom" request raises).
"""

from __future__ import annotations

import collections
import sys

from fabric.wg.daemon import Daemon
from fabric.wg.messages import Endpoint
from fabric.wg.tun import Tun
from fabric.wg.uapi import UapiReply


class FakeDevice:
    def __init__(self) -> None:
        self.listen_port = 0
        self.fwmark = 0
        self.config_generation = 0
        self.mtu = 1420
        self.bound_port = 0
        self.outbox: collections.deque[tuple[bytes, Endpoint]] = collections.deque()
        self.inbox: collections.deque[bytes] = collections.deque()
        self.counters: dict[str, int] = {"rx_datagrams": 0}

    def uapi(self, request: str, now: float) -> UapiReply:
        if "boom" in request:
            raise RuntimeError("scripted uapi bug")
        if request.startswith("get=1"):
            return UapiReply(body=f"listen_port={self.bound_port}\n")
        for line in request.splitlines()[1:]:
            if line.startswith("listen_port="):
                self.listen_port = int(line.split("=", 1)[1])
                self.config_generation += 1
        return UapiReply()

    def set_bound_port(self, port: int) -> None:
        self.bound_port = port

    def forget_source(self, ep: Endpoint) -> None:
        pass

    def on_datagram(self, data: bytes, src: Endpoint, now: float) -> None:
        self.counters["rx_datagrams"] += 1
        if data.startswith(b"boom"):
            raise RuntimeError("scripted core bug")
        if data.startswith(b"tun:"):
            self.inbox.append(data[4:])
        self.outbox.append((data, src))

    def on_packet(self, packet: bytes, now: float) -> None:
        pass

    def on_timer(self, now: float) -> None:
        pass

    def next_deadline(self) -> float | None:
        return None


def _scripted_uapi(device: FakeDevice, request: str, now: float) -> UapiReply:
    return device.uapi(request, now)


def main() -> None:
    iface, stats, uapi_dir = sys.argv[1:4]
    daemon = Daemon(FakeDevice(), Tun(iface), uapi_dir=uapi_dir, stats_path=stats,
                    uapi=_scripted_uapi)  # type: ignore[arg-type]
    daemon.install_signal_handlers()
    print(daemon.bound_port, flush=True)
    try:
        daemon.run()
    finally:
        daemon.close()


if __name__ == "__main__":
    main()
