"""Configure a WireGuard interface through its UAPI socket (crosswire-wg or wireguard-go).

The UAPI is the ``get=1`` / ``set=1`` text protocol on
``/var/run/wireguard/IFACE.sock``. ``sync`` reads the device first and then
sends one ``set`` with only what must change, so re-syncing the same state
does not rebind the UDP socket, drop sessions or undo a peer's roaming:

- the listen port only when it differs (wireguard-go rebinds on every set);
- unknown peers removed one by one (never ``replace_peers``, which would drop
  every session);
- allowed IPs replaced only when they differ;
- the endpoint when the peer is new, has none, or the configured one changed
  since this object last set it (the peer may have roamed since).

Keys never appear in logs, errors or reprs. The pure halves (``parse_get``,
``render_set``) are tested without a socket. Kernel WireGuard has no UAPI
socket; :mod:`fabric.wgnetlink` drives it over netlink with the same interface.
"""

from __future__ import annotations

import base64
import binascii
import errno
import functools
import ipaddress
import os
import socket
import struct
import time
from collections.abc import Collection, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from fabric.endpoints import EndpointError, Resolver
from fabric.model import LocalFabric, PeerFabric

SOCKET_DIR = "/var/run/wireguard"
_ZERO_KEY = "0" * 64


class WgError(RuntimeError):
    """WireGuard configuration failed (message never contains key material).

    ``transient``: the socket was busy or we lacked descriptors; retrying may work,
    and nothing about the data plane's health follows from it.
    """

    def __init__(self, message: str, *, transient: bool = False) -> None:
        super().__init__(message)
        self.transient = transient


def key_hex(b64: str, what: str) -> str:
    """A base64 WireGuard key as the UAPI's lowercase hex; errors do not echo the key."""
    try:
        raw = base64.b64decode(b64, validate=True)
    except (binascii.Error, ValueError):
        raise WgError(f"{what}: not valid base64") from None
    if len(raw) != 32:
        raise WgError(f"{what}: must be 32 bytes, got {len(raw)}")
    return raw.hex()


def key_b64(hexkey: str) -> str:
    return base64.b64encode(bytes.fromhex(hexkey)).decode()


@dataclass
class PeerStatus:
    public_key: str  # base64
    endpoint: str | None = None
    last_handshake: float = 0.0  # unix time, 0 = never
    rx_bytes: int = 0
    tx_bytes: int = 0
    persistent_keepalive: int = 0
    allowed_ips: list[str] = field(default_factory=list)
    has_preshared_key: bool = False

    def as_dict(self) -> dict[str, Any]:
        return {"endpoint": self.endpoint, "last_handshake": self.last_handshake,
                "rx_bytes": self.rx_bytes, "tx_bytes": self.tx_bytes,
                "persistent_keepalive": self.persistent_keepalive,
                "allowed_ips": list(self.allowed_ips)}


@dataclass
class DeviceStatus:
    listen_port: int = 0
    has_private_key: bool = False
    private_key_hex: str = field(default="", repr=False)  # compared, never shown
    peers: dict[str, PeerStatus] = field(default_factory=dict)  # by base64 public key


@functools.lru_cache(maxsize=16384)
def _public_key_b64(hexkey: str) -> str:
    # Peers' public keys only (never the private key): the same 1,000 in every dump.
    return key_b64(hexkey)


@functools.lru_cache(maxsize=16384)
def _allowed_ip(text: str) -> str:
    # The same few thousand CIDRs in every dump: parsed once (a 1,000-peer dump is read
    # every second while a page is open).
    return str(ipaddress.ip_network(text, strict=False))


def _peer_fields(block: str) -> dict[str, Any]:
    """A peer's key=value lines (after its public_key line) -> PeerStatus's fields."""
    out: dict[str, Any] = {"endpoint": None, "last_handshake": 0.0, "rx_bytes": 0, "tx_bytes": 0,
                           "persistent_keepalive": 0, "allowed_ips": [], "has_preshared_key": False}
    secs = nsec = 0
    for line in block.split("\n"):
        k, _, v = line.partition("=")
        if k == "allowed_ip":
            out["allowed_ips"].append(_allowed_ip(v))
        elif k == "rx_bytes":
            out["rx_bytes"] = int(v)
        elif k == "tx_bytes":
            out["tx_bytes"] = int(v)
        elif k == "last_handshake_time_sec":
            secs = int(v)
        elif k == "last_handshake_time_nsec":
            nsec = int(v)
        elif k == "endpoint":
            out["endpoint"] = v
        elif k == "persistent_keepalive_interval":
            out["persistent_keepalive"] = int(v)
        elif k == "preshared_key":
            out["has_preshared_key"] = v != _ZERO_KEY
    if secs:
        out["last_handshake"] = secs + nsec / 1e9
    return out


def _split_get(text: str) -> tuple[dict[str, str], dict[str, str]]:
    """A ``get=1`` reply -> (its device lines by key, each peer's lines by base64 public
    key); raises WgError on a missing or non-zero errno."""
    body, sep, tail = text.rpartition("errno=")
    if not sep or not tail.strip().isdigit():
        raise WgError("UAPI get: reply without errno")
    if int(tail) != 0:
        raise WgError(f"UAPI get failed: errno={int(tail)}")
    head, *peers = ("\n" + body).split("\npublic_key=")
    device = dict(line.partition("=")[::2] for line in head.split("\n") if line)
    blocks = {}
    for block in peers:
        hexkey, _, lines = block.partition("\n")
        blocks[_public_key_b64(hexkey)] = lines
    return device, blocks


def parse_get(text: str) -> DeviceStatus:
    """Parse a UAPI ``get=1`` reply (raises WgError on a non-zero errno)."""
    device, blocks = _split_get(text)
    dev = DeviceStatus()
    if "listen_port" in device:
        dev.listen_port = int(device["listen_port"])
    if "private_key" in device:
        dev.has_private_key = device["private_key"] != _ZERO_KEY
        dev.private_key_hex = device["private_key"]
    for key, lines in blocks.items():
        dev.peers[key] = PeerStatus(public_key=key, **_peer_fields(lines))
    return dev


class PeerDump(Mapping[str, dict[str, Any]]):
    """A ``get=1`` reply's peers by base64 public key, as ``WgControl.show`` gives them,
    each parsed when first looked up: a page poll reads 50 rows and the byte totals of
    a 1,000-peer dump, and parsing every peer was most of its cost."""

    def __init__(self, text: str) -> None:
        self._blocks = _split_get(text)[1]
        self._parsed: dict[str, dict[str, Any]] = {}

    def __getitem__(self, key: str) -> dict[str, Any]:
        try:
            return self._parsed[key]
        except KeyError:
            fields = _peer_fields(self._blocks[key])
            del fields["has_preshared_key"]
            self._parsed[key] = fields
            return fields

    def __iter__(self) -> Iterator[str]:
        return iter(self._blocks)

    def __len__(self) -> int:
        return len(self._blocks)

    def byte_totals(self, keys: Collection[str]) -> tuple[int, int]:
        """(rx, tx) bytes summed over the peers in ``keys``, without parsing them (a
        regular expression over the whole text was 3x slower)."""
        rx = tx = 0
        for key in keys:
            block = self._blocks.get(key)
            if block is not None:
                rx += _count(block, "rx_bytes=")
                tx += _count(block, "tx_bytes=")
        return rx, tx


def _count(block: str, field: str) -> int:
    """The number on a peer's ``field`` line (``field`` ends in "="; 0 without one)."""
    at = block.find(field)
    if at != 0 and (at < 0 or block[at - 1] != "\n"):  # absent, or inside another line
        at = block.find("\n" + field) + 1
        if at == 0:
            return 0
    start = at + len(field)
    end = block.find("\n", start)
    return int(block[start:] if end < 0 else block[start:end])


def byte_totals(stats: Mapping[str, Mapping[str, Any]], keys: Collection[str]) -> tuple[int, int]:
    """(rx, tx) bytes of the peers in ``keys``: a PeerDump's without parsing, else summed."""
    if isinstance(stats, PeerDump):
        return stats.byte_totals(keys)
    rx = tx = 0
    for key in keys:
        s = stats.get(key)
        if s is not None:
            rx += int(s.get("rx_bytes") or 0)
            tx += int(s.get("tx_bytes") or 0)
    return rx, tx


def _norm_nets(cidrs: Sequence[str]) -> list[str]:
    return list(_norm_tuple(tuple(cidrs)))


@functools.lru_cache(maxsize=16384)
def _norm_tuple(cidrs: tuple[str, ...]) -> tuple[str, ...]:
    # Pure and called twice per peer and sync (desired and current allowed IPs):
    # ipaddress parsing dominated render_set for 1000 peers.
    nets = {ipaddress.ip_network(c, strict=False) for c in cidrs}
    return tuple(str(n) for n in sorted(nets, key=lambda n: (n.version, int(n.network_address), n.prefixlen)))


def render_set(local: LocalFabric, peers: Sequence[PeerFabric], current: DeviceStatus,
               last_endpoints: Mapping[str, str], endpoints: Mapping[str, str]) -> str:
    """The ``set=1`` request taking ``current`` to the desired state (only the differences).

    ``endpoints``: hex public key -> resolved ``ip:port`` for the peers whose
    endpoint resolved; a peer missing there keeps whatever endpoint it has.
    """
    lines = ["set=1"]
    priv = key_hex(local.private_key, "private key")
    if priv != current.private_key_hex:
        lines.append(f"private_key={priv}")
    if local.listen_port != current.listen_port:
        lines.append(f"listen_port={local.listen_port}")
    wanted: dict[str, PeerFabric] = {}
    for p in peers:
        k = key_hex(p.public_key, f"peer {p.cluster_id} public key")
        if k in wanted:
            raise WgError(f"peer {p.cluster_id}: public key used by peer {wanted[k].cluster_id} too")
        wanted[k] = p
    current_hex = {key_hex(b, "current key"): s for b, s in current.peers.items()}
    for k in sorted(set(current_hex) - set(wanted)):
        lines += [f"public_key={k}", "remove=true"]
    for k, p in wanted.items():
        cur = current_hex.get(k)
        lines.append(f"public_key={k}")
        psk = key_hex(p.preshared_key, f"peer {p.cluster_id} preshared key") if p.preshared_key else _ZERO_KEY
        lines.append(f"preshared_key={psk}")
        ep = endpoints.get(k)
        if ep is not None and (cur is None or not cur.endpoint or last_endpoints.get(k) != ep):
            lines.append(f"endpoint={ep}")
        lines.append(f"persistent_keepalive_interval={p.persistent_keepalive}")
        allowed = _norm_nets(list(p.routed()))
        if cur is None or _norm_nets(cur.allowed_ips) != allowed:
            lines.append("replace_allowed_ips=true")
            lines += [f"allowed_ip={a}" for a in allowed]
    return "\n".join(lines) + "\n\n"


# Errors that say "busy", not "gone": a full listen backlog (EAGAIN), our own
# descriptor shortage (EMFILE/ENFILE) or a slow answer. They never prove the
# data plane dead.
TRANSIENT_ERRNOS = frozenset({errno.EAGAIN, errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.EINTR})
CONNECT_RETRY_FOR = 1.0


# alive(): the whole device at most every ALIVE_SHARE times what reading it took
# (a small device, a few ms: every call, as before; 1,000 peers: every ~10 s).
ALIVE_SHARE = 300.0


def _connect(s: socket.socket, path: str) -> None:
    """connect(), retried while the listen backlog is full (EAGAIN), for CONNECT_RETRY_FOR s."""
    deadline = time.monotonic() + CONNECT_RETRY_FOR
    delay = 0.005
    while True:
        try:
            s.connect(path)
            return
        except BlockingIOError:
            if time.monotonic() + delay > deadline:
                raise
            time.sleep(delay)
            delay = min(delay * 2, 0.1)


def _uapi(path: str, request: str, timeout: float = 5.0) -> str:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(timeout)
    try:
        _connect(s, path)
        s.sendall(request.encode())
        buf = b""
        while not buf.endswith(b"\n\n"):
            chunk = s.recv(65536)
            if not chunk:
                break
            buf += chunk
        return buf.decode(errors="replace")
    finally:
        s.close()


def resolve_endpoints(resolver: Resolver, peers: Sequence[PeerFabric],
                      now: float) -> tuple[dict[str, str], dict[str, str]]:
    """``ip:port`` per peer public key (hex) for the peers with an endpoint, and per
    cluster id the reason an endpoint did not resolve (that peer is still programmed,
    without an endpoint). Both controls, UAPI and netlink, resolve this way."""
    endpoints: dict[str, str] = {}
    problems: dict[str, str] = {}
    for p in peers:
        if p.endpoint:
            try:
                endpoints[key_hex(p.public_key, f"peer {p.cluster_id} public key")] = resolver.resolve(p.endpoint, now)
            except EndpointError as e:
                problems[p.cluster_id] = str(e)
    resolver.forget({p.endpoint for p in peers if p.endpoint})
    return endpoints, problems


class WgControl:
    """One WireGuard interface, driven through its UAPI socket."""

    def __init__(self, interface: str, socket_dir: str = SOCKET_DIR) -> None:
        self.interface = interface
        self.socket_path = os.path.join(socket_dir, f"{interface}.sock")
        self._full_due = 0.0  # monotonic: when alive() next asks for the whole device
        self._last_endpoints: dict[str, str] = {}
        self.resolver = Resolver()
        # cluster_id -> why its endpoint is not programmed (status shows it).
        self.endpoint_problems: dict[str, str] = {}

    def __repr__(self) -> str:
        return f"WgControl({self.interface!r})"

    def _call(self, request: str) -> str:
        try:
            return _uapi(self.socket_path, request)
        except OSError as e:
            transient = isinstance(e, TimeoutError) or e.errno in TRANSIENT_ERRNOS
            raise WgError(f"{self.interface}: UAPI socket {self.socket_path}: {e.strerror or e}",
                          transient=transient) from None

    def device(self) -> DeviceStatus:
        return parse_get(self._call("get=1\n\n"))

    def sync(self, local: LocalFabric, peers: Sequence[PeerFabric], now: float | None = None) -> None:
        """Private key, listen port and exactly ``peers``; unknown peers removed.

        A peer whose endpoint is malformed or does not resolve is still
        programmed (keys, allowed IPs) without that endpoint, and the reason
        lands in ``endpoint_problems``; it never fails the sync of the others.
        """
        now = time.monotonic() if now is None else now
        endpoints, problems = resolve_endpoints(self.resolver, peers, now)
        request = render_set(local, peers, self.device(), self._last_endpoints, endpoints)
        reply = self._call(request)
        errno_line = next((ln for ln in reply.split("\n") if ln.startswith("errno=")), None)
        if errno_line != "errno=0":
            # The request holds keys: report only the interface and errno.
            raise WgError(f"{self.interface}: UAPI set failed ({errno_line or 'no reply'})")
        self._last_endpoints.update(endpoints)
        self.endpoint_problems = problems

    def retry_at(self) -> float | None:
        """Monotonic time at which a sync may program an endpoint that failed (None: none failed)."""
        return self.resolver.next_retry() if self.endpoint_problems else None

    def server_pid(self) -> int | None:
        """The pid of the process listening on the UAPI socket (None: nobody answers)."""
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(1.0)
        try:
            _connect(s, self.socket_path)
            pid, _, _ = struct.unpack("3i", s.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12))
            return pid if pid > 0 else None
        except OSError:
            return None
        finally:
            s.close()

    def show(self) -> PeerDump:
        """Per base64 public key: endpoint, last_handshake (unix time), rx_bytes, tx_bytes, ..."""
        return PeerDump(self._call("get=1\n\n"))

    def alive(self, periodic: bool = False) -> bool | None:
        """True: the socket answers. False: confirmed gone (no socket, refused, bad
        reply). None: could not tell (busy backlog, no descriptors, timeout).

        ``periodic`` (the reconcile loop's look every second): the only read the
        protocol has returns every peer, so with many peers (a 1,000-peer dump costs
        both processes a few ms, and waiting for it more) the whole answer is asked for at most every
        ALIVE_SHARE times its own duration; in between, a listener accepting the
        connection is the answer (a process that died leaves its socket refusing,
        and the daemon's pidfd sees the exit at once). Start-up and take-over
        waits always ask for the whole answer."""
        t0 = time.monotonic()
        if periodic and t0 < self._full_due:
            return self._accepts()
        try:
            _split_get(self._call("get=1\n\n"))  # a whole, well-formed answer; its peers unparsed
        except WgError as e:
            return None if e.transient else False
        except ValueError:
            return False
        finally:
            self._full_due = t0 + ALIVE_SHARE * (time.monotonic() - t0)
        return True

    def _accepts(self) -> bool | None:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(1.0)
        try:
            _connect(s, self.socket_path)
            return True
        except OSError as e:
            return None if isinstance(e, TimeoutError) or e.errno in TRANSIENT_ERRNOS else False
        finally:
            s.close()
