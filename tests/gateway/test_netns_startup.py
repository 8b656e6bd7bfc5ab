"""Environment errors at start stop the daemon with one line naming the key, before it
changes anything in its namespace (no forwarding sysctl, no WireGuard link), never a traceback."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

from nsutil import Namespaces, require_root, sh, uniq

BIN = Path(sys.executable).parent


def test_api_port_in_use_stops_before_touching_anything(netns: Namespaces, tmp_path: Path) -> None:
    require_root()
    ns = netns.add("cws")
    sh("ip", "link", "set", "lo", "up", ns=ns)
    sh("ip", "addr", "add", "10.244.0.10/32", "dev", "lo", ns=ns)
    sh("sysctl", "-qw", "net.ipv4.ip_forward=0", ns=ns)
    iface = uniq("cws")
    cfg = tmp_path / "gw.yaml"
    cfg.write_text(f"cluster_id: t1\npod_cidrs: [10.244.0.0/16]\ngateway_ip: 10.244.0.10\n"
                   f"wireguard: {{interface: {iface}, implementation: userspace}}\n"
                   f"api: {{listen: '127.0.0.1:8080', advertise: 'http://192.0.2.1:8080'}}\n"
                   f"state_dir: {tmp_path / 'sd'}\n")
    holder = subprocess.Popen(["ip", "netns", "exec", ns, sys.executable, "-c",
                               "import socket, time\ns = socket.socket(); s.bind(('127.0.0.1', 8080)); "
                               "s.listen(); print('up', flush=True); time.sleep(60)"],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "up"
        t0 = time.monotonic()
        p = subprocess.run(["ip", "netns", "exec", ns, str(BIN / "crosswire"), "gateway", "run",
                            "--config", str(cfg)], capture_output=True, text=True, timeout=60)
        assert p.returncode == 1, p.stderr
        assert "crosswire: cannot start: api.listen: cannot listen on 127.0.0.1:8080: Address already in use" \
            in p.stderr, p.stderr
        assert "Traceback" not in p.stderr
        assert time.monotonic() - t0 < 30
        # Nothing was changed: forwarding still off, no WireGuard interface.
        assert sh("sysctl", "-n", "net.ipv4.ip_forward", ns=ns).stdout.strip() == "0"
        assert sh("ip", "link", "show", iface, ns=ns, check=False).returncode != 0
    finally:
        holder.kill()
        holder.wait(timeout=10)
