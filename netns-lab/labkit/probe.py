"""Requests from inside a lab namespace: used by the demo and the lab tests."""

from __future__ import annotations

import json
import time
from typing import Any

from .lab import Lab, http, run


def get_json(lab: Lab, cid: str, member: str, url: str, timeout: float = 5) -> dict[str, Any]:
    code, body = http(lab.plan.ns_of(cid, member), url, timeout=timeout)
    assert code == 200, f"{cid}/{member} GET {url} -> {code} {body!r}"
    data: dict[str, Any] = json.loads(body)
    return data


def eventually_json(lab: Lab, cid: str, member: str, url: str, within: float = 20) -> dict[str, Any]:
    end = time.monotonic() + within
    while True:
        code, body = http(lab.plan.ns_of(cid, member), url, timeout=2)
        if code == 200:
            data: dict[str, Any] = json.loads(body)
            return data
        assert time.monotonic() < end, f"{cid}/{member} GET {url} never answered (last {code} {body!r})"
        time.sleep(0.5)


def download_sha(lab: Lab, cid: str, member: str, url: str, timeout: float = 120) -> str:
    p = run("sh", "-c", f"curl -sf -m {timeout} '{url}' | sha256sum", ns=lab.plan.ns_of(cid, member),
            timeout=timeout + 5)
    return p.stdout.split()[0]


def upload_sha(lab: Lab, cid: str, member: str, url: str, path: str,
               timeout: float = 120) -> dict[str, Any]:
    p = run("curl", "-sf", "-m", str(timeout), "-H", "Content-Type: application/octet-stream",
            "--data-binary", f"@{path}", url, ns=lab.plan.ns_of(cid, member), timeout=timeout + 5)
    data: dict[str, Any] = json.loads(p.stdout)
    return data
