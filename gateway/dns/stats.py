"""DNS counters for /metrics (process-wide, like any Prometheus registry)."""

from __future__ import annotations

from dataclasses import dataclass, field

from gateway.dns.answer import Outcome


@dataclass
class DnsStats:
    queries: dict[str, int] = field(default_factory=lambda: {"udp": 0, "tcp": 0})
    answers: dict[str, int] = field(default_factory=dict)  # rcode -> responses sent
    malformed: int = 0
    tcp_rejected: int = 0
    tcp_open: int = 0
    dropped: dict[str, int] = field(default_factory=dict)  # why (peer, rate) -> queries dropped unanswered

    def count(self, transport: str, outcome: Outcome) -> None:
        self.queries[transport] = self.queries.get(transport, 0) + 1
        if outcome.malformed:
            self.malformed += 1
        if outcome.response is not None and outcome.rcode is not None:
            self.answers[outcome.rcode] = self.answers.get(outcome.rcode, 0) + 1


STATS = DnsStats()


def metric_lines(stats: DnsStats = STATS) -> list[str]:
    """The Prometheus text lines of the DNS families."""
    out: list[str] = []

    def family(name: str, kind: str, help_: str, samples: list[tuple[str, int]]) -> None:
        out.extend((f"# HELP {name} {help_}", f"# TYPE {name} {kind}"))
        out.extend(f"{name}{labels} {value}" for labels, value in samples)

    family("crosswire_dns_queries_total", "counter", "DNS messages received, per transport.",
           [(f'{{transport="{t}"}}', n) for t, n in sorted(stats.queries.items())])
    family("crosswire_dns_answers_total", "counter", "DNS responses sent, per response code.",
           [(f'{{rcode="{r}"}}', n) for r, n in sorted(stats.answers.items())])
    family("crosswire_dns_malformed_total", "counter",
           "DNS messages that were not a readable query (answered FORMERR, or dropped).",
           [("", stats.malformed)])
    family("crosswire_dns_tcp_connections_rejected_total", "counter",
           "DNS TCP connections closed at once because the connection cap was reached.",
           [("", stats.tcp_rejected)])
    family("crosswire_dns_tcp_connections", "gauge", "DNS TCP connections open.", [("", stats.tcp_open)])
    family("crosswire_dns_dropped_total", "counter",
           "DNS queries dropped unanswered: from a peer (through the tunnel), or over the per-source rate.",
           [(f'{{reason="{r}"}}', stats.dropped.get(r, 0)) for r in ("peer", "rate")])
    return out
