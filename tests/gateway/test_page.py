"""The operator page without a browser: the route, its headers, the policy that
pins the inlined script and style, nothing from outside, no HTML sinks; and the
table drops /api/v1/nat reports with it. (tests/gateway/test_page_browser.py
runs it in Chromium.)"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import re
from typing import Any

import pytest

from fabric.nat import drops
from gateway import page


def get(cluster: Any, path: str) -> Any:
    return asyncio.run(cluster.call("GET", path, auth=False))


def directives(csp: str) -> dict[str, list[str]]:
    return {d.split()[0]: d.split()[1:] for d in (x.strip() for x in csp.split(";")) if d}


def sha(text: str) -> str:
    return "'sha256-" + base64.b64encode(hashlib.sha256(text.encode()).digest()).decode() + "'"


def test_page_is_served_with_a_strict_policy(clusters: Any) -> None:
    gpu = clusters("gpu")
    r = get(gpu, "/")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    html = r.text
    csp = directives(r.headers["content-security-policy"])
    assert csp["default-src"] == ["'none'"] and csp["connect-src"] == ["'self'"]
    assert csp["frame-ancestors"] == ["'none'"] and csp["base-uri"] == ["'none'"]
    assert csp["require-trusted-types-for"] == ["'script'"]
    # exactly the inlined script and style, by hash: no 'unsafe-inline', no other source
    scripts = re.findall(r"<script>(.*?)</script>", html, re.S)
    styles = re.findall(r"<style>(.*?)</style>", html, re.S)
    assert len(scripts) == 1 and len(styles) == 1
    assert csp["script-src"] == [sha(scripts[0])] and csp["style-src"] == [sha(styles[0])]
    assert r.headers["x-content-type-options"] == "nosniff" and r.headers["x-frame-options"] == "DENY"
    assert r.headers["referrer-policy"] == "no-referrer"
    # nothing from outside: no src/href attributes, no absolute URL but the SVG namespace
    assert not re.search(r"\b(src|href)\s*=", html)
    assert set(re.findall(r"https?://[^\s'\"]+", html)) == {"http://www.w3.org/2000/svg"}
    # no HTML string sinks and no eval in the script (the browser enforces it too)
    for sink in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval(", "new Function"):
        assert sink not in scripts[0], sink
    # the page reads only the public GET API
    assert set(re.findall(r"'api/v1/[a-z]*'", scripts[0])) == {
        "'api/v1/status'", "'api/v1/peers'", "'api/v1/nat'", "'api/v1/page'", "'api/v1/'"}
    # not an API operation
    assert "/" not in get(gpu, "/openapi.json").json()["paths"]


def test_page_needs_no_credential_and_holds_no_secret(clusters: Any) -> None:
    gpu = clusters("gpu")
    html = get(gpu, "/").text
    assert gpu.admin not in html and gpu.store.private_key() not in html


def test_build_refuses_text_that_would_escape_its_element() -> None:
    tpl = "<style>/*STYLE*/</style><script>/*SCRIPT*/</script>"
    assert page.build(tpl, "a{}", "1").html == "<style>a{}</style><script>1</script>"
    with pytest.raises(ValueError, match="close"):
        page.build(tpl, "a{}", "x='</SCRIPT>'")
    with pytest.raises(ValueError, match="close"):
        page.build(tpl, "</style>", "1")
    with pytest.raises(ValueError, match="slot"):
        page.build("<script>/*SCRIPT*/</script>", "", "")


def test_nat_reports_the_table_drops(clusters: Any) -> None:
    body = get(clusters("gpu"), "/api/v1/nat").json()
    assert body["drops"] == []  # the fake data plane has no table


def test_drops_are_the_drop_rules_with_their_counters() -> None:
    listed = [{"nftables": [
        {"metainfo": {"version": "1.0.6"}},
        {"chain": {"family": "inet", "table": "crosswire", "name": "prerouting"}},
        {"rule": {"chain": "prerouting", "handle": 4, "comment": "from cw: pick the peer",
                  "expr": [{"vmap": {}}]}},
        {"rule": {"chain": "prerouting", "handle": 5, "comment": "from cw: drop",
                  "expr": [{"match": {}}, {"counter": {"packets": 3, "bytes": 252}}, {"drop": None}]}},
    ]}, {"nftables": [
        {"rule": {"chain": "postrouting", "handle": 9, "comment": "into cw: drop",
                  "expr": [{"counter": {"packets": 0, "bytes": 0}}, {"drop": None}]}},
    ]}]
    assert drops(listed) == [
        {"chain": "prerouting", "comment": "from cw: drop", "packets": 3, "bytes": 252, "handle": 5},
        {"chain": "postrouting", "comment": "into cw: drop", "packets": 0, "bytes": 0, "handle": 9},
    ]
    assert drops([]) == [] and drops([{}]) == []
