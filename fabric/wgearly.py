"""Start crosswire-wg before the gateway's own slow start-up, and stop it again if the
gateway then refuses to start.

A container restart kills crosswire-wg with the gateway; its interface and
routes persist (``--persist``) and its configuration was saved. ``crosswire
gateway run`` calls ``start_early`` right after reading its config, so the
data plane restores itself while the daemon imports and opens its state; the
``WgProcess`` the daemon makes later takes that process over as its child.
A refused start (damaged state, a foreign link, a port in use) calls
``stop_early``: no data plane is left running that nobody controls.
"""

from __future__ import annotations

import logging
import os
import subprocess
import time
from collections.abc import Callable

from fabric.wgctl import WgControl
from fabric.wgprocess import (
    START_TIMEOUT,
    Implementation,
    WgProcess,
    WgProcessError,
    _early,
    terminate,
)

log = logging.getLogger("crosswire.dataplane")

_started: dict[str, subprocess.Popen[bytes]] = {}  # interface -> what start_early began (for stop_early)


def start_early(interface: str, implementation: Implementation, log_path: str,
                launched: tuple[subprocess.Popen[bytes], list[str]] | None = None,
                record: Callable[[list[str], str], None] | None = None) -> bool:
    """Start crosswire-wg now, without waiting for it, if it saved a configuration
    before (this gateway ran it) and no data plane answers on ``interface``: it
    restores that configuration itself while the gateway starts. The WgProcess for
    ``interface`` takes the process over. True if one was started (here, or as
    ``launched``: the process and argv ``gateway.launch`` started from its record,
    kept only if that argv is the one this config gives).

    ``record(argv, socket_path)`` is called with the crosswire-wg command
    line whenever the data plane is crosswire-wg with a saved configuration: what
    gateway.launch may start next time."""
    proc = WgProcess(interface, implementation, log_path=log_path)
    if proc.saved_config is None or proc.resolved != "userspace":
        if launched is not None:
            stop_launched(launched[0], interface)
        return False
    cmd = proc.command()
    if record is not None:
        record(cmd, proc._uapi.socket_path)
    if launched is not None:
        if launched[1] == cmd:
            _early[interface] = _started[interface] = launched[0]
            log.info("%s: the data plane was started from the launch record", interface)
            return True
        log.warning("%s: the launch record's data plane is not this config's: stopped", interface)
        stop_launched(launched[0], interface)
    # The saved file first: only then is the choice (a module probe under ``auto``) worth making.
    if not os.path.exists(proc.saved_config):
        return False
    if proc._uapi.alive() is not False:
        return False  # running (a daemon-only restart), or cannot tell: leave it to ensure_up
    try:
        _early[interface] = _started[interface] = proc._spawn()
    except WgProcessError as e:
        log.warning("%s", e)
        return False
    return True


def stop_launched(proc: subprocess.Popen[bytes], interface: str) -> bool:
    """Stop a process gateway.launch started that this start does not keep."""
    _started[interface] = proc
    return stop_early(interface)


def stop_early(interface: str) -> bool:
    """Stop the process ``start_early`` began for ``interface`` (the gateway refused
    to start: it must not leave a data plane running that nobody controls). SIGTERM,
    so crosswire-wg removes its interface and socket as on any clean stop. A data
    plane that was already running before is never ours to stop: start_early did
    not start one then. True if a process was stopped."""
    proc = _started.pop(interface, None)
    _early.pop(interface, None)
    if proc is None or proc.poll() is not None:
        return False
    # Let it finish starting first: a SIGTERM before its handlers are installed would
    # kill it with its persistent interface left behind.
    uapi = WgControl(interface)
    deadline = time.monotonic() + START_TIMEOUT
    while proc.poll() is None and uapi.alive() is not True and time.monotonic() < deadline:
        time.sleep(0.02)
    if proc.poll() is not None:
        return False
    terminate(proc)
    log.info("%s: stopped the data plane started early for this refused start", interface)
    return True
