"""Inside the VM: ``auto`` picks the kernel module, creates a kernel link and drives it over netlink."""

from __future__ import annotations

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]
sys.path[:0] = [str(ROOT / "tests"), str(ROOT)]

from nsutil import namespaces, sh  # noqa: E402

from fabric.wgprocess import WgProcess  # noqa: E402


def main() -> int:
    out: dict[str, object] = {}
    with namespaces() as n:
        ns = n.add("auto")
        p = WgProcess("cwauto0", "auto", 1420, netns=ns)
        out["implementation"] = p.resolved
        out["display"] = p.choice.display
        out["reason"] = p.choice.reason
        p.ensure_up()
        link = sh("ip", "-d", "link", "show", "cwauto0", ns=ns).stdout
        out["link_kind_wireguard"] = "wireguard" in link
        out["marked"] = "alias crosswire" in link
        out["alive"] = p.alive()
        out["control"] = type(p.control()).__name__
        out["device_answers"] = p.control().alive()
        p.stop()
        out["removed"] = sh("ip", "link", "show", "cwauto0", ns=ns, check=False).returncode != 0
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
