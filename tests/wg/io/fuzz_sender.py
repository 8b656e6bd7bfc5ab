"""Throw random and mutated WireGuard-shaped datagrams at HOST:PORT for SECONDS (run in a namespace).

    fuzz_sender.py HOST PORT SECONDS SEED [CAPTURE_IFACE]  -> prints "<sent> <replayed>"

Templates come from scapy's WireGuard layers (initiation, response, cookie
reply, transport) with random field values; each datagram is a template as
is, or mutated (bit flips, truncation, extension, a different type byte,
non-zero reserved bytes), or plain random bytes of random length. With
CAPTURE_IFACE, it first records for a second the real WireGuard datagrams this
namespace sends to HOST:PORT (an AF_PACKET socket on that interface) and mixes
verbatim replays of them in: authentic but replayed, they must be refused by the
replay window. Paced so the target's real peer keeps getting its share of CPU.
"""

from __future__ import annotations

import random
import socket
import sys
import time

from scapy.contrib.wireguard import (
    Wireguard,
    WireguardCookieReply,
    WireguardInitiation,
    WireguardResponse,
    WireguardTransport,
)
from scapy.packet import Packet


def template(rng: random.Random) -> bytes:
    def rb(n: int) -> bytes:
        return rng.randbytes(n)

    kind = rng.randrange(4)
    layer: Packet
    if kind == 0:
        layer = WireguardInitiation(sender_index=rng.getrandbits(32), unencrypted_ephemeral=rb(32),
                                    encrypted_static=rb(48), encrypted_timestamp=rb(28),
                                    mac1=rb(16), mac2=rb(16) if rng.random() < 0.5 else bytes(16))
    elif kind == 1:
        layer = WireguardResponse(sender_index=rng.getrandbits(32), receiver_index=rng.getrandbits(32),
                                  unencrypted_ephemeral=rb(32), encrypted_nothing=rb(16),
                                  mac1=rb(16), mac2=bytes(16))
    elif kind == 2:
        layer = WireguardCookieReply(receiver_index=rng.getrandbits(32), nonce=rb(24),
                                     encrypted_cookie=rb(32))
    else:
        layer = WireguardTransport(receiver_index=rng.getrandbits(32), counter=rng.getrandbits(64),
                                   encrypted_encapsulated_packet=rb(16 * rng.randrange(1, 90)))
    return bytes(Wireguard() / layer)


def mutate(data: bytes, rng: random.Random) -> bytes:
    b = bytearray(data)
    op = rng.randrange(5)
    if op == 0:
        for _ in range(rng.randrange(1, 8)):
            i = rng.randrange(len(b))
            b[i] ^= 1 << rng.randrange(8)
    elif op == 1:
        del b[rng.randrange(len(b)):]
    elif op == 2:
        b += rng.randbytes(rng.randrange(1, 64))
    elif op == 3:
        b[0] = rng.choice([0, 5, 6, 255, rng.randrange(256)])
    else:
        b[rng.randrange(1, 4)] = rng.randrange(1, 256)
    return bytes(b)


def capture(iface: str, host: str, port: int, seconds: float) -> list[bytes]:
    """UDP payloads of IPv4 datagrams to host:port leaving through iface."""
    eth_p_all, eth_p_ip = 0x0003, 0x0800  # only ETH_P_ALL taps see outgoing packets
    dst = socket.inet_aton(host)
    got: list[bytes] = []
    with socket.socket(socket.AF_PACKET, socket.SOCK_DGRAM, socket.htons(eth_p_all)) as s:
        s.bind((iface, eth_p_all))
        s.settimeout(0.1)
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            try:
                pkt, addr = s.recvfrom(65535)
            except TimeoutError:
                continue
            if addr[1] != eth_p_ip or not pkt:
                continue
            ihl = (pkt[0] & 15) * 4
            if len(pkt) > ihl + 8 and pkt[9] == 17 and pkt[16:20] == dst \
                    and int.from_bytes(pkt[ihl + 2:ihl + 4], "big") == port:
                got.append(pkt[ihl + 8:])
    return got


def main() -> None:
    host, port, seconds, seed = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), int(sys.argv[4])
    rng = random.Random(seed)
    real = capture(sys.argv[5], host, port, 1.0) if len(sys.argv) > 5 else []
    templates = [template(rng) for _ in range(256)]
    fam = socket.AF_INET6 if ":" in host else socket.AF_INET
    sent = replayed = 0
    end = time.monotonic() + seconds
    with socket.socket(fam, socket.SOCK_DGRAM) as s:
        while time.monotonic() < end:
            r = rng.random()
            if real and r < 0.1:
                data = rng.choice(real)
                replayed += 1
            elif r < 0.2:
                data = rng.randbytes(rng.randrange(0, 300))
            elif r < 0.5:
                data = rng.choice(templates)
            else:
                data = mutate(rng.choice(templates), rng)
            try:
                s.sendto(data, (host, port))
                sent += 1
            except OSError:
                pass
            if sent % 50 == 0:
                time.sleep(0.005)
    print(sent, replayed, flush=True)


if __name__ == "__main__":
    main()
