"""The ``crosswire`` command.

``crosswire gateway run --config FILE`` runs the daemon; every other command
talks to a running gateway over HTTP:

- API URL: ``--api URL``, else env ``CROSSWIRE_API``, else the config's
  ``api.operator_listen`` (``--config FILE`` or env ``CROSSWIRE_CONFIG``; a
  wildcard host becomes 127.0.0.1), else ``http://127.0.0.1:8081``. Every
  command talks to the operator listener; the peering listener (``api.listen``)
  serves only peers.
- Admin credential (token create, peer add/remove/ranges, key rotate): env
  ``CROSSWIRE_ADMIN_TOKEN``, else ``<state dir>/admin-token`` where the state
  dir is ``--state-dir``, the config's ``state_dir``, env ``CROSSWIRE_STATE_DIR``
  or ``/var/lib/crosswire``.

Errors go to stderr with exit status 1 (2 for usage and config errors).
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import sys
import urllib.parse
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from gateway import clitable
from gateway.exports import cli as exportscli
from gateway.peerranges import cli as rangescli

# Only the stdlib at import time: operator commands start in a few tens of ms
# (httpx/yaml/fastapi are imported where needed).
if TYPE_CHECKING:
    from gateway.config import Config

DEFAULT_API = "http://127.0.0.1:8081"  # api.operator_listen's default
DEFAULT_STATE_DIR = "/var/lib/crosswire"
STATUS_PEERS = 50  # rows of the peers table `status` prints; `peer list` prints all


class CliError(Exception):
    pass


def _common(p: argparse.ArgumentParser, suppress: bool) -> argparse.ArgumentParser:
    # Accepted before and after the subcommand; on subcommands SUPPRESS keeps an
    # absent option from overwriting one given before it.
    def d(value: Any) -> Any:
        return argparse.SUPPRESS if suppress else value
    p.add_argument("--api", default=d(None),
                   help="gateway operator API URL (default: $CROSSWIRE_API or the config's api.operator_listen)")
    p.add_argument("--config", default=d(None), help="gateway config file (for the API URL and state dir)")
    p.add_argument("--state-dir", default=d(None), help="gateway state dir (for the admin credential)")
    p.add_argument("--json", action="store_true", default=d(False), help="print JSON")
    p.add_argument("--timeout", type=float, default=d(30.0), help="HTTP timeout in seconds")
    return p


def parser() -> argparse.ArgumentParser:
    common = _common(argparse.ArgumentParser(add_help=False), suppress=True)
    top = _common(argparse.ArgumentParser(prog="crosswire", description="crosswire gateway and operator commands"),
                  suppress=False)
    sub = top.add_subparsers(dest="cmd", required=True)

    gw = sub.add_parser("gateway", help="the gateway daemon").add_subparsers(dest="sub", required=True)
    run = gw.add_parser("run", help="run the gateway daemon")
    run.add_argument("--config", required=True, help="YAML config file")
    run.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])

    dp = sub.add_parser("dataplane", help="the data plane in a container of its own").add_subparsers(
        dest="sub", required=True)
    dpr = dp.add_parser("run", help="run and supervise crosswire-wg and its standby (the gateway runs "
                                    "with wireguard.supervise: false beside it)")
    dpr.add_argument("--config", required=True, help="the gateway's YAML config file")
    dpr.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])

    tok = sub.add_parser("token", help="peering tokens").add_subparsers(dest="sub", required=True)
    tc = tok.add_parser("create", parents=[common], help="print a token another gateway uses to peer with us")
    tc.add_argument("--ttl", default="1h", help="lifetime (90s, 15m, 1h, 7d; default 1h)")
    tc.add_argument("--reusable", action="store_true", help="allow more than one peer to use it")
    tc.add_argument("--exports", help="export names the redeeming peer may reach, comma separated "
                                      "(default: every export)")

    tok.add_parser("list", parents=[common], help="tokens this gateway issued (no secrets)")
    trv = tok.add_parser("revoke", parents=[common], help="make an unused token worthless")
    trv.add_argument("token_id")

    peer = sub.add_parser("peer", help="peers").add_subparsers(dest="sub", required=True)
    pa = peer.add_parser("add", parents=[common], help="peer with the gateway that issued a token",
                         description="Read the token from standard input ('-') or --token-file: "
                                     "a token on the command line stays in shell history and "
                                     "/proc/PID/cmdline, where other users of the host can read it.")
    pa.add_argument("token", nargs="?", help="'-' to read it from standard input (or the token itself)")
    pa.add_argument("--token-file", help="read the token from this file")
    peer.add_parser("list", parents=[common], help="list peers")
    pr = peer.add_parser("remove", parents=[common], help="remove a peer (both sides)")
    pr.add_argument("cluster_id")
    exportscli.add_parsers(sub, peer, common)
    rangescli.add_parsers(peer, tc, common)

    key = sub.add_parser("key", help="WireGuard key").add_subparsers(dest="sub", required=True)
    key.add_parser("rotate", parents=[common], help="new WireGuard key, announced to every peer first")
    tls = sub.add_parser("tls", help="the peering listener's certificate").add_subparsers(dest="sub", required=True)
    tls.add_parser("rotate", parents=[common], help="new certificate; every peer learns its pin before the switch")

    sub.add_parser("status", parents=[common], help="gateway status")
    nat = sub.add_parser("nat", help="NAT table").add_subparsers(dest="sub", required=True)
    nat.add_parser("show", parents=[common], help="per peer: ranges, views, rules, counters")
    tr = sub.add_parser("trace", parents=[common], help="what a packet from SRC to DST becomes, step by step",
                        description="Every step a packet takes through this gateway and the peer's: route, "
                                    "peer, rewrites, and the nftables chain and rule that do each.")
    tr.add_argument("src", help="source address (a local one, or one of our views of a peer: from that peer)")
    tr.add_argument("dst", help="destination address")
    tr.add_argument("--proto", default="tcp", choices=["tcp", "udp", "icmp"], help="protocol (default tcp)")
    tr.add_argument("--port", type=int, help="destination port")
    ipam = sub.add_parser("ipam", help="view allocations").add_subparsers(dest="sub", required=True)
    ipam.add_parser("show", parents=[common], help="pools and allocations")

    agent = sub.add_parser("agent", help="the node agent").add_subparsers(dest="sub", required=True)
    ar = agent.add_parser("run", help="run the node agent (arguments go to fabric.agent)", add_help=False)
    ar.add_argument("rest", nargs=argparse.REMAINDER)
    return top


# --- helpers -------------------------------------------------------------------------------


def _config(args: argparse.Namespace) -> Config | None:
    path = args.config or os.environ.get("CROSSWIRE_CONFIG")
    if not path:
        return None
    from gateway.config import load

    return load(path)


def api_url(args: argparse.Namespace, cfg: Config | None) -> str:
    if args.api:
        return str(args.api).rstrip("/")
    if os.environ.get("CROSSWIRE_API"):
        return os.environ["CROSSWIRE_API"].rstrip("/")
    if cfg is not None:
        host, port = cfg.operator_host_port
        if host in ("0.0.0.0", "", "::"):
            host = "127.0.0.1"
        return f"http://{'[' + host + ']' if ':' in host else host}:{port}"
    return DEFAULT_API


def admin_token(args: argparse.Namespace, cfg: Config | None) -> str:
    if os.environ.get("CROSSWIRE_ADMIN_TOKEN"):
        return os.environ["CROSSWIRE_ADMIN_TOKEN"].strip()
    state_dir = args.state_dir or (cfg.state_dir if cfg else None) or \
        os.environ.get("CROSSWIRE_STATE_DIR") or DEFAULT_STATE_DIR
    path = os.path.join(state_dir, "admin-token")
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError as e:
        raise CliError(f"cannot read the admin credential {path}: {e.strerror} "
                       "(run beside the gateway, or pass --state-dir / set CROSSWIRE_ADMIN_TOKEN)") from None


def call(args: argparse.Namespace, method: str, path: str, *, admin: bool = False,
         body: Any = None) -> Any:
    cfg = _config(args)
    url = api_url(args, cfg)
    headers = {"Authorization": f"Bearer {admin_token(args, cfg)}"} if admin else {}
    status, data = _http(method, url + path, body, headers, args.timeout)
    if status >= 400:
        detail = data.get("detail") if isinstance(data, dict) else data
        raise CliError(f"{detail} (HTTP {status})")
    return data


def _http(method: str, url: str, body: Any, headers: dict[str, str], timeout: float) -> tuple[int, Any]:
    u = urllib.parse.urlsplit(url)
    if u.scheme not in ("http", "https") or not u.hostname:
        raise CliError(f"--api: {url!r} is not an http(s) URL")
    base = f"{u.scheme}://{u.netloc}"
    payload = b"" if body is None else json.dumps(body).encode()
    if body is not None:
        headers = {**headers, "Content-Type": "application/json"}
    path = (u.path or "/") + (f"?{u.query}" if u.query else "")
    try:
        if u.scheme == "https":
            status, raw = _https(u, method, path, payload, headers, timeout)
        else:
            status, raw = _plain_http(u.hostname, u.port or 80, u.netloc, method, path, payload, headers, timeout)
    except TimeoutError:
        raise CliError(f"cannot reach the gateway at {base}: no answer within {timeout:.0f}s") from None
    except (OSError, ValueError) as e:
        reason = e.strerror if isinstance(e, OSError) and e.strerror else (str(e) or type(e).__name__)
        raise CliError(f"cannot reach the gateway at {base}: {reason}") from None
    try:
        return status, json.loads(raw)
    except ValueError:
        return status, raw.decode(errors="replace")


def _plain_http(host: str, port: int, netloc: str, method: str, path: str, payload: bytes,
                headers: dict[str, str], timeout: float) -> tuple[int, bytes]:
    """A minimal HTTP/1.1 exchange (Connection: close). http.client would pull in the
    email package and ssl, doubling the start-up time of every operator command."""
    head = [f"{method} {path} HTTP/1.1", f"Host: {netloc}", "Connection: close", "Accept: application/json",
            f"Content-Length: {len(payload)}", *(f"{k}: {v}" for k, v in headers.items())]
    with socket.create_connection((host, port), timeout=timeout) as sock:
        sock.sendall(("\r\n".join(head) + "\r\n\r\n").encode() + payload)
        chunks = []
        while True:
            data = sock.recv(65536)
            if not data:
                break
            chunks.append(data)
    raw = b"".join(chunks)
    header_blob, sep, rest = raw.partition(b"\r\n\r\n")
    lines = header_blob.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ", 2)
    if not sep or len(parts) < 2 or not parts[0].startswith("HTTP/") or not parts[1].isdigit():
        raise ValueError("the answer is not HTTP")
    fields = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    if fields.get("transfer-encoding", "").lower() == "chunked":
        rest = _dechunk(rest)
    elif "content-length" in fields:
        rest = rest[: int(fields["content-length"])]
    return int(parts[1]), rest


def _dechunk(data: bytes) -> bytes:
    out: list[bytes] = []
    pos = 0
    while True:
        end = data.index(b"\r\n", pos)
        size = int(data[pos:end].split(b";")[0], 16)
        if size == 0:
            return b"".join(out)
        out.append(data[end + 2 : end + 2 + size])
        pos = end + 2 + size + 2


def _https(u: urllib.parse.SplitResult, method: str, path: str, payload: bytes, headers: dict[str, str],
           timeout: float) -> tuple[int, bytes]:
    import http.client

    conn = http.client.HTTPSConnection(u.hostname or "", u.port, timeout=timeout)
    try:
        conn.request(method, path, body=payload, headers=headers)
        r = conn.getresponse()
        return r.status, r.read()
    except http.client.HTTPException as e:
        raise ValueError(str(e) or type(e).__name__) from None
    finally:
        conn.close()


# --- commands ------------------------------------------------------------------------------


def read_token(args: argparse.Namespace) -> str:
    """The token of ``peer add``: from --token-file, stdin ('-') or the argument."""
    if args.token_file and args.token:
        raise CliError("peer add: give the token either as an argument or with --token-file, not both")
    if args.token_file:
        try:
            with open(args.token_file) as f:
                text = f.read(64 * 1024)
        except OSError as e:
            raise CliError(f"--token-file: cannot read {args.token_file}: {e.strerror}") from None
    elif args.token == "-":
        text = sys.stdin.read(64 * 1024)
    elif args.token:
        text = args.token
    else:
        raise CliError("peer add: no token (pipe it in with 'peer add -', or use --token-file)")
    token = text.strip()
    if not token:
        raise CliError("peer add: the token is empty")
    return token


def _color() -> bool:
    isatty = getattr(sys.stdout, "isatty", None)
    return clitable.use_color(bool(isatty and isatty()), os.environ)


def _print(lines: list[str]) -> None:
    print("\n".join(lines))


def dispatch(args: argparse.Namespace) -> int:
    key = (args.cmd, getattr(args, "sub", None))
    out: Any
    if key == ("token", "create"):
        out = call(args, "POST", "/api/v1/tokens", admin=True,
                   body={"ttl": args.ttl, "reusable": args.reusable,
                         **({"exports": exportscli.names_arg(args.exports)} if args.exports is not None else {}),
                         **rangescli.token_body(args)})
        if args.json:
            print(json.dumps(out))
        else:
            print(out["token"])  # one line, pasteable; details on stderr
            print(f"(token {out['token_id']}, {'reusable' if out['reusable'] else 'single use'}, "
                  f"expires in {args.ttl})", file=sys.stderr)
        return 0
    if key == ("token", "list"):
        out = call(args, "GET", "/api/v1/tokens", admin=True)
        if args.json:
            print(json.dumps(out, indent=2))
        else:
            import time

            _print(clitable.tokens(out, time.time(), color=_color()))
        return 0
    if key == ("token", "revoke"):
        out = call(args, "DELETE", f"/api/v1/tokens/{urllib.parse.quote(args.token_id, safe='')}", admin=True)
        print(json.dumps(out) if args.json else f"revoked {out['revoked']}")
        return 0
    if key == ("peer", "add"):
        out = call(args, "POST", "/api/v1/peers", admin=True, body={"token": read_token(args)})
        if args.json:
            print(json.dumps(out))
        else:
            print(f"peered with {clitable.clean(out['cluster_id'])} (endpoint {clitable.clean(out.get('endpoint'))})")
            _print(clitable.views_tables([out], color=_color()))
        return 0
    if key == ("peer", "list"):
        out = call(args, "GET", "/api/v1/peers")
        print(json.dumps(out, indent=2)) if args.json else _print(clitable.peer_list(out, color=_color()))
        return 0
    if key == ("peer", "remove"):
        out = call(args, "DELETE", f"/api/v1/peers/{urllib.parse.quote(args.cluster_id, safe='')}",
                   admin=True)
        if args.json:
            print(json.dumps(out))
        else:
            note = "" if out["peer_notified"] else " (the peer could not be told; remove it there too)"
            print(f"removed {out['removed']}{note}")
        return 0
    if key == ("key", "rotate"):
        out = call(args, "POST", "/api/v1/key/rotate", admin=True)
        if args.json:
            print(json.dumps(out))
        else:
            print(f"new public key {out['public_key']} (announced to {len(out['peers_informed'])} peers)")
        return 0
    if key == ("tls", "rotate"):
        out = call(args, "POST", "/api/v1/tls/rotate", admin=True)
        if args.json:
            print(json.dumps(out))
        else:
            print(f"new peering certificate, pin {out['tls_pin']} (announced to {len(out['peers_informed'])} peers)")
        return 0
    if args.cmd == "status":
        out = call(args, "GET", "/api/v1/status")
        if args.json:
            print(json.dumps(out, indent=2))
        else:
            import time

            # The first rows only: a hub's 1,000 peers are `peer list`'s (an older gateway
            # ignores the parameter and answers the whole list).
            page = call(args, "GET", f"/api/v1/peers?limit={STATUS_PEERS}")
            peers = page if isinstance(page, list) else page["peers"]
            total = len(peers) if isinstance(page, list) else int(page["total"])
            _print(clitable.status(out, peers, time.time(), color=_color(), more=total - len(peers)))
        return 0
    if key == ("nat", "show"):
        out = call(args, "GET", "/api/v1/nat")
        if args.json:
            print(json.dumps(out, indent=2))
            return 0
        _print(clitable.nat(out, color=_color()))
        return 0
    if args.cmd == "trace":
        query = {"src": args.src, "dst": args.dst, "proto": args.proto}
        if args.port is not None:
            query["dport"] = str(args.port)
        out = call(args, "GET", "/api/v1/trace?" + urllib.parse.urlencode(query))
        if args.json:
            print(json.dumps(out, indent=2))
        else:
            from gateway import tracetable

            _print(tracetable.trace(out, color=_color()))
        return 0
    if key == ("ipam", "show"):
        out = call(args, "GET", "/api/v1/ipam")
        if args.json:
            print(json.dumps(out, indent=2))
        else:
            _print(clitable.ipam(out, color=_color()))
        return 0
    done = exportscli.dispatch(args, call)
    if done is not None:
        return done
    done = rangescli.dispatch(args, call)
    if done is not None:
        return done
    raise CliError(f"unknown command {args.cmd}")


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:2] == ["agent", "run"]:
        from fabric.agent import main as agent_main

        return int(agent_main(argv[2:]) or 0)
    from gateway.config import ConfigError

    args = parser().parse_args(argv)
    args.argv = argv  # gateway run: the launch record's key (gateway/launch.py)
    try:
        if (args.cmd, args.sub if hasattr(args, "sub") else None) == ("gateway", "run"):
            from gateway.clirun import cmd_gateway_run

            return cmd_gateway_run(args)
        if (args.cmd, args.sub if hasattr(args, "sub") else None) == ("dataplane", "run"):
            from gateway.clirun import cmd_dataplane_run

            return cmd_dataplane_run(args)
        return dispatch(args)
    except ConfigError as e:
        print(f"crosswire: config error: {e}", file=sys.stderr)
        return 2
    except CliError as e:
        print(f"crosswire: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
