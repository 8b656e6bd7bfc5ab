"""Thin adapter over libnftables (Debian ``libnftables1``) through ctypes.

JSON in, JSON out; no Python binding needed. One ``apply`` is one netlink
batch, so the kernel either takes all of it or none of it (a failed batch
leaves the old table in place).

Namespaces: libnftables talks netlink in the calling thread's network
namespace, so with ``netns`` set every call runs in a short-lived thread that
first ``setns()``-es into ``/run/netns/NAME``. The main thread never moves.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import json
import os
import threading
from collections.abc import Callable, Iterable
from typing import Any, TypeVar

_T = TypeVar("_T")

_OUTPUT_HANDLE = 1 << 3
_OUTPUT_JSON = 1 << 4
_CLONE_NEWNET = 0x40000000

# libnftables keeps some process-global state (caches, gmp); serialize calls.
_LOCK = threading.Lock()
_lib: ctypes.CDLL | None = None


class NftError(RuntimeError):
    """An nftables command failed; the message carries libnftables' error text."""


class NetnsError(NftError):
    """The named network namespace cannot be entered."""


def _library() -> ctypes.CDLL:
    global _lib
    if _lib is None:
        name = ctypes.util.find_library("nftables") or "libnftables.so.1"
        try:
            lib = ctypes.CDLL(name)
        except OSError as e:
            raise NftError(f"libnftables not available ({name}): install libnftables1") from e
        lib.nft_ctx_new.restype = ctypes.c_void_p
        lib.nft_ctx_new.argtypes = [ctypes.c_uint32]
        lib.nft_ctx_free.argtypes = [ctypes.c_void_p]
        lib.nft_ctx_output_set_flags.argtypes = [ctypes.c_void_p, ctypes.c_uint]
        lib.nft_ctx_buffer_output.argtypes = [ctypes.c_void_p]
        lib.nft_ctx_buffer_error.argtypes = [ctypes.c_void_p]
        lib.nft_ctx_get_output_buffer.restype = ctypes.c_char_p
        lib.nft_ctx_get_output_buffer.argtypes = [ctypes.c_void_p]
        lib.nft_ctx_get_error_buffer.restype = ctypes.c_char_p
        lib.nft_ctx_get_error_buffer.argtypes = [ctypes.c_void_p]
        lib.nft_run_cmd_from_buffer.argtypes = [ctypes.c_void_p, ctypes.c_char_p]
        lib.nft_run_cmd_from_buffer.restype = ctypes.c_int
        _lib = lib
    return _lib


def _run_json(command: str) -> tuple[int, str, str]:
    lib = _library()
    ctx = lib.nft_ctx_new(0)
    if not ctx:
        raise NftError("nft_ctx_new failed")
    try:
        # JSON output flag also makes 1.0.x parse the input as JSON.
        lib.nft_ctx_output_set_flags(ctx, _OUTPUT_JSON | _OUTPUT_HANDLE)
        lib.nft_ctx_buffer_output(ctx)
        lib.nft_ctx_buffer_error(ctx)
        rc = lib.nft_run_cmd_from_buffer(ctx, command.encode())
        out = (lib.nft_ctx_get_output_buffer(ctx) or b"").decode(errors="replace")
        err = (lib.nft_ctx_get_error_buffer(ctx) or b"").decode(errors="replace")
        return rc, out, err
    finally:
        lib.nft_ctx_free(ctx)


def in_netns(netns: str, fn: Callable[[], _T]) -> _T:
    """Run ``fn`` in a fresh thread that has joined network namespace ``netns``."""
    path = netns if netns.startswith("/") else f"/run/netns/{netns}"
    if not os.path.exists(path):
        raise NetnsError(f"network namespace {netns!r} does not exist")
    result: list[_T] = []
    error: list[BaseException] = []

    def worker() -> None:
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            fd = os.open(path, os.O_RDONLY)
            try:
                if libc.setns(fd, _CLONE_NEWNET) != 0:
                    err = ctypes.get_errno()
                    raise NetnsError(f"setns({netns}): {os.strerror(err)}")
            finally:
                os.close(fd)
            result.append(fn())
        except BaseException as e:  # handed to the caller's thread
            error.append(e)

    t = threading.Thread(target=worker, name=f"nft-{netns}")
    t.start()
    t.join()
    if error:
        raise error[0]
    return result[0]


class Nft:
    """libnftables in the current network namespace, or in ``netns`` (a name under /run/netns)."""

    def __init__(self, netns: str | None = None) -> None:
        self.netns = netns

    def _cmd(self, payload: dict[str, Any] | str) -> tuple[int, str, str]:
        # Compact: a 1000-peer batch is ~3 MB, and libnftables' cost is mostly
        # parsing it (jansson + malloc), so every byte and token counts.
        text = payload if isinstance(payload, str) else json.dumps(payload, separators=(",", ":"))
        with _LOCK:
            if self.netns is None:
                return _run_json(text)
            return in_netns(self.netns, lambda: _run_json(text))

    def apply(self, ruleset: dict[str, Any] | str) -> None:
        """Run ``ruleset`` ({"nftables": [...]}, or that as JSON text, e.g. from
        ``nat.render_text``) as one atomic transaction."""
        if isinstance(ruleset, str):
            if not ruleset.startswith('{"nftables":['):
                raise NftError('ruleset must be {"nftables": [...]}')
        elif not isinstance(ruleset, dict) or not isinstance(ruleset.get("nftables"), list):
            raise NftError('ruleset must be {"nftables": [...]}')
        rc, _, err = self._cmd(ruleset)
        if rc != 0:
            raise NftError(f"nftables rejected the batch (nothing changed): {err.strip()}")

    def list_table(self, family: str, name: str) -> dict[str, Any]:
        """The table as nftables JSON, with rule handles and counters."""
        rc, out, err = self._cmd({"nftables": [{"list": {"table": {"family": family, "name": name}}}]})
        if rc != 0:
            raise NftError(f"cannot list table {family} {name}: {err.strip()}")
        # A 1000-peer table lists as ~3 MB: ~100 000 acyclic dicts and lists,
        # which with the cyclic GC on cost ~60 % more (passes over the daemon heap).
        enabled = gc.isenabled()
        gc.disable()
        try:
            data: dict[str, Any] = json.loads(out)
        finally:
            if enabled:
                gc.enable()
        return data

    def list_chain(self, family: str, table: str, chain: str) -> dict[str, Any]:
        """One chain as nftables JSON, with rule handles and counters (cheap: the
        base chains hold a few rules whatever the number of peers)."""
        rc, out, err = self._cmd({"nftables": [{"list": {"chain": {"family": family, "table": table,
                                                                   "name": chain}}}]})
        if rc != 0:
            raise NftError(f"cannot list chain {family} {table} {chain}: {err.strip()}")
        data: dict[str, Any] = json.loads(out)
        return data

    def list_objects(self, family: str, table: str, chains: Iterable[str] = (), sets: Iterable[str] = (),
                     maps: Iterable[str] = ()) -> dict[str, Any]:
        """Some chains, sets and maps of a table as one nftables JSON listing: what a
        few peers' counters need, without the rest of the table. One libnftables call
        each: in one batch, only the first command's object gets into its cache."""
        items: list[Any] = []
        for kind, names in (("chain", chains), ("set", sets), ("map", maps)):
            for name in names:
                rc, out, err = self._cmd({"nftables": [{"list": {kind: {"family": family, "table": table,
                                                                        "name": name}}}]})
                if rc != 0:
                    raise NftError(f"cannot list {kind} {family} {table} {name}: {err.strip()}")
                items += json.loads(out).get("nftables", [])
        return {"nftables": items}

    def has_set(self, family: str, table: str, name: str) -> bool:
        """Whether set ``name`` exists in the table (False also when the table does not).
        Cheap whatever the table holds (~1 ms with 1000 peers): one set is listed."""
        rc, _, _ = self._cmd({"nftables": [{"list": {"set": {"family": family, "table": table, "name": name}}}]})
        return rc == 0

    def list_counters(self, family: str, table: str) -> dict[str, Any]:
        """The named counters of a table (JSON): cheap beside large sets, which are not listed."""
        rc, out, err = self._cmd({"nftables": [{"list": {"counters": {"family": family, "table": table}}}]})
        if rc != 0:
            raise NftError(f"cannot list the counters of table {family} {table}: {err.strip()}")
        data: dict[str, Any] = json.loads(out)
        return data

    def has_chain(self, family: str, table: str, name: str) -> bool:
        rc, _, _ = self._cmd({"nftables": [{"list": {"chain": {"family": family, "table": table, "name": name}}}]})
        return rc == 0

    def tables(self, family: str) -> set[str]:
        """The names of the tables of ``family``."""
        rc, out, err = self._cmd({"nftables": [{"list": {"tables": {"family": family}}}]})
        if rc != 0:
            raise NftError(f"cannot list the {family} tables: {err.strip()}")
        return {o["table"]["name"] for o in json.loads(out).get("nftables", [])
                if "table" in o and o["table"].get("family") == family}

    def table_exists(self, family: str, name: str) -> bool:
        try:
            self.list_table(family, name)
        except NftError:
            return False
        return True

    def delete_table(self, family: str, name: str) -> None:
        """Delete the table; no error if it is not there."""
        table = {"family": family, "name": name}
        # add-then-delete in one batch: idempotent without a racy existence check.
        self.apply({"nftables": [{"add": {"table": dict(table)}}, {"delete": {"table": dict(table)}}]})
