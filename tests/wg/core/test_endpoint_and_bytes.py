"""Per-peer byte counters and endpoints carrying our local address (sans-IO).

Counters: every authenticated message counts for its peer in both directions
(handshake initiation and response, keepalives, data), as wireguard-go and the
kernel report in `wg show`; cookie replies count for no peer. Endpoints: a
datagram's source may carry the local address it arrived at (the I/O layer's
packet info); replies go to that 3-tuple, `forget_source` drops the address.
"""

from __future__ import annotations

import ipaddress

from wg.core.wgsim import Pair, ipv4_packet, uapi

from fabric.wg import messages as m


def _sent(pair: Pair, src: tuple[str, int]) -> int:
    return sum(len(d) for s, _, d, _ in pair.net.log if s == src)


def test_peer_bytes_count_every_authenticated_message(pair: Pair) -> None:
    pair.a_to_b(b"first")  # initiation, response, data
    for _ in range(3):
        pair.b_to_a(b"pong")
        pair.a_to_b(b"ping")
    pair.net.advance(11)  # passive keepalive from whoever received data last
    kinds = pair.kinds()
    assert kinds[:2] == [m.INITIATION, m.RESPONSE] and kinds[-1] == m.TRANSPORT
    a_sent, b_sent = _sent(pair, pair.A_EP), _sent(pair, pair.B_EP)
    assert (pair.peer_b.tx_bytes, pair.peer_b.rx_bytes) == (a_sent, b_sent)
    assert (pair.peer_a.tx_bytes, pair.peer_a.rx_bytes) == (b_sent, a_sent)
    # The initiator's rx includes the 92-byte response, the responder's the 148-byte initiation.
    assert pair.peer_b.rx_bytes >= m.RESPONSE_SIZE + 3 * 32
    out = uapi(pair.a, "get=1\n\n", pair.clock.now)
    assert f"tx_bytes={a_sent}\nrx_bytes={b_sent}\n" in out


def test_cookie_reply_counts_for_no_peer(pair: Pair) -> None:
    pair.b.load.force = True  # B answers the first initiation with a cookie reply
    pair.a.on_packet(ipv4_packet("10.0.0.1", "10.0.0.2"), pair.clock.now)
    pair.net.flush()
    assert pair.kinds() == [m.INITIATION, m.COOKIE_REPLY]
    assert pair.b.counters["tx_cookie_reply"] == 1
    assert pair.b.counters["tx_bytes"] == m.COOKIE_REPLY_SIZE
    assert pair.peer_a.tx_bytes == pair.peer_a.rx_bytes == 0
    assert pair.peer_b.rx_bytes == 0  # the cookie reply is not a peer's message
    assert pair.peer_b.tx_bytes == m.INITIATION_SIZE


def _local(addr: str) -> bytes:
    return ipaddress.ip_address(addr).packed


def test_reply_goes_from_the_local_address_the_peer_wrote_to(pair: Pair) -> None:
    local = _local("192.0.2.22")  # one of B's addresses, not the one A was configured with
    sticky = (pair.A_EP[0], pair.A_EP[1], local)
    pair.a.on_packet(ipv4_packet("10.0.0.1", "10.0.0.2"), pair.clock.now)
    init, _ = pair.a.outbox.popleft()
    pair.b.on_datagram(init, sticky, pair.clock.now)
    assert pair.peer_a.endpoint == sticky
    resp, dst = pair.b.outbox.popleft()
    assert dst == sticky and resp[0] == m.RESPONSE
    pair.a.on_datagram(resp, pair.B_EP, pair.clock.now)
    data, _ = pair.a.outbox.popleft()
    pair.b.on_datagram(data, sticky, pair.clock.now)
    pair.b.on_packet(ipv4_packet("10.0.0.2", "10.0.0.1"), pair.clock.now)
    assert [dst for _, dst in pair.b.outbox] == [sticky]
    pair.b.outbox.clear()
    # wg(8) sees the address only.
    assert f"endpoint={pair.A_EP[0]}:{pair.A_EP[1]}\n" in uapi(pair.b, "get=1\n\n", pair.clock.now)
    # The same peer writing to another of our addresses is a roam.
    other = (pair.A_EP[0], pair.A_EP[1], _local("192.0.2.2"))
    pair.a.on_packet(ipv4_packet("10.0.0.1", "10.0.0.2"), pair.clock.now)
    data, _ = pair.a.outbox.popleft()
    pair.b.on_datagram(data, other, pair.clock.now)
    assert pair.peer_a.endpoint == other
    # The address went away: the I/O layer tells the device, which keeps host and port.
    pair.b.forget_source(sticky)  # not the current one: nothing changes
    assert pair.peer_a.endpoint == other
    pair.b.forget_source(other)
    assert pair.peer_a.endpoint == pair.A_EP
    pair.b.forget_source(pair.A_EP)  # a plain endpoint: a no-op
    assert pair.peer_a.endpoint == pair.A_EP
