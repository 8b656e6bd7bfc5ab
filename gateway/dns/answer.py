"""Sans-IO DNS answers for the imports zone: query bytes and a snapshot in, response bytes out.

Names (``Z`` = ``dns.zone``, default clusterset.local):

- ``<service>.<namespace>.svc.Z``: A/AAAA of that export from every peer offering it;
- ``<cluster_id>.<service>.<namespace>.svc.Z``: that peer's only;
- the apex ``Z`` has an SOA; ``svc.Z`` and ``<namespace>.svc.Z`` exist (empty,
  NODATA) while something below them does, as RFC 8020 wants of a name with
  children;
- any other name in the zone: NXDOMAIN; a name outside it: REFUSED.

Authoritative answers (AA) with TTL ``TTL`` on every record, in an order
dnspython shuffles per answer (clients spread over the peers), the SOA in the
authority section of NXDOMAIN/NODATA (negative caching as short, RFC 2308).
Garbage never raises: shorter than a header or itself a response -> dropped
(``response`` None), a header but no parsable query -> FORMERR; both count as
``malformed``. dnspython does the wire format.
"""

from __future__ import annotations

import ipaddress
import re
import struct
from dataclasses import dataclass, field

import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.opcode
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.rrset

from gateway.dns.records import ImportedService, Snapshot

# Short: a caching resolver between a pod and us (CoreDNS `cache`, NodeLocal
# DNSCache) then serves a changed address for at most 2 s beyond the channel's
# own 2 s to bring the change.
TTL = 2
UDP_PLAIN = 512  # a query without EDNS
UDP_EDNS = 1232  # our EDNS payload size (the 2020 DNS flag day's, no fragmentation)
TCP_MAX = 65535
_LABEL = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")
_HEADER = struct.Struct("!HHHHHH")
_QR, _OPCODE_MASK, _RD = 0x8000, 0x7800, 0x0100

Address = ipaddress.IPv4Address | ipaddress.IPv6Address
Labels = tuple[str, ...]  # a name relative to the zone, lowercase; () is the apex


@dataclass(frozen=True)
class Outcome:
    response: bytes | None  # None: send nothing
    rcode: str | None = None  # of the response ("NOERROR", "NXDOMAIN", ...)
    malformed: bool = False  # not a query we could read (answered FORMERR, or dropped)


@dataclass
class Index:
    """The zone's names for one snapshot: owner -> addresses, and every name that exists."""

    records: dict[Labels, tuple[Address, ...]] = field(default_factory=dict)
    names: set[Labels] = field(default_factory=lambda: {()})
    skipped: int = 0  # snapshot entries that name nothing valid


def build_index(snapshot: Snapshot) -> Index:
    """Index a snapshot; entries with an invalid peer, name or address are skipped, never fatal."""
    idx = Index()
    found: dict[Labels, set[Address]] = {}
    for s in snapshot:
        owners = _owners(s)
        if owners is None:
            idx.skipped += 1
            continue
        addrs: set[Address] = set()
        for a in s.addresses:
            try:
                net = ipaddress.ip_network(a)  # "100.64.0.10" or "100.64.0.10/32"
            except ValueError:
                idx.skipped += 1
                continue
            if net.prefixlen == net.max_prefixlen:  # a CIDR export (a /24) is no record
                addrs.add(net.network_address)
        for owner in owners:
            found.setdefault(owner, set()).update(addrs)
            idx.names.update(owner[i:] for i in range(len(owner)))
    idx.records = {k: tuple(sorted(v, key=lambda a: (a.version, int(a)))) for k, v in found.items()}
    return idx


def _owners(s: ImportedService) -> tuple[Labels, Labels] | None:
    """(aggregate name, per-peer name) of an import, relative to the zone."""
    if not isinstance(s.name, str) or not isinstance(s.peer, str):
        return None
    parts = s.name.lower().split(".")
    peer = s.peer.lower()
    if len(parts) != 2 or not all(_LABEL.match(p) for p in [*parts, peer]):
        return None
    service, namespace = parts
    return (service, namespace, "svc"), (peer, service, namespace, "svc")


class Answerer:
    """Answers queries for one zone; re-indexes only when the snapshot changes."""

    def __init__(self, zone: str, ttl: int = TTL) -> None:
        self.zone = dns.name.from_text(zone)
        self.ttl = ttl
        self._snapshot: Snapshot | None = None
        self._index = Index()
        soa = (f"ns.{self.zone.to_text()} hostmaster.{self.zone.to_text()} 1 {ttl} {ttl} {ttl} {ttl}")
        self._soa = dns.rrset.from_text(self.zone, ttl, "IN", "SOA", soa)

    def index(self, snapshot: Snapshot) -> Index:
        if snapshot is not self._snapshot and snapshot != self._snapshot:
            self._index = build_index(snapshot)
        self._snapshot = snapshot
        return self._index

    def answer(self, wire: bytes, snapshot: Snapshot | None, *, tcp: bool = False) -> Outcome:
        """The response to one query message (``snapshot`` None: imports unavailable, SERVFAIL)."""
        if len(wire) < _HEADER.size:
            return Outcome(None, malformed=True)
        qid, flags = struct.unpack_from("!HH", wire)
        if flags & _QR:
            return Outcome(None, malformed=True)  # a response: answering could start a loop
        try:
            query = dns.message.from_wire(wire)
        except Exception:  # dnspython raises many kinds on garbage; any of them is FORMERR
            return self._formerr(qid, flags)
        try:
            return self._answer(query, snapshot, tcp)
        except dns.exception.DNSException:
            return self._formerr(qid, flags)

    def _formerr(self, qid: int, flags: int) -> Outcome:
        out = _HEADER.pack(qid, _QR | (flags & (_OPCODE_MASK | _RD)) | dns.rcode.FORMERR, 0, 0, 0, 0)
        return Outcome(out, "FORMERR", malformed=True)

    def _answer(self, query: dns.message.Message, snapshot: Snapshot | None, tcp: bool) -> Outcome:
        r = dns.message.make_response(query, our_payload=UDP_EDNS)
        rcode = self._fill(query, r, snapshot)
        r.set_rcode(rcode)
        if tcp:
            limit = TCP_MAX
        elif query.edns >= 0:
            limit = max(UDP_PLAIN, min(query.payload, UDP_EDNS))
        else:
            limit = UDP_PLAIN
        try:
            out = r.to_wire(max_size=limit)
        except dns.exception.TooBig:
            # Truncated (TC): the client retries over TCP.
            r.answer.clear()
            r.authority.clear()
            r.flags |= dns.flags.TC
            out = r.to_wire(max_size=limit)
        return Outcome(out, dns.rcode.to_text(rcode), malformed=rcode == dns.rcode.FORMERR)

    def _fill(self, query: dns.message.Message, r: dns.message.Message, snapshot: Snapshot | None) -> dns.rcode.Rcode:
        """Put the answer into ``r``; returns the rcode."""
        if query.opcode() != dns.opcode.QUERY:
            return dns.rcode.NOTIMP
        if len(query.question) != 1:
            return dns.rcode.FORMERR
        if query.edns > 0:
            return dns.rcode.BADVERS
        q = query.question[0]
        if q.rdclass != dns.rdataclass.IN or not q.name.is_subdomain(self.zone):
            return dns.rcode.REFUSED
        if q.rdtype in (dns.rdatatype.AXFR, dns.rdatatype.IXFR):
            return dns.rcode.REFUSED  # no zone transfers: the names are per cluster and change
        r.flags |= dns.flags.AA
        if snapshot is None:
            return dns.rcode.SERVFAIL
        idx = self.index(snapshot)
        rel = tuple(label.decode("latin-1").lower() for label in q.name.relativize(self.zone).labels)
        if rel not in idx.names:
            r.authority.append(self._soa)
            return dns.rcode.NXDOMAIN
        if rel == () and q.rdtype in (dns.rdatatype.SOA, dns.rdatatype.ANY):
            r.answer.append(self._soa)
        want = {dns.rdatatype.A: (4,), dns.rdatatype.AAAA: (6,), dns.rdatatype.ANY: (4, 6)}
        addrs = idx.records.get(rel, ())
        for version in want.get(q.rdtype, ()):
            texts = [str(a) for a in addrs if a.version == version]
            if texts:
                kind = "A" if version == 4 else "AAAA"
                # The owner exactly as asked: resolvers that randomize case check it.
                r.answer.append(dns.rrset.from_text_list(q.name, self.ttl, "IN", kind, texts))
        if not r.answer:
            r.authority.append(self._soa)  # NODATA
        return dns.rcode.NOERROR
