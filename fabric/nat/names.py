"""Names in the crosswire nftables table: the family, per-peer chain names, the
per-peer chains' roles, and comment length.

Chain names are derived from cluster IDs, which may hold anything: ``chain_suffix``
makes them safe (unchanged for DNS-label-like IDs) and keeps distinct IDs distinct
(a hash is appended when characters were replaced).
"""

from __future__ import annotations

import enum
import functools
import hashlib
import re

FAMILY = "inet"
# An empty set in every table crosswire renders: the mark that the table is
# ours (nft 1.0.6's JSON drops table comments). A set, not a chain: libnftables
# lists one set in ~1 ms whatever the table holds, one chain in ~90 ms at 1000
# peers (it loads every rule first). No other name in the table is made from
# cluster IDs but chain names, so nothing can collide with it.
MARKER_SET = "created_by_crosswire"
# The base chains every rendering has (name -> hook): how a table rendered by a
# version without the marker is recognised on upgrade.
BASE_CHAINS = {"prerouting": "prerouting", "postrouting": "postrouting", "mss-clamp": "forward",
               "count": "forward"}
COMMENT_MAX = 128  # nftables limit for rule/element comments


def comment(text: str) -> str:
    """``text`` cut to what nftables accepts as a comment."""
    return text if len(text) <= COMMENT_MAX else text[: COMMENT_MAX - 3] + "..."


@functools.lru_cache(maxsize=8192)  # every peer's name, on every read of the policy counters
def chain_suffix(cluster_id: str) -> str:
    """A chain-name-safe form of a cluster ID (unchanged for DNS-label-like IDs)."""
    safe = re.sub(r"[^A-Za-z0-9_.-]", "_", cluster_id)[:64]
    if safe != cluster_id:
        safe += "-" + hashlib.sha256(cluster_id.encode()).hexdigest()[:8]
    return safe


class Direction(enum.Enum):
    """Which way a packet crosses the tunnel, seen from this gateway."""

    # Members are singletons: hash by identity (C), not Enum's hash of the
    # name (Python), as rendering 1000 peers looks them up ~10 000 times.
    __hash__ = object.__hash__

    EGRESS = "egress"  # leaving into WireGuard: SNAT our real source to the peer's view of it
    INGRESS = "ingress"  # arriving from WireGuard: DNAT the peer's view of us to our real destination


class PeerChain(enum.Enum):
    """A per-peer chain, and the verdict maps (keyed by our views of the peer) that jump to it."""

    __hash__ = object.__hash__  # see Direction

    EGRESS = ("to", "to_peer")  # nat rules for packets into the peer, from postrouting
    INGRESS = ("from", "from_peer")  # nat rules for packets from the peer, from prerouting
    COUNT = ("cnt", "count")  # per-packet counting rules, both directions, from forward

    def __init__(self, prefix: str, map_prefix: str) -> None:
        self.prefix = prefix
        self.map_prefix = map_prefix

    def chain(self, cluster_id: str) -> str:
        return f"{self.prefix}-{chain_suffix(cluster_id)}"

    def map(self, version: int) -> str:
        return f"{self.map_prefix}_v{version}"


def egress_chain(cluster_id: str) -> str:
    return PeerChain.EGRESS.chain(cluster_id)


def ingress_chain(cluster_id: str) -> str:
    return PeerChain.INGRESS.chain(cluster_id)


def count_chain(cluster_id: str) -> str:
    return PeerChain.COUNT.chain(cluster_id)
