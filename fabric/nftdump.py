"""Counters of a few chains and sets, and a table's named counters, straight from the
kernel (nfnetlink dumps).

Why not libnftables: whatever it lists, it first fills its cache with the
table's chains, sets and their elements, so ``list chain`` of one peer's chain
costs ~20 ms of CPU in a 1000-peer table (``list table`` ~400 ms). The kernel
filters a rule dump by table and chain and a set-element dump by set, so one
peer's rules and counting elements cost well under a millisecond each.

What comes back is the shape of libnftables' JSON listing, reduced to what
``fabric.nat.report.with_counters`` reads: rules with chain, handle, comment and
their counter; set and map elements with their key and counter. Read only:
nothing here writes to the kernel.
"""

from __future__ import annotations

import errno
import functools
import ipaddress
import os
import socket
import struct
import sys
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

NETLINK_NETFILTER = 12
NFNL_SUBSYS_NFTABLES = 10
NFT_MSG_GETRULE = 7
NFT_MSG_GETSETELEM = 13
NFT_MSG_GETOBJ = 19
NLM_F_REQUEST, NLM_F_ACK, NLM_F_DUMP = 0x1, 0x4, 0x300
NLMSG_ERROR, NLMSG_DONE = 2, 3
NFPROTO = {"inet": 1, "ip": 2, "ip6": 10}
NLA_TYPE_MASK = 0x3FFF  # without NLA_F_NESTED / NLA_F_NET_BYTEORDER
NLA_F_NESTED = 0x8000

# attribute numbers (linux/netfilter/nf_tables.h)
RULE_TABLE, RULE_CHAIN, RULE_HANDLE, RULE_EXPRESSIONS, RULE_USERDATA = 1, 2, 3, 4, 7
LIST_ELEM = 1
EXPR_NAME, EXPR_DATA = 1, 2
COUNTER_BYTES, COUNTER_PACKETS = 1, 2
SETELEM_LIST_TABLE, SETELEM_LIST_SET, SETELEM_LIST_ELEMENTS = 1, 2, 3
SET_ELEM_KEY, SET_ELEM_EXPR, SET_ELEM_EXPRESSIONS = 1, 7, 11
DATA_VALUE = 1
UDATA_RULE_COMMENT = 0
IMMEDIATE_DATA, DATA_VERDICT, VERDICT_CODE, NF_DROP = 2, 2, 1, 0
OBJ_TABLE, OBJ_NAME, OBJ_TYPE, OBJ_DATA = 1, 2, 3, 4
NFT_OBJECT_COUNTER = 1


class DumpError(OSError):
    """The kernel refused a dump (no such table/chain/set, no permission)."""


def _attr(kind: int, payload: bytes) -> bytes:
    head = struct.pack("=HH", 4 + len(payload), kind)
    return head + payload + b"\0" * (-len(payload) % 4)


def _attrs(data: bytes) -> Iterator[tuple[int, bytes]]:
    i = 0
    while i + 4 <= len(data):
        length, kind = struct.unpack_from("=HH", data, i)
        if length < 4:
            return
        yield kind & NLA_TYPE_MASK, data[i + 4:i + length]
        i += (length + 3) & ~3


def _attr_map(data: bytes) -> dict[int, bytes]:
    """``dict(_attrs(data))`` in one loop: a table-wide dump walks ~100,000 attributes."""
    out: dict[int, bytes] = {}
    unpack = struct.unpack_from
    i, end = 0, len(data)
    while i + 4 <= end:
        length, kind = unpack("=HH", data, i)
        if length < 4:
            break
        out[kind & NLA_TYPE_MASK] = data[i + 4:i + length]
        i += (length + 3) & ~3
    return out


def _text(b: bytes) -> str:
    return b.split(b"\0", 1)[0].decode(errors="replace")


def _dump(family: str, msg: int, attrs: bytes, flags: int = NLM_F_DUMP) -> Iterator[bytes]:
    """The attribute payloads of every message of one nf_tables dump (or of the
    answers to one GET that asks for an ACK at its end)."""
    seq = int.from_bytes(os.urandom(4), "little") or 1
    body = struct.pack("=BBH", NFPROTO[family], 0, 0) + attrs
    req = struct.pack("=IHHII", 16 + len(body), (NFNL_SUBSYS_NFTABLES << 8) | msg,
                      NLM_F_REQUEST | flags, seq, 0) + body
    with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_NETFILTER) as s:
        s.settimeout(5)
        s.bind((0, 0))
        s.send(req)
        while True:
            data = s.recv(1 << 20)
            i = 0
            while i + 16 <= len(data):
                length, kind, _, mseq, _ = struct.unpack_from("=IHHII", data, i)
                if length < 16:
                    return
                payload = data[i + 16:i + length]
                i += (length + 3) & ~3
                if mseq != seq:
                    continue
                if kind == NLMSG_DONE:
                    return
                if kind == NLMSG_ERROR:
                    err = -struct.unpack_from("=i", payload)[0]
                    if err:
                        raise DumpError(err, os.strerror(err))
                    return
                yield payload[4:]  # past the nfgenmsg


def _exprs(exprs: Iterable[tuple[int, bytes]]) -> list[dict[str, Any]]:
    """The counter (the first) and a drop verdict of a rule's expressions, as listed.
    One pass, names compared as bytes: a table-wide dump parses ~10,000 rules."""
    counter: dict[str, int] | None = None
    drop = False
    for kind, elem in exprs:
        if kind != LIST_ELEM:
            continue
        parts = _attr_map(elem)
        name = parts.get(EXPR_NAME, b"").split(b"\0", 1)[0]
        if name == b"counter" and counter is None:
            data = _attr_map(parts.get(EXPR_DATA, b""))
            counter = {"packets": int.from_bytes(data.get(COUNTER_PACKETS, b"\0"), "big"),
                       "bytes": int.from_bytes(data.get(COUNTER_BYTES, b"\0"), "big")}
        elif name == b"immediate" and not drop:
            data = _attr_map(_attr_map(parts.get(EXPR_DATA, b"")).get(IMMEDIATE_DATA, b""))
            code = _attr_map(data.get(DATA_VERDICT, b"")).get(VERDICT_CODE)
            drop = code is not None and struct.unpack(">i", code[:4])[0] == NF_DROP
    out: list[dict[str, Any]] = [] if counter is None else [{"counter": counter}]
    return [*out, {"drop": None}] if drop else out


# An expression's name attribute as the kernel writes it: found by a search in a rule's
# expressions instead of parsing each one (a table-wide dump holds ~10,000 rules).
_COUNTER_NAME = struct.pack("=HH", 12, EXPR_NAME) + b"counter\0"
_IMMEDIATE_NAME = struct.pack("=HH", 14, EXPR_NAME) + b"immediate\0\0\0"  # padded to 4


def _after(blob: bytes, name: bytes) -> dict[int, bytes] | None:
    """The DATA attributes of the first expression called ``name`` (its name attribute as
    written), None without one; raises ValueError when no DATA follows the name."""
    i = blob.find(name)
    if i < 0:
        return None
    j = i + len(name)
    if j + 4 > len(blob):
        raise ValueError("no data")
    length, kind = struct.unpack_from("=HH", blob, j)
    if kind & NLA_TYPE_MASK != EXPR_DATA:
        raise ValueError("no data")
    return _attr_map(blob[j + 4:j + length])


def _rule_exprs(blob: bytes) -> list[dict[str, Any]]:
    """``_exprs`` of a rule's NFTA_RULE_EXPRESSIONS, from the counter and the immediate
    (verdict) expressions found by their name attributes instead of parsing every
    expression (a table-wide dump holds ~10,000 rules); anything unexpected: parsed."""
    try:
        counter = _after(blob, _COUNTER_NAME)
        verdict = _after(blob, _IMMEDIATE_NAME)
    except ValueError:
        return _exprs(_attrs(blob))
    out: list[dict[str, Any]] = []
    if counter is not None:
        out.append({"counter": {"packets": int.from_bytes(counter.get(COUNTER_PACKETS, b"\0"), "big"),
                                "bytes": int.from_bytes(counter.get(COUNTER_BYTES, b"\0"), "big")}})
    if verdict is not None:
        data = _attr_map(verdict.get(IMMEDIATE_DATA, b""))
        code = _attr_map(data.get(DATA_VERDICT, b"")).get(VERDICT_CODE)
        if code is not None and struct.unpack(">i", code[:4])[0] == NF_DROP:
            out.append({"drop": None})
    return out


def _counter(exprs: Iterable[tuple[int, bytes]]) -> dict[str, int] | None:
    """The first counter among nested expressions (NFTA_LIST_ELEM of NAME/DATA)."""
    for e in _exprs(exprs):
        if "counter" in e:
            return dict(e["counter"])
    return None


def _comment(udata: bytes) -> str | None:
    i = 0
    while i + 2 <= len(udata):
        kind, length = udata[i], udata[i + 1]
        if kind == UDATA_RULE_COMMENT:
            return _text(udata[i + 2:i + 2 + length])
        i += 2 + length
    return None


def rules(family: str, table: str, chain: str | None) -> list[dict[str, Any]]:
    """The chain's rules as listing items: chain, handle, comment and its counter;
    ``chain`` None: every rule of the table, in one dump (what a scrape of every peer's
    counters needs: libnftables would render the whole table as JSON first)."""
    out = []
    attrs = _attr(RULE_TABLE, table.encode() + b"\0")
    if chain is not None:
        attrs += _attr(RULE_CHAIN, chain.encode() + b"\0")
    for payload in _dump(family, NFT_MSG_GETRULE, attrs):
        a = _attr_map(payload)
        name = _text(a.get(RULE_CHAIN, b""))
        if (chain is not None and name != chain) or _text(a.get(RULE_TABLE, b"")) != table:
            continue  # a kernel that does not filter the dump
        rule: dict[str, Any] = {"family": family, "table": table, "chain": name,
                                "handle": int.from_bytes(a.get(RULE_HANDLE, b"\0"), "big"), "expr": []}
        comment = _comment(a.get(RULE_USERDATA, b""))
        if comment is not None:
            rule["comment"] = comment
        rule["expr"] = _rule_exprs(a.get(RULE_EXPRESSIONS, b""))
        out.append({"rule": rule})
    return out


@functools.lru_cache(maxsize=65536)
def _net(key: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    # A scrape asks for every peer's counting elements: the same keys each time.
    return ipaddress.ip_network(key, strict=False)


def elements(family: str, table: str, name: str, keys: Iterable[str], *, is_map: bool = False) -> dict[str, Any]:
    """The elements ``keys`` (CIDRs as the state writes them; the start of an
    interval) of a set or map with their counters, as one listing item. One GET for
    them all: the kernel looks each up, instead of dumping the set (a 1000-peer host
    map holds thousands). A key it lacks fails the call (DumpError ENOENT)."""
    nets = [_net(k) for k in keys]
    if not nets:
        return {"map" if is_map else "set": {"family": family, "table": table, "name": name, "elem": []}}
    wanted = b"".join(_attr(LIST_ELEM | NLA_F_NESTED, _attr(SET_ELEM_KEY | NLA_F_NESTED,
                                                           _attr(DATA_VALUE, n.network_address.packed)))
                      for n in nets)
    attrs = (_attr(SETELEM_LIST_TABLE, table.encode() + b"\0") + _attr(SETELEM_LIST_SET, name.encode() + b"\0")
             + _attr(SETELEM_LIST_ELEMENTS | NLA_F_NESTED, wanted))
    counters: dict[bytes, dict[str, int] | None] = {}
    for payload in _dump(family, NFT_MSG_GETSETELEM, attrs, flags=NLM_F_ACK):
        for kind, elem in _attrs(_attr_map(payload).get(SETELEM_LIST_ELEMENTS, b"")):
            if kind != LIST_ELEM:
                continue
            e = _attr_map(elem)
            key = _attr_map(e.get(SET_ELEM_KEY, b"")).get(DATA_VALUE, b"")
            counters[key] = _counter([(LIST_ELEM, e[SET_ELEM_EXPR])]) if SET_ELEM_EXPR in e else \
                _counter(_attrs(e.get(SET_ELEM_EXPRESSIONS, b"")))
    listed = []
    for n in nets:
        if n.network_address.packed not in counters:
            continue
        addr = str(n.network_address)
        inner: dict[str, Any] = {"val": addr if n.prefixlen == n.max_prefixlen else
                                 {"prefix": {"addr": addr, "len": n.prefixlen}}}
        counter = counters[n.network_address.packed]
        if counter is not None:
            inner["counter"] = counter
        listed.append([{"elem": inner}, None] if is_map else {"elem": inner})
    return {"map" if is_map else "set": {"family": family, "table": table, "name": name, "elem": listed}}


def counters(family: str, table: str) -> dict[str, dict[str, int]]:
    """The named counters of ``table`` by name: one object dump, filtered by the kernel
    (libnftables' ``list counters`` loads the whole table first: ~0.1 s beside a 1000-peer
    policy table, this ~1.5 ms)."""
    head = _attr(OBJ_TABLE, table.encode() + b"\0")
    out: dict[str, dict[str, int]] = {}
    for payload in _dump(family, NFT_MSG_GETOBJ, head + _COUNTER_TYPE):
        named = _counter_as_laid_out(payload, head) or _counter_object(payload, table)
        if named is not None:
            out[named[0]] = {"packets": named[1], "bytes": named[2]}
    return out


def counter(family: str, table: str, name: str) -> dict[str, int] | None:
    """One named counter of ``table`` (None: there is none): one GET, not a dump."""
    head = _attr(OBJ_TABLE, table.encode() + b"\0")
    try:
        for payload in _dump(family, NFT_MSG_GETOBJ, head + _attr(OBJ_NAME, name.encode() + b"\0")
                             + _COUNTER_TYPE, flags=NLM_F_ACK):
            named = _counter_as_laid_out(payload, head) or _counter_object(payload, table)
            if named is not None and named[0] == name:
                return {"packets": named[1], "bytes": named[2]}
    except DumpError as e:
        if e.errno != errno.ENOENT:
            raise
    return None


# The tail of a counter object as the kernel lays it out (nf_tables_fill_obj_info):
# its data last, bytes then packets, each a u64 (attribute headers in host order).
_COUNTER_TAIL = struct.pack("=HHHH", 28, OBJ_DATA, 12, COUNTER_BYTES)
_PACKETS_HEAD = struct.pack("=HH", 12, COUNTER_PACKETS)
_COUNTER_KIND = struct.pack(">I", NFT_OBJECT_COUNTER)
_COUNTER_TYPE = _attr(OBJ_TYPE, _COUNTER_KIND)


def _counter_as_laid_out(data: bytes, head: bytes) -> tuple[str, int, int] | None:
    """(name, packets, bytes) of a counter object that begins with ``head`` (its table),
    its name and its type, and ends in its data: the kernel's layout, read by slicing (the
    page reads 1,000 of these every poll; walking every attribute took 3x as long). None
    for any other layout (``_counter_object`` reads those)."""
    n = len(head)
    if not (data.startswith(head) and data[-28:-20] == _COUNTER_TAIL and data[-12:-8] == _PACKETS_HEAD
            and len(data) >= n + 4 and data[n + 2] == OBJ_NAME and data[n + 3] == 0):
        return None
    name_end = n + int.from_bytes(data[n:n + 2], sys.byteorder)
    typed = (name_end + 3) & ~3
    if data[typed:typed + 8] != _COUNTER_TYPE:
        return None
    return _text(data[n + 4:name_end]), int.from_bytes(data[-8:], "big"), int.from_bytes(data[-20:-12], "big")


def _counter_object(data: bytes, table: str) -> tuple[str, int, int] | None:
    """(name, packets, bytes) of one object of the dump, attribute by attribute; None for
    another table's or type's object (a kernel that does not filter the dump)."""
    a = _attr_map(data)
    if _text(a.get(OBJ_TABLE, b"")) != table or a.get(OBJ_TYPE, b"")[:4] != _COUNTER_KIND:
        return None
    counts = _attr_map(a.get(OBJ_DATA, b""))
    return (_text(a.get(OBJ_NAME, b"")), int.from_bytes(counts.get(COUNTER_PACKETS, b"\0"), "big"),
            int.from_bytes(counts.get(COUNTER_BYTES, b"\0"), "big"))


def listing(family: str, table: str, chains: Iterable[str] = (), sets: Mapping[str, Iterable[str]] | None = None,
            maps: Mapping[str, Iterable[str]] | None = None) -> dict[str, Any]:
    """Chains with their rules' counters, and the given elements of sets and maps with
    theirs: what ``with_counters`` needs of a few peers, from the kernel."""
    items: list[dict[str, Any]] = []
    for c in chains:
        items += rules(family, table, c)
    items += [elements(family, table, s, keys) for s, keys in (sets or {}).items()]
    items += [elements(family, table, m, keys, is_map=True) for m, keys in (maps or {}).items()]
    return {"nftables": items}
