"""The audit trail of admin changes: one structured log line each, never a secret.

Logger ``crosswire.audit``, level INFO, message ``audit {json}`` with sorted
keys: ``action`` (what, e.g. ``peer.add``), ``from`` (the caller's address and
port as the operator listener saw it), ``result`` (``ok`` or ``refused <HTTP
status>: <reason>``), and what the action concerns: ``peer``, ``token_id``,
``exports``, ``peers`` (who was told). Tokens, token secrets, the admin
credential, keys and PSKs are never among them: callers pass only the fields
below, and ``entry`` drops any other.
"""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import Iterator
from typing import Any

log = logging.getLogger("crosswire.audit")

FIELDS = frozenset({"action", "from", "result", "peer", "token_id", "ttl_s", "reusable", "exports", "ranges", "peers",
                    "public_key", "tls_pins"})


def entry(**fields: Any) -> str:
    """The line's JSON: only the known, non-secret fields."""
    return json.dumps({k: v for k, v in fields.items() if k in FIELDS}, sort_keys=True, default=str)


def client(request: Any) -> str:
    c = getattr(request, "client", None)
    return f"{c.host}:{c.port}" if c is not None else "unknown"


@contextlib.contextmanager
def audited(request: Any, action: str, **fields: Any) -> Iterator[dict[str, Any]]:
    """Log the change once it is done (``ok``) or refused; the body may add fields."""
    from gateway.errors import GatewayError

    extra: dict[str, Any] = dict(fields)
    try:
        yield extra
    except GatewayError as e:
        log.info("audit %s", entry(action=action, **{"from": client(request)}, **extra,
                                   result=f"refused {e.status}: {e}"))
        raise
    except Exception as e:
        log.info("audit %s", entry(action=action, **{"from": client(request)}, **extra,
                                   result=f"failed: {type(e).__name__}"))
        raise
    log.info("audit %s", entry(action=action, **{"from": client(request)}, **extra, result="ok"))


def refused(request: Any, action: str, reason: str) -> None:
    log.info("audit %s", entry(action=action, **{"from": client(request)}, result=f"refused 401: {reason}"))
