"""IPAM: allocation of views of peer ranges (pure logic plus a SQLite store).

See DESIGN.md. ``plan``/``Planner`` are the sans-IO core; ``IpamStore`` is the
persistent, multi-process-safe allocator the gateway uses.
"""

from .errors import IpamError
from .model import DEFAULT_POOLS, Conflict, Kind, LocalRanges, PeerRange, View
from .planner import Plan, Planner, plan
from .store import IpamStore

__all__ = [
    "DEFAULT_POOLS",
    "Conflict",
    "IpamError",
    "IpamStore",
    "Kind",
    "LocalRanges",
    "PeerRange",
    "Plan",
    "Planner",
    "View",
    "plan",
]
