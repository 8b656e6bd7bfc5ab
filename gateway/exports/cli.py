"""``crosswire exports``, ``crosswire imports``, ``crosswire peer exports PEER NAME,...``
(stdlib only: operator commands start fast)."""

from __future__ import annotations

import argparse
import json
import urllib.parse
from collections.abc import Callable
from typing import Any

Call = Callable[..., Any]


def add_parsers(sub: Any, peer: Any, common: argparse.ArgumentParser) -> None:
    sub.add_parser("exports", parents=[common], help="what this gateway exports, and to which peer")
    sub.add_parser("imports", parents=[common], help="what peers export to us (our addresses, DNS names)")
    pe = peer.add_parser("exports", parents=[common], help="set which exports a peer may reach")
    pe.add_argument("cluster_id")
    pe.add_argument("names", help="export names, comma separated (web.default,trainer.ml), or 'all'")


def names_arg(text: str | None) -> list[str] | None:
    """``--exports web.default,trainer.ml`` -> the list (None when not given)."""
    if text is None:
        return None
    return [n.strip() for n in text.split(",") if n.strip()]


def _table(rows: list[list[str]]) -> list[str]:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]


def _ports(p: list[str] | None) -> str:
    return "all" if p is None else ",".join(p)


def exports_text(out: dict[str, Any]) -> list[str]:
    if out["exposure"] == "all":
        return ["exposure: all (no exports configured: peers reach the whole pod and service ranges)"]
    lines = ["exposure: exports", ""]
    rows = [["EXPORT", "PORTS", "ADDRESSES", "DNS"]]
    for e in out["exports"]:
        addrs = ",".join(e["addresses"]) or ("unresolved: " + (e.get("resolve_error") or "no answer yet"))
        rows.append([e["name"], _ports(e["ports"]), addrs, e["dns_name"]])
    lines += [*_table(rows), ""]
    rows = [["PEER", "MAY REACH", "DENIED PACKETS"]]
    for p in out["peers"]:
        rows.append([p["cluster_id"], "all exports" if p["all"] else (",".join(p["exports"]) or "nothing"),
                     str(p["denied"].get("packets", 0))])
    return lines + _table(rows)


def imports_text(out: dict[str, Any]) -> list[str]:
    if not out["imports"]:
        return ["no imports (no peer exports anything to us yet)"]
    rows = [["PEER", "NAME", "PORTS", "ADDRESSES (ours)", "DNS"]]
    for i in out["imports"]:
        rows.append([i["peer"], i["name"], _ports(i["ports"]), ",".join(i["addresses"]) or "-", i["dns_names"][0]])
    return _table(rows)


def dispatch(args: argparse.Namespace, call: Call) -> int | None:
    """Run the export commands; None when ``args`` is another command."""
    key = (args.cmd, getattr(args, "sub", None))
    if args.cmd in ("exports", "imports"):
        out = call(args, "GET", f"/api/v1/{args.cmd}")
        text = exports_text(out) if args.cmd == "exports" else imports_text(out)
        print(json.dumps(out, indent=2) if args.json else "\n".join(text))
        return 0
    if key == ("peer", "exports"):
        names = names_arg(args.names) or []
        body: dict[str, Any] = {"all": True} if names == ["all"] else {"exports": names}
        out = call(args, "PUT", f"/api/v1/peers/{urllib.parse.quote(args.cluster_id, safe='')}/exports",
                   admin=True, body=body)
        if args.json:
            print(json.dumps(out))
        else:
            what = "every export" if out["all"] else (",".join(out["exports"]) or "nothing")
            print(f"{out['cluster_id']} may reach {what}" + ("" if out["applied"] else " (apply pending)"))
        return 0
    return None
