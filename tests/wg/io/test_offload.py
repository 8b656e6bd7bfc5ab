"""TSO splitting and GRO coalescing of the vnet-hdr TUN (pure functions, no root needed).

Checksums are checked against a plain word-by-word one's complement sum, written
independently of the big-integer trick the implementation uses.
"""

from __future__ import annotations

import random
import struct

import pytest

from fabric.wg.offload import (
    GSO_TCPV4,
    GSO_TCPV6,
    VIRTIO_NET_HDR_F_NEEDS_CSUM,
    VNET_HDR,
    VNET_HDR_LEN,
    ZERO_VNET_HDR,
    OffloadError,
    coalesce,
    complete_checksum,
    gso_split,
)


def ones_sum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    s = 0
    for (w,) in struct.iter_unpack("!H", data):
        s += w
        s = (s & 0xFFFF) + (s >> 16)
    return s


def pseudo(pkt: bytes, v6: bool, length: int) -> bytes:
    if v6:
        return pkt[8:40] + struct.pack("!IxxxB", length, 6)
    return pkt[12:20] + struct.pack("!xBH", 6, length)


def tcp_ok(pkt: bytes) -> bool:
    v6 = pkt[0] >> 4 == 6
    iphl = 40 if v6 else (pkt[0] & 15) * 4
    tcp = pkt[iphl:]
    return ones_sum(pseudo(pkt, v6, len(tcp)) + tcp) == 0xFFFF


def ip_ok(pkt: bytes) -> bool:
    return ones_sum(pkt[: (pkt[0] & 15) * 4]) == 0xFFFF


def with_tcp_csum(pkt: bytearray, v6: bool) -> bytes:
    iphl = 40 if v6 else 20
    pkt[iphl + 16:iphl + 18] = b"\0\0"
    c = 0xFFFF - ones_sum(pseudo(bytes(pkt), v6, len(pkt) - iphl) + bytes(pkt[iphl:]))
    pkt[iphl + 16:iphl + 18] = struct.pack("!H", c or 0xFFFF)
    if not v6:
        pkt[10:12] = b"\0\0"
        pkt[10:12] = struct.pack("!H", 0xFFFF - ones_sum(bytes(pkt[:20])))
    return bytes(pkt)


def tcp_packet(payload: bytes, seq: int, v6: bool = False, flags: int = 0x18,
               options: bytes = b"\x01\x01\x08\x0a" + bytes(8), ack: int = 777,
               ip_id: int = 100) -> bytes:
    thl = 20 + len(options)
    tcp = struct.pack("!HHIIBBHHH", 40000, 5201, seq, ack, (thl // 4) << 4, flags, 500, 0, 0)
    tcp += options
    if v6:
        ip = struct.pack("!IHBB", 6 << 28, thl + len(payload), 6, 64)
        ip += bytes.fromhex("fd770000000000000000000000000001fd770000000000000000000000000002")
    else:
        ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + thl + len(payload), ip_id, 0x4000, 64, 6,
                         0, bytes([10, 77, 0, 1]), bytes([10, 77, 0, 2]))
    return with_tcp_csum(bytearray(ip + tcp + payload), v6)


def superpacket(payload: bytes, mss: int, v6: bool, seq: int = 0xFFFFF000,
                flags: int = 0x18) -> bytes:
    """What the kernel hands a TSO-enabled TUN: partial checksum, gso metadata."""
    pkt = bytearray(tcp_packet(payload, seq, v6, flags=flags))
    iphl = 40 if v6 else 20
    thl = 32
    seed = ones_sum(pseudo(bytes(pkt), v6, len(pkt) - iphl))
    pkt[iphl + 16:iphl + 18] = struct.pack("!H", seed)
    hdr = VNET_HDR.pack(VIRTIO_NET_HDR_F_NEEDS_CSUM, GSO_TCPV6 if v6 else GSO_TCPV4,
                        iphl + thl, mss, iphl, 16)
    return hdr + bytes(pkt)


@pytest.mark.parametrize("v6", [False, True])
@pytest.mark.parametrize("size", [1, 1367, 1368, 1369, 20000, 1368 * 16, 1368 * 20 + 1,
                                  65000 - 72])
def test_gso_split_segments_with_valid_checksums(v6: bool, size: int) -> None:
    rnd = random.Random(size)
    payload = rnd.randbytes(size)
    mss = 1368
    segs = gso_split(superpacket(payload, mss, v6))
    assert len(segs) == -(-size // mss)
    iphl = 40 if v6 else 20
    got = b""
    for i, seg in enumerate(segs):
        assert tcp_ok(seg), f"segment {i} has a bad TCP checksum"
        if not v6:
            assert ip_ok(seg)
            assert struct.unpack_from("!H", seg, 2)[0] == len(seg)
            assert struct.unpack_from("!H", seg, 4)[0] == 100 + i
        else:
            assert struct.unpack_from("!H", seg, 4)[0] == len(seg) - 40
        seq = struct.unpack_from("!I", seg, iphl + 4)[0]
        assert seq == (0xFFFFF000 + i * mss) & 0xFFFFFFFF  # wraps around 2**32
        flags = seg[iphl + 13]
        assert bool(flags & 0x08) == (i == len(segs) - 1), "PSH only on the last segment"
        got += seg[iphl + 32:]
    assert got == payload


def test_plain_and_partial_checksum_reads() -> None:
    pkt = tcp_packet(b"hello", 1)
    assert gso_split(ZERO_VNET_HDR + pkt) == [pkt]
    broken = bytearray(pkt)
    seed = ones_sum(pseudo(pkt, False, len(pkt) - 20))
    broken[36:38] = struct.pack("!H", seed)
    hdr = VNET_HDR.pack(VIRTIO_NET_HDR_F_NEEDS_CSUM, 0, 0, 0, 20, 16)
    (fixed,) = gso_split(hdr + bytes(broken))
    assert fixed == pkt and tcp_ok(fixed)


def test_bad_offload_metadata_is_an_error() -> None:
    pkt = tcp_packet(b"x" * 100, 1)
    with pytest.raises(OffloadError):
        gso_split(VNET_HDR.pack(1, 3, 0, 1000, 20, 6) + pkt)  # UFO: not negotiated
    with pytest.raises(OffloadError):
        gso_split(VNET_HDR.pack(1, GSO_TCPV6, 0, 1000, 40, 16) + pkt)  # says v6, is v4
    with pytest.raises(OffloadError):
        complete_checksum(pkt, 20, 2000)


def _merge(vec: list[bytes | memoryview]) -> tuple[tuple[int, ...], bytes]:
    return VNET_HDR.unpack(bytes(vec[0])), b"".join(bytes(x) for x in vec[1:])


@pytest.mark.parametrize("v6", [False, True])
def test_coalesce_merges_an_in_order_run(v6: bool) -> None:
    mss = 1000
    pkts = [tcp_packet(bytes([i]) * mss, 5000 + i * mss, v6, flags=0x10) for i in range(10)]
    pkts.append(tcp_packet(b"z" * 10, 5000 + 10 * mss, v6, flags=0x18))  # short, PSH: ends it
    vecs = coalesce(pkts)
    assert len(vecs) == 1
    hdr, merged = _merge(vecs[0])
    flags, gso_type, hdr_len, gso_size, csum_start, csum_offset = hdr
    iphl = 40 if v6 else 20
    assert flags == VIRTIO_NET_HDR_F_NEEDS_CSUM and gso_type == (GSO_TCPV6 if v6 else GSO_TCPV4)
    assert (hdr_len, gso_size, csum_start, csum_offset) == (iphl + 32, mss, iphl, 16)
    assert merged[iphl + 32:] == b"".join(p[iphl + 32:] for p in pkts)
    assert merged[iphl + 13] == 0x18  # the last segment's PSH
    if v6:
        assert struct.unpack_from("!H", merged, 4)[0] == len(merged) - 40
    else:
        assert struct.unpack_from("!H", merged, 2)[0] == len(merged) and ip_ok(merged)
    # The field holds the pseudo-header seed: completing it gives a valid checksum.
    assert tcp_ok(complete_checksum(merged, iphl, 16))


def test_coalesce_keeps_what_must_not_merge_apart() -> None:
    mss = 500
    a = [tcp_packet(b"a" * mss, 1 + i * mss, flags=0x10) for i in range(3)]
    gap = tcp_packet(b"g" * mss, 1 + 5 * mss, flags=0x10)  # sequence gap
    other_ack = tcp_packet(b"o" * mss, 1 + 6 * mss, flags=0x10, ack=999)
    syn = tcp_packet(b"", 1, flags=0x02)
    bad = bytearray(tcp_packet(b"b" * mss, 1 + 7 * mss, flags=0x10, ack=999))
    bad[-1] ^= 0xFF  # corrupt: must reach the kernel alone, which drops it
    udp = bytes.fromhex("4500001c0000400040110000") + bytes([10, 77, 0, 1, 10, 77, 0, 2]) + bytes(8)
    pkts = [*a, gap, other_ack, bytes(bad), syn, udp]
    vecs = coalesce(pkts, verify=True)
    assert [len(v) for v in vecs] == [5, 2, 2, 2, 2, 2]  # hdr + merged header + 3 payloads
    assert all(v[0] == ZERO_VNET_HDR for v in vecs[1:])
    assert [bytes(v[1]) for v in vecs[1:]] == [gap, other_ack, bytes(bad), syn, udp]
    # Unverified (the default): the AEAD-authenticated bad segment joins its run.
    assert [len(v) for v in coalesce(pkts)] == [5, 2, 4, 2, 2]


@pytest.mark.parametrize("v6", [False, True])
def test_coalesce_joins_only_segments_whose_header_may_differ_there(v6: bool) -> None:
    """Flip each bit of the second segment's header: it joins the first one's run only
    where segments of one run differ (IP length/id/header checksum, sequence number
    (then the run breaks on it), PSH, TCP checksum) and stays apart for any other bit."""
    mss = 500
    iphl = 40 if v6 else 20
    hl = iphl + 32
    first = tcp_packet(b"a" * mss, 1000, v6, flags=0x10)
    second = tcp_packet(b"b" * mss, 1000 + mss, v6, flags=0x10)
    may_differ = set(range(iphl + 16, iphl + 18)) | ({4, 5} if v6 else {2, 3, 4, 5, 10, 11})
    for byte in range(hl):
        for bit in range(8):
            cand = bytearray(second)
            cand[byte] ^= 1 << bit
            if not v6 and byte in (2, 3):
                continue  # the total length: the packet's length stands for it
            joined = len(coalesce([first, bytes(cand)])) == 1
            psh = byte == iphl + 13 and 1 << bit == 0x08
            assert joined == (byte in may_differ or psh), (byte, bit)


@pytest.mark.parametrize("v6", [False, True])
def test_coalesce_across_a_sequence_wrap(v6: bool) -> None:
    """The expected header steps by one segment per match; where the sequence number
    wraps past 2**32 the run ends (the step carries into the ports) and a new one
    starts: two writes, every byte in order, both checksums completable."""
    mss = 1000
    seq0 = (1 << 32) - 3 * mss
    pkts = [tcp_packet(bytes([i]) * mss, (seq0 + i * mss) & 0xFFFFFFFF, v6, flags=0x10)
            for i in range(6)]
    vecs = coalesce(pkts)
    assert [len(v) for v in vecs] == [2 + 3, 2 + 3]
    iphl = 40 if v6 else 20
    out = b""
    for vec in vecs:
        _hdr, merged = _merge(vec)
        assert tcp_ok(complete_checksum(merged, iphl, 16))
        out += merged[iphl + 32:]
    assert out == b"".join(p[iphl + 32:] for p in pkts)


def test_coalesce_random_streams_preserve_bytes() -> None:
    rnd = random.Random(7)
    for _ in range(30):
        mss = rnd.choice([500, 1368])
        n = rnd.randrange(1, 40)
        seq = rnd.getrandbits(32)
        pkts = []
        for i in range(n):
            size = mss if rnd.random() < 0.9 else rnd.randrange(1, mss)
            pkts.append(tcp_packet(rnd.randbytes(size), seq, v6=rnd.random() < 0.5,
                                   flags=0x10 if rnd.random() < 0.8 else 0x18))
            seq = (seq + size) & 0xFFFFFFFF
            del i
        payload_in = b"".join(p[(40 if p[0] >> 4 == 6 else 20) + 32:] for p in pkts)
        out = b""
        for vec in coalesce(pkts):
            hdr, merged = _merge(vec)
            iphl = 40 if merged[0] >> 4 == 6 else 20
            if hdr[1]:
                assert tcp_ok(complete_checksum(merged, iphl, 16))
            else:
                assert tcp_ok(merged)
            out += merged[iphl + 32:]
        assert out == payload_in


@pytest.mark.parametrize("v6", [False, True])
def test_gso_split_without_numpy_is_the_same(v6: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    """numpy is optional (the container image has none): the pure-Python chunk sums
    must split a super-packet into exactly the same segments."""
    from fabric.wg import offload

    # Short (numpy for the chunk sums), long (all full segments in one array, with and
    # without a short last one), and flags that belong to the first (CWR) or last
    # (FIN, PSH) segment only.
    cases = [(size, flags) for size in (20000, 1368 * 16, 1368 * 30 + 7, 65000 - 72)
             for flags in (0x18, 0x99)]
    rnd = random.Random(7)
    sps = [superpacket(rnd.randbytes(size), 1368, v6, flags=flags) for size, flags in cases]
    with_np = [gso_split(sp) for sp in sps]
    assert with_np[-1][0][(40 if v6 else 20) + 13] == 0x90  # CWR|ACK, first segment
    assert with_np[-1][-1][(40 if v6 else 20) + 13] == 0x19  # FIN|PSH|ACK, last segment
    monkeypatch.setattr(offload, "_np", None)
    assert [gso_split(sp) for sp in sps] == with_np


@pytest.mark.parametrize("v6", [False, True])
def test_gso_split_vectorised_equals_python_for_random_super_packets(
        v6: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    """The vectorised split (lengths and common flags in the row template, flags of the
    first/last row patched, the sequence number written as one 32-bit column, the
    checksums from sums * 256) against the per-segment Python split: segment sizes
    that are 4k and 4k + 2 bytes, more rows than the id ramps cover, sequence numbers
    and IPv4 ids about to wrap (last row at 0xFFFF, or wrapped), every flag mix, with
    and without a short last segment."""
    from fabric.wg import offload

    rnd = random.Random(20)
    sps = []
    for _ in range(48):
        mss = rnd.choice([1368, 1366, 1000, 1222, 536, 1440, 200])  # 200: > 64 rows
        full = rnd.randrange(16, min(48 if mss > 200 else 300, 64000 // mss))
        size = full * mss + rnd.choice([0, 0, 2, 17, mss - 2])
        seq = rnd.choice([rnd.getrandbits(32), 0xFFFFFFFF - rnd.randrange(0, 40000)])
        sp = bytearray(superpacket(rnd.randbytes(size), mss, v6, seq=seq,
                                   flags=rnd.choice([0x10, 0x18, 0x19, 0x90, 0x99, 0x11])))
        if not v6:
            ident = rnd.choice([0xFFF0, 0x10000 - full, 0x10000 - full + 1, rnd.getrandbits(16)])
            sp[VNET_HDR_LEN + 4:VNET_HDR_LEN + 6] = ident.to_bytes(2, "big")  # the IPv4 id
        sps.append(bytes(sp))
    with_np = [gso_split(sp) for sp in sps]
    assert all(tcp_ok(seg) and (v6 or ip_ok(seg)) for segs in with_np for seg in segs)
    monkeypatch.setattr(offload, "_np", None)
    assert [gso_split(sp) for sp in sps] == with_np
