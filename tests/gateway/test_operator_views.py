"""Operator views that stay small (issue 18, part 3): ``/api/v1/peers`` and
``/api/v1/nat`` with ``?peer=``, ``?limit=&offset=`` and ``?summary=true``, their
ETags, and the parameters refused naming themselves. In process: three peers of
``gpu`` through the real API over the fake data plane (NAT rendered for real)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from gateway import readviews
from gateway.errors import GatewayError
from tests.gateway.test_two_gateways import peer

PEERS = ("cpu", "edge", "lab")


@pytest.fixture
def hub(clusters: Any) -> Any:
    gpu = clusters("gpu")

    async def go() -> None:
        for name in PEERS:
            await peer(gpu, clusters(name))
        assert await gpu.gw.reconciler.reconcile()

    asyncio.run(go())
    return gpu


def get(c: Any, path: str, **kw: Any) -> Any:
    return asyncio.run(c.call("GET", path, auth=False, **kw))


def test_without_parameters_the_answers_are_as_before(hub: Any) -> None:
    peers = get(hub, "/api/v1/peers").json()
    assert isinstance(peers, list) and [p["cluster_id"] for p in peers] == list(PEERS)
    assert peers == hub.gw.read.peers()
    nat = get(hub, "/api/v1/nat").json()
    assert set(nat) == {"table", "peers", "drops"} and len(nat["peers"]) == 3
    assert hub.fabric.nat_calls[-1] is None  # the whole report, as before


def test_a_page_of_peers_is_built_for_its_peers_only(hub: Any) -> None:
    everyone = get(hub, "/api/v1/peers").json()
    page = get(hub, "/api/v1/peers?limit=2&offset=1").json()
    assert page["total"] == 3 and page["offset"] == 1 and page["limit"] == 2
    assert page["peers"] == everyone[1:3]
    assert get(hub, "/api/v1/peers?limit=2").json()["peers"] == everyone[:2]
    assert get(hub, "/api/v1/peers?offset=5").json() == {"total": 3, "offset": 5, "limit": None, "peers": []}
    one = get(hub, "/api/v1/peers?peer=edge").json()
    assert one["total"] == 1 and one["peers"] == [everyone[1]]


def test_the_nat_of_one_peer_asks_the_data_plane_for_that_peer(hub: Any) -> None:
    full = get(hub, "/api/v1/nat").json()
    hub.fabric.nat_calls.clear()
    one = get(hub, "/api/v1/nat?peer=lab").json()
    assert hub.fabric.nat_calls == [["lab"]]
    assert one["total"] == 1 and one["table"] == full["table"] and one["drops"] == full["drops"]
    assert one["peers"] == [p for p in full["peers"] if p["cluster_id"] == "lab"]
    page = get(hub, "/api/v1/nat?limit=1&offset=1").json()
    assert hub.fabric.nat_calls[-1] == ["edge"]
    assert [p["cluster_id"] for p in page["peers"]] == ["edge"] and page["total"] == 3
    get(hub, "/api/v1/nat?offset=9")
    assert hub.fabric.nat_calls[-1] == ["edge"]  # an empty page asks for nothing


def test_summaries_count_without_rows(hub: Any) -> None:
    hub.fabric.handshake = hub.clock() - 1
    s = get(hub, "/api/v1/peers?summary=true").json()
    assert s["peers"] == 3 and sum(s["peers_by_state"].values()) == 3
    assert s["rx_bytes"] == 3 * 7 and s["tx_bytes"] == 3 * 9  # the fake's counters, every peer
    assert s["endpoint_errors"] == 0 and len(s["version"]) == 16
    assert s["peers_by_state"] == get(hub, "/api/v1/status").json()["peers_by_state"]
    n = get(hub, "/api/v1/nat?summary=true").json()
    full = get(hub, "/api/v1/nat").json()
    assert n["peers"] == 3 and n["table"] == full["table"]
    assert n["rules"] == sum(len(p["rules"]) for p in full["peers"])
    assert n["mappings"] == sum(len(p["remote"]) + len(p["local"]) for p in full["peers"])
    assert n["host_network"] == sum(len(p["host_network"]) for p in full["peers"])
    assert n["exports"] is None and n["export_denied"] is None  # no exports configured
    assert n["dropped"] == {"packets": 0, "bytes": 0} and n["drops"] == []
    assert len(get(hub, "/api/v1/nat?summary=true").content) < 600


def test_versions_follow_the_peers_not_the_counters(hub: Any, clusters: Any) -> None:
    v1 = get(hub, "/api/v1/peers?summary=true").json()["version"]
    n1 = get(hub, "/api/v1/nat?summary=true").json()["version"]
    hub.fabric.handshake = 5.0  # counters move
    assert get(hub, "/api/v1/peers?summary=true").json()["version"] == v1
    assert asyncio.run(hub.call("DELETE", "/api/v1/peers/edge")).status_code == 200
    asyncio.run(hub.gw.reconciler.reconcile())
    v2 = get(hub, "/api/v1/peers?summary=true").json()
    assert v2["version"] != v1 and v2["peers"] == 2
    assert get(hub, "/api/v1/nat?summary=true").json()["version"] != n1


def test_etag_answers_304_while_unchanged(hub: Any) -> None:
    for path in ("/api/v1/peers?peer=lab", "/api/v1/nat?summary=true", "/api/v1/nat?peer=cpu", "/api/v1/peers"):
        r = get(hub, path)
        tag = r.headers["etag"]
        assert tag.startswith('"') and tag.endswith('"'), tag
        again = get(hub, path, headers={"If-None-Match": tag})
        assert again.status_code == 304 and again.content == b"" and again.headers["etag"] == tag
        assert get(hub, path, headers={"If-None-Match": '"other"'}).status_code == 200
    r = get(hub, "/api/v1/peers?peer=lab")
    asyncio.run(hub.call("DELETE", "/api/v1/peers/lab"))
    assert get(hub, "/api/v1/peers?peer=lab", headers={"If-None-Match": r.headers["etag"]}).status_code == 404


@pytest.mark.parametrize(("query", "status", "names"), [
    ("limit=0", 422, "limit"), ("limit=1001", 422, "limit"), ("limit=x", 422, "limit"),
    ("offset=-1", 422, "offset"), ("summary=maybe", 422, "summary"),
    ("summary=true&limit=5", 422, "summary"), ("summary=true&peer=lab", 422, "summary"),
    ("peer=", 422, "peer"), ("peer=nobody", 404, "nobody"),
])
def test_bad_parameters_are_refused_naming_them(hub: Any, query: str, status: int, names: str) -> None:
    for path in ("/api/v1/peers", "/api/v1/nat"):
        r = get(hub, f"{path}?{query}")
        assert r.status_code == status, (path, query, r.text)
        assert names in r.json()["detail"], r.text


def test_a_pending_peer_has_no_nat_rows(hub: Any) -> None:
    hub.store.update_peer("lab", their_views=None)
    body = get(hub, "/api/v1/nat?peer=lab").json()
    assert body["peers"] == [] and body["total"] == 0
    assert get(hub, "/api/v1/peers?peer=lab").json()["peers"][0]["state"] == "pending"


def test_window_and_etag_matching() -> None:
    ids = ["a", "b", "c", "d"]
    assert readviews.window(ids, readviews.Query(limit=2, offset=1)) == (["b", "c"], 4)
    assert readviews.window(ids, readviews.Query(peer="c", offset=1)) == ([], 1)
    with pytest.raises(GatewayError, match="peer: no peer 'z'"):
        readviews.window(ids, readviews.Query(peer="z"))
    assert readviews.not_modified('W/"x", "y"', '"x"') and readviews.not_modified("*", '"q"')
    assert not readviews.not_modified(None, '"x"') and not readviews.not_modified('"y"', '"x"')
    assert readviews.digest({"b": 1, "a": [2]}) == readviews.digest({"a": [2], "b": 1})


def test_cli_status_prints_the_first_page_and_counts_the_rest(hub: Any, capsys: pytest.CaptureFixture[str],
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    from gwharness import serving

    from gateway import cli

    monkeypatch.setattr(cli, "STATUS_PEERS", 2)
    with serving(hub.app) as (_, url):
        assert cli.main(["status", "--api", url]) == 0
        out = capsys.readouterr().out.splitlines()
        assert out[0].startswith("cluster gpu") and "3 peers" in out[0]
        table = out[out.index("") + 1:]
        assert [line.split()[0] for line in table[1:3]] == ["cpu", "edge"]
        assert table[3] == "... and 1 more peers (crosswire peer list shows every one)"
        assert cli.main(["peer", "list", "--api", url]) == 0  # every peer, as before
        listed = capsys.readouterr().out
        assert all(name in listed for name in PEERS), listed
