"""``crosswire peer ranges PEER [--approve|--reject]`` and ``token create --ranges``
(stdlib only: operator commands start fast)."""

from __future__ import annotations

import argparse
import json
import urllib.parse
from collections.abc import Callable
from typing import Any

Call = Callable[..., Any]


def add_parsers(peer: Any, token_create: argparse.ArgumentParser, common: argparse.ArgumentParser) -> None:
    token_create.add_argument("--ranges", help="CIDRs the redeeming peer may announce, comma separated "
                                               "(inside peer_ranges.allow; default: the policy only)")
    pr = peer.add_parser("ranges", parents=[common], help="a peer's ranges, our views, a pending change",
                         description="Show a peer's ranges and a range change waiting for approval "
                                     "(peer_ranges.approval: manual); --approve applies it, --reject drops it.")
    pr.add_argument("cluster_id")
    g = pr.add_mutually_exclusive_group()
    g.add_argument("--approve", action="store_true", help="apply the pending change")
    g.add_argument("--reject", action="store_true", help="drop the pending change")


def token_body(args: argparse.Namespace) -> dict[str, Any]:
    text = getattr(args, "ranges", None)
    if text is None:
        return {}
    return {"ranges": [c.strip() for c in text.split(",") if c.strip()]}


def _table(rows: list[list[str]]) -> list[str]:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]


def text(out: dict[str, Any]) -> list[str]:
    lines = [f"peer {out['cluster_id']}  approval {out['approval']}  token ranges "
             f"{','.join(out['token_ranges']) if out['token_ranges'] is not None else '-'}", ""]
    rows = [["KIND", "RANGE", "OUR VIEW"]] + [[r["kind"], r["cidr"], r["view"] or "-"] for r in out["ranges"]]
    lines += _table(rows)
    p = out.get("pending")
    if p is None:
        lines += ["", "no pending range change"]
    else:
        lines += ["", "pending change (crosswire peer ranges " + out["cluster_id"] + " --approve | --reject):"]
        lines += [f"  + {r['kind']} {r['cidr']}" for r in p["added"]]
        lines += [f"  - {r['kind']} {r['cidr']}" for r in p["removed"]]
        if p["problem"]:
            lines.append(f"  refused if approved now: {p['problem']}")
    if "applied" in out:
        notified = out["peer_notified"]
        lines += ["", "applied" if out["applied"] else "not applied" if notified is None else "apply pending",
                  *([] if notified in (True, None) else [f"peer not told yet: {notified}"])]
    return lines


def dispatch(args: argparse.Namespace, call: Call) -> int | None:
    """Run ``peer ranges``; None when ``args`` is another command."""
    if (args.cmd, getattr(args, "sub", None)) != ("peer", "ranges"):
        return None
    path = f"/api/v1/peers/{urllib.parse.quote(args.cluster_id, safe='')}/ranges"
    if args.approve or args.reject:
        out = call(args, "POST", path, admin=True, body={"approve": args.approve, "reject": args.reject})
    else:
        out = call(args, "GET", path, admin=True)
    print(json.dumps(out, indent=2) if args.json else "\n".join(text(out)))
    return 0
