"""Local session indices -> what a message addressed to them belongs to.

Every handshake message and transport packet names its receiver by a 32-bit
index the receiver chose. An index is either a pending handshake (our
initiation, awaiting a response: -> Peer) or a keypair (-> Keypair, whose
``peer`` is the peer). Both maps are plain dicts: the receive path looks
keypairs up in ``keypairs`` directly, once per packet.
"""

from __future__ import annotations

from collections.abc import Callable

from fabric.wg.peer import Keypair, Peer


class IndexTable:
    __slots__ = ("_rng", "handshakes", "keypairs")

    def __init__(self, rng: Callable[[int], bytes]) -> None:
        self._rng = rng
        self.handshakes: dict[int, Peer] = {}
        self.keypairs: dict[int, Keypair] = {}

    def new_index(self) -> int:
        """A random index in use by neither map."""
        while True:
            idx = int.from_bytes(self._rng(4), "little")
            if idx not in self.handshakes and idx not in self.keypairs:
                return idx

    def add_handshake(self, idx: int, peer: Peer) -> None:
        self.handshakes[idx] = peer

    def remove_handshake(self, idx: int) -> None:
        self.handshakes.pop(idx, None)

    def add_keypair(self, kp: Keypair) -> None:
        self.keypairs[kp.local_index] = kp

    def remove_keypair(self, kp: Keypair | None) -> None:
        if kp is not None:
            self.keypairs.pop(kp.local_index, None)

    def peer_for(self, idx: int) -> Peer | None:
        """The peer owning ``idx`` either way (a cookie reply may answer either)."""
        peer = self.handshakes.get(idx)
        if peer is None:
            kp = self.keypairs.get(idx)
            peer = kp.peer if kp is not None else None
        return peer
