"""``crosswire dataplane run``: crosswire-wg in a container of its own (the gateway pod's
``dataplane`` container), so that restarting, upgrading or crashing the gateway
container never stops a packet.

The container shares the pod's network namespace (the TUN and its routes) and
the state volume (the saved configuration, ``state_dir/wg-IFACE.conf``) with the
gateway container, whose daemon runs with ``wireguard.supervise: false``: it
never starts or stops the process, it adopts and programs the one running here.
This loop is the supervisor instead: it keeps the active crosswire-wg
(``--persist --saved-config``) and its standby (``fabric/wg/standby.py``)
running, logging to the container's output. When the active process dies the
standby takes over by itself; the next look here (within ``POLL`` s) counts
it and starts a new standby. When the container itself restarts, the TUN
survived (``--persist``): the new active process re-attaches to it and
restores the saved configuration, which costs a Python start.

With the kernel implementation (``auto`` on a node with the module) there is no
process to run: the loop only waits, so the container stays up and cheap.
"""

from __future__ import annotations

import logging
import os
import signal
import threading

from fabric.wgprocess import Implementation, WgProcess, WgProcessError, saved_config_path

log = logging.getLogger("crosswire.dataplane")
POLL = 0.2  # seconds between two looks at the processes


def run(interface: str, implementation: Implementation, mtu: int, state_dir: str, standby: bool = True,
        adopt_unmarked: bool = False, stop: threading.Event | None = None) -> int:
    stop = stop or threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        # The container stops: leave the data plane as a crash would (SIGKILL, as the
        # runtime would anyway); the TUN and its routes persist for the next start.
        signal.signal(sig, lambda *_: stop.set())
    proc = WgProcess(interface, implementation, mtu, standby=standby, inherit_output=True,
                     saved_config=saved_config_path(os.path.join(state_dir, "dataplane.log"), interface))
    if proc.resolved != "userspace":
        log.info("%s: %s serves the interface: no process to supervise here", interface, proc.choice.display)
        stop.wait()
        return 0
    try:
        proc.claim(adopt_unmarked)
    except WgProcessError as e:
        log.error("%s", e)
        return 1
    serving: int | None = None
    changes = 0
    try:
        while not stop.is_set():
            try:
                if not proc.alive():
                    proc.ensure_up()
                pid = proc.pid()
                if pid != serving:
                    # Also a takeover we did not see happen (a standby of an adopted process).
                    changes += serving is not None
                    log.info("%s: data plane up (pid %s%s; %d replacements so far, %d seen as standby "
                             "takeovers)", interface, pid, "" if serving is None else f", was {serving}",
                             changes, proc.takeovers)
                    serving = pid
            except WgProcessError as e:
                log.error("%s", e)
            stop.wait(POLL)
    finally:
        proc.abandon()  # what the runtime does to the container's processes anyway
    log.info("%s: stopped; the interface and the saved configuration stay for the next start", interface)
    return 0
