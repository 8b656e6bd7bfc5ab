"""``crosswire``'s entry point. Stdlib only until the command is known: ``gateway run``
may start the data plane first (gateway/launch.py); everything else is gateway/cli.py."""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Sequence


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if args[:2] == ["gateway", "run"]:
        from gateway.launch import launch_early

        # Any failure here: the normal path does all of this too, only later.
        with contextlib.suppress(Exception):
            launch_early(args, os.environ)
    from gateway.cli import main as cli_main

    return cli_main(args)


if __name__ == "__main__":
    sys.exit(main())
