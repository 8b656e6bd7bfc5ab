"""``crosswire gateway run`` and ``crosswire dataplane run``: the two long-running commands
(gateway/cli.py parses their arguments)."""

from __future__ import annotations

import argparse
import os
import sys


def cmd_gateway_run(args: argparse.Namespace) -> int:
    import logging

    from gateway.config import ConfigError, load

    logging.basicConfig(level=getattr(logging, args.log_level.upper()),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    from gateway import launch

    argv = getattr(args, "argv", None)
    before = launch.current_key(argv, os.environ) if argv is not None else None
    try:
        cfg = load(args.config)
    except ConfigError as e:
        print(f"crosswire: config error: {e}", file=sys.stderr)
        early_launched = launch.take_early()
        if early_launched is not None:  # started from a record of an earlier config: not ours to keep
            from fabric.wgearly import stop_launched

            stop_launched(early_launched.proc, early_launched.interface)
        return 2
    # Before the daemon's slow imports: a data plane that died with us (a container
    # restart) restarts from its saved configuration while we start (issue 12, event d),
    # unless gateway.launch already started it from the launch record.
    from fabric.wgearly import start_early, stop_early, stop_launched

    iface = cfg.wireguard.interface
    log_path = os.path.join(cfg.state_dir, "dataplane.log")
    launched = launch.take_early()
    cmds: list[tuple[list[str], str]] = []  # the crosswire-wg command line, for the launch record
    # With supervise off the data plane runs in its own container: never start it here.
    early = cfg.wireguard.supervise and start_early(
        iface, cfg.wireguard.implementation, log_path,
        launched=None if launched is None else (launched.proc, launched.argv),
        record=lambda cmd, sock: cmds.append((cmd, sock)))
    if launched is not None and not cfg.wireguard.supervise:
        stop_launched(launched.proc, iface)
    after = launch.current_key(argv, os.environ) if argv is not None else None

    def write_record() -> None:
        # After build(): the state directory exists (a first start creates it) and was
        # accepted. Only for the config bytes that were loaded.
        if cmds and before is not None and before == after:
            launch.write(cfg.state_dir, before[0], cmds[0][0], iface, cmds[0][1], log_path)
        else:
            launch.remove(cfg.state_dir)

    from gateway.daemon import StartupError, run

    try:
        return run(cfg, on_built=write_record)
    except StartupError as e:
        print(f"crosswire: cannot start: {e}", file=sys.stderr)
        # Refused (damaged state, a foreign link, a port in use): leave no data plane
        # running that nobody controls. One that ran before we started is left alone.
        if early:
            stop_early(iface)
        launch.remove(cfg.state_dir)  # the next start must not start one early to stop it again
        return 1


def cmd_dataplane_run(args: argparse.Namespace) -> int:
    """The data-plane container: crosswire-wg and its standby, beside a gateway that
    runs with wireguard.supervise: false (fabric/wgsupervise.py)."""
    import logging

    from gateway.config import load

    logging.basicConfig(level=getattr(logging, args.log_level.upper()),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    cfg = load(args.config)  # a ConfigError names the key (main prints it)
    from fabric import wgsupervise
    from gateway import statedir

    try:
        statedir.check(cfg.state_dir)
    except statedir.StateDirError as e:
        print(f"crosswire: cannot start: {e}", file=sys.stderr)
        return 1
    wg = cfg.wireguard
    return wgsupervise.run(wg.interface, wg.implementation, wg.mtu, cfg.state_dir, standby=wg.standby,
                           adopt_unmarked=statedir.has_state(cfg.state_dir))
