"""Text rendering of the operator commands: the API's JSON in, lines out.

Pure functions (``now`` and the colour switch are arguments) used by
gateway.cli; stdlib only, so operator commands still start fast. Column
widths come from the content; colour wraps a cell after padding, so escape
codes never shift a column. Every value that came from the network (cluster
IDs of peers, error texts) is made printable first: a peer must not be able
to move the operator's cursor or recolour the terminal.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

GAP = "  "
GREEN, YELLOW, RED, BOLD = "32", "33", "31", "1"
STATE_COLOR = {"connected": GREEN, "connecting": YELLOW, "pending": YELLOW, "impaired": YELLOW, "error": RED}


def use_color(isatty: bool, env: Mapping[str, str]) -> bool:
    """ANSI colour only on a terminal, and not when NO_COLOR is set (no-color.org) or TERM=dumb."""
    return isatty and not env.get("NO_COLOR") and env.get("TERM") != "dumb"


def paint(text: str, code: str | None, color: bool) -> str:
    return f"\x1b[{code}m{text}\x1b[0m" if color and code and text else text


def clean(value: Any) -> str:
    """``value`` as one printable line: control characters (escapes, newlines) shown as \\xNN."""
    s = "-" if value is None else str(value)
    if s.isprintable():
        return s
    return "".join(c if c.isprintable() else f"\\x{ord(c):02x}" if ord(c) < 256 else f"\\u{ord(c):04x}"
                   for c in s)


def width(s: str) -> int:
    """Terminal columns of ``s``: wide (CJK) characters take two, combining marks none."""
    if s.isascii():
        return len(s)
    return sum(0 if unicodedata.combining(c) else 2 if unicodedata.east_asian_width(c) in "WF" else 1
               for c in s)


def table(headers: Sequence[str], rows: Iterable[Sequence[Any]], *, right: Iterable[int] = (),
          colors: Iterable[Sequence[str | None]] | None = None, color: bool = False,
          indent: str = "") -> list[str]:
    """Aligned columns; ``right``: indexes of right-aligned (numeric) columns;
    ``colors``: per row, per cell an ANSI code or None. The last column is not
    padded (no trailing blanks)."""
    body = [[clean(v) for v in r] for r in rows]
    codes = [list(c) for c in colors] if colors is not None else [[] for _ in body]
    right = set(right)
    n = len(headers)
    widths = [max([width(headers[i])] + [width(r[i]) for r in body]) for i in range(n)]

    def line(cells: Sequence[str], cell_codes: Sequence[str | None]) -> str:
        out = []
        for i, c in enumerate(cells):
            pad = " " * (widths[i] - width(c))
            last = i == n - 1
            code = cell_codes[i] if i < len(cell_codes) else None
            out.append(pad + paint(c, code, color) if i in right else
                       paint(c, code, color) + ("" if last else pad))
        return indent + GAP.join(out).rstrip()

    return [line(list(headers), [BOLD] * n)] + [line(r, c) for r, c in zip(body, codes, strict=True)]


def pairs(items: Sequence[tuple[str, str]], *, indent: str = "") -> list[str]:
    """``label  value`` lines with the values aligned."""
    w = max((width(k) for k, _ in items), default=0)
    return [f"{indent}{k}{' ' * (w - width(k))}{GAP}{clean(v)}" for k, v in items]


# --- value formats -------------------------------------------------------------------------


def human_bytes(n: int | float | None) -> str:
    """1536 -> '1.5 KiB'; below 1 KiB the exact count."""
    if n is None:
        return "-"
    v = float(n)
    if abs(v) < 1024:
        return f"{int(v)} B"
    for unit in ("KiB", "MiB", "GiB", "TiB", "PiB"):
        v /= 1024
        if abs(v) < 1024 or unit == "PiB":
            return f"{v:.1f} {unit}"
    raise AssertionError("unreachable")


def human_count(n: int | None) -> str:
    """Counters: exact below 10 000, then 12.3k, 4.5M, 6.7G."""
    if n is None:
        return "-"
    if abs(n) < 10_000:
        return str(n)
    v = float(n)
    for unit in ("k", "M", "G", "T"):
        v /= 1000
        if abs(v) < 1000 or unit == "T":
            return f"{v:.1f}{unit}"
    raise AssertionError("unreachable")


def duration(s: float | None) -> str:
    """Seconds as the two largest units: 42s, 3m05s, 2h07m, 3d04h."""
    if s is None:
        return "-"
    t = max(0, int(s))
    if t < 60:
        return f"{t}s"
    if t < 3600:
        return f"{t // 60}m{t % 60:02d}s"
    if t < 86400:
        return f"{t // 3600}h{t % 3600 // 60:02d}m"
    return f"{t // 86400}d{t % 86400 // 3600:02d}h"


def ago(s: float | None) -> str:
    return "never" if s is None else f"{duration(s)} ago"


def rtt(ms: float | None) -> str:
    if ms is None:
        return "-"
    return f"{ms:.2f} ms" if ms < 10 else f"{ms:.1f} ms" if ms < 100 else f"{ms:.0f} ms"


def loss(frac: float | None) -> str:
    if frac is None:
        return "-"
    pct = 100 * frac
    return f"{pct:.0f}%" if pct == 0 or pct >= 1 else f"{pct:.1f}%"


# --- commands ------------------------------------------------------------------------------

PEER_HEADERS = ("PEER", "STATE", "HANDSHAKE", "RTT", "LOSS", "RX", "TX", "ENDPOINT")


def peers_table(peers: Sequence[Mapping[str, Any]], *, color: bool = False) -> list[str]:
    """One row per peer: state, handshake age, RTT, loss, traffic, endpoint (or why there is none)."""
    if not peers:
        return ["no peers"]
    rows, codes = [], []
    for p in peers:
        err = p.get("endpoint_error")
        endpoint = f"error: {err}" if err else p.get("endpoint") or "-"
        lost = p.get("loss")
        rows.append((p["cluster_id"], p["state"], ago(p.get("handshake_age_s")), rtt(p.get("rtt_ms")),
                     loss(lost), human_bytes(p.get("rx_bytes")), human_bytes(p.get("tx_bytes")), endpoint))
        codes.append((None, STATE_COLOR.get(p["state"]), None, None,
                      RED if lost else None, None, None, RED if err else None))
    return table(PEER_HEADERS, rows, right=(3, 4, 5, 6), colors=codes, color=color)


def _views_rows(peers: Sequence[Mapping[str, Any]], key: str) -> list[tuple[str, str, str, str]]:
    rows = []
    for p in peers:
        views = p.get(key)
        if views is None:
            rows.append((p["cluster_id"], "-", "-", "(not received yet)"))
            continue
        rows += [(p["cluster_id"], v["kind"], v["real"], v["view"]) for v in views]
    return rows


def views_tables(peers: Sequence[Mapping[str, Any]], *, color: bool = False) -> list[str]:
    """Both directions: the peers' ranges under our views, ours under theirs."""
    if not peers:
        return []
    out = ["their ranges -> our views"]
    out += table(("PEER", "KIND", "THEIR RANGE", "OUR VIEW"), _views_rows(peers, "our_views"),
                 color=color, indent="  ")
    out += ["", "our ranges -> their views"]
    out += table(("PEER", "KIND", "OUR RANGE", "THEIR VIEW"), _views_rows(peers, "their_views"),
                 color=color, indent="  ")
    return out


def reach_lines(peers: Sequence[Mapping[str, Any]]) -> list[str]:
    """Per peer: how each side views the other (ipam.views) and what our pods reach there."""
    rows = [(p["cluster_id"], p.get("views_mode") or "-", p.get("their_views_mode") or "-",
             clean(p.get("reach") or "-")) for p in peers]
    return ["what our pods reach", *table(("PEER", "WE VIEW", "THEY VIEW", "REACH"), rows, indent="  ")]


def peer_list(peers: Sequence[Mapping[str, Any]], *, color: bool = False) -> list[str]:
    out = peers_table(peers, color=color)
    if not peers:
        return out
    return [*out, "", *reach_lines(peers), "", *views_tables(peers, color=color)]


def reconcile_line(rec: Mapping[str, Any], now: float) -> str:
    last_ok = rec.get("last_ok")
    line = (f"reconcile: {rec['runs']} runs, {rec['errors']} errors, "
            f"{rec['dataplane_restarts']} data-plane restarts, "
            f"last ok {'never' if last_ok is None else ago(now - last_ok)}")
    if rec.get("last_error"):
        line += f"; last error: {clean(rec['last_error'])}"
    return line


def headline(st: Mapping[str, Any], *, color: bool = False) -> str:
    """``cluster lab  ready  2 peers: 1 connected, 1 connecting``: the one line to read first
    (kept in the shape of the earlier output, which scripts and tests match)."""
    ready = paint("ready", GREEN, color) if st["ready"] else \
        paint(f"NOT READY: {clean(st['ready_reason'])}", RED, color)
    n = st.get("peers", 0)
    by_state = st.get("peers_by_state") or {}
    states = ", ".join(paint(f"{c} {clean(s)}", STATE_COLOR.get(s), color) for s, c in sorted(by_state.items()))
    peers = f"{n} peer{'' if n == 1 else 's'}: {states}" if n else "no peers"
    return f"cluster {paint(clean(st['cluster_id']), BOLD, color)}  {ready}  {peers}"


def status(st: Mapping[str, Any], peers: Sequence[Mapping[str, Any]], now: float, *,
           color: bool = False, more: int = 0) -> list[str]:
    """/api/v1/status and /api/v1/peers at a glance (the public key only: status carries no secret);
    ``more``: peers not in ``peers`` (the first page of many)."""
    gw = ", ".join(clean(a) for a in (st.get("gateway_ip"), st.get("gateway_ip6")) if a) or "-"
    items = [("public key", st["public_key"]),
             ("endpoint", st.get("endpoint") or "-"), ("peering", st.get("url") or "-"),
             ("tls pin", " ".join(clean(p) for p in st.get("tls_pins") or []) or "-"),
             ("interface", f"{st['interface']} ({st['implementation']})"), ("gateway ip", gw),
             ("pods", ", ".join(st.get("pod_cidrs") or []) or "-"),
             ("services", ", ".join(st.get("service_cidrs") or []) or "-"),
             ("uptime", duration(st.get("uptime_s")))]
    out = [headline(st, color=color), *pairs(items, indent="  ")]
    out += ["", *peers_table(peers, color=color)]
    if more > 0:
        out.append(f"... and {more} more peers (crosswire peer list shows every one)")
    out += ["", reconcile_line(st["reconcile"], now)]
    return out


def _rule_rows(peer: Mapping[str, Any]) -> list[tuple[Any, ...]]:
    """One row per NAT rule of our ranges: the mapping it implements and its counters.

    Each rule row names its direction and mapping (fabric.nat.report); an egress
    block shows "any source" and its address range. A single address's rule is
    its family's shared map rule, whose connection count is every element's:
    shown as "-" on the element's row."""
    rows: list[tuple[Any, ...]] = []
    for r in peer.get("rules") or []:
        real, view = r.get("real", "?"), r.get("view", "?")
        if r.get("shows"):  # "any source -> first-last"
            real, view = "any source", str(r["shows"]).split(" -> ", 1)[-1]
        conns = r.get("connections")
        rows.append((clean(r.get("direction", "?")), clean(r.get("kind", "?")), clean(real), clean(view),
                     human_count(r.get("packets", 0)), human_bytes(r.get("bytes", 0)),
                     "-" if conns is None else human_count(conns)))
    return rows


def nat(data: Mapping[str, Any], *, color: bool = False) -> list[str]:
    """/api/v1/nat: per peer its mappings with the kernel's counters.

    Our ranges are rewritten here (egress SNAT to the peer's view of us,
    ingress DNAT back); the peer's ranges under our views are rewritten by the
    peer, so they carry no counters here ("remote")."""
    out = [f"table {clean(data['table'])}"]
    if not data["peers"]:
        return [*out, "no peers"]
    for p in data["peers"]:
        rows = _rule_rows(p)
        rows += [("remote", v["kind"], v["real"], v["view"], "-", "-", "-") for v in p.get("remote") or []]
        out += ["", f"peer {paint(clean(p['cluster_id']), BOLD, color)}"]
        out += table(("DIRECTION", "KIND", "REAL", "VIEW", "PACKETS", "BYTES", "CONNS"), rows,
                     right=(4, 5, 6), color=color, indent="  ")
        missing = sum(r.get("handle", 0) is None for r in p.get("rules") or [])
        if missing:
            out.append(paint(f"  {missing} rule(s) missing from the kernel (not applied yet?)", RED, color))
        for h in p.get("host_network") or []:
            state = "" if h.get("present", True) else " (missing from the kernel)"
            out.append(f"  host network {clean(h['key'])} -> {clean(h['target'])}: "
                       f"{human_count(h.get('packets', 0))} packets, {human_bytes(h.get('bytes', 0))}{state}")
    return out


def ipam(data: Mapping[str, Any], *, color: bool = False) -> list[str]:
    out = [f"pools {', '.join(clean(p) for p in data['pools']) or '-'}"]
    allocs = data.get("allocations") or []
    if not allocs:
        out.append("no allocations")
    else:
        out += table(("PEER", "KIND", "REAL", "VIEW", "REMAPPED"),
                     [(a["peer"], a["kind"], a["real"], a["view"], "yes" if a.get("remapped") else "no")
                      for a in allocs], color=color)
    for c in data.get("conflicts") or []:
        overlaps = c.get("overlaps")
        if isinstance(overlaps, list):
            overlaps = ", ".join(str(o) for o in overlaps)
        out.append(paint(f"conflict: {clean(c['peer'])} view {clean(c['view'])} overlaps {clean(overlaps)}",
                         RED, color))
    return out


def tokens(items: Sequence[Mapping[str, Any]], now: float, *, color: bool = False) -> list[str]:
    """Tokens issued (no secrets in the listing)."""
    if not items:
        return ["no tokens"]
    rows, codes = [], []
    for t in items:
        # A token from before TTLs were bounded may carry no finite expiry (null).
        left = None if t.get("expires") is None else t["expires"] - now
        when = "never" if left is None else f"in {duration(left)}" if left > 0 else "expired"
        rows.append((t["token_id"], t["state"], "reusable" if t["reusable"] else "single use", t["uses"], when))
        codes.append((None, GREEN if t["state"] == "active" else None, None, None, None))
    return table(("TOKEN", "STATE", "USE", "USES", "EXPIRES"), rows, right=(3,), colors=codes, color=color)
