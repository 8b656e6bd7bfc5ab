"""Receive steering for ``--workers N``: a classic BPF program on a SO_REUSEPORT group.

The kernel runs the program attached with SO_ATTACH_REUSEPORT_CBPF on every
datagram for the group's port and delivers it to the socket whose index in the
group (bind order) the program returns. For UDP the kernel pulls the UDP header
before running it (net/core/sock_reuseport.c, ``run_bpf_filter`` with
``hdr_len = sizeof(struct udphdr)``), so absolute loads address the WireGuard
message: byte 0 is the message type, bytes 8..15 the little-endian transport
counter. tests/wg/io/test_workers.py checks that against the kernel.

The program: transport data (type 4) goes to socket ``counter mod N``; anything
else (handshake initiation/response, cookie reply, junk) to socket 0, the
handshake owner. A load past the end of a short datagram ends the program with
0, which is socket 0 as well. ``counter mod N`` is computed with 32-bit ALU
operations by Horner's rule over the counter's bytes, highest first
(``r = (r * 256 + byte) mod N``), so any N up to 2**23 works, not only powers
of two.
"""

from __future__ import annotations

import ctypes
import socket
import struct

SO_ATTACH_REUSEPORT_CBPF = 51

# struct sock_filter opcodes (linux/filter.h, linux/bpf_common.h)
_LDB_ABS = 0x30  # BPF_LD | BPF_B | BPF_ABS: A = byte at k
_JEQ_K = 0x15  # BPF_JMP | BPF_JEQ | BPF_K
_MUL_K = 0x24  # BPF_ALU | BPF_MUL | BPF_K
_ADD_X = 0x0C  # BPF_ALU | BPF_ADD | BPF_X
_MOD_K = 0x94  # BPF_ALU | BPF_MOD | BPF_K
_RSH_K = 0x74  # BPF_ALU | BPF_RSH | BPF_K
_TAX = 0x07  # BPF_MISC | BPF_TAX: X = A
_RET_K = 0x06
_RET_A = 0x16

COUNTER_OFFSET = 8  # in the UDP payload: type(4) receiver(4) counter(8)
MAX_WORKERS = 1 << 23  # r * 256 + 255 must fit in 32 bits (r < n << block_log2)


def program(n: int, block_log2: int = 0) -> list[tuple[int, int, int, int]]:
    """The steering program for a group of ``n`` sockets, as (code, jt, jf, k):
    socket ``(counter >> block_log2) mod n`` for transport data. Blocks of
    consecutive counters keep runs of a flow's packets on one worker (fewer
    reorderings seen by TCP, longer coalesced TUN writes); computed as
    ``(counter mod (n << block_log2)) >> block_log2``."""
    m = n << block_log2
    if not 1 <= m <= MAX_WORKERS:
        raise ValueError(f"workers << block must be 1..{MAX_WORKERS}, not {m}")
    prog = [
        (_LDB_ABS, 0, 0, 0),  # A = message type (low byte of the LE u32)
        (_JEQ_K, 1, 0, 4),  # transport data? skip the next instruction
        (_RET_K, 0, 0, 0),  # handshake, cookie, anything else: socket 0
        (_LDB_ABS, 0, 0, COUNTER_OFFSET + 7),  # highest counter byte
        (_MOD_K, 0, 0, m),
    ]
    for i in range(6, -1, -1):
        prog += [
            (_MUL_K, 0, 0, 256),
            (_TAX, 0, 0, 0),
            (_LDB_ABS, 0, 0, COUNTER_OFFSET + i),
            (_ADD_X, 0, 0, 0),
            (_MOD_K, 0, 0, m),
        ]
    if block_log2:
        prog.append((_RSH_K, 0, 0, block_log2))
    prog.append((_RET_A, 0, 0, 0))
    return prog


def run(prog: list[tuple[int, int, int, int]], payload: bytes) -> int:
    """Interpret ``prog`` on a UDP payload as the kernel would (for the unit test;
    the namespace test checks the kernel agrees)."""
    a = x = 0
    pc = 0
    while True:
        code, jt, jf, k = prog[pc]
        pc += 1
        if code == _LDB_ABS:
            if k >= len(payload):
                return 0
            a = payload[k]
        elif code == _JEQ_K:
            pc += jt if a == k else jf
        elif code == _MUL_K:
            a = (a * k) & 0xFFFFFFFF
        elif code == _TAX:
            x = a
        elif code == _ADD_X:
            a = (a + x) & 0xFFFFFFFF
        elif code == _MOD_K:
            a %= k
        elif code == _RSH_K:
            a >>= k
        elif code == _RET_K:
            return k
        elif code == _RET_A:
            return a
        else:
            raise ValueError(f"opcode {code:#x}")


def attach(sock: socket.socket, n: int, block_log2: int = 0) -> None:
    """Attach the program for ``n`` sockets to ``sock``'s reuseport group (one socket
    of the group is enough; the group's index order is the order of binding)."""
    prog = program(n, block_log2)
    buf = ctypes.create_string_buffer(b"".join(struct.pack("HBBI", *ins) for ins in prog))
    fprog = struct.pack("HP", len(prog), ctypes.addressof(buf))  # struct sock_fprog
    sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_REUSEPORT_CBPF, fprog)
