"""The published OpenAPI document is the real API: a schemathesis run against a live gateway.

One ``crosswire gateway run`` daemon (data plane included: /readyz and
/api/v1/nat read it) listens on 127.0.0.1 inside a namespace of its own;
schemathesis (``st run``) runs inside that namespace too, so all traffic stays
there. Every response must carry a documented status code and content type and
a body matching the documented schema; no 5xx. A run without credentials must
change nothing (state.db and ipam.db are compared table by table); a run with
the admin credential covers the read endpoints (writes would change state on
purpose). Bounded and repeatable: a fixed number of cases per operation,
deterministic generation (the same ~600 cases every run, no example database),
a time limit per run; the whole test takes ~15 s.

The admin token reaches schemathesis through its config file's ``${CW_ADMIN}``
placeholder (environment), never through argv.
"""

from __future__ import annotations

import os
import re
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from gwharness import Gw
from nsutil import Namespaces, sh, uniq

pytestmark = [pytest.mark.root]

ST = Path(sys.executable).parent / "st"
URL = "http://127.0.0.1:8081"  # the operator listener: the peering one publishes no document
MAX_EXAMPLES = 30  # per operation in the fuzzing phase (16 operations), plus the coverage phase
RUN_BUDGET = 60  # seconds per schemathesis run (killed past it)
CHECKS = ("not_a_server_error,status_code_conformance,content_type_conformance,"
          "response_headers_conformance,response_schema_conformance,unsupported_method,"
          "allow_header_conformance")


def snapshot(state_dir: Path) -> dict[str, Any]:
    """Every row of every table in state.db and ipam.db, plus the admin token file."""
    out: dict[str, Any] = {"admin-token": (state_dir / "admin-token").read_text()}
    for name in ("state.db", "ipam.db"):
        db = sqlite3.connect(f"file:{state_dir / name}?mode=ro", uri=True)
        try:
            tables = [r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='table' ORDER BY name")]
            for t in tables:
                out[f"{name}:{t}"] = sorted(map(repr, db.execute(f'SELECT * FROM "{t}"')))
        finally:
            db.close()
    return out


@pytest.fixture
def gateway(netns: Namespaces, tmp_path: Path) -> Iterator[Gw]:
    ns = netns.add("api")
    sh("ip", "addr", "add", "10.244.0.10/32", "dev", "lo", ns=ns)
    iface = uniq("cwapi")
    state = tmp_path / "state"
    config = tmp_path / "gw.yaml"
    config.write_text(f"""
cluster_id: api
pod_cidrs: [10.244.0.0/16]
service_cidrs: [10.96.0.0/12]
gateway_ip: 10.244.0.10
wireguard:
  interface: {iface}
  listen_port: 51820
  endpoint: 192.0.2.1:51820
  implementation: wireguard-go
api:
  listen: 127.0.0.1:8080
  advertise: http://192.0.2.1:8080
state_dir: {state}
""")
    gw = Gw(name="api", ns=ns, underlay="127.0.0.1", config=config, state_dir=state,
            log=tmp_path / "gw.log", iface=iface)
    gw.start()
    try:
        gw.wait_ready()
        yield gw
    finally:
        if gw.proc is not None and gw.proc.poll() is None:
            gw.proc.kill()
            gw.proc.wait(timeout=10)
        # the data plane (wireguard-go) dies with the namespace (netns fixture)


def st_run(gw: Gw, tmp: Path, tag: str, *args: str, admin: bool = False) -> tuple[int, str]:
    """One bounded schemathesis run inside the gateway's namespace: (exit code, output)."""
    cfg = tmp / f"st-{tag}.toml"
    cfg.write_text('headers = { Authorization = "Bearer ${CW_ADMIN}" }\n' if admin else "")
    env = dict(os.environ, NO_COLOR="1", SCHEMATHESIS_HOOKS="")  # no hooks from the caller's environment
    if admin:
        env["CW_ADMIN"] = (gw.state_dir / "admin-token").read_text().strip()
    cmd = ["ip", "netns", "exec", gw.ns, str(ST), "--config-file", str(cfg), "run", f"{URL}/openapi.json",
           "--checks", CHECKS, "--phases", "coverage,fuzzing", "--max-examples", str(MAX_EXAMPLES),
           "--generation-deterministic", "--no-shrink",  # same cases every run: no seed, no example database
           "--workers", "1", "--request-timeout", "10",
           "--report", "junit", "--report-junit-path", str(tmp / f"st-{tag}.xml"), "--no-color", *args]
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=RUN_BUDGET, check=False,
                       cwd=tmp)  # its crash cache (.schemathesis/) stays in the test's directory
    return r.returncode, r.stdout + r.stderr


ADMIN_OPS = {"DELETE /api/v1/peers/{cluster_id}", "DELETE /api/v1/tokens/{token_id}", "GET /api/v1/tokens",
             "POST /api/v1/key/rotate", "POST /api/v1/peers", "POST /api/v1/ranges/announce",
             "POST /api/v1/tokens", "PUT /api/v1/peers/{cluster_id}/exports", "POST /api/v1/tls/rotate",
             "GET /api/v1/peers/{cluster_id}/ranges", "POST /api/v1/peers/{cluster_id}/ranges"}


def only_401(output: str) -> set[str]:
    """The operations schemathesis saw answer nothing but 401 (its "Authentication failed" warning)."""
    m = re.search(r"401 Unauthorized \(\d+ operations?\):\n((?:\s+- .+\n)+)", output)
    return {line.strip()[2:] for line in m.group(1).splitlines()} if m else set()


def cases_run(output: str) -> int:
    m = re.search(r"(\d+) generated", output)
    return int(m.group(1)) if m else 0


def test_live_gateway_answers_as_published(gateway: Gw, tmp_path: Path) -> None:
    time.sleep(1)  # let the first reconcile/announcement writes settle
    before = snapshot(gateway.state_dir)
    t0 = time.monotonic()
    code, out = st_run(gateway, tmp_path, "anon")
    took = time.monotonic() - t0
    print(out[-3000:])
    assert code == 0, out[-20000:]
    assert cases_run(out) >= 200, out[-3000:]
    assert only_401(out) == ADMIN_OPS, out[-3000:]  # without the credential no admin call got through
    assert snapshot(gateway.state_dir) == before
    assert gateway.proc is not None and gateway.proc.poll() is None
    assert took < RUN_BUDGET

    # The read endpoints with the admin credential (GET /api/v1/tokens among them): same
    # checks; reading changes nothing either.
    code, out = st_run(gateway, tmp_path, "admin", "--include-method", "GET", admin=True)
    print(out[-3000:])
    assert code == 0, out[-20000:]
    assert cases_run(out) >= 50, out[-3000:]
    assert "Authentication failed" not in out and not only_401(out), out[-3000:]  # the credential worked
    assert before["admin-token"].strip() not in out + (tmp_path / "st-admin.xml").read_text()
    assert gateway.cli_json("status")["ready"] is True
    assert snapshot(gateway.state_dir) == before
