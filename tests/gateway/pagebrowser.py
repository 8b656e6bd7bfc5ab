"""A real Chromium for the operator page's tests, inside a network namespace.

Debian's ``chromium`` and ``chromium-driver`` (netns-lab/setup.sh installs them)
driven by selenium; nothing is downloaded at run time. Every selenium call runs
on one worker thread that joined the namespace first, so chromedriver and the
browser it starts (children of that thread) live there too: the browser reaches
only what the test built, and the namespace cleanup would kill them if all
else failed. ``close`` quits the browser, then kills chromedriver's process
group and anything still running with this browser's profile directory.
"""

from __future__ import annotations

import base64
import contextlib
import ctypes
import json
import os
import shutil
import signal
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

import pytest
from nsutil import IN_CI

T = TypeVar("T")
CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
CLONE_NEWNET = 0x40000000
ARTIFACTS = Path(__file__).resolve().parents[1] / "artifacts"  # git-ignored


def require_browser() -> None:
    """Fail (CI=true) or skip unless chromium, chromedriver and selenium are there."""
    missing = [p for p in (CHROMIUM, CHROMEDRIVER) if not (os.access(p, os.X_OK) or shutil.which(p))]
    try:
        import selenium  # noqa: F401
    except ImportError:
        missing.append("selenium (the test extra)")
    if missing:
        msg = f"browser test needs {', '.join(missing)} (netns-lab/setup.sh installs them)"
        if IN_CI:
            pytest.fail(msg + " (CI=true: failing, not skipping)")
        pytest.skip(msg)


def _enter_netns(ns: str | None) -> None:
    if ns is None:
        return
    libc = ctypes.CDLL(None, use_errno=True)
    fd = os.open(f"/run/netns/{ns}", os.O_RDONLY)
    try:
        if libc.setns(fd, CLONE_NEWNET) != 0:
            raise OSError(ctypes.get_errno(), f"setns {ns}")
    finally:
        os.close(fd)


class Browser:
    def __init__(self, ns: str | None, workdir: Path, width: int = 1280, height: int = 1000) -> None:
        self.profile = workdir / "chromium-profile"
        self.profile.mkdir(parents=True, exist_ok=True)
        self.driver_log = workdir / "chromedriver.log"
        self.pool = ThreadPoolExecutor(1, initializer=_enter_netns, initargs=(ns,),
                                       thread_name_prefix=f"browser-{ns}")
        self.pgid: int | None = None
        self.driver: Any = None
        self.size = (width, height)

    def start(self) -> None:
        self.driver = self.call(lambda: self._start(*self.size))
        self.get("about:blank")
        self.requests()  # drop what the browser loaded for itself at start

    def _start(self, width: int, height: int) -> Any:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service

        opts = webdriver.ChromeOptions()
        opts.binary_location = CHROMIUM
        for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                    f"--user-data-dir={self.profile}", f"--window-size={width},{height}",
                    "--no-first-run", "--no-default-browser-check", "--disable-background-networking",
                    "--disable-component-update", "--disable-sync", "--disable-extensions",
                    "--disable-default-apps", "--metrics-recording-only", "--hide-scrollbars"):
            opts.add_argument(arg)
        # every request the page makes (performance log) and its console (browser log)
        opts.set_capability("goog:loggingPrefs", {"performance": "ALL", "browser": "ALL"})
        service = Service(executable_path=CHROMEDRIVER, log_output=str(self.driver_log),
                          popen_kw={"start_new_session": True})
        try:
            return webdriver.Chrome(service=service, options=opts)
        finally:
            proc = getattr(service, "process", None)
            if proc is not None:
                self.pgid = proc.pid  # start_new_session: its pid is its process group

    def call(self, fn: Callable[[], T], timeout: float = 120) -> T:
        return self.pool.submit(fn).result(timeout=timeout)

    # --- conveniences, all on the worker thread ------------------------------------------------

    def get(self, url: str) -> None:
        self.call(lambda: self.driver.get(url))

    def js(self, script: str, *args: Any) -> Any:
        return self.call(lambda: self.driver.execute_script(script, *args))

    def wait_for(self, script: str, what: str, timeout: float = 30, args: tuple[Any, ...] = ()) -> Any:
        """Evaluate ``script`` (with ``arguments`` = args) until it returns something truthy; that value."""
        deadline = time.monotonic() + timeout
        last: Any = None
        while time.monotonic() < deadline:
            last = self.js(script, *args)
            if last:
                return last
            time.sleep(0.25)
        raise AssertionError(f"page: {what} not seen within {timeout}s (last: {last!r})\n"
                             f"{self.js('return document.body.innerText')}")

    def logs(self, kind: str) -> list[dict[str, Any]]:
        return list(self.call(lambda: self.driver.get_log(kind)))

    def requests(self) -> list[tuple[str, str]]:
        """(URL, URL of the document that asked) of every request since the last
        call (the performance log drains); the browser's own pages ask too."""
        out = []
        for entry in self.logs("performance"):
            msg = json.loads(entry["message"])["message"]
            if msg.get("method") == "Network.requestWillBeSent":
                out.append((msg["params"]["request"]["url"], msg["params"].get("documentURL", "")))
        return out

    def resize(self, width: int, height: int) -> None:
        self.call(lambda: self.driver.set_window_size(width, height))

    def screenshot(self, path: Path, full_page: bool = True) -> Path:
        path.parent.mkdir(parents=True, exist_ok=True)

        def shot() -> None:
            if full_page:  # the whole document, not just the window
                data = self.driver.execute_cdp_cmd("Page.captureScreenshot",
                                                   {"captureBeyondViewport": True, "format": "png"})
                path.write_bytes(base64.b64decode(data["data"]))
            else:
                self.driver.save_screenshot(str(path))
        self.call(shot)
        return path

    # --- teardown ------------------------------------------------------------------------------

    def close(self) -> None:
        try:
            if self.driver is not None:
                with contextlib.suppress(Exception):
                    self.call(self.driver.quit, timeout=30)
        finally:
            self.pool.shutdown(wait=False, cancel_futures=True)
            if self.pgid is not None:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(self.pgid, signal.SIGKILL)
            for pid in self.leftovers():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)

    def leftovers(self) -> list[int]:
        """Processes still running with this browser's profile (or chromedriver's group)."""
        mark = f"--user-data-dir={self.profile}".encode()
        pids = []
        for d in Path("/proc").iterdir():
            if not d.name.isdigit():
                continue
            try:
                cmd = (d / "cmdline").read_bytes()
                pgid = os.getpgid(int(d.name))
            except (OSError, ProcessLookupError):
                continue
            # zombies have an empty cmdline: reaped by their parent, not ours to kill
            if mark in cmd or (self.pgid is not None and pgid == self.pgid and cmd):
                pids.append(int(d.name))
        return pids


@contextlib.contextmanager
def browser(ns: str | None, workdir: Path, **size: int) -> Iterator[Browser]:
    b = Browser(ns, workdir, **size)
    try:
        b.start()
        yield b
    finally:
        b.close()
        deadline = time.monotonic() + 10
        while b.leftovers() and time.monotonic() < deadline:
            time.sleep(0.1)
        left = b.leftovers()
        assert not left, f"browser processes survived the test: {left}"


def same_origin(urls: list[str], origin: str) -> list[str]:
    """The URLs that are not of ``origin`` (scheme://host:port)."""
    want = urlsplit(origin)
    return [u for u in urls
            if (urlsplit(u).scheme, urlsplit(u).hostname, urlsplit(u).port) != (want.scheme, want.hostname, want.port)]
