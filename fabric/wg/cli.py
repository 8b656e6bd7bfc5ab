"""``crosswire-wg [-f|--foreground] IFACE``: a drop-in for wireguard-go.

Without ``-f`` (and without WG_PROCESS_FOREGROUND=1, which wireguard-go also
honours) it forks; the child creates the TUN device, the UDP sockets and the
UAPI socket, then reports through a pipe, and only then does the parent exit
0 — so ``wg-quick`` may run ``wg setconf`` right after we return. A start-up
failure is reported by the parent on stderr with exit status 1.

Logs go to stderr in the foreground; in the background to ``--log-file`` if
given, else (as wireguard-go) nowhere unless LOG_LEVEL is set in the
environment. Log lines never carry key material: the daemon logs UAPI
operations and errno values, never request bodies.

Counters (drops by reason, rx/tx, I/O errors) are written as JSON to
``--stats-file`` (default /var/run/wireguard/IFACE.stats, refreshed every
second, removed at exit) and logged at info level on SIGUSR1.

It stops (status 0, removing the interface, socket and stats file) on SIGTERM,
SIGINT or SIGHUP, when its UAPI socket file is deleted, or when its interface
is deleted. Offloads (see udp.py and offload.py) are on by default;
``--no-offload`` turns them off. TSO reads (TCP super-packets from the kernel,
split here) follow the traffic where numpy is installed and one worker runs
(fabric.wg.tsopolicy: on while they pay, off while partial checksums of other
packets dominate); ``--tso`` keeps them on, ``--no-tso`` off.
CROSSWIRE_WG_PROFILE=PATH (IFACE in it is replaced) writes a cProfile of the
loop at exit.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import logging
import os
import signal
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, NoReturn

from fabric.wg.tun import Tun, TunError, check_name
from fabric.wg.uapi_server import SOCKET_DIR

if TYPE_CHECKING:
    from fabric.wg import savedconfig
    from fabric.wg.daemon import Daemon

LEVELS = {"debug": logging.DEBUG, "verbose": logging.DEBUG, "info": logging.INFO,
          "warning": logging.WARNING, "error": logging.ERROR, "silent": logging.CRITICAL + 10}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="crosswire-wg", description="Userspace WireGuard (crosswire)")
    p.add_argument("-f", "--foreground", action="store_true", help="do not fork into the background")
    p.add_argument("--log-level", choices=sorted(LEVELS), default=None,
                   help="default: $LOG_LEVEL or info")
    p.add_argument("--log-file", default=None, help="append logs here (background mode)")
    p.add_argument("--stats-file", default=None,
                   help=f"counters as JSON (default {SOCKET_DIR}/IFACE.stats; 'none' disables)")
    p.add_argument("--no-offload", action="store_true",
                   help="plain TUN: no TSO/GRO super-packets, no UDP GSO/GRO batching")
    p.add_argument("--tso", action="store_true",
                   help="always let the kernel hand over 64 KB TCP super-packets and split them "
                        "here (default: where numpy is installed, while they pay)")
    p.add_argument("--no-tso", action="store_true",
                   help="read packet by packet: no TSO super-packets")
    p.add_argument("--saved-config", default=None, metavar="PATH",
                   help="save the configuration here (0600, atomically) after each applied set "
                        "and restore it at start (it holds the private key)")
    p.add_argument("--persist", action="store_true",
                   help="keep the interface (and its routes) if this process dies; a restart "
                        "re-attaches to it (a clean stop still removes it)")
    p.add_argument("--standby", action="store_true",
                   help="start ready and wait: take over the persistent interface and the saved "
                        "configuration the moment the running crosswire-wg on IFACE dies (needs "
                        "--persist and --saved-config; runs in the foreground)")
    p.add_argument("--workers", type=int, default=1, metavar="N",
                   help="serve the device with N processes (one TUN queue and one UDP socket "
                        "each; see fabric/wg/DESIGN.md, 'More cores'); default 1. Not with "
                        "--persist or --standby")
    p.add_argument("--version", action="version", version="crosswire-wg 0.1.0")
    p.add_argument("interface")
    return p.parse_args(argv)


def _tso_auto(args: argparse.Namespace) -> bool:
    """TSO reads that follow the traffic: the default with numpy installed (looked
    up, not imported: the import waits for the first super-packet) and one worker."""
    if args.no_offload or args.no_tso or args.tso or args.workers > 1:
        return False
    import importlib.util

    return importlib.util.find_spec("numpy") is not None


def _setup_logging(args: argparse.Namespace, foreground: bool) -> None:
    level_name = args.log_level or os.environ.get("LOG_LEVEL", "info").lower()
    level = LEVELS.get(level_name, logging.INFO)
    fmt = f"%(asctime)s crosswire-wg({args.interface}) %(levelname)s: %(message)s"
    handler: logging.Handler
    if args.log_file:
        handler = logging.FileHandler(args.log_file)
    elif foreground or os.environ.get("LOG_LEVEL"):
        handler = logging.StreamHandler(sys.stderr)
    else:
        handler = logging.NullHandler()
    handler.setFormatter(logging.Formatter(fmt))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)


def _serve(args: argparse.Namespace, ready_fd: int | None, on_ready: Callable[[], None] | None = None) -> int:
    """Create everything, signal readiness, run the loop, clean up. Returns the exit status.
    ``on_ready``: called once the interface, the sockets and the configuration are up."""
    from fabric.wg import savedconfig
    from fabric.wg.daemon import Daemon
    from fabric.wg.device import Device

    log = logging.getLogger("crosswire.wg")
    stats = args.stats_file
    if stats is None:
        stats = os.path.join(SOCKET_DIR, f"{args.interface}.stats")
    elif stats == "none":
        stats = None
    try:
        tso_auto = _tso_auto(args)
        # Under the policy TSO starts off: it goes on once numpy is loaded (Daemon._adapt_tso).
        tun = Tun(args.interface, offload=not args.no_offload, tso=args.tso and not args.no_offload,
                  persist=args.persist, multi_queue=args.workers > 1)
    except (TunError, OSError) as e:
        return _fail(ready_fd, f"cannot create interface {args.interface}: {e.strerror or e}")
    pool = None
    if args.workers > 1:
        from fabric.wg import multicore, workers

        try:
            pool = workers.start(tun, args.workers, () if ready_fd is None else (ready_fd,))
        except OSError as e:
            tun.close()
            return _fail(ready_fd, f"cannot start workers on {args.interface}: {e.strerror or e}")
        device: Device = multicore.OwnerDevice(pool.shared)
    else:
        device = Device()
    saver = savedconfig.Saver(args.saved_config, device) if args.saved_config else None
    try:
        if pool is not None:
            from fabric.wg import multicore, workers

            assert isinstance(device, multicore.OwnerDevice)
            daemon: Daemon = workers.OwnerDaemon(device, tun, pool=pool, stats_path=stats,
                                                 gso=not args.no_offload, on_configured=saver)
        else:
            daemon = Daemon(device, tun, stats_path=stats, gso=not args.no_offload,
                            on_configured=saver)
            if tso_auto and tun.vnet_hdr:
                from fabric.wg.tsopolicy import TsoPolicy

                daemon.tso_policy = TsoPolicy(on=False)  # the first pass with numpy loaded turns it on
    except OSError as e:
        if pool is not None:
            pool.stop()
        tun.close()
        return _fail(ready_fd, f"cannot start on {args.interface}: {e.strerror or e}")
    try:
        daemon.install_signal_handlers()
        if saver is not None:
            _restore(daemon, saver, log)
        log.info("device %s up (UAPI %s)%s", args.interface, daemon.uapi.path,
                 " (re-attached to the persistent interface)" if tun.reattached else "")
        if on_ready is not None:
            on_ready()
        if ready_fd is not None:
            os.write(ready_fd, b"ok")
            os.close(ready_fd)
        if daemon.tso_policy is not None:
            from fabric.wg import offload

            offload.preload_numpy()
        profile_path = os.environ.get("CROSSWIRE_WG_PROFILE", "").replace("IFACE", args.interface)
        if profile_path:
            # Development aid: cProfile the loop, stats written at exit (pstats format).
            import cProfile

            prof = cProfile.Profile()
            try:
                prof.runcall(daemon.run)
            finally:
                prof.dump_stats(profile_path)
        else:
            daemon.run()
    finally:
        daemon.close()
        log.info("shut down, removed %s", args.interface)
    return 0


def _restore(daemon: Daemon, saver: savedconfig.Saver, log: logging.Logger) -> None:
    from fabric.wg import savedconfig

    path = saver.path
    try:
        text = savedconfig.load(path)
    except savedconfig.SavedConfigError as e:
        log.warning("%s (%s)", e.strerror or e, path)
        return
    if text is None:
        return
    saver.last = text  # restoring it changes nothing worth writing back
    if daemon.restore(text):
        log.info("restored the saved configuration (%s)", path)
    else:
        log.warning("the saved configuration %s was refused; waiting to be configured", path)


def _fail(ready_fd: int | None, msg: str) -> int:
    logging.getLogger("crosswire.wg").error("%s", msg)
    if ready_fd is not None:
        with contextlib.suppress(OSError):
            os.write(ready_fd, msg.encode())
            os.close(ready_fd)
    else:
        print(f"crosswire-wg: {msg}", file=sys.stderr)
    return 1


def _daemonize(args: argparse.Namespace) -> NoReturn:
    r, w = os.pipe()
    pid = os.fork()
    if pid > 0:
        os.close(w)
        chunks = []
        while chunk := os.read(r, 4096):
            chunks.append(chunk)
        msg = b"".join(chunks).decode(errors="replace")
        if msg == "ok":
            os._exit(0)
        print(f"crosswire-wg: {msg or 'daemon exited during start-up'}", file=sys.stderr)
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, 0)
        os._exit(1)
    os.close(r)
    os.setsid()
    devnull = os.open(os.devnull, os.O_RDWR)
    os.dup2(devnull, 0)
    if args.log_file or not os.environ.get("LOG_LEVEL"):
        # Keep no pipe of the caller open: `$(wg-quick up)` or subprocess.run would hang.
        os.dup2(devnull, 1)
        os.dup2(devnull, 2)
    os.close(devnull)
    _setup_logging(args, foreground=False)
    code = 1
    try:
        code = _serve(args, w)
    except BaseException:
        logging.getLogger("crosswire.wg").exception("daemon crashed")
    finally:
        logging.shutdown()
        os._exit(code)


def main(argv: list[str] | None = None) -> int:
    # No collector passes while the modules load (they find nothing: ~5% of the
    # start); Daemon.run turns it on again.
    gc.disable()
    args = parse_args(argv)
    try:
        check_name(args.interface)
    except TunError as e:
        print(f"crosswire-wg: {e.strerror}", file=sys.stderr)
        return 1
    if os.geteuid() != 0:
        print("crosswire-wg: must run as root (CAP_NET_ADMIN)", file=sys.stderr)
        return 1
    if not 1 <= args.workers <= 64:
        print("crosswire-wg: --workers must be 1..64", file=sys.stderr)
        return 2
    if args.workers > 1 and (args.persist or args.standby):
        print("crosswire-wg: --workers > 1 cannot be combined with --persist or --standby "
              "(a re-attached multi-queue TUN would need every worker back)", file=sys.stderr)
        return 2
    if args.standby:
        return _standby(args)
    foreground = args.foreground or os.environ.get("WG_PROCESS_FOREGROUND") == "1"
    if not foreground:
        _daemonize(args)
    _setup_logging(args, foreground=True)
    return _serve(args, None)


def _standby(args: argparse.Namespace) -> int:
    """``--standby``: wait ready, take over when the active process dies (fabric.wg.standby)."""
    if not (args.persist and args.saved_config):
        print("crosswire-wg: --standby needs --persist and --saved-config", file=sys.stderr)
        return 2
    _setup_logging(args, foreground=True)
    from fabric.wg import standby

    lock = standby.take_lock(args.interface, SOCKET_DIR)
    if lock is None:
        logging.getLogger("crosswire.wg").info("standby: another standby waits for %s; exiting",
                                               args.interface)
        return 0
    held = [lock]

    def unlock() -> None:  # once: the fd number may be reused after the close
        while held:
            standby.release(held.pop(), args.interface, SOCKET_DIR)

    def on_stop(signum: int, _frame: object) -> None:
        raise SystemExit(0)  # while waiting: leave through the finally below

    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, on_stop)
    try:
        # Everything the takeover runs, imported now: that is the start it saves.
        from fabric.wg import daemon, device, savedconfig  # noqa: F401

        if _tso_auto(args):
            from fabric.wg import offload

            offload.preload_numpy()  # the split's numpy too (the active one loads it after its start)

        gc.enable()  # it may wait for days: off the packets' path, so collect as usual
        if not standby.wait(args.interface, SOCKET_DIR, args.saved_config):
            unlock()
            return 0
    except BaseException:
        unlock()
        raise

    # Keep the lock until we serve: the supervisor must not start a competitor meanwhile.
    try:
        return _serve(args, None, on_ready=unlock)
    finally:
        unlock()


if __name__ == "__main__":
    sys.exit(main())
