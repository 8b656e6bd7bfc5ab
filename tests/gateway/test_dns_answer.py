"""The sans-IO DNS answer core (gateway/dns/answer.py): every naming rule, exact records."""

from __future__ import annotations

import struct

import dns.edns
import dns.flags
import dns.message
import dns.opcode
import dns.rcode
import dns.rdatatype
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.dns.answer import TTL, Answerer, build_index
from gateway.dns.records import ImportedService

ZONE = "clusterset.local"
SNAP = (
    ImportedService("gpu", "web.default", ("80/tcp",), ("100.64.0.10", "fd00:64::a")),
    ImportedService("edge", "web.default", (), ("100.66.0.10",)),
    ImportedService("gpu", "trainer.ml", ("29500/tcp",), ("100.64.5.17", "100.64.6.1")),
)


def ask(name: str, rdtype: str = "A", snap: tuple[ImportedService, ...] | None = SNAP, *,
        answerer: Answerer | None = None, tcp: bool = False, **kw: object) -> dns.message.Message:
    q = dns.message.make_query(name, rdtype, **kw)  # type: ignore[arg-type]
    out = (answerer or Answerer(ZONE)).answer(q.to_wire(), snap, tcp=tcp)
    assert out.response is not None
    r = dns.message.from_wire(out.response)
    assert r.id == q.id and r.flags & dns.flags.QR
    assert out.rcode == dns.rcode.to_text(r.rcode())
    return r


def records(r: dns.message.Message) -> list[tuple[str, int, str, str]]:
    """(owner, ttl, type, value) of every answer record, sorted: the wire order is shuffled."""
    return sorted((rr.name.to_text(), rr.ttl, dns.rdatatype.to_text(rr.rdtype), rd.to_text())
                  for rr in r.answer for rd in rr)


def test_service_name_answers_every_peer_offering_it() -> None:
    r = ask("web.default.svc.clusterset.local")
    assert r.rcode() == dns.rcode.NOERROR and r.flags & dns.flags.AA
    assert records(r) == [("web.default.svc.clusterset.local.", TTL, "A", "100.64.0.10"),
                          ("web.default.svc.clusterset.local.", TTL, "A", "100.66.0.10")]
    assert records(ask("web.default.svc.clusterset.local", "AAAA")) == [
        ("web.default.svc.clusterset.local.", TTL, "AAAA", "fd00:64::a")]
    assert records(ask("trainer.ml.svc.clusterset.local")) == [
        ("trainer.ml.svc.clusterset.local.", TTL, "A", "100.64.5.17"),
        ("trainer.ml.svc.clusterset.local.", TTL, "A", "100.64.6.1")]
    assert 0 < TTL <= 5


def test_cluster_name_answers_that_peer_only() -> None:
    assert records(ask("gpu.web.default.svc.clusterset.local")) == [
        ("gpu.web.default.svc.clusterset.local.", TTL, "A", "100.64.0.10")]
    assert records(ask("edge.web.default.svc.clusterset.local")) == [
        ("edge.web.default.svc.clusterset.local.", TTL, "A", "100.66.0.10")]
    assert records(ask("gpu.web.default.svc.clusterset.local", "AAAA")) == [
        ("gpu.web.default.svc.clusterset.local.", TTL, "AAAA", "fd00:64::a")]
    # A peer that does not offer this service: no such name.
    assert ask("edge.trainer.ml.svc.clusterset.local").rcode() == dns.rcode.NXDOMAIN
    assert ask("nobody.web.default.svc.clusterset.local").rcode() == dns.rcode.NXDOMAIN


def test_any_returns_both_families() -> None:
    assert sorted(records(ask("gpu.web.default.svc.clusterset.local", "ANY"))) == [
        ("gpu.web.default.svc.clusterset.local.", TTL, "A", "100.64.0.10"),
        ("gpu.web.default.svc.clusterset.local.", TTL, "AAAA", "fd00:64::a")]


def _negative(r: dns.message.Message, rcode: int) -> None:
    assert r.rcode() == rcode and r.flags & dns.flags.AA
    assert r.answer == []
    (soa,) = r.authority
    assert soa.name.to_text() == "clusterset.local." and soa.rdtype == dns.rdatatype.SOA
    assert soa.ttl == TTL and soa[0].minimum == TTL  # negative answers cached as briefly


@pytest.mark.parametrize("name", [
    "db.default.svc.clusterset.local",  # no such export
    "web.other.svc.clusterset.local",  # exported, but in another namespace
    "web.default.clusterset.local",  # no "svc"
    "x.gpu.web.default.svc.clusterset.local",  # below a leaf
    "foo.clusterset.local",
    "_http._tcp.web.default.svc.clusterset.local",
])
def test_unknown_names_in_the_zone_are_nxdomain(name: str) -> None:
    _negative(ask(name), dns.rcode.NXDOMAIN)


@pytest.mark.parametrize(("name", "rdtype"), [
    ("web.default.svc.clusterset.local", "MX"),
    ("web.default.svc.clusterset.local", "TXT"),
    ("web.default.svc.clusterset.local", "SRV"),
    ("trainer.ml.svc.clusterset.local", "AAAA"),  # exists, IPv4 only
    ("edge.web.default.svc.clusterset.local", "AAAA"),
    ("default.svc.clusterset.local", "A"),  # empty non-terminals exist (RFC 8020)
    ("svc.clusterset.local", "A"),
    ("clusterset.local", "A"),
])
def test_other_types_and_empty_names_are_nodata(name: str, rdtype: str) -> None:
    _negative(ask(name, rdtype), dns.rcode.NOERROR)


def test_apex_soa() -> None:
    r = ask("clusterset.local", "SOA")
    assert r.rcode() == dns.rcode.NOERROR and r.flags & dns.flags.AA
    assert records(r) == [("clusterset.local.", TTL, "SOA",
                           f"ns.clusterset.local. hostmaster.clusterset.local. 1 {TTL} {TTL} {TTL} {TTL}")]


@pytest.mark.parametrize("name", ["example.com", "web.default.svc.cluster.local", ".", "local",
                                  "clusterset.local.evil.com"])
def test_names_outside_the_zone_are_refused(name: str) -> None:
    r = ask(name)
    assert r.rcode() == dns.rcode.REFUSED
    assert not r.flags & dns.flags.AA and r.answer == [] and r.authority == []


def test_case_is_ignored_and_the_owner_kept_as_asked() -> None:
    # Resolvers randomize the case of the name (0x20) and check it in the answer.
    r = ask("WeB.DeFault.SVC.ClusterSet.LOCAL")
    assert records(r) == [("WeB.DeFault.SVC.ClusterSet.LOCAL.", TTL, "A", "100.64.0.10"),
                          ("WeB.DeFault.SVC.ClusterSet.LOCAL.", TTL, "A", "100.66.0.10")]


def test_other_class_opcode_version_and_transfers() -> None:
    assert ask("web.default.svc.clusterset.local", rdclass="CH").rcode() == dns.rcode.REFUSED
    assert ask("clusterset.local", "AXFR", tcp=True).rcode() == dns.rcode.REFUSED
    q = dns.message.make_query("web.default.svc.clusterset.local", "A")
    q.set_opcode(dns.opcode.NOTIFY)
    r = dns.message.from_wire(Answerer(ZONE).answer(q.to_wire(), SNAP).response or b"")
    assert r.rcode() == dns.rcode.NOTIMP
    q = dns.message.make_query("web.default.svc.clusterset.local", "A", use_edns=1)
    r = dns.message.from_wire(Answerer(ZONE).answer(q.to_wire(), SNAP).response or b"")
    assert r.rcode() == dns.rcode.BADVERS and r.answer == []


def test_edns_is_answered_with_edns() -> None:
    r = ask("web.default.svc.clusterset.local", use_edns=0, payload=4096)
    assert r.edns == 0 and r.payload == 1232 and len(records(r)) == 2
    assert ask("web.default.svc.clusterset.local").edns == -1


def test_imports_unavailable_is_servfail_inside_the_zone_only() -> None:
    assert ask("web.default.svc.clusterset.local", snap=None).rcode() == dns.rcode.SERVFAIL
    assert ask("example.com", snap=None).rcode() == dns.rcode.REFUSED


def test_empty_snapshot_is_an_empty_zone() -> None:
    _negative(ask("web.default.svc.clusterset.local", snap=()), dns.rcode.NXDOMAIN)
    _negative(ask("svc.clusterset.local", snap=()), dns.rcode.NXDOMAIN)
    _negative(ask("clusterset.local", snap=()), dns.rcode.NOERROR)


def test_a_snapshot_change_is_answered_at_once() -> None:
    a = Answerer(ZONE)
    name = "web.default.svc.clusterset.local"
    assert [v for *_, v in records(ask(name, answerer=a))] == ["100.64.0.10", "100.66.0.10"]  # sorted
    moved = (ImportedService("gpu", "web.default", (), ("100.64.0.99",)),)
    assert [v for *_, v in records(ask(name, snap=moved, answerer=a))] == ["100.64.0.99"]
    assert ask("trainer.ml.svc.clusterset.local", snap=moved, answerer=a).rcode() == dns.rcode.NXDOMAIN
    # An equal snapshot (a new tuple, same content) keeps the index.
    idx = a.index(moved)
    assert a.index(tuple(moved)) is idx and a.index(SNAP) is not idx


def test_another_zone() -> None:
    a = Answerer("mesh.example.org")
    assert records(ask("gpu.web.default.svc.mesh.example.org", answerer=a)) == [
        ("gpu.web.default.svc.mesh.example.org.", TTL, "A", "100.64.0.10")]
    assert ask("web.default.svc.clusterset.local", answerer=a).rcode() == dns.rcode.REFUSED


def test_bad_snapshot_entries_are_skipped_not_fatal() -> None:
    snap = (ImportedService("gpu", "web", (), ("100.64.0.1",)),  # no namespace
            ImportedService("GPU_1", "web.default", (), ("100.64.0.2",)),  # not a label
            ImportedService("gpu", "a.b.c", (), ("100.64.0.3",)),
            ImportedService("gpu", "db.default", (), ("not-an-ip", "100.64.0.4")))
    idx = build_index(snap)
    assert idx.skipped == 4
    assert records(ask("db.default.svc.clusterset.local", snap=snap)) == [
        ("db.default.svc.clusterset.local.", TTL, "A", "100.64.0.4")]
    assert ask("web.default.svc.clusterset.local", snap=snap).rcode() == dns.rcode.NXDOMAIN


def test_duplicates_are_answered_once_and_the_order_varies() -> None:
    snap = (ImportedService("b", "web.default", (), ("100.64.0.2", "100.64.0.10")),
            ImportedService("a", "web.default", (), ("100.64.0.10", "100.64.0.9")))
    a = Answerer(ZONE)
    firsts = set()
    for _ in range(60):
        r = ask("web.default.svc.clusterset.local", snap=snap, answerer=a)
        assert sorted(v for *_, v in records(r)) == ["100.64.0.10", "100.64.0.2", "100.64.0.9"]
        firsts.add(r.answer[0][0].to_text())
    # Shuffled per answer (dnspython's default), so clients spread over the peers.
    assert len(firsts) > 1


def test_too_big_for_udp_is_truncated_and_complete_over_tcp() -> None:
    snap = tuple(ImportedService(f"p{i}", "web.default", (), (f"100.64.{i}.10",)) for i in range(100))
    a = Answerer(ZONE)
    q = dns.message.make_query("web.default.svc.clusterset.local", "A")
    out = a.answer(q.to_wire(), snap)
    assert out.response is not None and len(out.response) <= 512
    r = dns.message.from_wire(out.response)
    assert r.flags & dns.flags.TC and r.answer == [] and r.rcode() == dns.rcode.NOERROR
    r = ask("web.default.svc.clusterset.local", snap=snap, tcp=True)
    assert not r.flags & dns.flags.TC and len(records(r)) == 100
    # EDNS raises the UDP limit to our 1232 bytes: still too big for 100, fine for 20.
    small = snap[:20]
    r = ask("web.default.svc.clusterset.local", snap=small, use_edns=0, payload=4096)
    assert not r.flags & dns.flags.TC and len(records(r)) == 20


# --- malformed input ---------------------------------------------------------------------------


def test_short_messages_and_responses_are_dropped() -> None:
    a = Answerer(ZONE)
    for wire in (b"", b"\x12", b"\x00" * 11):
        out = a.answer(wire, SNAP)
        assert out.response is None and out.malformed
    resp = dns.message.make_response(dns.message.make_query("web.default.svc.clusterset.local", "A"))
    out = a.answer(resp.to_wire(), SNAP)
    assert out.response is None and out.malformed


@pytest.mark.parametrize("wire", [
    struct.pack("!HHHHHH", 0xBEEF, 0x0100, 1, 0, 0, 0),  # a question announced, none there
    dns.message.make_query("web.default.svc.clusterset.local", "A").to_wire()[:-1],  # cut short
    dns.message.make_query("web.default.svc.clusterset.local", "A").to_wire() + b"junk",
    struct.pack("!HHHHHH", 0xBEEF, 0x0100, 1, 0, 0, 0) + b"\xc0\x0c\x00\x01\x00\x01",  # pointer loop
    struct.pack("!HHHHHH", 0xBEEF, 0x0100, 0, 0, 0, 0),  # no question
    struct.pack("!HHHHHH", 0xBEEF, 0x0100, 2, 0, 0, 0) + (b"\x01a\x00\x00\x01\x00\x01" * 2),
])
def test_unreadable_queries_get_formerr(wire: bytes) -> None:
    out = Answerer(ZONE).answer(wire, SNAP)
    assert out.malformed and out.rcode == "FORMERR" and out.response is not None
    qid, flags = struct.unpack("!HH", out.response[:4])
    assert qid == struct.unpack("!H", wire[:2])[0]
    assert flags & 0x8000 and flags & 0xF == dns.rcode.FORMERR


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=600))
def test_garbage_never_raises(wire: bytes) -> None:
    out = Answerer(ZONE).answer(wire, SNAP)
    if out.response is not None:
        assert out.response[:2] == wire[:2]  # answered under the query's ID
        dns.message.from_wire(out.response)  # and well formed


@settings(max_examples=300, deadline=None)
@given(st.lists(st.text(alphabet="abcxyz-_.0123456789", min_size=0, max_size=20), max_size=6),
       st.sampled_from(["A", "AAAA", "ANY", "MX", "SOA", "TXT"]))
def test_any_name_gets_a_wellformed_answer(labels: list[str], rdtype: str) -> None:
    name = ".".join([*labels, "clusterset", "local"]).strip(".")
    try:
        q = dns.message.make_query(name, rdtype)
    except Exception:
        return  # not a name dnspython can write (empty label, too long)
    out = Answerer(ZONE).answer(q.to_wire(), SNAP)
    assert out.response is not None and not out.malformed
    assert dns.message.from_wire(out.response).rcode() in (dns.rcode.NOERROR, dns.rcode.NXDOMAIN)


def test_counters_and_their_metric_lines() -> None:
    from gateway.dns.stats import DnsStats, metric_lines

    s, a = DnsStats(), Answerer(ZONE)
    for wire in (dns.message.make_query("web.default.svc.clusterset.local", "A").to_wire(),
                 dns.message.make_query("example.com", "A").to_wire(), b"\x00\x01", b"\x00" * 12):
        s.count("udp", a.answer(wire, SNAP))
    s.count("tcp", a.answer(dns.message.make_query("db.default.svc.clusterset.local", "A").to_wire(), SNAP))
    lines = metric_lines(s)
    for want in ('crosswire_dns_queries_total{transport="udp"} 4',
                 'crosswire_dns_queries_total{transport="tcp"} 1',
                 'crosswire_dns_answers_total{rcode="FORMERR"} 1',  # the empty header: no question
                 'crosswire_dns_answers_total{rcode="NOERROR"} 1',
                 'crosswire_dns_answers_total{rcode="NXDOMAIN"} 1',
                 'crosswire_dns_answers_total{rcode="REFUSED"} 1',
                 "crosswire_dns_malformed_total 2",  # the short one (dropped) and the empty header
                 "# TYPE crosswire_dns_tcp_connections gauge"):
        assert want in lines, (want, lines)
