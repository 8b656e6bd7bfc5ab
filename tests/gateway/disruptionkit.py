"""Measuring what a day-2 event costs traffic through the tunnel (issue 12).

Shared by ``bench/disruption.py`` and ``tests/gateway/test_netns_disruption.py``
so both run the same code. Pieces:

- a sequenced UDP probe (``probe-send`` / ``probe-echo``, this file run as a
  script inside a pod namespace): 200 probes/s, each answered by the echo;
  the sender logs every send and every answer with CLOCK_MONOTONIC (one clock
  for all namespaces of the machine) to a file;
- a TCP stream (``tcp-client`` / ``tcp-server``): a steady stream of numbered
  1 KiB messages echoed back and checked byte for byte; the client logs its
  progress and, if the connection breaks or the bytes differ, why;
- ``window_stats`` (pure: the logs + an event window in, figures out);
- the event drivers (``EVENTS``): each disrupts gateway ``a`` (or, for the
  endpoint move, ``b``) and returns once everything is ready again.

Every loop is bounded by a deadline; every process started here is stopped
by ``Traffic.stop`` (and the namespace cleanup kills what is left).
"""

from __future__ import annotations

import bisect
import contextlib
import itertools
import os
import select
import signal
import socket
import struct
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

PROBE_PORT = 7790
TCP_PORT = 7791
PROBE_RATE = 200  # probes per second
MSG = 1024  # bytes per TCP message
TCP_RATE = 100  # messages per second (~100 KiB/s each way)
SAMPLE_S = 0.1  # how often the gateway's reported peer state is sampled
FAILING_S = 1.0  # a 'connected' sample while every probe of the last second was lost is flagged
MAX_RUN_S = 1800.0  # no helper process outlives this, whatever happens to its parent


# ------------------------------------------------------------------ helper processes


def _stop_flag() -> list[bool]:
    flag = [False]

    def handler(_sig: int, _frame: Any) -> None:
        flag[0] = True
    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)
    return flag


def probe_echo() -> None:
    stop = _stop_flag()
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("0.0.0.0", PROBE_PORT))
    s.settimeout(0.5)
    end = time.monotonic() + MAX_RUN_S
    while not stop[0] and time.monotonic() < end:
        try:
            data, addr = s.recvfrom(64)
        except TimeoutError:
            continue
        except InterruptedError:
            continue
        s.sendto(data, addr)


def probe_send(dst: str, log: str) -> None:
    """Send seq numbers at PROBE_RATE; log 'S seq t' and 'R seq t' (monotonic seconds)."""
    stop = _stop_flag()
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.connect((dst, PROBE_PORT))
    s.setblocking(False)
    interval = 1.0 / PROBE_RATE
    seq = 0
    start = time.monotonic()
    nxt = start
    with open(log, "w", buffering=1) as out:
        while not stop[0] and time.monotonic() - start < MAX_RUN_S:
            now = time.monotonic()
            if now >= nxt:
                with contextlib.suppress(OSError):  # no route for a moment: the probe is lost
                    s.send(struct.pack("!Q", seq))
                out.write(f"S {seq} {now:.6f}\n")
                seq += 1
                nxt += interval
                if nxt < now - 1:  # we were descheduled for long: do not burst to catch up
                    nxt = now + interval
            with contextlib.suppress(InterruptedError):
                select.select([s], [], [], max(0.0, nxt - time.monotonic()))
            while True:
                try:
                    data = s.recv(64)
                except (BlockingIOError, InterruptedError):
                    break
                except OSError:  # ICMP errors surface here: those probes are lost
                    break
                if len(data) == 8:
                    out.write(f"R {struct.unpack('!Q', data)[0]} {time.monotonic():.6f}\n")


def state_sampler(url: str, log: str) -> None:
    """Every SAMPLE_S: what the gateway reports of its peers (``GET url/api/v1/peers``), as
    'H t cid=state,...' ('H t -' while the API does not answer: the daemon is down)."""
    import json
    import urllib.request

    stop = _stop_flag()
    end = time.monotonic() + MAX_RUN_S
    with open(log, "w", buffering=1) as out:
        while not stop[0] and time.monotonic() < end:
            t = time.monotonic()
            try:
                with urllib.request.urlopen(url + "/api/v1/peers", timeout=0.5) as r:
                    peers = json.loads(r.read())
                text = ",".join(f"{p['cluster_id']}={p['state']}" for p in peers) or "none"
            except Exception:  # down, restarting, refusing: all the same here
                text = "-"
            out.write(f"H {t:.6f} {text}\n")
            time.sleep(max(0.0, SAMPLE_S - (time.monotonic() - t)))


def _message(i: int) -> bytes:
    return struct.pack("!Q", i) + bytes((i + k) & 0xFF for k in range(MSG - 8))


def tcp_server() -> None:
    stop = _stop_flag()
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("0.0.0.0", TCP_PORT))
    s.listen(1)
    s.settimeout(1)
    end = time.monotonic() + MAX_RUN_S
    conn = None
    while not stop[0] and time.monotonic() < end and conn is None:
        with contextlib.suppress(TimeoutError, InterruptedError):
            conn, _ = s.accept()
    if conn is None:
        return
    # Blocking, no timeout: while the tunnel is down the echo waits in sendall for the
    # send buffer to drain (a timeout there would kill this server, resetting the stream).
    conn.settimeout(None)
    while not stop[0] and time.monotonic() < end:
        try:
            if not select.select([conn], [], [], 1.0)[0]:
                continue
            d = conn.recv(65536)
            if not d:
                return
            conn.sendall(d)
        except InterruptedError:
            continue
        except OSError:
            return


def tcp_client(dst: str, log: str) -> None:
    """Stream numbered messages; log 'P bytes_echoed t' at most every 10 ms, 'E why t' on failure."""
    stop = _stop_flag()
    with open(log, "w", buffering=1) as out:
        try:
            c = socket.create_connection((dst, TCP_PORT), timeout=10)
        except OSError as e:
            out.write(f"E connect:{e.__class__.__name__} {time.monotonic():.6f}\n")
            return
        c.setblocking(False)
        out.write(f"C 0 {time.monotonic():.6f}\n")
        sent_msgs = 0
        pending = b""
        expected = b""  # echoed bytes not yet checked, as they must come back
        checked = 0
        start = time.monotonic()
        last_progress = start
        last_log = 0.0
        while not stop[0] and time.monotonic() - start < MAX_RUN_S:
            now = time.monotonic()
            want = int((now - start) * TCP_RATE)
            # Bounded: at most 2 s of messages queued in userspace (the tunnel may be down).
            while sent_msgs < want and len(pending) < 2 * TCP_RATE * MSG:
                m = _message(sent_msgs)
                pending += m
                expected += m
                sent_msgs += 1
            with contextlib.suppress(InterruptedError):
                r, w, _ = select.select([c], [c] if pending else [], [], 0.01)
            try:
                if w and pending:
                    n = c.send(pending)
                    pending = pending[n:]
                if r:
                    d = c.recv(65536)
                    if not d:
                        out.write(f"E closed-by-peer {time.monotonic():.6f}\n")
                        return
                    if expected[:len(d)] != d:
                        out.write(f"E corrupt-at-{checked} {time.monotonic():.6f}\n")
                        return
                    expected = expected[len(d):]
                    checked += len(d)
                    last_progress = time.monotonic()
            except (BlockingIOError, InterruptedError):
                pass
            except OSError as e:
                out.write(f"E {e.__class__.__name__}:{e.errno} {time.monotonic():.6f}\n")
                return
            now = time.monotonic()
            if now - last_progress > 60:
                out.write(f"E stalled-60s {now:.6f}\n")
                return
            if last_progress > last_log and now - last_log >= 0.01:
                out.write(f"P {checked} {last_progress:.6f}\n")
                last_log = now
        out.write(f"D {checked} {time.monotonic():.6f}\n")


# ------------------------------------------------------------------ accounting (pure)


@dataclass
class ProbeLog:
    sent: dict[int, float] = field(default_factory=dict)
    answers: dict[int, list[float]] = field(default_factory=dict)


def parse_probe_log(text: str, into: ProbeLog | None = None) -> ProbeLog:
    log = into or ProbeLog()
    for line in text.splitlines():
        parts = line.split()
        if len(parts) != 3:
            continue  # a line being written right now
        kind, seq, t = parts[0], int(parts[1]), float(parts[2])
        if kind == "S":
            log.sent[seq] = t
        elif kind == "R":
            log.answers.setdefault(seq, []).append(t)
    return log


def window_stats(log: ProbeLog, t0: float, t1: float, interval: float = 1.0 / PROBE_RATE) -> dict[str, Any]:
    """Figures for the probes sent in [t0, t1].

    gap_ms: the longest stretch of send time without an answered probe, less one
    interval (0: no probe lost); stall_ms: the longest time without any answer
    arriving, less one interval (loss and delay, what an application feels; it
    includes scheduling jitter of this busy machine); lost: sent and never
    answered; dup: answers beyond the first.
    """
    seqs = sorted(s for s, t in log.sent.items() if t0 <= t <= t1)
    if not seqs:
        return {"sent": 0, "lost": 0, "dup": 0, "gap_ms": None, "stall_ms": None, "max_rtt_ms": None}
    answered = [s for s in seqs if s in log.answers]
    lost = len(seqs) - len(answered)
    dup = sum(len(log.answers[s]) - 1 for s in answered)
    # Answered probes just outside the window bound the gaps at its edges. Only runs of
    # lost probes make a gap: late sends (scheduling jitter) are not the tunnel's doing.
    before = max((s for s in log.answers if s < seqs[0]), default=None)
    after = min((s for s in log.answers if s > seqs[-1]), default=None)
    chain = ([before] if before is not None else []) + answered + ([after] if after is not None else [])
    gap = max((log.sent[q] - log.sent[p] - interval for p, q in itertools.pairwise(chain) if q - p > 1),
              default=0.0)
    if not chain:
        gap = t1 - t0
    elif after is None and chain[-1] != seqs[-1]:
        gap = max(gap, t1 - log.sent[chain[-1]])
    arrivals = sorted(min(log.answers[s]) for s in answered)
    edges = [t0, *arrivals, max(t1, arrivals[-1]) if arrivals else t1]
    stall = max(b - a for a, b in itertools.pairwise(edges)) - interval
    rtts = [min(log.answers[s]) - log.sent[s] for s in answered]
    return {"sent": len(seqs), "lost": lost, "dup": dup, "gap_ms": round(max(0.0, gap) * 1000, 1),
            "stall_ms": round(max(0.0, stall) * 1000, 1),
            "max_rtt_ms": round(max(rtts) * 1000, 1) if rtts else None}


def health_window(text: str, log: ProbeLog, peer: str, t0: float, t1: float) -> dict[str, Any]:
    """What the gateway said of ``peer`` in [t0, t1]: samples per state ('unreachable': the
    API did not answer), and the samples saying 'connected' while every probe sent in
    the FAILING_S before them (at least half a second's worth) was lost: a gateway
    telling an untruth."""
    states: dict[str, int] = {}
    lying: list[float] = []
    sent = sorted((t, s) for s, t in log.sent.items() if t0 - FAILING_S <= t <= t1)
    times = [t for t, _ in sent]
    for line in text.splitlines():
        parts = line.split()
        if len(parts) != 3 or parts[0] != "H":
            continue
        t = float(parts[1])
        if not t0 <= t <= t1:
            continue
        found = dict(kv.split("=", 1) for kv in parts[2].split(",") if "=" in kv)
        state = "unreachable" if parts[2] == "-" else found.get(peer, "absent")
        states[state] = states.get(state, 0) + 1
        if state == "connected":
            recent = [s for _, s in sent[bisect.bisect_left(times, t - FAILING_S):
                                         bisect.bisect_right(times, t - 0.05)]]
            if len(recent) >= FAILING_S * PROBE_RATE / 2 and not any(s in log.answers for s in recent):
                lying.append(round(t - t0, 3))
    return {"health_states": states, "connected_while_failing": len(lying),
            "connected_while_failing_at_s": lying[:5]}


def tcp_window(text: str, t0: float, t1: float) -> dict[str, Any]:
    """TCP stream figures: alive (no error so far), echoed bytes, longest stall in [t0, t1]."""
    error = None
    progress: list[tuple[float, int]] = []
    for line in text.splitlines():
        parts = line.split()
        if len(parts) != 3:
            continue
        if parts[0] == "E":
            error = parts[1]
        elif parts[0] == "P":
            progress.append((float(parts[2]), int(parts[1])))
    inside = [t for t, _ in progress if t0 <= t <= t1]
    after = [t for t, _ in progress if t > t1]
    edges = [t0, *inside, after[0] if after else t1]
    stall = max(b - a for a, b in itertools.pairwise(edges))
    return {"tcp_alive": error is None and bool(after), "tcp_error": error,
            "tcp_stall_ms": round(stall * 1000, 1), "tcp_bytes": progress[-1][1] if progress else 0}


# ------------------------------------------------------------------ traffic in the namespaces


class Traffic:
    """The UDP probe and the TCP stream from ``src_ns`` to ``dst`` (served in ``dst_ns``)."""

    def __init__(self, src_ns: str, dst_ns: str, dst: str, tmp: Path,
                 health: tuple[str, str, str] | None = None) -> None:
        """``health``: (namespace, API URL, peer) of the gateway whose reported state of
        that peer is sampled while the traffic runs."""
        self.src_ns, self.dst_ns, self.dst, self.tmp = src_ns, dst_ns, dst, tmp
        self.health = health
        self.probe_log = tmp / "probe.log"
        self.tcp_log = tmp / "tcp.log"
        self.health_log = tmp / "health.log"
        self.procs: list[subprocess.Popen[bytes]] = []
        self._log = ProbeLog()
        self._offset = 0

    def _run(self, ns: str, *args: str) -> None:
        self.procs.append(subprocess.Popen(
            ["ip", "netns", "exec", ns, sys.executable, os.path.abspath(__file__), *args],
            stdout=subprocess.DEVNULL, stderr=open(self.tmp / "traffic.err", "ab"),  # noqa: SIM115
            start_new_session=True))

    def start(self) -> None:
        self._run(self.dst_ns, "probe-echo")
        self._run(self.dst_ns, "tcp-server")
        time.sleep(0.5)  # the listeners bind
        self._run(self.src_ns, "probe-send", self.dst, str(self.probe_log))
        self._run(self.src_ns, "tcp-client", self.dst, str(self.tcp_log))
        if self.health is not None:
            self._run(self.health[0], "state-sampler", self.health[1], str(self.health_log))

    def stop(self) -> None:
        for p in reversed(self.procs):
            if p.poll() is None:
                p.terminate()
        for p in self.procs:
            try:
                p.wait(timeout=5)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(timeout=5)
        self.procs.clear()

    def probes(self) -> ProbeLog:
        if self.probe_log.exists():
            with open(self.probe_log) as f:
                f.seek(self._offset)
                chunk = f.read()
            cut = chunk.rfind("\n") + 1  # parse whole lines only
            parse_probe_log(chunk[:cut], self._log)
            self._offset += len(chunk[:cut].encode())
        return self._log

    def tcp_text(self) -> str:
        return self.tcp_log.read_text() if self.tcp_log.exists() else ""

    def wait_flowing(self, quiet: float = 1.0, timeout: float = 30.0) -> float:
        """Until every probe of the last ``quiet`` seconds is answered and the TCP stream moves."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            now = time.monotonic()
            log = self.probes()
            recent = [s for s, t in log.sent.items() if now - quiet - 0.3 <= t <= now - 0.3]
            tcp = tcp_window(self.tcp_text(), now - quiet, now - 0.3)
            if len(recent) >= quiet * PROBE_RATE * 0.5 and all(s in log.answers for s in recent) \
                    and tcp["tcp_error"] is None and tcp["tcp_stall_ms"] < quiet * 1000:
                return now
            time.sleep(0.1)
        raise AssertionError(f"traffic not flowing within {timeout}s: tcp {tcp_window(self.tcp_text(), 0, 1e12)}")

    def measure(self, t0: float, t1: float) -> dict[str, Any]:
        time.sleep(max(0.0, t1 + 1.0 - time.monotonic()))  # late answers get 1 s to arrive
        st = window_stats(self.probes(), t0, t1)
        st.update(tcp_window(self.tcp_text(), t0, t1))
        if self.health is not None and self.health_log.exists():
            st.update(health_window(self.health_log.read_text(), self.probes(), self.health[2], t0, t1))
        return st


if __name__ == "__main__":
    cmd, *rest = sys.argv[1:]
    {"probe-echo": probe_echo, "probe-send": probe_send, "tcp-server": tcp_server,
     "tcp-client": tcp_client, "state-sampler": state_sampler}[cmd](*rest)  # type: ignore[operator]
