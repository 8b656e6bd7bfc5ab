"""One VM for the whole test session: Debian's kernel (with the WireGuard module) in qemu.

virtme-ng boots the kernel of ``linux-image-amd64`` under software emulation
(``--disable-kvm``: a KVM guest hangs in this nested setting), sharing this
machine's filesystem read-only, so the guest runs this checkout's own venv and
tools. The host drops job scripts into a shared read-write directory; the
guest's agent (``guest/agent.sh``) runs each under a hard timeout and leaves
its output and exit status beside it. The guest has no network device: all
its traffic stays inside the namespaces its scenarios create.

Emulation is slow (a Python start takes seconds), so each scenario is one
script run in the guest that reports JSON, not many round trips.
"""

from __future__ import annotations

import contextlib
import glob
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
GUEST = Path(__file__).resolve().parent / "guest"
BOOT_TIMEOUT = float(os.environ.get("CROSSWIRE_VM_BOOT_TIMEOUT", "300"))
# Seconds per step, printed at the end of the session (conftest's terminal summary).
TIMES: dict[str, float] = {}


class VmError(RuntimeError):
    pass


def kernel_image() -> str | None:
    """The newest Debian kernel image in /boot (linux-image-amd64), None if there is none."""
    def version(p: str) -> tuple[int, ...]:
        return tuple(int(x) for x in re.findall(r"\d+", os.path.basename(p)))
    images = sorted(glob.glob("/boot/vmlinuz-*"), key=version)
    return images[-1] if images else None


def missing_tools() -> list[str]:
    need = {"vng": str(BIN / "vng"), "qemu-system-x86_64": "qemu-system-x86_64", "busybox": "busybox"}
    return [name for name, exe in need.items() if shutil.which(exe) is None]


@dataclass
class JobResult:
    rc: int
    out: str
    err: str
    seconds: float
    report: dict[str, Any] = field(default_factory=dict)  # the last JSON line of out


class Vm:
    def __init__(self, kernel: str, memory: str = "2G", cpus: int = 2) -> None:
        self.kernel = kernel
        self.memory = memory
        self.cpus = cpus
        self.dir = Path(tempfile.mkdtemp(prefix="cwvm-", dir="/tmp"))
        os.chmod(self.dir, 0o700)
        self.proc: subprocess.Popen[bytes] | None = None
        self.boot_seconds = 0.0
        self._n = 0
        self.broken: str | None = None
        self._leasing = threading.Event()

    def _renew(self) -> None:
        """Renew the guest's lease every few seconds; the guest powers off ~90 s after the
        last renewal, so a killed test run cannot leave the VM running."""
        n = 0
        while not self._leasing.wait(5):
            n += 1
            with contextlib.suppress(OSError):
                tmp = self.dir / "lease.tmp"
                tmp.write_text(str(n))
                tmp.rename(self.dir / "lease")

    def command(self) -> list[str]:
        return [str(BIN / "vng"), "--run", self.kernel, "--disable-kvm", "--memory", self.memory,
                "--cpus", str(self.cpus), "--rwdir", str(self.dir), "--cwd", str(ROOT),
                "--exec", f"sh {GUEST / 'agent.sh'} {self.dir}"]

    def start(self) -> None:
        env = dict(os.environ)
        env["PATH"] = f"{BIN}:{env.get('PATH', '/usr/sbin:/usr/bin:/sbin:/bin')}"
        t0 = time.monotonic()
        log = open(self.dir / "console.log", "wb")  # noqa: SIM115
        try:
            # Its own process group: teardown kills vng, virtme-run and qemu together.
            self.proc = subprocess.Popen(self.command(), stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                         env=env, cwd=str(ROOT), start_new_session=True)
        finally:
            log.close()
        threading.Thread(target=self._renew, name="vm-lease", daemon=True).start()
        deadline = t0 + BOOT_TIMEOUT
        while not (self.dir / "ready").exists():
            if self.proc.poll() is not None:
                raise VmError(f"the VM exited at boot (status {self.proc.returncode}):\n{self.console()}")
            if time.monotonic() > deadline:
                raise VmError(f"the VM did not boot within {BOOT_TIMEOUT:.0f} s:\n{self.console()}")
            time.sleep(0.5)
        self.boot_seconds = time.monotonic() - t0

    def console(self) -> str:
        with contextlib.suppress(OSError):
            return (self.dir / "console.log").read_text(errors="replace")[-3000:]
        return ""

    def run(self, script: str, timeout: float) -> JobResult:
        """Run the shell ``script`` in the guest (from the repo root) within ``timeout`` seconds."""
        if self.broken:
            raise VmError(f"the VM is unusable: {self.broken}")
        assert self.proc is not None
        self._n += 1
        base = self.dir / f"{self._n:03d}"
        Path(f"{base}.timeout").write_text(f"{int(timeout)}\n")
        tmp = Path(f"{base}.tmp")
        tmp.write_text(f"cd {ROOT}\nexport PATH={BIN}:$PATH\n{script}\n")
        tmp.rename(f"{base}.job")  # whole, or not at all, when the agent looks
        t0 = time.monotonic()
        # The guest kills the job at ``timeout``; the host gives it a margin, then gives up.
        deadline = t0 + timeout + 60
        rc_path = Path(f"{base}.rc")
        while not rc_path.exists():
            if self.proc.poll() is not None:
                self.broken = f"the VM exited (status {self.proc.returncode})"
                raise VmError(f"{self.broken}:\n{self.console()}")
            if time.monotonic() > deadline:
                self.broken = f"a job did not finish within {timeout + 60:.0f} s"
                raise VmError(self.broken)
            time.sleep(0.3)
        res = JobResult(rc=int(rc_path.read_text().strip() or -1),
                        out=Path(f"{base}.out").read_text(errors="replace"),
                        err=Path(f"{base}.err").read_text(errors="replace"),
                        seconds=time.monotonic() - t0)
        for line in reversed(res.out.splitlines()):
            if line.startswith("{"):
                with contextlib.suppress(ValueError):
                    res.report = json.loads(line)
                    break
        return res

    def python(self, script: str, *args: str, timeout: float) -> JobResult:
        """Run ``tests/vm/guest/SCRIPT`` with this venv's Python in the guest."""
        quoted = " ".join(f"'{a}'" for a in args)
        return self.run(f"{BIN / 'python'} {GUEST / script} {quoted}", timeout)

    def stop(self) -> None:
        """Always ends the VM: a polite stop, then SIGKILL to its whole process group."""
        proc, self.proc = self.proc, None
        self._leasing.set()
        if proc is not None:
            with contextlib.suppress(OSError):
                (self.dir / "stop").write_text("")
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=15)
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=10)
        shutil.rmtree(self.dir, ignore_errors=True)


def group_alive(pgid: int) -> bool:
    """Whether any process of the group is still there (a leftover qemu)."""
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            if os.getpgid(int(pid)) == pgid and Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] != "Z":
                return True
        except (OSError, IndexError):
            continue
    return False
