"""``crosswire token create --exports``, ``peer exports``, ``exports``, ``imports`` against a live gateway."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from gwharness import serving

from gateway.cli import main

EXPORTS = [{"name": "web.default", "ports": ["80/tcp"], "addresses": ["10.96.0.10"]},
           {"name": "trainer.ml", "addresses": ["10.244.5.17"]}]


def test_export_commands(clusters: Any, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CROSSWIRE_ADMIN_TOKEN", raising=False)
    monkeypatch.delenv("CROSSWIRE_API", raising=False)
    gpu, lab = clusters("gpu", exports=EXPORTS), clusters("lab")
    with serving(gpu.app) as (_, url), serving(lab.app) as (_, lab_url):
        sd = ["--api", url, "--state-dir", str(gpu.dir)]
        assert main(["token", "create", *sd, "--exports", "web.default"]) == 0
        tok = capsys.readouterr().out.strip()
        assert main(["token", "create", *sd, "--exports", "web.default,nope.x"]) == 1
        assert "nope.x is not an export of this gateway" in capsys.readouterr().err

        async def go() -> None:
            r = await lab.call("POST", "/api/v1/peers", json={"token": tok})
            assert r.status_code == 201, r.text
            await gpu.gw.export_sync.step()

        asyncio.run(go())
        assert main(["exports", *sd]) == 0
        out = capsys.readouterr().out.splitlines()
        assert out[0] == "exposure: exports"
        assert out[2].split() == ["EXPORT", "PORTS", "ADDRESSES", "DNS"]
        assert out[3].split() == ["web.default", "80/tcp", "10.96.0.10/32", "web.default.svc.cluster.local"]
        assert out[-1].split() == ["lab", "web.default", "0"]
        assert main(["peer", "exports", "lab", "web.default,trainer.ml", *sd]) == 0
        assert capsys.readouterr().out.strip() == "lab may reach web.default,trainer.ml"
        assert main(["peer", "exports", "lab", "all", *sd, "--json"]) == 0
        assert json.loads(capsys.readouterr().out)["all"] is True
        assert main(["imports", "--api", lab_url]) == 0
        rows = capsys.readouterr().out.splitlines()
        assert rows[0].split()[:3] == ["PEER", "NAME", "PORTS"]
        assert rows[1].split()[:3] == ["gpu", "web.default", "80/tcp"]
        assert rows[1].split()[-1] == "web.default.svc.clusterset.local"
        assert main(["exports", "--api", lab_url]) == 0
        assert capsys.readouterr().out.startswith("exposure: all")
