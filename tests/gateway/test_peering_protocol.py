"""The sans-IO peering messages: authentication, binding, freshness, key agreement."""

from __future__ import annotations

import base64
import copy

import pytest

from fabric.model import RangeMap
from gateway import peering
from gateway.peering import Ephemeral, PeeringError, Side
from gateway.tokens import b64e, new_token

NOW = 1_800_000_000.0
B_KEY = base64.b64encode(b"\x0b" * 32).decode()
A_KEY = base64.b64encode(b"\x0a" * 32).decode()
A = Side("lab", A_KEY, "lab:51820", (("pod", "10.244.0.0/16"),), "10.244.0.10", "http://lab:8080")
B = Side("gpu", B_KEY, "gpu:51820", (("pod", "10.244.0.0/16"), ("service", "10.96.0.0/12")),
         "10.244.0.9", "http://gpu:8080")


def exchange() -> tuple[object, ...]:
    tok = new_token("http://gpu:8080", "gpu", B_KEY, ttl=3600, now=NOW)
    ea, eb = Ephemeral.generate(), Ephemeral.generate()
    req = peering.build_join(tok, A, ea, NOW)
    got = peering.verify_join(req, tok.verifier, "gpu", B_KEY, NOW + 1)
    views = [RangeMap("pod", "10.244.0.0/16", "100.64.0.0/16")]
    resp, b_keys = peering.build_join_response(got, tok.verifier, B, views, eb, NOW + 1)
    a_side = peering.verify_join_response(resp, tok, req, ea, NOW + 2)
    return tok, req, got, resp, b_keys, a_side, ea


def test_join_roundtrip_agrees_keys() -> None:
    tok, req, got, resp, b_keys, a_side, _ = exchange()
    assert got.side == A and a_side.side == B  # type: ignore[attr-defined]
    assert a_side.views_of_us == [RangeMap("pod", "10.244.0.0/16", "100.64.0.0/16")]  # type: ignore[attr-defined]
    assert a_side.keys == b_keys  # type: ignore[attr-defined]
    assert len(b_keys.psk) == 32 and b_keys.psk != b_keys.channel_key  # type: ignore[attr-defined]
    # the secret itself is never on the wire
    for msg in (req, resp):
        assert b64e(tok.secret) not in str(msg)  # type: ignore[attr-defined]


def test_each_exchange_gets_fresh_keys() -> None:
    k1 = exchange()[4]
    k2 = exchange()[4]
    assert k1 != k2


def test_request_tampering_and_wrong_secret_rejected() -> None:
    tok, req, *_ = exchange()
    for path, value in ((("body", "cluster_id"), "evil"), (("body", "ranges"), []),
                        (("body", "public_key"), B_KEY), (("body", "ts"), NOW + 5)):
        bad = copy.deepcopy(req)
        bad[path[0]][path[1]] = value  # type: ignore[index]
        with pytest.raises(PeeringError) as e:
            peering.verify_join(bad, tok.verifier, "gpu", B_KEY, NOW)  # type: ignore[attr-defined]
        assert e.value.status == 401
    other = new_token("http://gpu:8080", "gpu", B_KEY, ttl=3600, now=NOW)
    with pytest.raises(PeeringError, match="authentication failed"):
        peering.verify_join(req, other.verifier, "gpu", B_KEY, NOW)


def test_stale_request_rejected() -> None:
    tok, req, *_ = exchange()
    with pytest.raises(PeeringError, match="stale or replayed"):
        peering.verify_join(req, tok.verifier, "gpu", B_KEY, NOW + peering.WINDOW + 1)  # type: ignore[attr-defined]


def test_token_for_another_gateway_rejected() -> None:
    tok, req, *_ = exchange()
    with pytest.raises(PeeringError, match="another gateway") as e:
        peering.verify_join(req, tok.verifier, "gpu", A_KEY, NOW)  # type: ignore[attr-defined]
    assert e.value.status == 403


def test_response_bound_to_request_and_pinned_key() -> None:
    tok, req, got, resp, _, _, ea = exchange()
    # a response for another request (replayed) is refused
    other_req = peering.build_join(tok, A, ea, NOW)  # type: ignore[arg-type]
    with pytest.raises(PeeringError, match="not bound"):
        peering.verify_join_response(resp, tok, other_req, ea, NOW)  # type: ignore[arg-type]
    # a request can never pass as a response (different key)
    with pytest.raises(PeeringError, match="authentication failed"):
        peering.verify_join_response(req, tok, req, ea, NOW)  # type: ignore[arg-type]
    # B answering with another key than the pinned one
    eb = Ephemeral.generate()
    imp = Side("gpu", A_KEY, None, (("pod", "10.244.0.0/16"),), None, "http://gpu:8080")
    resp2, _ = peering.build_join_response(got, tok.verifier, imp, [], eb, NOW)  # type: ignore[attr-defined]
    with pytest.raises(PeeringError, match="pinned"):
        peering.verify_join_response(resp2, tok, req, ea, NOW)  # type: ignore[arg-type]


def test_malformed_payloads() -> None:
    with pytest.raises(PeeringError, match=r"ranges\[0\].cidr: '10.0.0.0/33' is not a valid CIDR"):
        peering.parse_ranges([{"kind": "pod", "cidr": "10.0.0.0/33"}])
    with pytest.raises(PeeringError, match="kind"):
        peering.parse_ranges([{"kind": "node", "cidr": "10.0.0.0/8"}])
    with pytest.raises(PeeringError, match="same family and length"):
        peering.parse_views([{"kind": "pod", "real": "10.0.0.0/16", "view": "100.64.0.0/17"}])
    with pytest.raises(PeeringError, match="32 bytes"):
        peering.check_public_key(base64.b64encode(b"x" * 31).decode())
    with pytest.raises(PeeringError, match="malformed"):
        peering.open_envelope(b"k" * 32, {"body": "x"})


def test_channel_messages() -> None:
    key = b"\x42" * 32
    msg = peering.build_message(key, "lab", "gpu", "views", {"views": []}, NOW)
    m = peering.verify_message(msg, key, "gpu", NOW)
    assert m.sender == "lab" and m.type == "views"
    # reflection: a message for gpu is refused by lab
    with pytest.raises(PeeringError, match="addressed to another"):
        peering.verify_message(msg, key, "lab", NOW)
    with pytest.raises(PeeringError, match="authentication failed"):
        peering.verify_message(msg, b"\x43" * 32, "gpu", NOW)
    with pytest.raises(PeeringError, match="stale"):
        peering.verify_message(msg, key, "gpu", NOW + 1000)
    reply = peering.build_reply(key, m, "gpu", {"ok": 1}, NOW)
    assert peering.verify_reply(reply, key, msg, "lab", NOW)["ok"] == 1
    other = peering.build_message(key, "lab", "gpu", "views", {"views": []}, NOW)
    with pytest.raises(PeeringError, match="not bound"):
        peering.verify_reply(reply, key, other, "lab", NOW)


@pytest.mark.parametrize("ts", [float("nan"), float("inf"), float("-inf")])
def test_non_finite_timestamp_is_not_fresh(ts: float) -> None:
    # NaN compares false with everything: it used to pass the freshness window.
    with pytest.raises(PeeringError, match="'ts' is not a finite number"):
        peering.check_fresh({"ts": ts, "nonce": "bm9uY2Vub25jZW5vbmNl"}, NOW)
    key = b"\x42" * 32
    body = peering.build_message(key, "lab", "gpu", "views", {"views": []}, NOW)["body"]
    body["ts"] = ts  # correctly authenticated, so only the freshness check can refuse it
    with pytest.raises(PeeringError, match="'ts' is not a finite number"):
        peering.verify_message(peering.seal(key, body), key, "gpu", NOW)
