"""The operator commands' text: exact rendering of fixed API answers, and colour only on a terminal."""

from __future__ import annotations

import asyncio
import io
import json
import re
from pathlib import Path
from typing import Any

import pytest

from gateway import cli, clitable

ANSI = re.compile(r"\x1b\[[0-9;]*m")  # what clitable.paint adds

STATUS: dict[str, Any] = {
    "cluster_id": "lab", "public_key": "m7Lq4xV0cJ1c0n2lXxqkq3cR2pN0Yq9aT6vJbW2kF0E=",
    "endpoint": "203.0.113.10:51820", "url": "https://lab-gw.example.net:8080", "interface": "crosswire0",
    "implementation": "crosswire-wg", "gateway_ip": "10.244.0.1", "gateway_ip6": None,
    "tls_pins": ["4tu4vQQPd5fI2ZU0j-iXhdgmLQ6DqgBIh8Ueb4wda18"],
    "pod_cidrs": ["10.244.0.0/16"], "service_cidrs": ["10.96.0.0/12"], "ready": True, "ready_reason": "ok",
    "uptime_s": 11045.2, "peers": 2, "peers_by_state": {"connected": 1, "connecting": 1},
    "reconcile": {"runs": 412, "errors": 0, "dataplane_restarts": 0, "last_error": None, "last_ok": 1000.0},
}


def _view(kind: str, real: str, view: str) -> dict[str, str]:
    return {"kind": kind, "real": real, "view": view}


GPU: dict[str, Any] = {
    "cluster_id": "gpu", "state": "connected", "handshake_age_s": 42.3, "rtt_ms": 0.734, "loss": 0.0,
    "rx_bytes": 1288490189, "tx_bytes": 73400320, "endpoint": "198.51.100.7:51820", "endpoint_error": None,
    "our_views": [_view("pod", "10.244.0.0/16", "100.64.0.0/16"), _view("service", "10.96.0.0/12", "100.80.0.0/12")],
    "their_views": [_view("pod", "10.244.0.0/16", "100.65.0.0/16"),
                    _view("service", "10.96.0.0/12", "100.96.0.0/12")],
    "views_mode": "full", "their_views_mode": "full",
    "reach": "full: pod 10.244.0.0/16 as 100.64.0.0/16, service 10.96.0.0/12 as 100.80.0.0/12",
}
EDGE: dict[str, Any] = {  # never connected: no handshake, no RTT (None), its endpoint does not resolve
    "cluster_id": "edge-eu", "state": "connecting", "handshake_age_s": None, "rtt_ms": None, "loss": None,
    "rx_bytes": 0, "tx_bytes": 148, "endpoint": None,
    "endpoint_error": "cannot resolve edge.example.org: Name or service not known",
    "our_views": [_view("pod", "10.8.0.0/16", "10.8.0.0/16")], "their_views": None,
    "views_mode": "full", "their_views_mode": None, "reach": "full: pod 10.8.0.0/16 as 10.8.0.0/16",
}

PEERS_TABLE = [
    "PEER     STATE       HANDSHAKE      RTT  LOSS       RX        TX  ENDPOINT",
    "gpu      connected   42s ago    0.73 ms    0%  1.2 GiB  70.0 MiB  198.51.100.7:51820",
    "edge-eu  connecting  never            -     -      0 B     148 B  "
    "error: cannot resolve edge.example.org: Name or service not known",
]


def test_status_exact() -> None:
    assert clitable.status(STATUS, [GPU, EDGE], now=1003.0) == [
        "cluster lab  ready  2 peers: 1 connected, 1 connecting",
        "  public key  m7Lq4xV0cJ1c0n2lXxqkq3cR2pN0Yq9aT6vJbW2kF0E=",
        "  endpoint    203.0.113.10:51820",
        "  peering     https://lab-gw.example.net:8080",
        "  tls pin     4tu4vQQPd5fI2ZU0j-iXhdgmLQ6DqgBIh8Ueb4wda18",
        "  interface   crosswire0 (crosswire-wg)",
        "  gateway ip  10.244.0.1",
        "  pods        10.244.0.0/16",
        "  services    10.96.0.0/12",
        "  uptime      3h04m",
        "",
        *PEERS_TABLE,
        "",
        "reconcile: 412 runs, 0 errors, 0 data-plane restarts, last ok 3s ago",
    ]


def test_status_not_ready_no_peers() -> None:
    st = {**STATUS, "ready": False, "ready_reason": "nft: table busy", "endpoint": None, "service_cidrs": [],
          "gateway_ip6": "fd00::1", "uptime_s": 5, "peers": 0, "peers_by_state": {},
          "reconcile": {"runs": 3, "errors": 2, "dataplane_restarts": 1, "last_error": "NftError: busy\nretry",
                        "last_ok": None}}
    out = clitable.status(st, [], now=0.0)
    assert out[0] == "cluster lab  NOT READY: nft: table busy  no peers"
    assert out[2] == "  endpoint    -"
    assert out[6] == "  gateway ip  10.244.0.1, fd00::1"
    assert out[8] == "  services    -"
    assert out[9] == "  uptime      5s"
    assert out[10:] == ["", "no peers", "",
                        "reconcile: 3 runs, 2 errors, 1 data-plane restarts, last ok never; "
                        "last error: NftError: busy\\x0aretry"]


def test_peer_list_exact() -> None:
    assert clitable.peer_list([GPU, EDGE]) == [
        *PEERS_TABLE,
        "",
        "what our pods reach",
        "  PEER     WE VIEW  THEY VIEW  REACH",
        "  gpu      full     full       full: pod 10.244.0.0/16 as 100.64.0.0/16, service 10.96.0.0/12 as 100.80.0.0/12",
        "  edge-eu  full     -          full: pod 10.8.0.0/16 as 10.8.0.0/16",
        "",
        "their ranges -> our views",
        "  PEER     KIND     THEIR RANGE    OUR VIEW",
        "  gpu      pod      10.244.0.0/16  100.64.0.0/16",
        "  gpu      service  10.96.0.0/12   100.80.0.0/12",
        "  edge-eu  pod      10.8.0.0/16    10.8.0.0/16",
        "",
        "our ranges -> their views",
        "  PEER     KIND     OUR RANGE      THEIR VIEW",
        "  gpu      pod      10.244.0.0/16  100.65.0.0/16",
        "  gpu      service  10.96.0.0/12   100.96.0.0/12",
        "  edge-eu  -        -              (not received yet)",
    ]
    assert clitable.peer_list([]) == ["no peers"]


def test_odd_values_stay_in_their_columns() -> None:
    """A terminal escape in a peer's cluster ID is shown, not obeyed; wide characters
    count two columns; days-old handshakes, sub-percent loss, huge counters."""
    odd = [
        {"cluster_id": "evil\x1b[2Jname", "state": "error", "handshake_age_s": 200000, "rtt_ms": 250.0,
         "loss": 0.004, "rx_bytes": 5, "tx_bytes": 1023, "endpoint": "[2001:db8::1]:51820", "endpoint_error": None},
        {"cluster_id": "東京", "state": "connected", "handshake_age_s": 3599, "rtt_ms": 12.3456, "loss": 1.0,
         "rx_bytes": 1024, "tx_bytes": 2**50 * 3000, "endpoint": "x", "endpoint_error": ""},
    ]
    assert clitable.peers_table(odd) == [
        "PEER             STATE      HANDSHAKE       RTT  LOSS       RX          TX  ENDPOINT",
        "evil\\x1b[2Jname  error      2d07h ago    250 ms  0.4%      5 B      1023 B  [2001:db8::1]:51820",
        "東京             connected  59m59s ago  12.3 ms  100%  1.0 KiB  3000.0 PiB  x",
    ]


def _row(direction: str, kind: str, real: str, view: str) -> dict[str, str]:
    return {"direction": direction, "kind": kind, "real": real, "view": view}


NAT: dict[str, Any] = {"table": "inet crosswire", "peers": [{
    "cluster_id": "gpu", "egress_chain": "cw-egress-gpu", "ingress_chain": "cw-ingress-gpu",
    "remote": [_view("pod", "10.244.0.0/16", "100.64.0.0/16")],
    "local": [_view("pod", "10.244.0.0/16", "100.65.0.0/16"), _view("service", "10.96.0.0/12", "10.96.0.0/12")],
    "rules": [
        {"chain": "cw-egress-gpu", "comment": "c1", "handle": 7, "packets": 123456, "bytes": 98765432,
         "connections": 321, **_row("egress", "pod", "10.244.0.0/16", "100.65.0.0/16")},
        {"chain": "cw-egress-gpu", "comment": "c2", "handle": 8, "packets": 0, "bytes": 0, "connections": 0,
         **_row("egress", "service", "10.96.0.0/12", "10.96.0.0/12")},
        {"chain": "cw-ingress-gpu", "comment": "c3", "handle": 9, "packets": 42, "bytes": 4200, "connections": 2,
         **_row("ingress", "pod", "10.244.0.0/16", "100.65.0.0/16")},
        {"chain": "cw-ingress-gpu", "comment": "c4", "handle": None, "packets": 0, "bytes": 0, "connections": 0,
         **_row("ingress", "service", "10.96.0.0/12", "10.96.0.0/12")},
        # A sparse peer's view of us: an egress block (no ingress rule), an address in a shared map rule.
        {"chain": "cw-egress-gpu", "comment": "c5", "handle": 10, "packets": 9, "bytes": 900, "connections": 3,
         **_row("egress", "egress", "0.0.0.0/28", "100.64.0.0/28"), "shows": "any source -> 100.64.0.0-100.64.0.15"},
        {"chain": "cw-ingress-gpu", "comment": "c6", "handle": 11, "packets": 1, "bytes": 60, "connections": None,
         **_row("ingress", "export", "10.96.0.10/32", "100.64.0.16/32"), "map_connections": 1},
    ],
    "host_network": [{"map": "host_v4", "key": "100.64.0.0/16", "target": "10.244.0.1", "present": True,
                      "packets": 5, "bytes": 420}],
}]}


def test_nat_exact() -> None:
    assert clitable.nat(NAT) == [
        "table inet crosswire",
        "",
        "peer gpu",
        "  DIRECTION  KIND     REAL           VIEW                    PACKETS     BYTES  CONNS",
        "  egress     pod      10.244.0.0/16  100.65.0.0/16            123.5k  94.2 MiB    321",
        "  egress     service  10.96.0.0/12   10.96.0.0/12                  0       0 B      0",
        "  ingress    pod      10.244.0.0/16  100.65.0.0/16                42   4.1 KiB      2",
        "  ingress    service  10.96.0.0/12   10.96.0.0/12                  0       0 B      0",
        "  egress     egress   any source     100.64.0.0-100.64.0.15        9     900 B      3",
        "  ingress    export   10.96.0.10/32  100.64.0.16/32                1      60 B      -",
        "  remote     pod      10.244.0.0/16  100.64.0.0/16                 -         -      -",
        "  1 rule(s) missing from the kernel (not applied yet?)",
        "  host network 100.64.0.0/16 -> 10.244.0.1: 5 packets, 420 B",
    ]
    assert clitable.nat({"table": "inet crosswire", "peers": []}) == ["table inet crosswire", "no peers"]


def test_ipam_and_tokens_exact() -> None:
    assert clitable.ipam({"pools": ["100.64.0.0/10"], "local": {}, "conflicts": [
        {"peer": "gpu", "view": "100.64.0.0/16", "overlaps": ["100.64.0.0/10"]}], "allocations": [
        {"peer": "gpu", "kind": "pod", "real": "10.244.0.0/16", "view": "100.64.0.0/16", "remapped": True}]}) == [
        "pools 100.64.0.0/10",
        "PEER  KIND  REAL           VIEW           REMAPPED",
        "gpu   pod   10.244.0.0/16  100.64.0.0/16  yes",
        "conflict: gpu view 100.64.0.0/16 overlaps 100.64.0.0/10",
    ]
    assert clitable.ipam({"pools": [], "allocations": [], "conflicts": []}) == ["pools -", "no allocations"]
    assert clitable.tokens([
        {"token_id": "a1b2", "state": "active", "reusable": False, "uses": 0, "expires": 4600.0},
        {"token_id": "old", "state": "expired", "reusable": False, "uses": 0, "expires": 10.0},
        {"token_id": "legacy", "state": "used", "reusable": True, "uses": 12, "expires": None}], 1000.0) == [
        "TOKEN   STATE    USE         USES  EXPIRES",
        "a1b2    active   single use     0  in 1h00m",
        "old     expired  single use     0  expired",
        "legacy  used     reusable      12  never",
    ]
    assert clitable.tokens([], 0.0) == ["no tokens"]


@pytest.mark.parametrize(("n", "text"), [(0, "0 B"), (1023, "1023 B"), (1024, "1.0 KiB"), (1536, "1.5 KiB"),
                                         (5 * 2**30, "5.0 GiB"), (None, "-")])
def test_human_bytes(n: int | None, text: str) -> None:
    assert clitable.human_bytes(n) == text


def test_colour_wraps_cells_without_moving_columns() -> None:
    plain = clitable.peers_table([GPU, EDGE])
    painted = clitable.peers_table([GPU, EDGE], color=True)
    assert "\x1b[" not in "".join(plain)
    assert "\x1b[32mconnected\x1b[0m" in painted[1]
    assert "\x1b[33mconnecting\x1b[0m" in painted[2]
    assert "\x1b[31merror: cannot resolve" in painted[2]
    strip = [ANSI.sub("", line) for line in painted]
    assert strip == plain
    head = clitable.status(STATUS, [], 0.0, color=True)[0]
    assert head == ("cluster \x1b[1mlab\x1b[0m  \x1b[32mready\x1b[0m  "
                    "2 peers: \x1b[32m1 connected\x1b[0m, \x1b[33m1 connecting\x1b[0m")
    not_ready = clitable.status({**STATUS, "ready": False, "ready_reason": "x"}, [], 0.0, color=True)
    assert "\x1b[31mNOT READY: x\x1b[0m" in not_ready[0]


@pytest.mark.parametrize(("isatty", "env", "expect"), [
    (True, {}, True), (False, {}, False), (True, {"NO_COLOR": "1"}, False),
    (True, {"TERM": "dumb"}, False), (True, {"NO_COLOR": ""}, True)])
def test_use_color(isatty: bool, env: dict[str, str], expect: bool) -> None:
    assert clitable.use_color(isatty, env) is expect


class _Tty(io.StringIO):
    def __init__(self, tty: bool) -> None:
        super().__init__()
        self.tty = tty

    def isatty(self) -> bool:
        return self.tty


def _run(monkeypatch: pytest.MonkeyPatch, argv: list[str], tty: bool, older: Any = None) -> str:
    """``crosswire ARGV`` against canned API answers, stdout a (fake) terminal or a pipe."""
    answers = {"/api/v1/status": STATUS, "/api/v1/peers": [GPU, EDGE], "/api/v1/nat": NAT,
               # status asks for the first page (a gateway from before paging answers the list)
               "/api/v1/peers?limit=50": older or {"total": 2, "offset": 0, "limit": 50, "peers": [GPU, EDGE]}}

    def http(method: str, url: str, body: Any, headers: dict[str, str], timeout: float) -> tuple[int, Any]:
        return 200, json.loads(json.dumps(answers[url.removeprefix("http://gw")]))
    monkeypatch.setattr(cli, "_http", http)
    out = _Tty(tty)
    monkeypatch.setattr("sys.stdout", out)
    assert cli.main([*argv, "--api", "http://gw"]) == 0
    return out.getvalue()


@pytest.mark.parametrize("argv", [["status"], ["peer", "list"], ["nat", "show"]])
def test_cli_colour_only_on_a_terminal(argv: list[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NO_COLOR", raising=False)
    monkeypatch.delenv("TERM", raising=False)
    monkeypatch.delenv("CROSSWIRE_CONFIG", raising=False)
    piped = _run(monkeypatch, argv, tty=False)
    assert "\x1b" not in piped
    on_tty = _run(monkeypatch, argv, tty=True)
    assert "\x1b[" in on_tty
    assert ANSI.sub("", on_tty) == piped
    monkeypatch.setenv("NO_COLOR", "1")
    assert _run(monkeypatch, argv, tty=True) == piped
    # --json is what the API said, untouched, even on a terminal.
    assert "\x1b" not in _run(monkeypatch, [*argv, "--json"], tty=True)


def test_cli_text_and_json(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CROSSWIRE_CONFIG", raising=False)
    text = _run(monkeypatch, ["status"], tty=False)
    assert text.splitlines()[0] == "cluster lab  ready  2 peers: 1 connected, 1 connecting"
    assert "\n".join(PEERS_TABLE) in text
    assert _run(monkeypatch, ["status"], tty=False, older=[GPU, EDGE]) == text  # a gateway from before paging
    # The JSON output is byte for byte what it was: json.dumps(answer, indent=2) + newline.
    assert _run(monkeypatch, ["status", "--json"], tty=False) == json.dumps(STATUS, indent=2) + "\n"
    assert _run(monkeypatch, ["peer", "list", "--json"], tty=False) == json.dumps([GPU, EDGE], indent=2) + "\n"
    assert _run(monkeypatch, ["nat", "show", "--json"], tty=False) == json.dumps(NAT, indent=2) + "\n"


def test_real_api_answers_render(clusters: Any) -> None:
    """Two in-process gateways peered for real (fake data plane): the tables show
    what the API serves, and each NAT row names the mapping its rule implements
    (the rule's comment says so independently of the row's position)."""
    gpu, lab = clusters("gpu"), clusters("lab")

    async def go() -> tuple[Any, Any, Any]:
        tok = (await gpu.call("POST", "/api/v1/tokens", json={"ttl": "1h"})).json()["token"]
        assert (await lab.call("POST", "/api/v1/peers", json={"token": tok})).status_code == 201
        return tuple([(await lab.call("GET", f"/api/v1/{p}")).json() for p in ("status", "peers", "nat")])
    st, peers, natd = asyncio.run(go())
    out = clitable.status(st, peers, now=st["reconcile"]["last_ok"] + 2)
    assert out[0] == f"cluster lab  ready  1 peer: 1 {peers[0]['state']}"
    assert out[4] == f"  tls pin     {lab.gw.tls.pin}"
    assert out[11].split() == ["PEER", "STATE", "HANDSHAKE", "RTT", "LOSS", "RX", "TX", "ENDPOINT"]
    assert out[12].split()[:2] == ["gpu", peers[0]["state"]] and out[12].endswith("gpu.example:51820")
    assert out[-1].startswith("reconcile: ") and out[-1].endswith("last ok 2s ago")
    views = clitable.peer_list(peers)
    reach = views[views.index("what our pods reach"):views.index("their ranges -> our views")]
    assert reach[2].split()[:4] == ["gpu", "full", "full", "full:"] and "as 100." in reach[2]
    views = views[views.index("their ranges -> our views"):]
    cut = views.index("our ranges -> their views")
    for key, part in (("our_views", views[:cut]), ("their_views", views[cut:])):
        got = [line.split() for line in part if line.startswith("  gpu ")]
        assert got == [["gpu", v["kind"], v["real"], v["view"]] for v in peers[0][key]], key
    lines = clitable.nat(natd)
    rules = natd["peers"][0]["rules"]
    rows = [line.split() for line in lines[4:4 + len(rules)]]
    assert len(rules) == 4
    for r, (direction, kind, real, view, *_counters) in zip(rules, rows, strict=True):
        said = f"{view} -> {real}" if direction == "ingress" else f"{real} -> {view}"
        assert r["comment"].startswith(f"gpu: {direction} {kind} ") and said in r["comment"], (r, direction)
    assert [line.split()[0] for line in lines[8:10]] == ["remote", "remote"]
    # The fake data plane lists no kernel table: every rule and element shows as missing.
    assert lines[10] == "  4 rule(s) missing from the kernel (not applied yet?)"
    assert all(line.endswith("(missing from the kernel)") for line in lines[11:]) and len(lines) == 13


def test_peer_add_prints_both_directions(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("CROSSWIRE_ADMIN_TOKEN", "admin")
    monkeypatch.delenv("CROSSWIRE_CONFIG", raising=False)
    monkeypatch.setattr(cli, "_http", lambda *a: (201, json.loads(json.dumps(GPU))))
    tf = tmp_path / "token"
    tf.write_text("cw1.x\n")
    assert cli.main(["peer", "add", "--token-file", str(tf), "--api", "http://gw"]) == 0
    assert capsys.readouterr().out.splitlines() == [
        "peered with gpu (endpoint 198.51.100.7:51820)",
        "their ranges -> our views",
        "  PEER  KIND     THEIR RANGE    OUR VIEW",
        "  gpu   pod      10.244.0.0/16  100.64.0.0/16",
        "  gpu   service  10.96.0.0/12   100.80.0.0/12",
        "",
        "our ranges -> their views",
        "  PEER  KIND     OUR RANGE      THEIR VIEW",
        "  gpu   pod      10.244.0.0/16  100.65.0.0/16",
        "  gpu   service  10.96.0.0/12   100.96.0.0/12",
    ]


def test_status_counts_the_peers_it_does_not_show() -> None:
    out = clitable.status(STATUS, [GPU], now=1003.0, more=999)
    assert out[-4][:3] == "gpu" and out[-3:] == [
        "... and 999 more peers (crosswire peer list shows every one)", "",
        "reconcile: 412 runs, 0 errors, 0 data-plane restarts, last ok 3s ago"]
