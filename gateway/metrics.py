"""Prometheus text exposition for the gateway (no client library: a handful of gauges)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from gateway import memory
from gateway.dns.stats import metric_lines as dns_metric_lines

if TYPE_CHECKING:
    from gateway.readmodel import ReadModel

STATES = ("pending", "connecting", "connected", "impaired", "error")


def _esc(v: str) -> str:
    return v.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


class _Out:
    def __init__(self) -> None:
        self.lines: list[str] = []

    def family(self, name: str, kind: str, help_: str) -> None:
        self.lines.append(f"# HELP {name} {help_}")
        self.lines.append(f"# TYPE {name} {kind}")

    def sample(self, name: str, value: float | int | None, **labels: str) -> None:
        if value is None:
            return
        lab = ",".join(f'{k}="{_esc(v)}"' for k, v in labels.items())
        self.lines.append(f"{name}{{{lab}}} {value}" if lab else f"{name} {value}")


def render_metrics(read: ReadModel) -> str:
    o = _Out()
    peers = read.peer_metrics()
    o.family("crosswire_peers", "gauge", "Peers by state.")
    for s in STATES:
        o.sample("crosswire_peers", sum(1 for p in peers if p.state == s), state=s)
    o.family("crosswire_peer_up", "gauge", "1 if the peer answers probes through the tunnel.")
    for p in peers:
        o.sample("crosswire_peer_up", int(p.state == "connected"), peer=p.cluster_id)
    o.family("crosswire_peer_handshake_age_seconds", "gauge", "Seconds since the latest WireGuard handshake.")
    for p in peers:
        o.sample("crosswire_peer_handshake_age_seconds", p.handshake_age_s, peer=p.cluster_id)
    o.family("crosswire_peer_rx_bytes_total", "counter", "Bytes received from the peer (WireGuard).")
    for p in peers:
        o.sample("crosswire_peer_rx_bytes_total", p.rx_bytes, peer=p.cluster_id)
    o.family("crosswire_peer_tx_bytes_total", "counter", "Bytes sent to the peer (WireGuard).")
    for p in peers:
        o.sample("crosswire_peer_tx_bytes_total", p.tx_bytes, peer=p.cluster_id)
    o.family("crosswire_peer_rtt_seconds", "gauge", "Round-trip time of the latest probe through the tunnel.")
    for p in peers:
        o.sample("crosswire_peer_rtt_seconds", None if p.rtt_ms is None else p.rtt_ms / 1000, peer=p.cluster_id)
    o.family("crosswire_peer_probe_loss_ratio", "gauge", "Lost probes among the last 20.")
    for p in peers:
        o.sample("crosswire_peer_probe_loss_ratio", p.loss, peer=p.cluster_id)
    # Sums of the programmed state's counters from a snapshot (ReadModel.nat_totals): a
    # scrape no longer builds the whole NAT report (~0.7 s of CPU with 1,000 peers).
    per, denied = read.nat_totals()
    # One family at a time: the text format wants each family's samples together.
    o.family("crosswire_nat_packets_total", "counter",
             "Packets through the mappings of each peer, per chain (to-PEER egress, from-PEER ingress); "
             "every packet, counted in forward (chain cnt-PEER).")
    for peer, chain, pk, _, _ in per:
        o.sample("crosswire_nat_packets_total", pk, peer=peer, chain=chain)
    o.family("crosswire_nat_bytes_total", "counter", "Bytes through the mappings of each peer, per chain.")
    for peer, chain, _, by, _ in per:
        o.sample("crosswire_nat_bytes_total", by, peer=peer, chain=chain)
    o.family("crosswire_nat_connections_total", "counter",
             "Connections through the NAT rules of each peer, per chain (the NAT chains see each one's first packet).")
    for peer, chain, _, _, cn in per:
        o.sample("crosswire_nat_connections_total", cn, peer=peer, chain=chain)
    o.family("crosswire_export_denied_packets_total", "counter",
             "Packets from each peer that were dropped: to the gateway itself (the guard), to addresses "
             "not offered to it and, with exports configured, to what it was not given.")
    for peer, packets in denied.items():
        o.sample("crosswire_export_denied_packets_total", packets, peer=peer)
    st = read.reconciler.stats
    o.family("crosswire_reconcile_runs_total", "counter", "Reconcile passes.")
    o.sample("crosswire_reconcile_runs_total", st.runs)
    o.family("crosswire_reconcile_errors_total", "counter", "Reconcile passes that failed.")
    o.sample("crosswire_reconcile_errors_total", st.errors)
    o.family("crosswire_dataplane_restarts_total", "counter", "Times the data plane was found dead and restarted.")
    o.sample("crosswire_dataplane_restarts_total", st.restarts)
    o.family("crosswire_verify_total", "counter", "Drift checks of the data plane against the applied state.")
    o.sample("crosswire_verify_total", st.verifies)
    o.family("crosswire_verify_seconds_total", "counter", "CPU seconds the drift checks took.")
    o.sample("crosswire_verify_seconds_total", round(st.verify_cpu_s, 6))
    impl = read.implementation()
    o.family("crosswire_wireguard_implementation", "gauge",
             "1 for the WireGuard implementation serving the interface (reason: why auto chose it).")
    o.sample("crosswire_wireguard_implementation", 1, implementation=impl["name"],
             configured=impl["configured"], reason=impl["reason"])
    ready, _ = read.reconciler.ready()
    o.family("crosswire_ready", "gauge", "1 when WireGuard, routes and NAT match the state.")
    o.sample("crosswire_ready", int(ready))
    watch = getattr(read, "routewatch", None)
    if watch is not None:
        o.family("crosswire_route_watchers", "gauge", "Node agents' route long-polls held now.")
        o.sample("crosswire_route_watchers", watch.watchers)
        o.family("crosswire_route_watchers_max", "gauge", "api.max_watchers in force (lowered to fit descriptors).")
        o.sample("crosswire_route_watchers_max", watch.max_watchers)
        o.family("crosswire_route_watch_refused_total", "counter", "Route long-polls refused at the limit (503).")
        o.sample("crosswire_route_watch_refused_total", watch.refused)
        o.family("crosswire_route_set_changes_total", "counter", "New route set versions published to watchers.")
        o.sample("crosswire_route_set_changes_total", watch.changes)
    o.family("crosswire_gc_collections_total", "counter", "The daemon's garbage collections, per generation.")
    for gen, n in enumerate(memory.GC_CLOCK.collections):
        o.sample("crosswire_gc_collections_total", n, generation=str(gen))
    o.family("crosswire_gc_seconds_total", "counter", "Time the daemon spent in garbage collections, per generation.")
    for gen, secs in enumerate(memory.GC_CLOCK.seconds):
        o.sample("crosswire_gc_seconds_total", round(secs, 6), generation=str(gen))
    o.lines += dns_metric_lines()
    return "\n".join(o.lines) + "\n"
