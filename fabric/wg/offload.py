"""virtio-net offloads of the TUN (IFF_VNET_HDR): pure functions on bytes.

With IFF_VNET_HDR every TUN read and write starts with a 10-byte struct
virtio_net_hdr. This module holds everything that header implies, no I/O:

- ``coalesce`` (writes, on by default): consecutive in-order segments of one TCP
  flow become one super-packet written with one writev, as the kernel's GRO would
  build it, so the receiving stack takes a whole run in one syscall and one
  traversal instead of one per segment.
- ``gso_split`` (reads, with ``tso=True``): TUNSETOFFLOAD(CSUM|TSO4|TSO6) lets
  the kernel hand over 64 KB TCP super-packets with partial checksums; this cuts
  them into segments with complete checksums. Per segment in a Python loop that
  costs more than the read syscalls it saves; vectorised with numpy (long
  super-packets) it costs less. Still off by default: TSO implies the checksum
  offload, so every other packet (UDP) needs ``complete_checksum`` here.
- ``complete_checksum`` finishes a CHECKSUM_PARTIAL packet.

Checksums use the identity: the one's complement sum of big-endian 16-bit words
equals the value of the whole buffer, read as one big integer, modulo 0xFFFF
(2**16 = 1 mod 0xFFFF) - a single C-speed int.from_bytes instead of a Python loop
over words.
"""

from __future__ import annotations

import functools
import struct
from types import EllipsisType, ModuleType
from typing import Any

# numpy makes the TSO split affordable (see _chunk_sums). It is imported after start-up
# (preload_numpy) or on first use, never at start: at ~120 ms it was most of crosswire-wg's
# start, which is on the path of the packets when a data plane restarts. TSO reads are
# turned on only once it is loaded (Daemon._adapt_tso), so no packet waits for the import.
_np: ModuleType | EllipsisType | None = ...  # ...: not tried yet


def _numpy() -> ModuleType | None:
    global _np
    if _np is ...:
        try:
            import numpy
            _np = numpy
        except ImportError:  # pragma: no cover - depends on the installation
            _np = None
    return _np


def numpy_loaded() -> bool:
    """numpy is imported (TSO reads are then affordable, see fabric.wg.tsopolicy)."""
    return _np is not ... and _np is not None


def preload_numpy() -> None:
    """Import numpy off the packets' path: in a thread after the device is up (the loop
    keeps running between the import's bytecodes), or in a waiting standby."""
    import threading

    if _np is ...:
        threading.Thread(target=_numpy, name="preload-numpy", daemon=True).start()

VNET_HDR = struct.Struct("<BBHHHH")
VNET_HDR_LEN = VNET_HDR.size
VIRTIO_NET_HDR_F_NEEDS_CSUM = 1
GSO_NONE = 0
GSO_TCPV4 = 1
GSO_TCPV6 = 4
GSO_ECN = 0x80
ZERO_VNET_HDR = bytes(VNET_HDR_LEN)
TCP_FIN, TCP_PSH, TCP_ACK, TCP_CWR = 0x01, 0x08, 0x10, 0x80
MAX_COALESCED = 65535


class OffloadError(ValueError):
    """A packet from the kernel whose offload metadata does not describe it."""


def _sum(data: bytes | bytearray | memoryview) -> int:
    """One's complement sum of ``data`` (zero-padded to even length), mod 0xFFFF."""
    v = int.from_bytes(data, "big")
    if len(data) & 1:
        v <<= 8
    return v % 0xFFFF


def _csum(total: int) -> int:
    """The checksum field for a sum that includes a zeroed field (never 0: UDP's 'none')."""
    return 0xFFFF - total % 0xFFFF


def _pseudo_sum(pkt: bytes | bytearray, v6: bool, proto: int, length: int) -> int:
    addrs = pkt[8:40] if v6 else pkt[12:20]
    return int.from_bytes(addrs, "big") + proto + length


def complete_checksum(pkt: bytes, csum_start: int, csum_offset: int) -> bytes:
    """Finish a CHECKSUM_PARTIAL packet: the field holds the pseudo-header seed."""
    at = csum_start + csum_offset
    if at + 2 > len(pkt) or csum_start >= len(pkt):
        raise OffloadError("checksum offsets beyond the packet")
    out = bytearray(pkt)
    out[at:at + 2] = _csum(_sum(memoryview(out)[csum_start:])).to_bytes(2, "big")
    return bytes(out)


def gso_split(buf: bytes) -> list[bytes]:
    """A read from a vnet-hdr TUN -> plain IP packets with complete checksums."""
    flags, gso_type, _hdr_len, gso_size, csum_start, csum_offset = VNET_HDR.unpack_from(buf)
    pkt = buf[VNET_HDR_LEN:]
    gso_type &= ~GSO_ECN
    if gso_type == GSO_NONE:
        if flags & VIRTIO_NET_HDR_F_NEEDS_CSUM:
            return [complete_checksum(pkt, csum_start, csum_offset)]
        return [pkt]
    if gso_type not in (GSO_TCPV4, GSO_TCPV6) or gso_size == 0 or len(pkt) < 40:
        raise OffloadError(f"unsupported gso_type {gso_type}")
    v6 = gso_type == GSO_TCPV6
    if v6:
        if pkt[0] >> 4 != 6 or pkt[6] != 6:
            raise OffloadError("TCPv6 super-packet without a plain TCP header")
        iphl = 40
    else:
        if pkt[0] >> 4 != 4:
            raise OffloadError("TCPv4 super-packet is not IPv4")
        iphl = (pkt[0] & 15) * 4
    if len(pkt) < iphl + 20:
        raise OffloadError("truncated TCP super-packet")
    thl = (pkt[iphl + 12] >> 4) * 4
    hl = iphl + thl
    if thl < 20 or len(pkt) < hl:
        raise OffloadError("bad TCP header length")
    view = memoryview(pkt)
    payload = view[hl:]
    plen = len(payload)
    seq = int.from_bytes(pkt[iphl + 4:iphl + 8], "big")
    tcp_flags = pkt[iphl + 13]
    ip_id = int.from_bytes(pkt[4:6], "big")
    # Every segment's checksums are the template's sums plus the few fields that
    # differ (lengths, IP id, seq, flags): one's complement sums add, so the headers
    # are summed once per super-packet, not once per segment.
    template = bytearray(pkt[:hl])
    template[iphl + 4:iphl + 8] = b"\0\0\0\0"  # seq
    template[iphl + 13] = 0  # flags
    template[iphl + 16:iphl + 18] = b"\0\0"  # TCP checksum
    tcp_base = (_pseudo_sum(pkt, v6, 6, 0) + 0 + _sum(memoryview(template)[iphl:])) % 0xFFFF
    if v6:
        ip_base = 0
    else:
        template[2:6] = b"\0\0\0\0"  # total length, id
        template[10:12] = b"\0\0"  # header checksum
        ip_base = _sum(memoryview(template)[:iphl])
    np = _numpy() if plen >= 16 * gso_size and not (gso_size | hl) & 1 else None
    if np is not None:
        return _split_full_np(np, pkt, template, hl, iphl, gso_size, seq, tcp_flags, ip_id,
                              tcp_base, ip_base, csum_start, csum_offset)
    chunk_sums = _chunk_sums(payload, gso_size)
    pack_into = _U16.pack_into
    out = []
    join = b"".join
    last_off = plen - gso_size  # segments after this one are the last
    for i, off in enumerate(range(0, plen, gso_size)):
        chunk = payload[off:off + gso_size]
        n = len(chunk)
        h = bytearray(template)
        if v6:
            pack_into(h, 4, thl + n)
        else:
            ident = (ip_id + i) & 0xFFFF
            pack_into(h, 2, hl + n)
            pack_into(h, 4, ident)
            pack_into(h, 10, _csum(ip_base + hl + n + ident))
        s = (seq + off) & 0xFFFFFFFF
        _U32.pack_into(h, iphl + 4, s)
        f = tcp_flags
        if off < last_off:
            f &= ~(TCP_FIN | TCP_PSH)
        if i:
            f &= ~TCP_CWR
        h[iphl + 13] = f
        total = tcp_base + thl + n + (s >> 16) + (s & 0xFFFF) + f + chunk_sums[i]
        pack_into(h, iphl + 16, _csum(total))
        out.append(join((h, chunk)))
    if not out:  # a super-packet without payload: just finish its checksum
        return [complete_checksum(pkt, csum_start, csum_offset)]
    return out


_U16 = struct.Struct("!H")
_U32 = struct.Struct("!I")


def _split_full_np(np: ModuleType, pkt: bytes, template: bytearray, hl: int, iphl: int,
                   size: int, seq: int, tcp_flags: int, ip_id: int, tcp_base: int,
                   ip_base: int, csum_start: int, csum_offset: int) -> list[bytes]:
    """gso_split's segments built all at once (numpy, even ``size`` and ``hl``): the
    full segments as rows of one array (template header, then the payload chunk),
    the fields that differ per row written as columns, checksums computed as
    vectors; the segments are slices of its bytes. A short last segment goes
    through gso_split's per-segment arithmetic here too, on its own."""
    v6 = iphl == 40
    thl = hl - iphl
    plen = len(pkt) - hl
    full = plen // size
    stride = hl + size
    # numpy costs ~0.5-1 us a call on these 44-row vectors, most of the split's cost:
    # what is equal in all full rows goes into the template (lengths, the common
    # flags), the rest in as few whole-column operations as the sums allow.
    last = plen == full * size  # the last full row is the super-packet's last segment
    common = tcp_flags & ~(TCP_FIN | TCP_PSH | TCP_CWR)
    hdr = bytearray(template)
    hdr[iphl + 13] = common
    if v6:
        hdr[4:6] = (thl + size).to_bytes(2, "big")
    else:
        hdr[2:4] = (hl + size).to_bytes(2, "big")
    rows = np.empty((full, stride), dtype=np.uint8)
    rows[:, :hl] = np.frombuffer(hdr, dtype=np.uint8)
    rows[:, hl:] = np.frombuffer(pkt, dtype=np.uint8, count=full * size,
                                 offset=hl).reshape(full, size)
    # The payload sums over native little-endian words, 4 bytes at a time where the
    # size allows (a u32 is w0 + w1 * 2**16 = w0 + w1 mod 0xFFFF): no byte swap and
    # half the elements. A one's complement sum of byte-swapped words is the
    # byte-swapped sum, and swapping a 16-bit value is multiplying by 256 mod 0xFFFF.
    wide = not size & 3
    le = np.frombuffer(pkt, dtype="<u4" if wide else "<u2", offset=hl,
                       count=full * size // (4 if wide else 2))
    sums = le.reshape(full, -1).sum(axis=1, dtype=np.int64)
    # The sequence number as one 32-bit field: hi + lo = s mod 0xFFFF.
    s = (_offsets(np, full, size) + seq) & 0xFFFFFFFF
    total = sums * 256 + s
    total += tcp_base + thl + size + common
    # Only the first and the last segment differ in flags (CWR first, FIN/PSH last).
    first_f = tcp_flags & ~(TCP_FIN | TCP_PSH)
    last_f = (tcp_flags & ~TCP_CWR if full > 1 else tcp_flags) if last else common
    if full == 1:
        first_f = last_f if last else first_f
    total[0] += first_f - common
    rows[0, iphl + 13] = first_f
    if full > 1:
        total[-1] += last_f - common
        rows[-1, iphl + 13] = last_f
    np.ndarray((full,), dtype=">u4", buffer=rows, offset=iphl + 4, strides=(stride,))[:] = s
    words = rows.view(">u2")  # every field below starts at an even offset
    w = iphl // 2
    words[:, w + 8] = 0xFFFF - total % 0xFFFF
    if not v6:
        if full <= _RAMP_ROWS and ip_id + full <= 0x10000:
            # ids ip_id, ip_id + 1, ... and their header checksums are runs of
            # consecutive values: slices of two cached ramps, no arithmetic per call.
            up, down = _ramps(np)
            words[:, 2] = up[ip_id:ip_id + full]
            start = (ip_base + hl + size + ip_id) % 0xFFFF
            words[:, 5] = down[start:start + full]
        else:  # the id wraps within this super-packet
            ident = (_offsets(np, full, 1) + ip_id) & 0xFFFF
            words[:, 2] = ident
            ident += ip_base + hl + size
            words[:, 5] = 0xFFFF - ident % 0xFFFF
    # The rows as bytes objects in one C call (no copy of the whole array first, no
    # slice per row in the interpreter: ~1.3 us against ~3.9 for a super-packet).
    out: list[bytes] = list(_rows_struct(full, stride).unpack_from(rows))
    if not last:
        off = full * size
        n = plen - off
        i = full
        h = bytearray(template)
        if v6:
            _U16.pack_into(h, 4, thl + n)
        else:
            ident_i = (ip_id + i) & 0xFFFF
            _U16.pack_into(h, 2, hl + n)
            _U16.pack_into(h, 4, ident_i)
            _U16.pack_into(h, 10, _csum(ip_base + hl + n + ident_i))
        si = (seq + off) & 0xFFFFFFFF
        _U32.pack_into(h, iphl + 4, si)
        f = tcp_flags & ~TCP_CWR
        h[iphl + 13] = f
        chunk = memoryview(pkt)[hl + off:]
        t = tcp_base + thl + n + (si >> 16) + (si & 0xFFFF) + f + _sum(chunk)
        _U16.pack_into(h, iphl + 16, _csum(t))
        out.append(b"".join((h, chunk)))
    return out


@functools.lru_cache(maxsize=64)
def _offsets(np: ModuleType, full: int, step: int) -> Any:
    """0, step, 2 * step, ... (``full`` of them) as int64: cached, as a super-packet's
    row count and segment size repeat."""
    v = np.arange(0, full * step, step, dtype=np.int64)
    v.flags.writeable = False
    return v


_RAMP_ROWS = 64  # a 1,368-byte MSS makes at most 47 rows; more take the arithmetic


@functools.lru_cache(maxsize=1)
def _ramps(np: ModuleType) -> tuple[Any, Any]:
    """0 .. 0xFFFF, and 0xFFFF - (k mod 0xFFFF) for k = 0 .. 0xFFFF + _RAMP_ROWS
    (256 KB together): a super-packet's IPv4 ids and header checksums are slices."""
    up = np.arange(0x10000, dtype=np.uint16)
    down = (0xFFFF - np.arange(0xFFFF + _RAMP_ROWS, dtype=np.int64) % 0xFFFF).astype(np.uint16)
    up.flags.writeable = down.flags.writeable = False
    return up, down


@functools.lru_cache(maxsize=64)
def _rows_struct(full: int, stride: int) -> struct.Struct:
    """Unpacks ``full`` consecutive ``stride``-byte rows as bytes objects."""
    return struct.Struct(f"{stride}s" * full)


def _chunk_sums(payload: memoryview, size: int) -> list[int]:
    """The one's complement sum (mod 0xFFFF) of each ``size``-byte chunk of ``payload``.

    With numpy, all full chunks of an even size are summed in one vectorised call
    (~0.3 us a chunk against ~2 us for int.from_bytes and a modulo each): this is
    most of what splitting a TSO super-packet costs."""
    plen = len(payload)
    full = plen // size
    np = _numpy() if full >= 2 and not size & 1 else None
    if np is None:
        return [_sum(payload[off:off + size]) for off in range(0, plen, size)]
    words = np.frombuffer(payload, dtype=">u2", count=full * size // 2)
    sums: list[int] = (words.reshape(full, size // 2).sum(axis=1, dtype=np.uint64)
                       % 0xFFFF).tolist()
    if plen > full * size:
        sums.append(_sum(payload[full * size:]))
    return sums


_V4_TCP = struct.Struct("!BBHHBBBBHQIIIBBHHH")  # IPv4 (no options) + fixed TCP header
_V6_TCP = struct.Struct("!IHBBQQQQIIIBBHHH")  # IPv6 (TCP next) + fixed TCP header


def _tcp_run_key(pkt: bytes) -> tuple[tuple[object, ...], int, int, int, int] | None:
    """(flow key, seq, header length, IP header length, payload length) of a TCP data
    segment that may join a coalesced run, or None. The key covers everything that must
    be equal between segments: addresses, ports, ack, window, options, TOS/TTL/DF.
    One struct unpack per packet: this runs for every packet written to the TUN."""
    n = len(pkt)
    b0 = pkt[0] if n >= 60 else 0
    if b0 == 0x45:
        f = _V4_TCP.unpack_from(pkt)
        # f: b0 tos len id frag_hi frag_lo ttl proto csum addrs ports seq ack off flags win
        if f[7] != 6 or f[4] & 0x3F or f[5]:  # not TCP, or a fragment
            return None
        flags = f[14]
        hl = 20 + (f[13] >> 4) * 4
        key: tuple[object, ...] = (f[1], f[4], f[6], f[9], f[10], f[12], f[13], f[15], f[17],
                                   pkt[40:hl])
        seq, iphl = f[11], 20
    elif b0 >> 4 == 6:
        f = _V6_TCP.unpack_from(pkt)
        # f: ver/tc/flow plen nh hop src(2) dst(2) ports seq ack off flags win csum urg
        if f[2] != 6:
            return None
        flags = f[12]
        hl = 40 + (f[11] >> 4) * 4
        key = (f[0], f[3], f[4], f[5], f[6], f[7], f[8], f[10], f[11], f[13], f[15], pkt[60:hl])
        seq, iphl = f[9], 40
    else:
        return None
    if flags & ~(TCP_ACK | TCP_PSH) or not flags & TCP_ACK or n <= hl:
        return None
    return key, seq, hl, iphl, n - hl


@functools.lru_cache(maxsize=64)
def _run_mask(iphl: int, hl: int) -> int:
    """Bits of a ``hl``-byte IP+TCP header that must equal the first segment's for a
    segment to join its run: all but the IP length, IPv4 id and header checksum, the
    TCP sequence number, PSH and the TCP checksum (the run's first segment carries
    only ACK, so equal flags but PSH leaves ACK or ACK|PSH)."""
    m = bytearray(b"\xff" * hl)
    if iphl == 40:
        m[4:6] = b"\0\0"  # payload length
    else:
        m[2:6] = b"\0\0\0\0"  # total length, id
        m[10:12] = b"\0\0"  # header checksum
    m[iphl + 4:iphl + 8] = b"\0\0\0\0"  # sequence number
    m[iphl + 13] = 0xFF & ~TCP_PSH
    m[iphl + 16:iphl + 18] = b"\0\0"  # checksum
    return int.from_bytes(m, "big")


def seq_shift_of(iphl: int, hl: int) -> int:
    """Where the TCP sequence number sits in a ``hl``-byte header read as one
    big-endian integer (bits below it)."""
    return (hl - iphl - 8) * 8


def _tcp_checksum_ok(pkt: bytes, iphl: int) -> bool:
    tcp = memoryview(pkt)[iphl:]
    return (_pseudo_sum(pkt, iphl == 40, 6, len(tcp)) + _sum(tcp)) % 0xFFFF == 0


def coalesce(packets: list[bytes], verify: bool = False) -> list[list[bytes | memoryview]]:
    """Plain IP packets -> write vectors (vnet header first), merging TCP runs.

    A run: same flow key, contiguous sequence numbers, every segment but the last of
    the same payload size, only the last may carry PSH. The kernel does not re-verify
    the TCP checksum of a NEEDS_CSUM super-packet. By default segments are merged
    without checking theirs: each one was authenticated by the tunnel's AEAD, so a bad
    checksum can only come from the peer's own stack, and a peer holding the session
    key could send any valid-checksum bytes anyway; checking costs a third of a
    decryption per packet. ``verify=True`` checks and keeps bad segments out of runs.
    """
    out: list[list[bytes | memoryview]] = []
    i, count = 0, len(packets)
    while i < count:
        pkt = packets[i]
        info = _tcp_run_key(pkt)
        j = i + 1
        if info is not None and j < count and (not verify or _tcp_checksum_ok(pkt, info[3])):
            _key, _seq, hl, iphl, size = info
            full_len = len(pkt)
            flags_at = iphl + 13
            # A candidate joins when its header equals the first's outside the fields
            # that differ within a run (see _run_mask) and its sequence number follows:
            # one masked big-int compare per packet against the expected header, stepped
            # by a segment per match, instead of unpacking it (~3x cheaper; equal to
            # _tcp_run_key's key test). A sequence wrap carries into the ports: the run
            # then just ends early. Full-sized segments first (as many as fit in
            # MAX_COALESCED, counted once), then at most one shorter one ends the run.
            mask = _run_mask(iphl, hl) | 0xFFFFFFFF << seq_shift_of(iphl, hl)
            step = size << seq_shift_of(iphl, hl)
            want = (int.from_bytes(pkt[:hl], "big") & mask) + step
            psh = pkt[flags_at] & TCP_PSH
            jmax = min(count, i + (MAX_COALESCED - hl) // size)
            while not psh and j < jmax:
                cand = packets[j]
                if len(cand) != full_len or int.from_bytes(cand[:hl], "big") & mask != want \
                        or (verify and not _tcp_checksum_ok(cand, iphl)):
                    break
                j += 1
                psh = cand[flags_at] & TCP_PSH
                want += step
            total = hl + (j - i) * size
            if not psh and j < count:
                cand = packets[j]
                csize = len(cand) - hl
                if 0 < csize < size and total + csize <= MAX_COALESCED \
                        and int.from_bytes(cand[:hl], "big") & mask == want \
                        and (not verify or _tcp_checksum_ok(cand, iphl)):
                    total += csize
                    j += 1
            last_flags = packets[j - 1][flags_at]
        if j - i < 2:
            out.append([ZERO_VNET_HDR, pkt])
            i += 1
            continue
        first = packets[i]
        h = bytearray(first[:hl])
        v6 = iphl == 40
        if v6:
            h[4:6] = (total - 40).to_bytes(2, "big")
        else:
            h[2:4] = total.to_bytes(2, "big")
            h[10:12] = b"\0\0"
            h[10:12] = _csum(_sum(h[:20])).to_bytes(2, "big")
        h[iphl + 13] = last_flags
        # NEEDS_CSUM: the field carries the pseudo-header sum, the kernel adds the rest.
        seed = _pseudo_sum(first, v6, 6, total - iphl) % 0xFFFF
        h[iphl + 16:iphl + 18] = seed.to_bytes(2, "big")
        vhdr = VNET_HDR.pack(VIRTIO_NET_HDR_F_NEEDS_CSUM, GSO_TCPV6 if v6 else GSO_TCPV4,
                             hl, size, iphl, 16)
        vec: list[bytes | memoryview] = [vhdr, bytes(h)]
        vec += [p[hl:] for p in packets[i:j]]  # a bytes slice: half a memoryview's cost
        out.append(vec)
        i = j
    return out
