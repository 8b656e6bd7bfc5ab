"""``crosswire trace`` as text: the answer of ``/api/v1/trace`` in, lines out.

Pure, stdlib only (operator commands start fast), built on gateway.clitable:
one table row per step (where, what kind, the packet after it, the nftables
chain), each followed by its explanation and the rule, map element and
counting chain that do it. Everything shown passes through ``clean``: rule
comments and texts carry peers' cluster IDs.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from gateway.clitable import GREEN, RED, YELLOW, clean, paint, table

VERDICT_COLOR = {"delivered": GREEN, "dropped": RED, "no-peer": YELLOW, "local": YELLOW}
DETAIL = "      "  # under the STEP column


def _query(t: Mapping[str, Any]) -> str:
    port = f":{t['dport']}" if t.get("dport") else ""
    return f"{clean(t['proto'])} {clean(t['src'])} -> {clean(t['dst'])}{clean(port)}"


def trace(t: Mapping[str, Any], *, color: bool = False) -> list[str]:
    """The trace as an operator reads it: headline, verdict, then every step in order."""
    where = f" ({clean(t['direction'])}, peer {clean(t['peer'])})" if t.get("peer") else ""
    verdict = paint(clean(t["verdict"]), VERDICT_COLOR.get(t["verdict"]), color)
    out = [f"trace {_query(t)} at {clean(t['cluster_id'])}{where}",
           f"verdict {verdict}: {clean(t['reason'])}"]
    steps = t.get("steps") or []
    if not steps:
        return out
    rows = [(s["step"], s["at"], s["kind"], s["src"], s["dst"], s.get("chain") or "-") for s in steps]
    codes = [(None, None, RED if s.get("drop") else None, None, None, None) for s in steps]
    lines = table(("#", "AT", "STEP", "SRC", "DST", "CHAIN"), rows, right=(0,), colors=codes, color=color)
    out += ["", lines[0]]
    for line, s in zip(lines[1:], steps, strict=True):
        out.append(line)
        out.append(f"{DETAIL}{clean(s['text'])}")
        if s.get("rule"):
            out.append(f'{DETAIL}rule    "{clean(s["rule"])}"')
        if s.get("element"):
            out.append(f"{DETAIL}element {clean(s['element'])}")
        if s.get("counted"):
            out.append(f"{DETAIL}counted in chain {clean(s['counted'])} (same comment)")
    return out
