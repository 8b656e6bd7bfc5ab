"""Two WireGuard endpoints in two namespaces joined by a veth "internet", configured only with wg(8).

Used by the interop tests and by bench/throughput.py. Each side runs either the
reference ``wireguard-go`` or ``crosswire-wg`` (``IMPLS``); both are started the
way wg-quick starts them (``IMPL IFACE``, returning once the device is ready)
and then configured exclusively through ``wg set``. ``Pair.close()`` kills the
daemons, deletes the namespaces and any UAPI socket a SIGKILLed daemon left.

Outer (underlay) addresses: 192.0.2.1/.2 and fd00:cc::1/::2 (documentation /
ULA ranges, only ever inside the namespaces). Inner: 10.77.0.1/.2 and
fd77::1/::2.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field

from nsutil import Namespaces, sh, uniq

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
VENV_BIN = os.path.join(REPO, ".venv", "bin")
CROSSWIRE_WG = os.path.join(VENV_BIN, "crosswire-wg")
PYTHON = sys.executable
SOCK_DIR = "/var/run/wireguard"
IMPLS = ("wggo", "crosswire")

OUTER4 = ("192.0.2.1", "192.0.2.2")
OUTER6 = ("fd00:cc::1", "fd00:cc::2")
INNER4 = ("10.77.0.1", "10.77.0.2")
INNER6 = ("fd77::1", "fd77::2")
PORTS = (51820, 51821)


def genkey() -> tuple[str, str]:
    priv = sh("wg", "genkey").stdout.strip()
    pub = sh("wg", "pubkey", input=priv + "\n").stdout.strip()
    return priv, pub


def daemon_pids(ns: str, iface: str) -> list[int]:
    """wireguard-go / crosswire-wg processes serving ``iface`` in namespace ``ns``."""
    out = subprocess.run(["ip", "netns", "pids", ns], capture_output=True, text=True).stdout
    found = []
    for pid in out.split():
        with contextlib.suppress(OSError):
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                cmd = f.read().replace(b"\0", b" ").decode(errors="replace")
            if iface in cmd and ("wireguard-go" in cmd or "crosswire-wg" in cmd):
                found.append(int(pid))
    return found


def wait_daemon_gone(ns: str, iface: str, timeout: float = 5.0) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if not daemon_pids(ns, iface):
            return True
        time.sleep(0.05)
    return False


@dataclass
class Side:
    ns: str
    iface: str
    impl: str
    priv: str
    pub: str
    port: int
    outer4: str
    outer6: str
    inner4: str
    inner6: str
    keydir: str
    log_path: str = ""
    stats_path: str = ""
    extra_args: list[str] = field(default_factory=list)
    wggo_bin: str = "wireguard-go"  # another build (bench --reference); its path must contain "wireguard-go"
    crosswire_bin: str = CROSSWIRE_WG  # another build (bench --crosswire); its path must contain "crosswire-wg"

    def sh(self, *args: str, check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        proc: subprocess.CompletedProcess[str] = sh(*args, ns=self.ns, check=check, timeout=timeout)
        return proc

    def wg(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return self.sh("wg", *args, check=check)

    @property
    def sock(self) -> str:
        return os.path.join(SOCK_DIR, f"{self.iface}.sock")

    def keyfile(self, priv: str) -> str:
        path = os.path.join(self.keydir, f"{self.iface}-{uniq('k')}.key")
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(priv + "\n")
        return path

    def start(self) -> None:
        """Start the daemon the way wg-quick does and wait for its UAPI socket."""
        if self.impl == "wggo":
            self.sh(self.wggo_bin, self.iface)
        else:
            self.sh(self.crosswire_bin, "--log-level", "debug", "--log-file", self.log_path,
                    "--stats-file", self.stats_path, *self.extra_args, self.iface)
        assert os.path.exists(self.sock), f"{self.impl} returned before creating {self.sock}"
        self.sh("ip", "link", "set", self.iface, "up")

    def address(self) -> None:
        self.sh("ip", "addr", "add", f"{self.inner4}/24", "dev", self.iface)
        self.sh("ip", "addr", "add", f"{self.inner6}/64", "dev", self.iface, "nodad")

    def pids(self) -> list[int]:
        return daemon_pids(self.ns, self.iface)

    def kill(self, sig: int = signal.SIGTERM) -> None:
        for pid in self.pids():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)

    def wait_gone(self, timeout: float = 5.0) -> bool:
        return wait_daemon_gone(self.ns, self.iface, timeout)

    def iface_exists(self) -> bool:
        return self.sh("ip", "link", "show", self.iface, check=False).returncode == 0

    def stats(self) -> dict[str, int]:
        import json
        with open(self.stats_path) as f:
            data: dict[str, int] = json.load(f)
        return data

    def stats_after(self, t: float, timeout: float = 15.0) -> dict[str, int]:
        """The counters from a stats file written after wall-clock ``t`` (the daemon
        rewrites it once a second; on a loaded machine that second can stretch): a
        file from before ``t`` would miss what happened just before it."""
        deadline = time.monotonic() + timeout
        while True:
            with contextlib.suppress(FileNotFoundError):
                if os.stat(self.stats_path).st_mtime > t:
                    return self.stats()
            assert time.monotonic() < deadline, f"{self.stats_path} not rewritten since {t}"
            time.sleep(0.1)

    def log_text(self) -> str:
        try:
            with open(self.log_path, errors="replace") as f:
                return f.read()
        except OSError:
            return ""


class Pair:
    """Namespaces a and b, a veth between them, one WireGuard daemon in each."""

    def __init__(self, impl_a: str, impl_b: str, workdir: str, wggo_bin: str = "wireguard-go",
                 crosswire_bin: str = CROSSWIRE_WG) -> None:
        self.nss = Namespaces()
        self.sides: list[Side] = []
        self.workdir = workdir
        try:
            ns_a, ns_b = self.nss.add("cwa"), self.nss.add("cwb")
            self.veth = self.nss.veth(ns_a, ns_b, f"{OUTER4[0]}/24", f"{OUTER4[1]}/24")
            for ns, dev, addr in ((ns_a, self.veth[0], OUTER6[0]), (ns_b, self.veth[1], OUTER6[1])):
                sh("ip", "addr", "add", f"{addr}/64", "dev", dev, "nodad", ns=ns)
            for i, (ns, impl) in enumerate(((ns_a, impl_a), (ns_b, impl_b))):
                priv, pub = genkey()
                iface = uniq("cwg")
                self.sides.append(Side(
                    ns=ns, iface=iface, impl=impl, priv=priv, pub=pub, port=PORTS[i],
                    outer4=OUTER4[i], outer6=OUTER6[i], inner4=INNER4[i], inner6=INNER6[i],
                    keydir=workdir, log_path=os.path.join(workdir, f"{iface}.log"),
                    stats_path=os.path.join(workdir, f"{iface}.stats"), wggo_bin=wggo_bin,
                    crosswire_bin=crosswire_bin))
        except BaseException:
            self.close()
            raise

    @property
    def a(self) -> Side:
        return self.sides[0]

    @property
    def b(self) -> Side:
        return self.sides[1]

    def up(self, endpoint_on: str = "both", outer6: bool = False, keepalive: int = 0) -> None:
        """Start both daemons, configure them with `wg set`, address the interfaces.

        ``endpoint_on``: which side learns the other's endpoint ("a", "b" or "both");
        a side without one can only answer, so this picks the initiator.
        """
        for s in self.sides:
            s.start()
        # Responders first: an initiation sent before the other side has its key is lost and
        # only retried after REKEY_TIMEOUT (5 s).
        order = [(self.b, self.a), (self.a, self.b)] if endpoint_on == "a" else \
            [(self.a, self.b), (self.b, self.a)]
        for s, other in order:
            self.configure(s, other, with_endpoint=endpoint_on in ("both", "a" if s is self.a else "b"),
                           outer6=outer6, keepalive=keepalive)
            s.address()

    def configure(self, s: Side, other: Side, *, with_endpoint: bool, outer6: bool = False,
                  keepalive: int = 0) -> None:
        args = ["set", s.iface, "private-key", s.keyfile(s.priv), "listen-port", str(s.port),
                "peer", other.pub, "allowed-ips", f"{other.inner4}/32,{other.inner6}/128"]
        if with_endpoint:
            host = f"[{other.outer6}]" if outer6 else other.outer4
            args += ["endpoint", f"{host}:{other.port}"]
        if keepalive:
            args += ["persistent-keepalive", str(keepalive)]
        s.wg(*args)

    def warm_up(self, src: Side, dst_addr: str, timeout: float = 20) -> None:
        """Ping until one reply comes back: the packets that start the handshake may be
        lost (a loaded machine can stretch it past ping's wait), so an assertion on
        loss belongs to the pings after this one."""
        out = self.ping(src, dst_addr, count=1, timeout=timeout)
        assert " 1 received" in out, out

    def ping(self, src: Side, dst_addr: str, count: int = 3, timeout: float = 20) -> str:
        return src.sh("ping", "-c", str(count), "-i", "0.2", "-W", "2", "-w", str(int(timeout)),
                      dst_addr, timeout=timeout + 5).stdout

    def debug_dump(self) -> str:
        parts = []
        for s in self.sides:
            parts.append(f"--- {s.impl} {s.ns}/{s.iface}")
            parts.append(s.wg("show", s.iface, check=False).stdout)
            if s.impl == "crosswire":
                parts.append(s.log_text()[-4000:])
        return "\n".join(parts)

    def close(self) -> None:
        for s in self.sides:
            s.kill(signal.SIGTERM)
        for s in self.sides:
            if not s.wait_gone(3):
                s.kill(signal.SIGKILL)
                s.wait_gone(2)
        self.nss.cleanup()
        for s in self.sides:
            # A SIGKILLed daemon cannot remove its socket; the directory is not namespaced.
            with contextlib.suppress(OSError):
                os.unlink(s.sock)


def have_tools() -> list[str]:
    return [t for t in ("wg", "wireguard-go", "ip", "ping") if shutil.which(t) is None]


TCPXFER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "tcpxfer.py")


class Transfer:
    """A verified TCP transfer from ``src`` to ``dst_addr`` (which lives in ``dst``'s namespace)."""

    def __init__(self, src: Side, dst: Side, dst_addr: str, nbytes: int, rate: float = 0,
                 port: int = 5201) -> None:
        self.nbytes = nbytes
        self.receiver = subprocess.Popen(
            ["ip", "netns", "exec", dst.ns, PYTHON, TCPXFER, "recv", dst_addr, str(port)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.sender: subprocess.Popen[str] | None = None
        try:
            assert self.receiver.stdout is not None
            line = self.receiver.stdout.readline().strip()
            assert line == "listening", f"receiver did not start: {line!r}"
            self.sender = subprocess.Popen(
                ["ip", "netns", "exec", src.ns, PYTHON, TCPXFER, "send", dst_addr, str(port),
                 str(nbytes), str(rate)],
                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        except BaseException:
            self.kill()
            raise

    def running(self) -> bool:
        return self.sender is not None and self.sender.poll() is None

    def wait(self, timeout: float = 120) -> tuple[str, str]:
        """Both sides' "<bytes> <sha256>"; raises if either failed."""
        assert self.sender is not None
        try:
            s_out, s_err = self.sender.communicate(timeout=timeout)
            assert self.sender.returncode == 0, f"sender failed: {s_err[-2000:]}"
            r_out, r_err = self.receiver.communicate(timeout=10)
        finally:
            self.kill()
        assert self.receiver.returncode == 0, f"receiver failed: {r_err[-2000:]}"
        return s_out.strip(), r_out.strip().splitlines()[-1]

    def kill(self) -> None:
        for p in (self.sender, self.receiver):
            if p is not None and p.poll() is None:
                p.kill()
                p.wait()
