"""``netns-lab/lab``: up, down, status, demo, exec, page."""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from typing import Any

from .lab import Lab, LabError, list_labs, teardown, tool_env
from .topology import TopologyError, load

DEFAULT_NAME = "cwlab"


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="lab", description="crosswire network-namespace lab")
    ap.add_argument("--name", default=os.environ.get("CROSSWIRE_LAB_NAME", DEFAULT_NAME),
                    help="lab instance name, the prefix of everything it creates (default cwlab)")
    sub = ap.add_subparsers(dest="cmd", required=True)
    up = sub.add_parser("up", help="build the lab and start gateways, agents and pods")
    up.add_argument("--topology", help="topology YAML file, or the name of one in netns-lab/topologies/ "
                    "(hub, dualstack); default: clusters gpu and lab")
    up.add_argument("--no-gateways", action="store_true", help="clusters only, no crosswire gateways")
    down = sub.add_parser("down", help="remove everything the lab made")
    down.add_argument("--all", action="store_true", help="every lab instance on this machine")
    st = sub.add_parser("status", help="clusters, gateways, peers and their health")
    st.add_argument("--json", action="store_true")
    demo = sub.add_parser("demo", help="build the default lab, peer it, curl across, check")
    demo.add_argument("--keep", action="store_true", help="leave the lab up afterwards")
    pg = sub.add_parser("page", help="a gateway's operator page on http://127.0.0.1:PORT/ (until Ctrl-C)")
    pg.add_argument("cluster")
    pg.add_argument("--port", type=int, default=8080, help="local port (default 8080)")
    ex = sub.add_parser("exec", help="run a command in a node (n1), pod (p1) or gateway (gw)")
    ex.add_argument("cluster")
    ex.add_argument("member")
    ex.add_argument("command", nargs=argparse.REMAINDER)
    return ap


def main(argv: Sequence[str] | None = None) -> int:
    a = _parser().parse_args(argv)
    if os.geteuid() != 0:
        print("lab: must run as root (it creates network namespaces)", file=sys.stderr)
        return 1
    try:
        if a.cmd == "up":
            lab = Lab(a.name, load(a.topology))
            try:
                lab.up(gateways=not a.no_gateways)
            except LabError as e:
                if lab.is_up():  # partially built: say how to get rid of it
                    raise LabError(f"{e}\n(inspect with `lab --name {a.name} status`, "
                                   f"remove with `lab --name {a.name} down`)") from e
                raise
        elif a.cmd == "down":
            names = list_labs() if a.all else [a.name]
            for n in names:
                removed = teardown(n)
                print(f"lab {n}: removed {len(removed)} namespaces/sockets/dirs")
        elif a.cmd == "status":
            s = Lab(a.name).status()
            print(json.dumps(s, indent=2) if a.json else render_status(s))
        elif a.cmd == "demo":
            from .demo import run_demo

            return int(run_demo(a.name, keep=a.keep))
        elif a.cmd == "page":
            import asyncio

            from .pageforward import serve
            from .topology import OPERATOR_PORT

            plan = Lab(a.name).plan
            ns = plan.ns_of(a.cluster, "gw")
            gw = plan.cluster(a.cluster).gateway
            try:
                asyncio.run(serve(ns, OPERATOR_PORT, a.port, lambda port: print(
                    f"lab {a.name}: gateway {a.cluster}'s page at http://127.0.0.1:{port}/ (Ctrl-C stops)",
                    flush=True), host=gw.ip if gw is not None else "127.0.0.1"))
            except OSError as e:  # the port is taken, or the lab is not up
                print(f"lab page: {e}", file=sys.stderr)
                return 1
        elif a.cmd == "exec":
            cmd = a.command[1:] if a.command[:1] == ["--"] else a.command
            if not cmd:
                print("lab exec: no command given", file=sys.stderr)
                return 2
            lab = Lab(a.name)
            ns = lab.plan.ns_of(a.cluster, a.member)
            # The operator's environment: `crosswire` on PATH, talking to this cluster's gateway.
            env = tool_env()
            env["CROSSWIRE_CONFIG"] = str(lab.gateway_config_path(lab.plan.cluster(a.cluster)))
            os.execvpe("ip", ["ip", "netns", "exec", ns, *cmd], env)
    except (LabError, TopologyError) as e:
        print(f"lab: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"lab: interrupted; `lab --name {a.name} down` removes whatever was built",
              file=sys.stderr)
        return 130
    return 0


def render_status(s: dict[str, Any]) -> str:
    out = [f"lab {s['name']}"]
    for c in s["clusters"]:
        gw = c["gateway"]
        out.append(f"  cluster {c['id']}: pods {c['pod_cidr']}, services {c['service_cidr']}")
        st = gw["status"]
        if isinstance(st, dict):
            health = (f"ready={st.get('ready')} ({st.get('ready_reason')}), "
                      f"up {st.get('uptime_s', 0):.0f}s, reconcile errors "
                      f"{st.get('reconcile', {}).get('errors')}")
        else:
            health = str(st)
        out.append(f"    gateway {gw['pod_ip']} (public {gw['public']}): {health}")
        for p in c["peers"] if isinstance(c["peers"], list) else []:
            views = ", ".join(f"{v.get('kind', '')} {v['real']} -> {v['view']}" for v in p.get("our_views") or [])
            age = p.get("handshake_age_s")
            out.append(f"    peer {p.get('cluster_id')}: {p.get('state')}, handshake "
                       f"{'never' if age is None else f'{age:.0f}s ago'}, rtt {p.get('rtt_ms')} ms, "
                       f"loss {p.get('loss')}, rx {p.get('rx_bytes')} B, tx {p.get('tx_bytes')} B; "
                       f"our views: {views}")
        out.append(f"    pods: {', '.join(f'{k}={v}' for k, v in c['pods'].items())}")
        out.append(f"    services: {', '.join(f'{k}={v}' for k, v in c['services'].items())}")
        procs = c["processes"]
        dead = [k for k, v in procs.items() if v != "running"]
        out.append(f"    processes: {len(procs) - len(dead)}/{len(procs)} running"
                   + (f", DEAD: {', '.join(dead)}" if dead else ""))
    return "\n".join(out)
