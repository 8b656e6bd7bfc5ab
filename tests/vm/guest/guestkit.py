"""What every guest scenario script shares: the import path, the checks it records,
and its one JSON line of result (also when it crashes).

A scenario calls ``check(name, ok, detail)`` for each thing it verifies and
``run(main)`` as its entry point; ``main`` returns the scenario's own fields,
and the line printed is those fields plus ``ok`` (every check passed, and there
was at least one), ``checks`` and ``seconds``. A crash prints
``{"ok": false, "error": ..., "checks": [what passed so far]}`` and exits 1.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[3]
# The checkout (for fabric, gateway), tests/ (nsutil) and tests/gateway (gwharness).
for p in (ROOT / "tests" / "gateway", ROOT / "tests", ROOT):
    if str(p) not in sys.path:
        sys.path.insert(0, str(p))

checks: list[dict[str, Any]] = []
T0 = time.monotonic()


def check(name: str, ok: bool, detail: str = "") -> None:
    checks.append({"name": name, "ok": bool(ok), "detail": detail, "t": round(time.monotonic() - T0, 1)})


def result(out: dict[str, Any]) -> dict[str, Any]:
    return {**out, "ok": bool(checks) and all(c["ok"] for c in checks), "checks": checks,
            "seconds": round(time.monotonic() - T0, 1)}


def run(main: Callable[[], dict[str, Any]]) -> None:
    try:
        out = result(main())
    except Exception as e:  # a crash is a result too: report it with what passed so far
        import traceback
        traceback.print_exc()
        print(json.dumps({"ok": False, "error": f"{type(e).__name__}: {e}", "checks": checks}))
        sys.exit(1)
    print(json.dumps(out))
    sys.exit(0)
