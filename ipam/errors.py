"""The one error type of the IPAM package."""

from __future__ import annotations


class IpamError(ValueError):
    """Bad input or an impossible allocation.

    The message names the offending range (or setting) and the reason. When it
    is raised nothing has been stored or changed.
    """
