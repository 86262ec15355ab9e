"""
The chaos harness of issue 11 (benchmarks/chaos.py and tests/test_chaos.py):
background jobs through workers that fail at random, a job server killed
with SIGKILL and restarted on the same store, and a checker that proves from
the workers' logs and the server's final state that every job ended completed
or dead, none was lost, none ran more often than its policy allows (except
runs the kills explain) and every retry waited out its backoff.

Stdlib only (the stores' client libraries are imported only to clean up a
PostgreSQL schema or Redis prefix). Everything runs on 127.0.0.1; every
process started here is killed by its PID at exit (L{_hostilekit.killStarted}).

Times: every process logs C{time.monotonic()}, which on Linux is one clock
for the whole machine, so worker logs and kill times compare directly.

A worker is this file run as a script (C{_chaoskit.py worker ...}); it logs
each attempt to its own append-only file, one tab-separated line per event:
C{MONOTONIC WALL EVENT HANDLE UNIQUE [DETAIL]}, EVENT being C{start} or an
outcome (C{complete}, C{fail}, C{exception} with the error text, C{timeout},
C{exit}), or C{connect} when it has connected to the server. An outcome is
logged just before it is sent (or, for C{exit}, before the process exits),
so a kill between the two counts as the kill's. A job belongs to the server
the worker's connection was made to: a job assigned just before a kill may
be read, and logged, after it.
"""
from __future__ import annotations

import argparse
import os
import random
import re
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from typing import Any, Callable, Dict, Iterable, List, Optional, Set, Tuple

HERE = os.path.dirname(os.path.abspath(__file__))
if HERE not in sys.path:
    sys.path.insert(0, HERE)

from _hostilekit import (  # noqa: E402
    CAN_DO_TIMEOUT, GET_STATUS, GRAB_JOB_UNIQ, JOB_ASSIGN_UNIQ, JOB_CREATED, NO_JOB, NOOP,
    PRE_SLEEP, ROOT, STATUS_RES, SUBMIT_JOB_BG, WORK_COMPLETE, WORK_EXCEPTION, WORK_FAIL,
    Closed, Conn, _started, packet)

FUNCTION = "chaos"
OUTCOMES = ("complete", "fail", "exception", "timeout", "exit")
FAILURES = ("fail", "exception", "timeout", "exit")
#: The last error the server keeps for each failing outcome (docs/jobs.md); exceptions keep their text.
SERVER_ERROR = {"fail": "WORK_FAIL", "timeout": "timeout", "exit": "worker lost"}
TWISTD = [sys.executable, "-c", "import sys; sys.argv[0] = 'twistd'; "
          "from twisted.scripts.twistd import run; run()"]


# ------------------------------------------------------------------ durations

def parseDuration(text: str) -> float:
    """C{500ms}, C{2s}, C{10m}, C{1h} -> seconds."""
    match = re.fullmatch(r"(\d+)(ms|s|m|h)", text.strip())
    if not match:
        raise ValueError(f"not a duration: {text!r}")
    return int(match.group(1)) * {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}[match.group(2)]


class Backoff:
    """The policy's backoff: retry n waits in [low(n), nominal(n)] (docs/jobs.md, jitter)."""

    def __init__(self, minimum: float, maximum: float) -> None:
        self.minimum = minimum
        self.maximum = maximum

    def nominal(self, n: int) -> float:
        return min(self.maximum, self.minimum * 2 ** (max(1, n) - 1))

    def low(self, n: int) -> float:
        if self.maximum <= self.minimum:
            return self.minimum
        return max(self.minimum, self.nominal(n) / 2.0)


# ------------------------------------------------------------------ the worker

def grabNext(conn: Any, sleep: float) -> Any:
    """
    One GRAB_JOB_UNIQ: the JOB_ASSIGN_UNIQ's arguments, or C{None} (nothing
    to do: after NO_JOB, PRE_SLEEP and wait up to C{sleep} s for a NOOP).
    """
    conn.send(GRAB_JOB_UNIQ)
    kind, args = conn.recv(30)
    if kind == NO_JOB:
        conn.send(PRE_SLEEP)
        try:
            while conn.recv(sleep)[0] != NOOP:
                pass
        except socket.timeout:
            pass
        return None
    return args if kind == JOB_ASSIGN_UNIQ else None


def _logLine(fd: int, event: str, handle: bytes, unique: bytes, detail: str = "") -> None:
    line = "%.6f\t%.6f\t%s\t%s\t%s\t%s\n" % (time.monotonic(), time.time(), event,
                                            handle.decode("ascii", "replace"),
                                            unique.decode("ascii", "replace"), detail)
    os.write(fd, line.encode())


def runWorker(port: int, logPath: str, seed: int, failRate: float, timeoutMs: int,
              function: str = FUNCTION) -> None:
    """A worker process: grabs jobs forever, reconnecting when the server goes away."""
    rng = random.Random(seed)
    fd = os.open(logPath, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    name = function.encode()
    while True:
        try:
            conn = Conn(port, timeout=30)
        except OSError:
            time.sleep(0.1)
            continue
        _logLine(fd, "connect", b"-", b"-")
        try:
            conn.send(CAN_DO_TIMEOUT, name, str(timeoutMs).encode())
            while True:
                args = grabNext(conn, 1.0)
                if args is None:
                    continue
                handle, unique = args[0], args[2]
                _logLine(fd, "start", handle, unique)
                outcome = "complete"
                if rng.random() < failRate:
                    outcome = FAILURES[rng.randrange(len(FAILURES))]
                if outcome == "complete":
                    _logLine(fd, "complete", handle, unique)
                    conn.send(WORK_COMPLETE, handle, b"result:" + unique)
                elif outcome == "fail":
                    _logLine(fd, "fail", handle, unique)
                    conn.send(WORK_FAIL, handle)
                elif outcome == "exception":
                    text = "chaos exception %s %08x" % (unique.decode("ascii", "replace"),
                                                        rng.getrandbits(32))
                    _logLine(fd, "exception", handle, unique, text)
                    conn.send(WORK_EXCEPTION, handle, text.encode())
                elif outcome == "timeout":
                    # Past CAN_DO_TIMEOUT the server has taken the job back; send nothing.
                    time.sleep(timeoutMs / 1000.0 + 0.5)
                    _logLine(fd, "timeout", handle, unique)
                else:
                    _logLine(fd, "exit", handle, unique)
                    os._exit(3)
        except (OSError, Closed, socket.timeout, AssertionError):
            conn.close()
            time.sleep(0.1)


# ------------------------------------------------------------------ processes

class ServerProc:
    """C{twistd -n gearman} of this source tree on a fixed loopback port, in C{workdir}."""

    def __init__(self, port: int, workdir: str, options: List[str]) -> None:
        self.port = port
        self.workdir = workdir
        self.options = options
        self.process: Optional[subprocess.Popen] = None
        self.starts = 0

    def start(self, timeout: float = 60.0) -> None:
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [ROOT, env.get("PYTHONPATH")]))
        argv = TWISTD + ["--nodaemon", "--pidfile=", "--logfile=-", "gearman",
                         f"--port=tcp:{self.port}:interface=127.0.0.1"] + self.options
        self.starts += 1
        log = open(os.path.join(self.workdir, f"server-{self.starts}.log"), "ab")
        self.process = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT,
                                        cwd=self.workdir, env=env)
        log.close()
        _started[self.process.pid] = self.process
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"the server exited with {self.process.returncode}:\n"
                                   + self.logTail())
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("the server did not listen in time:\n" + self.logTail())

    def logTail(self, size: int = 3000) -> str:
        with open(os.path.join(self.workdir, f"server-{self.starts}.log"), "rb") as f:
            return f.read()[-size:].decode("utf-8", "replace")

    def kill(self) -> None:
        """SIGKILL, as a crash would."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.kill()


class WorkerPool:
    """C{count} worker processes; one that exits (mid-job, on purpose) is replaced."""

    def __init__(self, port: int, workdir: str, count: int, failRate: float, timeoutMs: int,
                 seed: int) -> None:
        self.port = port
        self.workdir = workdir
        self.failRate = failRate
        self.timeoutMs = timeoutMs
        self.seed = seed
        self.slots: List[Optional[subprocess.Popen]] = [None] * count
        self.spawned = 0
        self.stopping = threading.Event()
        self._thread = threading.Thread(target=self._supervise, daemon=True)

    def _spawn(self, slot: int) -> None:
        self.spawned += 1
        logPath = os.path.join(self.workdir, f"worker-{slot}-{self.spawned}.log")
        argv = [sys.executable, os.path.join(HERE, "_chaoskit.py"), "worker", "--port",
                str(self.port), "--log", logPath, "--seed", str(self.seed * 100003 + self.spawned),
                "--fail-rate", str(self.failRate), "--timeout-ms", str(self.timeoutMs)]
        process = subprocess.Popen(argv, stdin=subprocess.DEVNULL)
        _started[process.pid] = process
        self.slots[slot] = process

    def start(self) -> None:
        for slot in range(len(self.slots)):
            self._spawn(slot)
        self._thread.start()

    def _supervise(self) -> None:
        while not self.stopping.is_set():
            for slot, process in enumerate(self.slots):
                if process is not None and process.poll() is not None:
                    _started.pop(process.pid, None)
                    if not self.stopping.is_set():
                        self._spawn(slot)
            time.sleep(0.02)

    def stop(self) -> None:
        self.stopping.set()
        self._thread.join(5)
        for process in self.slots:
            if process is not None and process.poll() is None:
                process.kill()
                process.wait(10)
            if process is not None:
                _started.pop(process.pid, None)

    @property
    def restarts(self) -> int:
        return self.spawned - len(self.slots)


def submitAll(port: int, count: int, window: int = 200, deadline: float = 300.0) -> Dict[str, str]:
    """Submit C{job-0} .. C{job-(count-1)} in the background; unique -> handle."""
    handles: Dict[str, str] = {}
    stop = time.monotonic() + deadline
    conn = Conn(port, timeout=30)
    try:
        i = 0
        while i < count:
            if time.monotonic() > stop:
                raise RuntimeError("submission did not finish in time")
            batch = list(range(i, min(count, i + window)))
            conn.sendRaw(b"".join(packet(SUBMIT_JOB_BG, FUNCTION.encode(), b"job-%d" % j,
                                         b"payload-%d" % j) for j in batch))
            for j in batch:
                handles["job-%d" % j] = conn.expect(JOB_CREATED, 30)[0].decode()
            i += len(batch)
    finally:
        conn.close()
    return handles


# ------------------------------------------------------------------ server state

def adminLine(port: int, line: str, timeout: float = 30.0) -> bytes:
    """One admin command on a fresh connection: a listing up to its dot, or one line."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(line.encode() + b"\n")
        data = b""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            chunk = sock.recv(1 << 20)
            if not chunk:
                break
            data += chunk
            if data == b".\n" or data.endswith(b"\n.\n") or (
                    (data.startswith(b"ERR") or data.startswith(b"OK")) and b"\n" in data):
                break
        return data


def queuedCount(port: int) -> int:
    """The chaos function's jobs the server still has (queued, waiting, running)."""
    for line in adminLine(port, "status").split(b"\n"):
        fields = line.split(b"\t")
        if fields[0] == FUNCTION.encode() and len(fields) >= 2:
            return int(fields[1])
    return 0


_ESCAPE = re.compile(rb"\\x([0-9a-fA-F]{2})")


def _unescape(value: bytes) -> str:
    return _ESCAPE.sub(lambda m: bytes([int(m.group(1), 16)]), value).decode("utf-8", "replace")


def deadJobs(port: int) -> Dict[str, Tuple[str, int, str]]:
    """C{show dead chaos}: unique -> (handle, attempts, last error)."""
    reply = adminLine(port, f"show dead {FUNCTION}", timeout=60)
    dead: Dict[str, Tuple[str, int, str]] = {}
    for line in reply.split(b"\n"):
        fields = line.split(b"\t")
        if len(fields) == 6:
            dead[_unescape(fields[2])] = (_unescape(fields[0]), int(fields[3]), _unescape(fields[5]))
    return dead


def knownHandles(port: int, handles: Iterable[str]) -> Set[str]:
    """The handles GET_STATUS says the server still knows."""
    handles = list(handles)
    known: Set[str] = set()
    conn = Conn(port, timeout=30)
    try:
        for start in range(0, len(handles), 500):
            chunk = handles[start:start + 500]
            conn.sendRaw(b"".join(packet(GET_STATUS, h.encode()) for h in chunk))
            for _ in chunk:
                args = conn.expect(STATUS_RES, 30)
                if args[1] == b"1":
                    known.add(args[0].decode())
    finally:
        conn.close()
    return known


def showResult(port: int, handle: str, timeout: float = 10.0) -> Tuple[str, bytes]:
    """
    C{show result HANDLE}: C{("OK <status>", bytes)} or C{("ERR ...", b"")}.
    The reply is C{OK <status> <size>\\n}, the bytes, C{\\n}.
    """
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(b"show result " + handle.encode() + b"\n")
        data = b""
        deadline = time.monotonic() + timeout
        while b"\n" not in data and time.monotonic() < deadline:
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
        line, _, rest = data.partition(b"\n")
        words = line.strip().split()
        if not words or words[0] != b"OK" or len(words) < 3:
            return line.strip().decode("utf-8", "replace"), b""
        size = int(words[2])
        while len(rest) < size + 1 and time.monotonic() < deadline:
            chunk = sock.recv(65536)
            if not chunk:
                break
            rest += chunk
        return "OK " + words[1].decode(), rest[:size]


def supportsShowResult(port: int) -> bool:
    """
    Does the server know C{show result}? Anything but an unknown-command ERR
    (C{UNKNOWN_COMMAND}, or C{UNKNOWN_SHOW_ARGUMENTS} from a server whose
    C{show} lacks it) says so.
    """
    reply, _ = showResult(port, "H:chaos-probe:0")
    return not reply.startswith(("ERR UNKNOWN_COMMAND", "ERR UNKNOWN_SHOW_ARGUMENTS"))


def fetchResults(port: int, handles: Iterable[str]) -> Dict[str, Tuple[str, bytes]]:
    return {h: showResult(port, h) for h in handles}


# ------------------------------------------------------------------ the checker

class Attempt:
    """One run of a job by a worker, from its log."""

    __slots__ = ("worker", "start", "handle", "unique", "outcome", "logged", "error", "connected")

    def __init__(self, worker: str, start: float, handle: str, unique: str,
                 outcome: Optional[str] = None, logged: Optional[float] = None,
                 error: str = "", connected: Optional[float] = None) -> None:
        self.worker = worker
        self.start = start
        #: When the worker connected to the server that assigned this run.
        self.connected = start if connected is None else connected
        self.handle = handle
        self.unique = unique
        self.outcome = outcome
        self.logged = logged
        self.error = error

    def reported(self, timeout: float) -> Optional[float]:
        """When the server learnt how this attempt ended (at the latest, for a timeout)."""
        if self.outcome is None:
            return None
        if self.outcome == "timeout":
            return self.start + timeout
        return self.logged


def parseLog(name: str, text: str) -> List[Attempt]:
    """A worker's log: its attempts in order (an attempt with no outcome line has none)."""
    attempts: List[Attempt] = []
    current: Optional[Attempt] = None
    connected: Optional[float] = None
    for line in text.splitlines():
        fields = line.split("\t")
        if len(fields) < 5:
            continue  # a line cut by a kill of the worker itself
        mono, event, handle, unique = float(fields[0]), fields[2], fields[3], fields[4]
        if event == "connect":
            connected, current = mono, None
        elif event == "start":
            current = Attempt(name, mono, handle, unique, connected=connected)
            attempts.append(current)
        elif current is not None and event in OUTCOMES and current.handle == handle:
            current.outcome, current.logged = event, mono
            current.error = fields[5] if event == "exception" and len(fields) > 5 else ""
            current = None
    return attempts


def readLogs(workdir: str) -> List[Attempt]:
    attempts: List[Attempt] = []
    for entry in sorted(os.listdir(workdir)):
        if entry.startswith("worker-") and entry.endswith(".log"):
            with open(os.path.join(workdir, entry)) as f:
                attempts += parseLog(entry, f.read())
    return attempts


class Report:
    """What the checker found; C{ok} only when no problem was found."""

    def __init__(self) -> None:
        self.jobs = 0
        self.completed = 0
        self.dead = 0
        self.attempts = 0
        self.outcomes: Dict[str, int] = {o: 0 for o in OUTCOMES}
        self.interrupted: Dict[int, int] = {}   # kill number -> runs it cut
        self.beyondLimit: Dict[int, int] = {}   # kill number -> runs past the limit it explains
        self.rerunAfterComplete: Dict[int, int] = {}
        self.lostOutcomes: Dict[int, int] = {}  # kill number -> retries with no wait: outcome not stored
        self.ratios: List[float] = []   # each retry's gap / the shortest wait its window allows
        self.withinWindow = 0           # retries that started within their window [low, nominal]
        self.resultsChecked: Optional[int] = None
        self.problems: List[str] = []
        self.elapsed = 0.0          # seconds from the first submission to the end
        self.workerRestarts = 0

    @property
    def ok(self) -> bool:
        return not self.problems

    def problem(self, text: str) -> None:
        self.problems.append(text)

    def text(self) -> str:
        def perKill(counts: Dict[int, int]) -> str:
            return ", ".join(f"kill {k}: {v}" for k, v in sorted(counts.items())) or "none"

        lines = [f"run {self.elapsed:.1f} s, {self.workerRestarts} worker processes restarted",
                 f"jobs {self.jobs}: completed {self.completed}, dead {self.dead}, "
                 f"lost or unfinished {self.jobs - self.completed - self.dead}",
                 f"attempts {self.attempts}: " + ", ".join(f"{o} {n}" for o, n in self.outcomes.items()),
                 f"runs cut by a kill (started before it, no outcome before it): {perKill(self.interrupted)}",
                 f"runs past the attempt limit, explained by a kill: {perKill(self.beyondLimit)}",
                 f"runs after a completion the kill did not store: {perKill(self.rerunAfterComplete)}",
                 f"failures the kill did not store (retried at once): {perKill(self.lostOutcomes)}"]
        if self.ratios:
            r = sorted(self.ratios)

            def q(p: float) -> float:
                return r[min(len(r) - 1, int(p * len(r)))]
            lines.append(f"backoff gaps {len(r)}: gap/shortest-allowed min {r[0]:.3f} p1 {q(0.01):.3f} "
                         f"p50 {q(0.5):.3f} p99 {q(0.99):.3f} max {r[-1]:.3f}; "
                         f"{self.withinWindow} started within their window [low, nominal], "
                         f"{len(r) - self.withinWindow} later (no worker free yet)")
        lines.append("kept results: " + ("not checked (the server has no `show result`)"
                                         if self.resultsChecked is None
                                         else f"{self.resultsChecked} fetched and matched"))
        lines.append(f"problems: {len(self.problems)}")
        lines += ["  " + p for p in self.problems[:50]]
        if len(self.problems) > 50:
            lines.append(f"  ... and {len(self.problems) - 50} more")
        lines.append("PASS" if self.ok else "FAIL")
        return "\n".join(lines)


def check(handles: Dict[str, str], attempts: List[Attempt], kills: List[Tuple[float, float]],
          dead: Dict[str, Tuple[str, int, str]], known: Set[str], limit: int, backoff: Backoff,
          timeout: float, results: Optional[Dict[str, Tuple[str, bytes]]] = None,
          lossWindow: float = 3.0, tolerance: float = 0.9) -> Report:
    """
    Check a run. C{handles}: unique -> handle from JOB_CREATED; C{attempts}:
    every worker's; C{kills}: C{(killed at, listening again at)} monotonic
    times, in order; C{dead}: C{show dead} by unique; C{known}: handles the
    server still knows at the end; C{limit}: the policy's attempts; C{timeout}:
    CAN_DO_TIMEOUT in seconds; C{results}: C{show result} by handle, or
    C{None} when the server has none. An outcome reported less than
    C{lossWindow} seconds before a kill may not have been stored.
    """
    report = Report()
    report.jobs = len(handles)
    report.attempts = len(attempts)
    killTimes = [k for k, _ in kills]
    byUnique: Dict[str, List[Attempt]] = {}
    for a in attempts:
        byUnique.setdefault(a.unique, []).append(a)
        if a.outcome is not None:
            report.outcomes[a.outcome] += 1
    for unique in byUnique:
        if unique not in handles:
            report.problem(f"{unique}: run by a worker but never submitted")

    def killAfter(t: float) -> Optional[int]:
        for number, k in enumerate(killTimes, 1):
            if k > t:
                return number
        return None

    def lostBy(t: Optional[float]) -> Optional[int]:
        """The kill that may have lost an outcome reported at C{t}."""
        if t is None:
            return None
        number = killAfter(t)
        if number is not None and killTimes[number - 1] - t < lossWindow:
            return number
        return None

    if results is not None:
        report.resultsChecked = 0
    for unique, handle in sorted(handles.items()):
        runs = sorted(byUnique.get(unique, []), key=lambda a: a.start)
        counted: List[Attempt] = []
        for a in runs:
            k = killAfter(a.connected)
            reported = a.reported(timeout)
            if k is not None and (reported is None or reported >= killTimes[k - 1]):
                report.interrupted[k] = report.interrupted.get(k, 0) + 1
            else:
                counted.append(a)
            if a.handle != handle:
                report.problem(f"{unique}: run under handle {a.handle}, created as {handle}")
        if handle in known:
            report.problem(f"{unique}: still queued at the server ({handle})")
        final = runs[-1] if runs else None
        if unique in dead:
            report.dead += 1
            _, deadAttempts, lastError = dead[unique]
            if limit and deadAttempts != limit:
                report.problem(f"{unique}: dead after {deadAttempts} attempts, the limit is {limit}")
            if final is None or final.outcome not in FAILURES:
                report.problem(f"{unique}: dead, but its last run ended "
                               f"{final.outcome if final else 'never started'}")
            else:
                expected = final.error if final.outcome == "exception" else SERVER_ERROR[final.outcome]
                if lastError != expected:
                    report.problem(f"{unique}: dead with last error {lastError!r}, its last run "
                                   f"ended {final.outcome} {expected!r}")
        elif final is not None and final.outcome == "complete" and final in counted:
            report.completed += 1
            if results is not None:
                got = results.get(handle, ("missing", b""))
                if got[0].lower() not in ("ok complete", "ok work_complete"):
                    report.problem(f"{unique}: kept result {got[0]!r}")
                elif got[1] != b"result:" + unique.encode():
                    report.problem(f"{unique}: kept result holds {got[1]!r}")
                else:
                    report.resultsChecked += 1  # type: ignore[operator]
        else:
            how = "never ran" if final is None else f"last run ended {final.outcome or 'without outcome'}"
            report.problem(f"{unique}: lost ({handle}): neither completed nor dead, {how}")

        # Runs past the limit, and runs after a completion, must be explained by a kill.
        maybeLost = [lostBy(a.reported(timeout)) for a in counted[:-1] if a.outcome in FAILURES]
        excuses = [k for k in maybeLost if k is not None]
        excess = len(counted) - limit if limit else 0
        for _ in range(max(0, excess)):
            if excuses:
                k = excuses.pop()
                report.beyondLimit[k] = report.beyondLimit.get(k, 0) + 1
            else:
                report.problem(f"{unique}: {len(counted)} counted runs, the limit is {limit}")
                break
        for i, a in enumerate(counted[:-1]):
            if a.outcome == "complete":
                k = lostBy(a.reported(timeout))
                if k is not None and counted[i + 1].start > killTimes[k - 1]:
                    report.rerunAfterComplete[k] = report.rerunAfterComplete.get(k, 0) + 1
                else:
                    report.problem(f"{unique}: ran again at {counted[i + 1].start:.3f} after completing "
                                   f"at {a.logged:.3f}")

        # Backoff: the gap from a counted failure to the next run.
        failures = 0
        unsure = 0  # earlier failures a kill may have kept from the store
        for i, a in enumerate(runs[:-1]):
            if a not in counted or a.outcome not in FAILURES:
                continue
            failures += 1
            reported = a.reported(timeout)
            assert reported is not None
            nxt = runs[i + 1]
            gap = nxt.start - reported
            k = lostBy(reported)
            lowest = backoff.low(max(1, failures - unsure))
            if k is not None and nxt.start > killTimes[k - 1]:
                if gap < tolerance * lowest:
                    report.lostOutcomes[k] = report.lostOutcomes.get(k, 0) + 1
                    unsure += 1
                    continue
                unsure += 1
            if gap < tolerance * lowest:
                report.problem(f"{unique}: retry {failures} started {gap * 1000:.0f} ms after "
                               f"the {a.outcome} of the run before; the policy waits at least "
                               f"{backoff.low(failures) * 1000:.0f} ms")
            report.ratios.append(gap / backoff.low(failures))
            if gap <= backoff.nominal(failures):
                report.withinWindow += 1
    return report


# ------------------------------------------------------------------ stores

def storeSpec(kind: str, workdir: str, dsn: str = "host=127.0.0.1 port=5432 dbname=test user=postgres",
              redisUrl: str = "redis://127.0.0.1:6379/0") -> Tuple[str, Callable[[], None]]:
    """A C{--queue} value for a fresh store of C{kind}, and a function that removes it."""
    tag = "chaos" + uuid.uuid4().hex[:12]
    if kind == "sqlite":
        return f"sqlite:{os.path.join(workdir, 'queue.sqlite')}", lambda: None
    if kind == "postgresql":
        def dropSchema() -> None:
            import psycopg

            with psycopg.connect(dsn, autocommit=True) as c:
                c.execute(f'DROP SCHEMA IF EXISTS "{tag}" CASCADE')
        return f"postgresql:{dsn} schema={tag}", dropSchema
    if kind == "redis":
        prefix = tag + ":"

        def dropKeys() -> None:
            import redis

            client = redis.Redis.from_url(redisUrl)
            keys = list(client.scan_iter(match=prefix + "*"))
            if keys:
                client.delete(*keys)
        return f"redis:{redisUrl}?prefix={prefix}", dropKeys
    raise ValueError(f"unknown store {kind!r}")


# ------------------------------------------------------------------ a whole run

def say(message: str) -> None:
    sys.stderr.write(message + "\n")
    sys.stderr.flush()


def run(store: str, jobs: int = 10000, kills: int = 2, workers: int = 32, failRate: float = 0.3,
        attempts: int = 4, backoff: str = "200ms..2s", timeoutMs: int = 1000, seed: int = 1,
        deadline: float = 1800.0, workdir: Optional[str] = None, keepResults: bool = True,
        verbose: bool = True) -> Report:
    """
    One chaos run against a fresh store of kind C{store}; returns the report.
    The kills come when 1/(kills+1), 2/(kills+1)... of the jobs have finished.
    """
    log = say if verbose else (lambda m: None)
    workdir = workdir or tempfile.mkdtemp(prefix="txgear-chaos-")
    queue, cleanup = storeSpec(store, workdir)
    low, _, high = backoff.partition("..")
    policy = Backoff(parseDuration(low), parseDuration(high or low))
    spec = f"{FUNCTION}=attempts:{attempts},backoff:{backoff},on:lost+timeout+fail+exception"
    port = freePortNumber()
    base = ["--queue", queue]
    server = ServerProc(port, workdir, base + ["--policy", spec + ",keep:1h"])
    pool: Optional[WorkerPool] = None
    killed: List[Tuple[float, float]] = []
    try:
        try:
            server.start()
            kept = keepResults
        except RuntimeError:
            # keep: is refused by a server without kept results (exit status 2).
            log("the server refuses keep:1h; running without kept results")
            server.options = base + ["--policy", spec]
            server.start()
            kept = False
        began = time.monotonic()
        log(f"server on port {port}, store {queue}, work directory {workdir}")
        handles = submitAll(port, jobs)
        log(f"{len(handles)} jobs submitted in {time.monotonic() - began:.1f} s")
        pool = WorkerPool(port, workdir, workers, failRate, timeoutMs, seed)
        pool.start()
        stop = began + deadline
        marks = [jobs * (i + 1) // (kills + 1) for i in range(kills)]
        last = -1
        quiet = 0
        while time.monotonic() < stop:
            try:
                remaining = queuedCount(port)
            except OSError:
                time.sleep(0.2)
                continue
            finished = jobs - remaining
            if marks and finished >= marks[0]:
                marks.pop(0)
                at = time.monotonic()
                server.kill()
                log(f"kill {len(killed) + 1}: SIGKILL at {at - began:.1f} s with {finished} jobs finished")
                server.start()
                killed.append((at, time.monotonic()))
                with open(os.path.join(workdir, "kills.txt"), "a") as f:
                    f.write("%.6f\t%.6f\n" % killed[-1])  # monotonic: killed, listening again
                log(f"  restarted after {killed[-1][1] - at:.1f} s")
                continue
            if finished != last:
                last = finished
                log(f"{time.monotonic() - began:7.1f} s: {finished}/{jobs} finished")
            if remaining == 0 and not marks:
                quiet += 1
                if quiet >= 3:  # several polls apart: no retry is about to come back
                    break
            else:
                quiet = 0
            time.sleep(0.5)
        elapsed = time.monotonic() - began
        pool.stop()
        log(f"finished (or deadline) after {elapsed:.1f} s; {pool.restarts} workers restarted")
        dead = deadJobs(port)
        known = knownHandles(port, handles.values())
        results = None
        if kept and supportsShowResult(port):
            results = fetchResults(port, [h for u, h in handles.items() if u not in dead])
        else:
            log("note: the server has no `show result`; the kept-result check is skipped")
        attemptsLogged = readLogs(workdir)
        report = check(handles, attemptsLogged, killed, dead, known, attempts, policy,
                       max(1000, timeoutMs) / 1000.0, results)
        report.elapsed = elapsed
        report.workerRestarts = pool.restarts
        if marks:
            report.problem(f"only {len(killed)} of {kills} kills happened before the deadline")
        return report
    finally:
        if pool is not None:
            pool.stop()
        server.stop()
        try:
            cleanup()
        except Exception as e:  # noqa: BLE001 - a failed clean-up must not hide the report
            log(f"cleaning up the store failed: {e}")


def freePortNumber() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _workerMain(argv: List[str]) -> None:
    parser = argparse.ArgumentParser(prog="_chaoskit.py worker")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--log", required=True)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--fail-rate", type=float, default=0.3)
    parser.add_argument("--timeout-ms", type=int, default=1000)
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *a: os._exit(0))
    runWorker(args.port, args.log, args.seed, args.fail_rate, args.timeout_ms)


if __name__ == "__main__":
    if sys.argv[1:2] == ["worker"]:
        _workerMain(sys.argv[2:])
    else:
        sys.exit("usage: _chaoskit.py worker --port P --log PATH [...]; see benchmarks/chaos.py")
