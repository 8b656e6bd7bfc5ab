"""Key changes without a lost packet (issue 12, event e).

Our private key changing keeps the sessions for KEY_CHANGE_GRACE while a handshake
under the new identity starts at once; a peer replaced (one request: old key
removed, new key added with exactly its allowed IPs) hands its sessions to the new
peer. Both end at the first handshake of the new identity, and at the latest after
KEY_CHANGE_GRACE.
"""

from __future__ import annotations

from wg.core.wgsim import Pair, check_index_table, ipv4_packet, make_key, uapi

from fabric.wg.crypto import public_key
from fabric.wg.device import KEY_CHANGE_GRACE

HANDSHAKE_INITIATION = 1


def _b_learns(pair: Pair, new_pub: bytes, allowed: str = "allowed_ip=10.0.0.1/32\nallowed_ip=fd00::1/128\n") -> None:
    """B replaces A's key as crosswire's reconcile does: remove the old peer, add the new one."""
    reply = uapi(pair.b, f"set=1\npublic_key={pair.a_pub.hex()}\nremove=true\npublic_key={new_pub.hex()}\n"
                 f"endpoint=192.0.2.1:51820\n{allowed}\n", pair.clock.now)
    assert reply == "errno=0\n\n"
    check_index_table(pair.b)


def test_rotation_loses_no_packet_in_either_direction() -> None:
    pair = Pair()
    pair.a_to_b(b"x")
    pair.b_to_a(b"y")
    new = make_key()
    new_pub = public_key(new)
    _b_learns(pair, new_pub)  # crosswire's order: the peer first, then our own key
    pair.a.inbox.clear()
    pair.b.inbox.clear()
    # between the two steps nothing is lost: B's new peer uses the old sessions
    sent = [pair.a_to_b(b"between"), ]
    back = [pair.b_to_a(b"between back")]
    assert list(pair.b.inbox) == sent and list(pair.a.inbox) == back
    assert pair.b.peers[new_pub].current is not None
    since = len(pair.net.log)
    assert uapi(pair.a, f"set=1\nprivate_key={new.hex()}\n\n", pair.clock.now) == "errno=0\n\n"
    # the handshake under the new identity starts at once, the old session carries on meanwhile
    sent.append(pair.a_to_b(b"during"))
    back.append(pair.b_to_a(b"during back"))
    assert HANDSHAKE_INITIATION in pair.kinds(since, src=pair.A_EP)
    sent.append(pair.a_to_b(b"after"))
    back.append(pair.b_to_a(b"after back"))
    assert list(pair.b.inbox) == sent and list(pair.a.inbox) == back
    assert pair.a.counters["handshake_complete"] >= 2 and pair.b.counters["handshake_complete"] >= 2
    # both sides now send on a keypair of the new identity
    assert pair.peer_b.current is not None and pair.peer_b.current.created == pair.clock.now
    assert pair.b.peers[new_pub].current is pair.b._keypairs[pair.b.peers[new_pub].current.local_index]
    assert pair.b.peers[new_pub].current.created == pair.clock.now


def test_sessions_of_the_old_identity_end_after_the_grace() -> None:
    pair = Pair()
    pair.a_to_b(b"x")
    pair.b_to_a(b"y")
    new = make_key()
    new_pub = public_key(new)
    _b_learns(pair, new_pub)
    # the new identity never completes a handshake: every handshake message is lost
    pair.net.filter = lambda src, dst, data: None if data[0] in (1, 2) else data
    uapi(pair.a, f"set=1\nprivate_key={new.hex()}\n\n", pair.clock.now)
    pair.b.inbox.clear()
    pair.a_to_b(b"inside the grace")
    assert len(pair.b.inbox) == 1
    pair.net.advance(KEY_CHANGE_GRACE + 1)
    pair.b.inbox.clear()
    pair.a.inbox.clear()
    # A no longer sends on the old session (the packet waits for a handshake)...
    pair.a_to_b(b"late")
    assert list(pair.b.inbox) == [] and len(pair.peer_b.staged) == 1
    # ...and B no longer accepts it: a transport datagram made on it is dropped.
    old = pair.b.peers[new_pub].current
    assert old is not None
    before = pair.b.counters["drop_expired_keypair"]
    pair.b.on_packet(ipv4_packet("10.0.0.2", "10.0.0.1", b"late back"), pair.clock.now)
    assert not any(d[0] == 4 for d, _ in pair.b.outbox)  # B will not send on it either
    pair.net.flush()
    assert list(pair.a.inbox) == []
    # A's kept session, replayed at B, is refused past the grace
    assert pair.peer_b.current is not None
    data = pair.peer_b.current.hdr_prefix + (10**6).to_bytes(8, "little") + bytes(32)
    pair.b.on_datagram(data, pair.A_EP, pair.clock.now)
    assert pair.b.counters["drop_expired_keypair"] == before + 1


def test_a_peer_replaced_with_other_allowed_ips_does_not_inherit_sessions() -> None:
    pair = Pair()
    pair.a_to_b(b"x")
    new_pub = public_key(make_key())
    _b_learns(pair, new_pub, allowed="allowed_ip=10.0.0.1/32\n")  # not exactly the old ranges
    assert pair.b.peers[new_pub].current is None and pair.b._keypairs == {}
    # and two unrelated changes in one request: a removal and an unrelated addition
    pair2 = Pair()
    pair2.a_to_b(b"x")
    other = public_key(make_key())
    uapi(pair2.b, f"set=1\npublic_key={pair2.a_pub.hex()}\nremove=true\npublic_key={other.hex()}\n"
         "allowed_ip=10.9.0.0/24\n\n", pair2.clock.now)
    assert pair2.b.peers[other].current is None and pair2.b._keypairs == {}


def test_removing_the_private_key_still_stops_sending() -> None:
    pair = Pair()
    pair.a_to_b(b"x")
    uapi(pair.a, f"set=1\nprivate_key={'00' * 32}\n\n", pair.clock.now)
    pair.b.inbox.clear()
    pair.a_to_b(b"no key")
    assert list(pair.b.inbox) == []
