"""``crosswire token create --ranges`` and ``crosswire peer ranges PEER [--approve|--reject]``
against a live in-process gateway."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from gwharness import serving

from gateway.cli import main


def test_token_ranges_and_approval_through_the_cli(clusters: Any, capsys: pytest.CaptureFixture[str],
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CROSSWIRE_ADMIN_TOKEN", raising=False)
    monkeypatch.delenv("CROSSWIRE_API", raising=False)
    gpu, lab = clusters("gpu", peer_ranges={"approval": "manual"}), clusters("lab")
    with serving(gpu.app) as (_, url):
        sd = ["--api", url, "--state-dir", str(gpu.dir)]
        assert main(["token", "create", *sd, "--ranges", "10.244.0.0/16,8.8.8.0/24"]) == 1
        assert "ranges[1]: 8.8.8.0/24 is outside peer_ranges.allow" in capsys.readouterr().err
        assert main(["token", "create", *sd, "--ranges", "10.244.0.0/16,10.245.0.0/16,10.96.0.0/12"]) == 0
        tok = capsys.readouterr().out.strip()

        async def peer_and_grow() -> Any:
            assert (await lab.call("POST", "/api/v1/peers", json={"token": tok})).status_code == 201
            lab.close()
            lab.over = {"pod_cidrs": ["10.244.0.0/16", "10.245.0.0/16"]}
            lab.open()
            return (await lab.call("POST", "/api/v1/ranges/announce")).json()

        assert asyncio.run(peer_and_grow()) == {"gpu": "pending: gpu requires an operator's approval of range changes"}
        assert main(["peer", "ranges", "lab", *sd]) == 0
        out = capsys.readouterr().out.splitlines()
        assert out[0] == "peer lab  approval manual  token ranges 10.244.0.0/16,10.245.0.0/16,10.96.0.0/12"
        assert out[2].split() == ["KIND", "RANGE", "OUR", "VIEW"]
        assert [r.split()[:2] for r in out[3:5]] == [["pod", "10.244.0.0/16"], ["service", "10.96.0.0/12"]]
        assert out[6:] == ["pending change (crosswire peer ranges lab --approve | --reject):",
                           "  + pod 10.245.0.0/16"]
        assert main(["peer", "ranges", "lab", "--approve", *sd]) == 0
        out = capsys.readouterr().out.splitlines()
        assert "no pending range change" in out and out[-1] == "applied"
        assert "10.245.0.0/16" in {m.real for m in gpu.fabric.last.peers[0].remote}
        assert "10.245.0.0/16" in {m.real for m in lab.fabric.last.peers[0].local}  # lab was told
        assert main(["peer", "ranges", "lab", "--reject", *sd]) == 1
        assert "peer lab has no pending range change (HTTP 409)" in capsys.readouterr().err
        assert main(["peer", "ranges", "lab", "--json", *sd]) == 0
        assert json.loads(capsys.readouterr().out)["pending"] is None
        with pytest.raises(SystemExit):
            main(["peer", "ranges", "lab", "--approve", "--reject", *sd])
