"""Endpoint syntax and resolution with backoff (fabric.endpoints), without DNS."""

from __future__ import annotations

import pytest

from fabric.endpoints import BACKOFF_MAX, EndpointError, Resolver, parse


def test_parse_accepts_addresses_and_names() -> None:
    assert parse("198.18.0.2:51820") == ("198.18.0.2", 51820)
    assert parse("[fd00::1]:51820") == ("fd00::1", 51820)
    assert parse("gw.gpu.example:443") == ("gw.gpu.example", 443)
    assert parse("localhost:1") == ("localhost", 1)


@pytest.mark.parametrize("bad", [
    "1.2.3.4:notaport", "[::1", "[::1]", "[::1:51820", "fd00::1:51820", "198.18.0.2", "198.18.0.2:0",
    "198.18.0.2:65536", ":51820", "host name:1", "-bad-.example:1", "1.2.3.999:1", "[not-v6]:1", "", 7, None,
    "a" * 300 + ":1",
])
def test_parse_refuses_malformed(bad: object) -> None:
    with pytest.raises(EndpointError, match="endpoint"):
        parse(bad)


def test_addresses_resolve_without_lookup() -> None:
    def lookup(host: str, port: int) -> str:
        raise AssertionError("no lookup for an address")

    r = Resolver(lookup)
    assert r.resolve("198.18.0.2:51820", 0.0) == "198.18.0.2:51820"
    assert r.resolve("[fd00::1]:51820", 0.0) == "[fd00::1]:51820"


def test_unresolvable_names_back_off_and_recover() -> None:
    calls: list[str] = []
    answer: dict[str, str] = {}

    def lookup(host: str, port: int) -> str:
        calls.append(host)
        if host not in answer:
            raise OSError("Name or service not known")
        return answer[host]

    r = Resolver(lookup)
    with pytest.raises(EndpointError, match=r"cannot resolve 'gw.nonexistent.invalid'.*retrying in 1s"):
        r.resolve("gw.nonexistent.invalid:51820", 100.0)
    assert r.next_retry() == 101.0
    # Within the backoff: no new lookup (a slow resolver never stalls each sync).
    with pytest.raises(EndpointError):
        r.resolve("gw.nonexistent.invalid:51820", 100.5)
    assert calls == ["gw.nonexistent.invalid"]
    delays = []
    t = 101.0
    for _ in range(10):
        with pytest.raises(EndpointError):
            r.resolve("gw.nonexistent.invalid:51820", t)
        retry = r.next_retry()
        assert retry is not None
        delays.append(retry - t)
        t = retry
    assert delays[:3] == [2.0, 4.0, 8.0] and max(delays) == BACKOFF_MAX
    answer["gw.nonexistent.invalid"] = "fd00::7"
    assert r.resolve("gw.nonexistent.invalid:51820", t) == "[fd00::7]:51820"
    assert r.next_retry() is None
    # forget() drops failures of endpoints no peer uses.
    with pytest.raises(EndpointError):
        r.resolve("other.invalid:1", t)
    r.forget(set())
    assert r.next_retry() is None
