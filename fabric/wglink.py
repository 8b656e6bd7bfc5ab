"""The WireGuard interface as a link: find it, tell ours from anyone else's, mark,
configure and delete it (rtnetlink through pyroute2). :class:`fabric.wgprocess.WgProcess`
owns one; "Ownership" in its module docstring says why a link is ours.
"""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from fabric.wgctl import TRANSIENT_ERRNOS

MARK = "crosswire"  # IFLA_IFALIAS of every link crosswire creates


class WgProcessError(RuntimeError):
    """The WireGuard interface could not be brought up or removed.

    ``transient``: the check itself failed for want of resources (no descriptors
    for a netlink socket); it says nothing about the data plane.
    """

    def __init__(self, message: str, *, transient: bool = False) -> None:
        super().__init__(message)
        self.transient = transient


@contextlib.contextmanager
def iproute(netns: str | None) -> Iterator[Any]:
    from pyroute2 import IPRoute

    try:
        ipr = IPRoute(netns=netns, flags=0) if netns else IPRoute()
    except OSError as e:
        raise WgProcessError(f"cannot open netlink in netns {netns!r}: {e}",
                             transient=e.errno in TRANSIENT_ERRNOS) from None
    try:
        yield ipr
    finally:
        ipr.close()


class LinkOwnershipError(WgProcessError):
    """A link of the configured name exists and was not created by crosswire."""


@dataclass(frozen=True)
class Link:
    interface: str
    netns: str | None = None

    def exists(self) -> bool:
        if self.netns is None:
            # One ioctl, no pyroute2: this runs every second, also when descriptors are
            # short, where pyroute2's event loop fails half-built (a traceback on stderr).
            try:
                socket.if_nametoindex(self.interface)
                return True
            except OSError as e:
                if e.errno in TRANSIENT_ERRNOS:
                    raise WgProcessError(f"cannot look up {self.interface}: {e}", transient=True) from None
                return False
        with iproute(self.netns) as ipr:
            return bool(ipr.link_lookup(ifname=self.interface))

    def find(self, ipr: Any) -> tuple[int, str, bool] | None:
        """(index, kind, marked) of the link named ``interface``, None if there is none."""
        links = ipr.get_links(ifname=self.interface)
        if not links:
            return None
        link = links[0]
        info = link.get_attr("IFLA_LINKINFO")
        kind = (info.get_attr("IFLA_INFO_KIND") if info is not None else None) or "device"
        return int(link["index"]), str(kind), link.get_attr("IFLA_IFALIAS") == MARK

    def foreign(self, kind: str) -> LinkOwnershipError:
        return LinkOwnershipError(
            f"wireguard.interface: a link named {self.interface!r} ({kind}) already exists and was not "
            "created by crosswire; crosswire never changes or deletes links it did not create: "
            "choose another wireguard.interface or remove that link")

    def owned_index(self, ipr: Any) -> int | None:
        """The link's index if it is ours, None if there is no link; raises if it is not ours."""
        found = self.find(ipr)
        if found is None:
            return None
        index, kind, marked = found
        if not marked:
            raise self.foreign(kind)
        return index

    def mark(self) -> None:
        """Mark the link we just created (or started the process that created it)."""
        with iproute(self.netns) as ipr:
            found = self.find(ipr)
            if found is None:
                raise WgProcessError(f"{self.interface}: interface vanished")
            ipr.link("set", index=found[0], ifalias=MARK)

    def set_mtu_up(self, mtu: int) -> None:
        with iproute(self.netns) as ipr:
            index = self.owned_index(ipr)
            if index is None:
                raise WgProcessError(f"{self.interface}: interface vanished")
            ipr.link("set", index=index, mtu=mtu, state="up")

    def delete(self) -> None:
        """Delete the link if it is ours; raises LinkOwnershipError for any other."""
        with iproute(self.netns) as ipr:
            index = self.owned_index(ipr)
            if index is not None:
                ipr.link("del", index=index)
