"""The CLI against a live in-process gateway (uvicorn on 127.0.0.1) and its error handling."""

from __future__ import annotations

import io
import json
import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from gwharness import serving

from gateway.cli import main


@pytest.fixture
def served(clusters: Any) -> Iterator[tuple[Any, str]]:
    gpu = clusters("gpu")
    with serving(gpu.app) as (_, url):
        yield gpu, url


def test_cli_commands(served: Any, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    gpu, url = served
    monkeypatch.delenv("CROSSWIRE_ADMIN_TOKEN", raising=False)
    monkeypatch.delenv("CROSSWIRE_API", raising=False)
    sd = ["--state-dir", str(gpu.dir)]
    assert main(["token", "create", "--api", url, *sd, "--ttl", "15m"]) == 0
    out, err = capsys.readouterr()
    assert out.startswith("cw1.") and out.count("\n") == 1 and "single use" in err
    assert main(["--api", url, "status"]) == 0  # options before the subcommand work too
    status = capsys.readouterr().out.splitlines()
    # (never reconciled in this test: not ready, and the headline says why)
    assert status[0] == "cluster gpu  NOT READY: data plane not programmed yet  no peers" and status[-3:-1] == ["no peers", ""]
    assert status[-1].startswith("reconcile: ")
    assert main(["token", "list", "--api", url, *sd]) == 0
    listed = capsys.readouterr().out
    assert "active" in listed and "single use" in listed and "cw1." not in listed
    assert listed.split()[:5] == ["TOKEN", "STATE", "USE", "USES", "EXPIRES"]
    tid = listed.splitlines()[1].split()[0]
    assert main(["token", "revoke", tid, "--api", url, *sd]) == 0
    assert f"revoked {tid}" in capsys.readouterr().out
    assert main(["token", "list", "--api", url, *sd]) == 0
    assert "no tokens" in capsys.readouterr().out
    # A token stored before TTLs were bounded (expires inf) lists without a traceback.
    from gateway.tokens import TokenRecord

    gpu.store.add_token(TokenRecord(token_id="legacy", verifier=b"v" * 16, created=0.0,
                                    expires=float("inf"), reusable=True))
    assert main(["token", "list", "--api", url, *sd]) == 0
    assert "legacy  active" in capsys.readouterr().out
    assert main(["token", "list", "--api", url, "--json", *sd]) == 0
    assert json.loads(capsys.readouterr().out)[0]["expires"] is None
    assert main(["token", "revoke", "legacy", "--api", url, *sd]) == 0
    capsys.readouterr()
    assert main(["status", "--api", url, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["cluster_id"] == "gpu"
    assert main(["peer", "list", "--api", url]) == 0
    assert "no peers" in capsys.readouterr().out
    assert main(["nat", "show", "--api", url]) == 0
    assert "table inet crosswire" in capsys.readouterr().out
    assert main(["ipam", "show", "--api", url, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["allocations"] == []
    # errors: stderr + exit 1
    assert main(["peer", "remove", "nobody", "--api", url, *sd]) == 1
    assert "no peer 'nobody' (HTTP 404)" in capsys.readouterr().err
    assert main(["peer", "add", "cw1.garbage", "--api", url, *sd]) == 1
    assert "malformed" in capsys.readouterr().err
    # The token off the command line: stdin ('-') or a file reach the gateway just the same.
    monkeypatch.setattr("sys.stdin", io.StringIO("cw1.garbage\n"))
    assert main(["peer", "add", "-", "--api", url, *sd]) == 1
    assert "malformed" in capsys.readouterr().err
    tf = Path(sd[1]) / "token"
    tf.write_text("cw1.garbage\n")
    assert main(["peer", "add", "--token-file", str(tf), "--api", url, *sd]) == 1
    assert "malformed" in capsys.readouterr().err
    assert main(["peer", "add", "--api", url, *sd]) == 1
    assert "no token (pipe it in with 'peer add -'" in capsys.readouterr().err
    monkeypatch.setattr("sys.stdin", io.StringIO("  \n"))
    assert main(["peer", "add", "-", "--api", url, *sd]) == 1
    assert "the token is empty" in capsys.readouterr().err
    assert main(["peer", "add", "--token-file", str(tf) + ".missing", "--api", url, *sd]) == 1
    assert "--token-file: cannot read" in capsys.readouterr().err
    assert main(["token", "create", "--api", url, "--state-dir", "/nonexistent"]) == 1
    assert "cannot read the admin credential" in capsys.readouterr().err
    monkeypatch.setenv("CROSSWIRE_ADMIN_TOKEN", "wrong")
    assert main(["token", "create", "--api", url]) == 1
    assert "HTTP 401" in capsys.readouterr().err


def test_cli_api_from_config_and_unreachable(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CROSSWIRE_API", raising=False)
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()  # nothing listens there now
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"cluster_id: x\npod_cidrs: [10.244.0.0/16]\napi:\n  operator_listen: 0.0.0.0:{port}\n")
    assert main(["status", "--config", str(cfg)]) == 1
    assert f"cannot reach the gateway at http://127.0.0.1:{port}" in capsys.readouterr().err
    cfg.write_text("cluster_id: x\npod_cidrs: [10.244.0.0/33]\n")
    assert main(["status", "--config", str(cfg)]) == 2
    assert "pod_cidrs[0]: '10.244.0.0/33' is not a valid CIDR" in capsys.readouterr().err
    assert main(["gateway", "run", "--config", str(cfg)]) == 2
    assert "config error: pod_cidrs[0]" in capsys.readouterr().err


def test_minimal_http_client_edge_cases(capsys: pytest.CaptureFixture[str]) -> None:
    from gateway.cli import _dechunk

    assert _dechunk(b"4\r\nWiki\r\n5;x=1\r\npedia\r\n0\r\n\r\n") == b"Wikipedia"
    # something that is not HTTP on the port: a clear error, exit 1
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen()
    port = srv.getsockname()[1]

    def answer() -> None:
        c, _ = srv.accept()
        c.recv(4096)
        c.sendall(b"SSH-2.0-OpenSSH\r\n")
        c.close()
    t = threading.Thread(target=answer)
    t.start()
    try:
        assert main(["status", "--api", f"http://127.0.0.1:{port}"]) == 1
        assert "the answer is not HTTP" in capsys.readouterr().err
    finally:
        t.join(timeout=5)
        srv.close()
