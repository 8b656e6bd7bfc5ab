#!/usr/bin/env python3
"""How ``crosswire-wg --workers`` per-process work scales, without I/O (issue 19).

P forked processes (P = 1, 2, ...) each run, for ``--duration`` seconds, the
sans-IO send path of a ``WorkerDevice`` (bursts of 64 TCP-sized packets to
one peer: batched run, ChaCha20-Poly1305, the shared send counter of ONE
keypair slot, so all processes contend for its lock) and, separately, the
shared replay check of one slot in runs of 40 counters. Prints packets (or
checks) per second in total, the CPUs they kept busy and the work per
CPU-second (equal for 1 and 2 processes = nothing serialises them; the total
then follows the CPU the machine gives). ``--taskset CPUS`` pins all to
those CPUs. No kernel, no TUN, no sockets: it shows what the processes
parallelise and whether the shared slot serialises them, not a tunnel's
throughput (bench/throughput.py).
"""

from __future__ import annotations

import argparse
import os
import resource
import struct
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

from fabric.wg.multicore import WorkerDevice  # noqa: E402
from fabric.wg.shared import SharedCounters, SharedKeypair, use_shared  # noqa: E402


def _packet(i: int) -> bytes:
    payload = bytes(1380)
    hdr = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + 20 + len(payload), i & 0xFFFF, 0, 64, 6, 0,
                      bytes([10, 0, 0, 1]), bytes([10, 0, 0, 2]))
    return hdr + bytes(20) + payload


def _send_loop(shared: SharedCounters, slot: int, seconds: float) -> int:
    dev = WorkerDevice()
    peer = dev.add_peer(b"\x01" * 32)
    dev.allowed_ips.insert(4, 0x0A000002, 32, peer)
    peer.endpoint = ("192.0.2.2", 51820)
    now = time.monotonic()
    peer.current = SharedKeypair(slot, peer, bytes(32), bytes(32), 1, 2, True, now)
    burst = [_packet(i) for i in range(64)]
    n = 0
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        dev.on_packets(burst, now)
        dev.outbox.clear()
        n += len(burst)
    return n


def _check_loop(shared: SharedCounters, slot: int, seconds: float, rank: int, procs: int) -> int:
    n = 0
    base = rank * 40
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        shared.check_many(slot, list(range(base, base + 40)))
        base += 40 * procs
        n += 40
    return n


def run(procs: int, seconds: float, what: str) -> tuple[list[int], float]:
    """Per-process counts and the CPU seconds the processes used."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    shared = SharedCounters(slots=4)
    use_shared(shared)
    slot = shared.allocate(0.0)
    pipes = []
    for rank in range(procs):
        r, w = os.pipe()
        if os.fork() == 0:
            os.close(r)
            n = (_send_loop(shared, slot, seconds) if what == "send"
                 else _check_loop(shared, slot, seconds, rank, procs))
            os.write(w, str(n).encode())
            os._exit(0)
        os.close(w)
        pipes.append(r)
    out = []
    for r in pipes:
        out.append(int(os.read(r, 64) or b"0"))
        os.close(r)
        os.wait()
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime
    return out, cpu


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--duration", type=float, default=3.0)
    ap.add_argument("--procs", default="1,2")
    ap.add_argument("--taskset", default="", metavar="CPUS")
    args = ap.parse_args()
    if args.taskset:
        os.sched_setaffinity(0, {int(c) for c in args.taskset.split(",")})
    print(f"load {os.getloadavg()[0]:.2f}, CPUs {sorted(os.sched_getaffinity(0))}")
    for what in ("send", "check"):
        for p in (int(x) for x in args.procs.split(",")):
            counts, cpu = run(p, args.duration, what)
            total = sum(counts) / args.duration
            print(f"{what:5s} procs={p}: {total:10,.0f}/s total, {cpu / args.duration:4.2f} CPUs "
                  f"busy, {sum(counts) / cpu:10,.0f} per CPU-s  (load {os.getloadavg()[0]:.2f})",
                  flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
