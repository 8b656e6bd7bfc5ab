"""The peer range policy: which ranges a peer may announce (sans-IO, no store, no clock).

A peer is a tenant, not an administrator. Every range it announces (at the
join, in the token issuer's answer to ``peer add``, in a later ``ranges``
message) becomes a view of ours: a route into WireGuard, allowed IPs, a route
the node agents install. So what it may announce is bounded here, by the
operator's ``peer_ranges`` config and the token it redeemed, not by the peer:

- every range lies inside ``allow`` (default: RFC 1918, 100.64.0.0/10 and
  fd00::/8; never public space, which would hijack real destinations);
- every range lies inside the ranges its token carries, if it carried any;
- at most ``max_ranges`` ranges, and at most ``max_view_addresses`` per
  family in all (a peer must not use up the pools the other peers need).

That a view never overlaps our own local or reserved ranges, nor another
peer's views, is the IPAM's invariant (it remaps such ranges); not repeated here.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

from fabric.model import PEER_SPACE

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Approval = Literal["auto", "manual"]

# Private and shared space: RFC 1918, RFC 6598 (100.64/10), the IPv6 ULA half (fd00::/8);
# the node agent's default too.
DEFAULT_ALLOW: tuple[str, ...] = PEER_SPACE
DEFAULT_MAX_RANGES = 16
# A /11 of IPv4 per peer: kubeadm's defaults (a /16 and a /12) fit, the private
# pools (about 21 M addresses) hold ten such peers; a /40 of IPv6 (256 /48s).
DEFAULT_MAX_V4 = 1 << 21
DEFAULT_MAX_V6 = 1 << 88
SHOWN = 5  # refusals named in one message; the rest are counted


class PolicyError(ValueError):
    """A bad ``peer_ranges`` setting or token range; the message names the key."""


@dataclass(frozen=True)
class RangePolicy:
    allow: tuple[str, ...] = DEFAULT_ALLOW
    max_ranges: int = DEFAULT_MAX_RANGES
    max_v4: int = DEFAULT_MAX_V4  # addresses (the views have the real ranges' sizes)
    max_v6: int = DEFAULT_MAX_V6
    approval: Approval = "auto"  # manual: range changes after the join wait for the operator

    def to_dict(self) -> dict[str, object]:
        return {"allow": list(self.allow), "max_ranges": self.max_ranges,
                "max_view_addresses": {"ipv4": self.max_v4, "ipv6": str(self.max_v6)},
                "approval": self.approval}


@dataclass(frozen=True)
class Refusal:
    what: str  # "pod 8.8.8.0/24", or "ranges" for a quota over the whole set
    reason: str

    def __str__(self) -> str:
        return f"{self.what}: {self.reason}"


@dataclass(frozen=True)
class Verdict:
    accepted: tuple[tuple[str, str], ...]
    refusals: tuple[Refusal, ...]

    @property
    def ok(self) -> bool:
        return not self.refusals

    def message(self) -> str:
        shown = "; ".join(str(r) for r in self.refusals[:SHOWN])
        more = len(self.refusals) - SHOWN
        return shown + (f"; and {more} more" if more > 0 else "")


def _net(text: str) -> Network | None:
    try:
        return ipaddress.ip_network(text, strict=True)
    except (TypeError, ValueError):
        return None


def inside(net: Network, cover: Iterable[Network]) -> bool:
    return any(net.version == c.version and net.subnet_of(c) for c in cover)  # type: ignore[arg-type]


def _size(n: int, version: int) -> str:
    bits = 32 if version == 4 else 128
    length = bits - n.bit_length() + 1
    prefix = f", a /{length}" if n == 1 << (bits - length) else ""
    return f"{n}{prefix}"


def check(ranges: Sequence[tuple[str, str]], policy: RangePolicy,
          grant: Sequence[str] | None = None) -> Verdict:
    """Judge a peer's full announced set. ``grant``: the CIDRs its token allows (None: no limit)."""
    refusals: list[Refusal] = []
    unique = list(dict.fromkeys(ranges))
    if len(unique) > policy.max_ranges:
        # Judged first and alone: a flood of ranges is refused without parsing each.
        return Verdict((), (Refusal("ranges", f"{len(unique)} ranges, more than peer_ranges.max_ranges "
                                              f"({policy.max_ranges})"),))
    allow = [n for n in map(_net, policy.allow) if n is not None]
    granted = None if grant is None else [n for n in map(_net, grant) if n is not None]
    accepted: list[tuple[str, str]] = []
    total = {4: 0, 6: 0}
    for kind, cidr in unique:
        what = f"{kind} {cidr}"
        net = _net(cidr)
        if net is None:
            refusals.append(Refusal(what, "not a CIDR"))
            continue
        total[net.version] += net.num_addresses
        if not inside(net, allow):
            refusals.append(Refusal(what, "outside the address space this gateway accepts from peers "
                                          f"(peer_ranges.allow: {', '.join(policy.allow)})"))
        elif granted is not None and not inside(net, granted):
            refusals.append(Refusal(what, "outside the ranges this peer's token allows "
                                          f"({', '.join(grant or ()) or 'none'})"))
        else:
            accepted.append((kind, cidr))
    for version, limit, key in ((4, policy.max_v4, "ipv4"), (6, policy.max_v6, "ipv6")):
        if total[version] > limit:
            refusals.append(Refusal("ranges", f"{total[version]} IPv{version} addresses in all, more than "
                                              f"peer_ranges.max_view_addresses.{key} ({_size(limit, version)})"))
    return Verdict(tuple(accepted), tuple(refusals))


# --- config -------------------------------------------------------------------------------------


def _cidrs(value: object, key: str) -> tuple[str, ...]:
    if isinstance(value, str):
        value = [v.strip() for v in value.split(",") if v.strip()]
    if not isinstance(value, list) or not value:
        raise PolicyError(f"{key}: expected a non-empty list of CIDRs")
    out = []
    for i, v in enumerate(value):
        net = _net(v.strip()) if isinstance(v, str) else None
        if net is None:
            raise PolicyError(f"{key}[{i}]: {v!r} is not a valid CIDR (no host bits)")
        out.append(str(net))
    return tuple(out)


def _addresses(value: object, key: str, bits: int) -> int:
    """A count of addresses, or "/N": as many as a /N holds."""
    if isinstance(value, str) and value.startswith("/") and value[1:].isdigit():
        n = int(value[1:])
        if not 0 <= n <= bits:
            raise PolicyError(f"{key}: {value} is not a prefix length 0-{bits}")
        return 1 << (bits - n)
    if isinstance(value, str) and value.isdigit():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 1 << bits:
        raise PolicyError(f"{key}: {value!r} is not an address count 1-2^{bits} or a prefix length like /11")
    return value


def parse(raw: object) -> RangePolicy:
    """The ``peer_ranges`` section (None: the defaults); errors name the key."""
    if raw is None:
        return RangePolicy()
    if not isinstance(raw, Mapping):
        raise PolicyError(f"peer_ranges: expected a mapping, got {type(raw).__name__}")
    known = {"allow", "max_ranges", "max_view_addresses", "approval"}
    for k in raw:
        if k not in known:
            raise PolicyError(f"peer_ranges.{k}: unknown key")
    allow = _cidrs(raw["allow"], "peer_ranges.allow") if "allow" in raw else DEFAULT_ALLOW
    max_ranges = raw.get("max_ranges", DEFAULT_MAX_RANGES)
    if isinstance(max_ranges, str) and max_ranges.isdigit():
        max_ranges = int(max_ranges)
    if isinstance(max_ranges, bool) or not isinstance(max_ranges, int) or not 1 <= max_ranges <= 1024:
        raise PolicyError(f"peer_ranges.max_ranges: {max_ranges!r} is not an integer 1-1024")
    mva = raw.get("max_view_addresses") or {}
    if not isinstance(mva, Mapping):
        raise PolicyError("peer_ranges.max_view_addresses: expected a mapping {ipv4, ipv6}")
    for k in mva:
        if k not in ("ipv4", "ipv6"):
            raise PolicyError(f"peer_ranges.max_view_addresses.{k}: unknown key")
    v4 = _addresses(mva.get("ipv4", DEFAULT_MAX_V4), "peer_ranges.max_view_addresses.ipv4", 32)
    v6 = _addresses(mva.get("ipv6", DEFAULT_MAX_V6), "peer_ranges.max_view_addresses.ipv6", 128)
    approval = raw.get("approval", "auto")
    if approval not in ("auto", "manual"):
        raise PolicyError(f"peer_ranges.approval: {approval!r} is not auto or manual")
    return RangePolicy(allow=allow, max_ranges=max_ranges, max_v4=v4, max_v6=v6, approval=approval)


def token_cidrs(value: Sequence[str], policy: RangePolicy) -> tuple[str, ...]:
    """The ranges a token lets its peer announce: CIDRs inside ``allow`` (a token narrows, never widens)."""
    cidrs = _cidrs(list(value), "ranges")
    allow = [n for n in map(_net, policy.allow) if n is not None]
    for i, c in enumerate(cidrs):
        net = _net(c)
        assert net is not None
        if not inside(net, allow):
            raise PolicyError(f"ranges[{i}]: {c} is outside peer_ranges.allow ({', '.join(policy.allow)}); "
                              "widen the policy first")
    return cidrs
