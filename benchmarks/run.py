#!/usr/bin/env python3
"""
Run the txgear benchmark suite: txgear against gearmand, on fresh servers,
alternating, several rounds; print a Markdown table of medians, ranges and
txgear/gearmand ratios, and write the raw results as JSON to
benchmarks/results/.

Stdlib only.  The load comes from benchmarks/loadgen (C, built here with the
system compiler when missing or older than loadgen.c), which checks every run
for lost, duplicated or corrupted jobs.  Server CPU time and memory are read
from /proc/<server pid>.

    python3 benchmarks/run.py                       # full: gearmand vs txgear, 3 rounds
    python3 benchmarks/run.py --quick               # CI smoke run (< 2 minutes)
    python3 benchmarks/run.py --servers gearmand,txgear,txgear-pypy
    python3 benchmarks/run.py --scenarios 2,6 --rounds 5

See docs/performance.md.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import resource
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any, Callable, Dict, List, Optional, Tuple

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
LOADGEN = os.path.join(HERE, "loadgen")
LOADGEN_SRC = os.path.join(HERE, "loadgen.c")
RESULTS = os.path.join(HERE, "results")
PYPY_VENV = os.path.join(HERE, ".venv-pypy")
GEARMAND = shutil.which("gearmand") or "/usr/sbin/gearmand"
CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")


class BenchError(Exception):
    """A run failed: a correctness check, a crashed server, a timeout."""


class StartupError(BenchError):
    """A server would not start; the remaining runs of that server are skipped."""

    def __init__(self, msg: str, output: str):
        super().__init__(msg)
        self.output = output


def log(msg: str) -> None:
    sys.stderr.write(msg + "\n")
    sys.stderr.flush()


# ---------------------------------------------------------------- helpers


def raiseNofile() -> None:
    """preexec_fn: lift the soft open-files limit to the hard limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = hard if hard != resource.RLIM_INFINITY else 65536
    if soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))


def buildLoadgen(cc: str) -> None:
    if os.path.exists(LOADGEN) and os.path.getmtime(LOADGEN) >= os.path.getmtime(LOADGEN_SRC):
        return
    cmd = [cc, "-O2", "-Wall", "-o", LOADGEN, LOADGEN_SRC]
    log("building loadgen: " + " ".join(cmd))
    subprocess.run(cmd, check=True)


def freePort() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def procCpu(pid: int) -> float:
    """utime + stime of the whole process (all threads), in seconds."""
    with open(f"/proc/{pid}/stat") as f:
        data = f.read()
    fields = data[data.rindex(")") + 2:].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def procMem(pid: int) -> Dict[str, int]:
    """VmRSS and VmHWM in bytes."""
    out = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(("VmRSS:", "VmHWM:")):
                key, value = line.split(":", 1)
                out[key] = int(value.split()[0]) * 1024
    return out


def rss(pid: int) -> int:
    return procMem(pid)["VmRSS"]


def median(xs: List[float]) -> float:
    return statistics.median(xs)


# ---------------------------------------------------------------- servers


class ServerKind:
    """How to start one kind of server."""

    def __init__(self, name: str, label: str, argv: Callable[[int], List[str]], env: Optional[Dict[str, str]] = None):
        self.name = name
        self.label = label
        self.argv = argv
        self.env = env


class Server:
    def __init__(self, kind: ServerKind, tmpdir: str):
        self.kind = kind
        self.port = freePort()
        self.errPath = os.path.join(tmpdir, f"{kind.name}-{self.port}.stderr")
        env = dict(os.environ)
        if kind.env:
            env.update(kind.env)
        self.err = open(self.errPath, "wb")
        self.proc = subprocess.Popen(
            kind.argv(self.port), stdin=subprocess.DEVNULL, stdout=self.err, stderr=self.err,
            env=env, cwd=ROOT, preexec_fn=raiseNofile)
        self.pid = self.proc.pid
        try:
            self._waitReady()
        except BaseException:
            self.stop()             # never leave a server behind
            raise

    def _waitReady(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                tail = self.stderrTail()
                raise StartupError(f"{self.kind.name} exited at start-up (status {self.proc.returncode}): "
                                   f"{tail.splitlines()[-1]}", tail)
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1) as s:
                    s.sendall(b"\0REQ" + (16).to_bytes(4, "big") + (4).to_bytes(4, "big") + b"ping")
                    s.settimeout(5)
                    got = b""
                    while len(got) < 16:
                        chunk = s.recv(16 - len(got))
                        if not chunk:
                            break
                        got += chunk
                    if got == b"\0RES" + (17).to_bytes(4, "big") + (4).to_bytes(4, "big") + b"ping":
                        return
            except OSError:
                pass
            time.sleep(0.1)
        raise BenchError(f"{self.kind.name} did not answer ECHO_REQ on port {self.port} within {timeout} s")

    def alive(self) -> None:
        if self.proc.poll() is not None:
            raise BenchError(f"{self.kind.name} died (status {self.proc.returncode}): {self.stderrTail()}")

    def cpu(self) -> float:
        self.alive()
        return procCpu(self.pid)

    def rss(self) -> int:
        self.alive()
        return rss(self.pid)

    def stderrTail(self) -> str:
        try:
            with open(self.errPath, "rb") as f:
                return f.read()[-2000:].decode("utf-8", "replace").strip() or "(no output)"
        except OSError:
            return "(no output)"

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.err.close()


def pythonHasTwisted(python: str) -> bool:
    try:
        return subprocess.run([python, "-c", "import twisted, zope.interface"], capture_output=True).returncode == 0
    except OSError:
        return False


def findCPython(requested: Optional[str]) -> str:
    if requested:
        return requested
    for cand in (sys.executable, shutil.which("python3") or ""):
        if cand and pythonHasTwisted(cand) and "pypy" not in os.path.basename(os.path.realpath(cand)).lower():
            return cand
    raise SystemExit("no CPython with Twisted found; pass --python")


def findPyPy(requested: Optional[str]) -> str:
    """A PyPy interpreter that can import Twisted; creates benchmarks/.venv-pypy if needed."""
    if requested:
        return requested
    venvPython = os.path.join(PYPY_VENV, "bin", "python")
    if os.path.exists(venvPython) and pythonHasTwisted(venvPython):
        return venvPython
    pypy = shutil.which("pypy3")
    if not pypy:
        raise SystemExit("pypy3 not found; install it or pass --pypy PATH")
    log(f"creating {PYPY_VENV} (pypy3 -m venv + pip install twisted zope.interface)")
    subprocess.run([pypy, "-m", "venv", PYPY_VENV], check=True)
    subprocess.run([venvPython, "-m", "pip", "install", "-q", "twisted", "zope.interface"], check=True)
    return venvPython


def txgearArgv(python: str) -> Callable[[int], List[str]]:
    """The command line for `python -m twisted gearman`, adapted to the plugin's options."""
    env = dict(os.environ, PYTHONPATH=ROOT)
    helpText = ""
    try:
        helpText = subprocess.run([python, "-m", "twisted", "gearman", "--help"], capture_output=True,
                                  env=env, cwd=ROOT, text=True, timeout=60).stdout
    except (OSError, subprocess.TimeoutExpired):
        pass
    if "--port" not in helpText:
        raise SystemExit(f"`{python} -m twisted gearman --help` does not work from {ROOT}: "
                         "the txgear server plugin is missing or broken")
    extra = ["--queue", "memory"] if "--queue" in helpText else []

    def argv(port: int) -> List[str]:
        return [python, "-m", "twisted", "--log-file=/dev/null", "gearman",
                f"--port=tcp:{port}:interface=127.0.0.1"] + extra
    return argv


def describe(argv: List[str]) -> str:
    try:
        return subprocess.run(argv, capture_output=True, text=True, timeout=60).stdout.strip().splitlines()[0]
    except (OSError, IndexError, subprocess.TimeoutExpired):
        return "?"


PY_VERSION = ["-c", "import sys, twisted; print(sys.implementation.name, sys.version.split()[0], "
              "'/ Twisted', twisted.__version__)"]


def serverKinds(names: List[str], args: argparse.Namespace) -> List[ServerKind]:
    kinds = []
    for name in names:
        if name.startswith("gearmand"):   # "gearmand2" etc.: a second gearmand column, to see the noise
            kinds.append(ServerKind(name, describe([GEARMAND, "--version"]), lambda port: [
                GEARMAND, "--listen=127.0.0.1", f"--port={port}", f"--threads={args.gearmand_threads}",
                "--log-file=none", f"--pid-file={os.path.join(args.tmpdir, f'gearmand-{port}.pid')}"]))
        elif name == "txgear":
            py = findCPython(args.python)
            kinds.append(ServerKind("txgear", describe([py] + PY_VERSION), txgearArgv(py), {"PYTHONPATH": ROOT}))
        elif name == "txgear-pypy":
            py = findPyPy(args.pypy)
            kinds.append(ServerKind("txgear-pypy", describe([py] + PY_VERSION), txgearArgv(py), {"PYTHONPATH": ROOT}))
        else:
            raise SystemExit(f"unknown server {name!r} (gearmand, txgear, txgear-pypy)")
    return kinds


# ---------------------------------------------------------------- load generator


def loadgen(server: Server, mode: str, *opts: Any, timeout: float = 900) -> Dict[str, Any]:
    argv = [LOADGEN, mode, "--port", str(server.port)] + [str(o) for o in opts]
    ru0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    try:
        p = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, preexec_fn=raiseNofile)
    except subprocess.TimeoutExpired:
        raise BenchError(f"loadgen {mode} timed out after {timeout} s against {server.kind.name}")
    if p.returncode != 0:
        server_state = "" if server.proc.poll() is None else f" (server died: {server.stderrTail()})"
        raise BenchError(f"loadgen {' '.join(argv[1:])} failed (exit {p.returncode}): "
                         f"{p.stderr.strip()}{server_state}")
    res = json.loads(p.stdout.strip().splitlines()[-1])
    ru1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (ru1.ru_utime - ru0.ru_utime) + (ru1.ru_stime - ru0.ru_stime)
    res["loadgen_cpu_s"] = cpu
    if res.get("jobs"):
        res["client_cpu_us_per_job"] = cpu * 1e6 / res["jobs"]
    return res


def measured(server: Server, mode: str, *opts: Any) -> Dict[str, Any]:
    """Run loadgen and add the server's CPU per job and memory."""
    cpu0 = server.cpu()
    res = loadgen(server, mode, *opts)
    cpu1 = server.cpu()
    mem = procMem(server.pid)
    res["server_cpu_s"] = cpu1 - cpu0
    res["server_cpu_us_per_job"] = (cpu1 - cpu0) * 1e6 / res["jobs"]
    res["server_rss"] = mem["VmRSS"]
    res["server_hwm"] = mem["VmHWM"]
    return res


def warmup(server: Server, c: Dict[str, int]) -> None:
    """A short echo and fill/drain on other function names (JIT warm-up for PyPy)."""
    n = c["warmup"]
    if n:
        loadgen(server, "echo", "--function", "warmup_echo", "--jobs", n, "--workers", 4, "--clients", 8, "--depth", 8)
        loadgen(server, "drain", "--function", "warmup_bg", "--jobs", n, "--workers", 4)


# ---------------------------------------------------------------- scenarios

# Each scenario returns {metric key: value}; METRICS says how to show them.
# (key, label, unit/format, higher_is_better)

FULL = dict(bg=200_000, echo=100_000, echo64k=10_000, drain=100_000, mem1=100_000, mem2=1_000_000,
            idle_conns=5000, idle_secs=5.0, idle_echo=50_000, idle_pairs=2, storm=2000, lib=20_000, warmup=5000)
QUICK = dict(bg=20_000, echo=10_000, echo64k=1000, drain=10_000, mem1=10_000, mem2=100_000,
             idle_conns=5000, idle_secs=1.0, idle_echo=5000, idle_pairs=1, storm=200, lib=2000, warmup=1000)


def scenario1(server: Server, c: Dict[str, int]) -> Dict[str, float]:
    warmup(server, c)
    base = server.rss()
    r = measured(server, "bgsubmit", "--function", "bench_bg", "--conns", 4, "--depth", 100,
                 "--jobs", c["bg"], "--size", 100)
    return {"jobs_per_s": r["jobs_per_s"], "p50_us": r["p50_us"], "p99_us": r["p99_us"],
            "cpu_us_per_job": r["server_cpu_us_per_job"], "rss_mb": r["server_rss"] / 2**20,
            "bytes_per_job": (r["server_rss"] - base) / c["bg"]}


def echoMetrics(r: Dict[str, Any], prefix: str) -> Dict[str, float]:
    return {f"{prefix}jobs_per_s": r["jobs_per_s"], f"{prefix}p50_us": r["p50_us"], f"{prefix}p99_us": r["p99_us"],
            f"{prefix}cpu_us_per_job": r["server_cpu_us_per_job"], f"{prefix}rss_mb": r["server_rss"] / 2**20}


def echoArgs(jobs: int, size: int) -> List[Any]:
    return ["--function", "bench_echo", "--workers", 4, "--clients", 8, "--depth", 8, "--jobs", jobs, "--size", size]


def scenario2(server: Server, c: Dict[str, int]) -> Dict[str, float]:
    warmup(server, c)
    small = measured(server, "echo", *echoArgs(c["echo"], 100))
    out = echoMetrics(small, "small_")
    out["loadgen_core_share"] = small["loadgen_cpu_s"] / small["seconds"]
    out.update(echoMetrics(measured(server, "echo", *echoArgs(c["echo64k"], 65536)), "big_"))
    return out


def scenario3(server: Server, c: Dict[str, int]) -> Dict[str, float]:
    warmup(server, c)
    loadgen(server, "bgsubmit", "--function", "bench_drain", "--jobs", c["drain"], "--conns", 4, "--depth", 100)
    r = measured(server, "drain", "--no-fill", "--function", "bench_drain", "--jobs", c["drain"], "--workers", 4)
    return {"jobs_per_s": r["jobs_per_s"], "cpu_us_per_job": r["server_cpu_us_per_job"]}


def scenario4(server: Server, c: Dict[str, int]) -> Dict[str, float]:
    warmup(server, c)
    n1, n2 = c["mem1"], c["mem2"]
    base = server.rss()
    fill = ["--function", "bench_mem", "--conns", 4, "--depth", 100, "--size", 100]
    loadgen(server, "bgsubmit", *fill, "--jobs", n1)
    rss1 = server.rss()
    loadgen(server, "bgsubmit", *fill, "--jobs", n2 - n1, "--seq-base", n1, "--expect-total", n2)
    rss2 = server.rss()
    loadgen(server, "drain", "--no-fill", "--function", "bench_mem", "--jobs", n2, "--workers", 4, timeout=1800)
    drained1 = server.rss()
    loadgen(server, "bgsubmit", *fill, "--jobs", n2)
    refill = server.rss()
    loadgen(server, "drain", "--no-fill", "--function", "bench_mem", "--jobs", n2, "--workers", 4, timeout=1800)
    drained2 = server.rss()
    return {"base_mb": base / 2**20, "bytes_per_job_n1": (rss1 - base) / n1, "bytes_per_job_n2": (rss2 - base) / n2,
            "peak_mb": rss2 / 2**20, "drained_mb": drained1 / 2**20, "refill_mb": refill / 2**20,
            "drained2_mb": drained2 / 2**20, "growth_mb": (drained2 - drained1) / 2**20}


class IdleWorkers:
    """`loadgen idle`: C{conns} registered, sleeping workers of another function, while in the block."""

    def __init__(self, server: Server, conns: int) -> None:
        self.argv = [LOADGEN, "idle", "--port", str(server.port), "--conns", str(conns), "--function", "other"]
        self.proc: Optional[subprocess.Popen] = None  # type: ignore[type-arg]
        self.ready: Dict[str, Any] = {}

    def __enter__(self) -> "IdleWorkers":
        self.proc = idle = subprocess.Popen(self.argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                            preexec_fn=raiseNofile)
        line = idle.stdout.readline()  # type: ignore[union-attr]
        if not line:
            idle.wait(30)
            raise BenchError(f"loadgen idle failed (exit {idle.returncode}): {idle.stderr.read().strip()}")  # type: ignore[union-attr]
        self.ready = json.loads(line)
        time.sleep(0.5)
        return self

    def check(self) -> None:
        idle = self.proc
        if idle is not None and idle.poll() is not None:
            raise BenchError(f"loadgen idle exited early (exit {idle.returncode}): {idle.stderr.read().strip()}")  # type: ignore[union-attr]

    def __exit__(self, *exc: Any) -> None:
        idle = self.proc
        if idle is None:
            return
        if idle.poll() is None:
            idle.terminate()
        try:
            idle.wait(30)
        except subprocess.TimeoutExpired:
            idle.kill()
            idle.wait()
        if idle.returncode != 0 and exc[0] is None:
            raise BenchError(f"loadgen idle reported a problem (exit {idle.returncode}): {idle.stderr.read().strip()}")  # type: ignore[union-attr]
        time.sleep(1.0)  # let the server see the 5,000 connections go


def scenario5(server: Server, c: Dict[str, int]) -> Dict[str, float]:
    """
    The 100 B echo with and without 5,000 idle workers, alternating on the same
    server (with, without, with, without, ...), so that the with/without ratio
    of each round compares runs a few seconds apart: the best of each (noise
    from other work on the machine only slows a run down), and the server's CPU
    per job (median of each).
    """
    warmup(server, c)
    without: List[Dict[str, Any]] = []
    withIdle: List[Dict[str, Any]] = []
    out: Dict[str, float] = {}
    for pair in range(c["idle_pairs"]):
        # With them first: the RSS they add is then measured right after the
        # warm-up, as before (PyPy's heap after an echo would blur it).
        base = server.rss()
        with IdleWorkers(server, c["idle_conns"]) as idle:
            if pair == 0:
                cpu0, t0 = server.cpu(), time.monotonic()
                time.sleep(c["idle_secs"])
                out["idle_cpu_ms_per_s"] = (server.cpu() - cpu0) / (time.monotonic() - t0) * 1000
                out["bytes_per_conn"] = (server.rss() - base) / c["idle_conns"]
                out["setup_s"] = idle.ready["setup_seconds"]
            withIdle.append(measured(server, "echo", *echoArgs(c["idle_echo"], 100)))
            idle.check()
        without.append(measured(server, "echo", *echoArgs(c["idle_echo"], 100)))
    best = max(withIdle, key=lambda r: r["jobs_per_s"])
    out.update(echoMetrics(best, ""))
    out["without_jobs_per_s"] = max(r["jobs_per_s"] for r in without)
    out["with_without"] = best["jobs_per_s"] / out["without_jobs_per_s"]
    out["cpu_with_without"] = (median([r["server_cpu_us_per_job"] for r in withIdle])
                               / median([r["server_cpu_us_per_job"] for r in without]))
    return out


def scenario6(server: Server, c: Dict[str, int]) -> Dict[str, float]:
    warmup(server, c)
    r = measured(server, "unique", "--function", "bench_unique", "--clients", 100, "--workers", 1,
                 "--rounds", c["storm"], "--size", 100)
    return {"rounds_per_s": r["rounds_per_s"], "jobs_per_s": r["jobs_per_s"], "p50_us": r["p50_us"],
            "p99_us": r["p99_us"], "cpu_us_per_job": r["server_cpu_us_per_job"]}


SCENARIOS: Dict[int, Tuple[str, Callable[[Server, Dict[str, int]], Dict[str, float]], List[Tuple[str, str, str, bool]]]] = {
    1: ("background submit (4 conns x 100 pipelined SUBMIT_JOB_BG, 100 B, no workers)", scenario1, [
        ("jobs_per_s", "jobs/s", "{:,.0f}", True),
        ("p50_us", "p50 submit->JOB_CREATED (us)", "{:,.0f}", False),
        ("p99_us", "p99 submit->JOB_CREATED (us)", "{:,.0f}", False),
        ("cpu_us_per_job", "server CPU per job (us)", "{:,.2f}", False),
        ("bytes_per_job", "server RSS per queued job (B)", "{:,.0f}", False),
    ]),
    2: ("foreground echo (4 workers, 8 clients x 8 in flight)", scenario2, [
        ("small_jobs_per_s", "100 B: jobs/s", "{:,.0f}", True),
        ("small_p50_us", "100 B: p50 latency (us)", "{:,.0f}", False),
        ("small_p99_us", "100 B: p99 latency (us)", "{:,.0f}", False),
        ("small_cpu_us_per_job", "100 B: server CPU per job (us)", "{:,.2f}", False),
        ("loadgen_core_share", "100 B: loadgen CPU (cores busy)", "{:,.2f}", False),
        ("big_jobs_per_s", "64 KiB: jobs/s", "{:,.0f}", True),
        ("big_p50_us", "64 KiB: p50 latency (us)", "{:,.0f}", False),
        ("big_p99_us", "64 KiB: p99 latency (us)", "{:,.0f}", False),
        ("big_cpu_us_per_job", "64 KiB: server CPU per job (us)", "{:,.2f}", False),
        ("big_rss_mb", "64 KiB: server RSS after (MiB)", "{:,.1f}", False),
    ]),
    3: ("drain (queue N background jobs, then 4 workers empty the queue)", scenario3, [
        ("jobs_per_s", "jobs/s", "{:,.0f}", True),
        ("cpu_us_per_job", "server CPU per job (us)", "{:,.2f}", False),
    ]),
    4: ("memory (RSS per queued 100 B background job; fill/drain twice)", scenario4, [
        ("base_mb", "RSS before (MiB)", "{:,.1f}", False),
        ("bytes_per_job_n1", "RSS per job, N1 queued (B)", "{:,.0f}", False),
        ("bytes_per_job_n2", "RSS per job, N2 queued (B)", "{:,.0f}", False),
        ("peak_mb", "RSS with N2 queued (MiB)", "{:,.1f}", False),
        ("drained_mb", "RSS after drain 1 (MiB)", "{:,.1f}", False),
        ("drained2_mb", "RSS after fill+drain 2 (MiB)", "{:,.1f}", False),
        ("growth_mb", "growth cycle 1 -> 2 (MiB)", "{:,.1f}", False),
    ]),
    5: ("5,000 idle workers for another function, the 100 B echo with and without them (alternating)", scenario5, [
        ("idle_cpu_ms_per_s", "idle CPU with 5,000 idle workers (ms/s)", "{:,.1f}", False),
        ("bytes_per_conn", "RSS per idle worker connection (B)", "{:,.0f}", False),
        ("setup_s", "time to connect+register 5,000 (s)", "{:,.2f}", False),
        ("jobs_per_s", "echo 100 B: jobs/s", "{:,.0f}", True),
        ("p50_us", "echo 100 B: p50 latency (us)", "{:,.0f}", False),
        ("p99_us", "echo 100 B: p99 latency (us)", "{:,.0f}", False),
        ("cpu_us_per_job", "echo 100 B: server CPU per job (us)", "{:,.2f}", False),
        ("without_jobs_per_s", "echo 100 B without them, same server: jobs/s", "{:,.0f}", True),
        ("with_without", "jobs/s with them / without (best of each, per round)", "{:,.2f}", True),
        ("cpu_with_without", "CPU per job with them / without (per round)", "{:,.2f}", False),
    ]),
    6: ("unique storm (100 clients submit the same unique id per round, 1 worker)", scenario6, [
        ("rounds_per_s", "rounds/s", "{:,.0f}", True),
        ("jobs_per_s", "submissions/s", "{:,.0f}", True),
        ("p50_us", "p50 round latency (us)", "{:,.0f}", False),
        ("p99_us", "p99 round latency (us)", "{:,.0f}", False),
        ("cpu_us_per_job", "server CPU per submission (us)", "{:,.2f}", False),
    ]),
}


# ---------------------------------------------------------------- client/worker library (scenario 7)


def pythonHasGear(python: str) -> bool:
    try:
        return subprocess.run([python, "-c", "import gear"], capture_output=True).returncode == 0
    except OSError:
        return False


def gearPython(python: str) -> Optional[str]:
    """C{python} if it can import gear; into run.py's own PyPy venv, gear is installed first."""
    if pythonHasGear(python):
        return python
    if os.path.realpath(python).startswith(os.path.realpath(PYPY_VENV) + os.sep):
        log(f"installing gear into {PYPY_VENV}")
        subprocess.run([python, "-m", "pip", "install", "-q", "gear"], check=False)
        if pythonHasGear(python):
            return python
    log(f"  {python} cannot import gear: no gear column for it")
    return None


def scenario7(args: argparse.Namespace, kinds: List[ServerKind], c: Dict[str, int],
              results: Dict[str, Any]) -> None:
    """
    txgear client + workers against gearmand, next to loadgen and to gear's
    client + workers with the same shape (each against a fresh gearmand).
    """
    gkind = serverKinds(["gearmand"], args)[0]
    libs: List[Tuple[str, Optional[str], str, List[str]]] = []
    names = [k.name for k in kinds]
    runners = []
    if "txgear" in names or "txgear-pypy" not in names:
        runners.append(("", findCPython(args.python)))
    if "txgear-pypy" in names:
        runners.append(("-pypy", findPyPy(args.pypy)))
    for suffix, py in runners:
        libs.append((f"txgear-lib{suffix}", py, "client_bench.py", []))
    for suffix, py in runners:
        gpy = gearPython(py)
        if gpy is not None:
            # gear leaves Nagle on (40 ms stalls): measured with TCP_NODELAY, at its best.
            libs.append((f"gear-lib{suffix}", gpy, "gear_bench.py", ["--nodelay"]))
    shape = ["--workers", "4", "--clients", "8", "--depth", "8", "--size", "100"]
    for rnd in range(args.rounds):
        for name, py, script, extra in [("loadgen", None, "", [])] + libs:
            server = Server(gkind, args.tmpdir)
            try:
                if py is None:
                    loadgen(server, "echo", "--function", "warmup_echo", "--jobs", c["warmup"], *shape)
                    r = measured(server, "echo", "--function", "bench_lib", "--jobs", c["lib"], *shape)
                else:
                    cpu0 = server.cpu()
                    p = subprocess.run([py, os.path.join(HERE, script), "--port", str(server.port),
                                        "--jobs", str(c["lib"]), "--warmup", str(c["warmup"])] + shape + extra,
                                       capture_output=True, text=True, timeout=900,
                                       env=dict(os.environ, PYTHONPATH=ROOT), cwd=ROOT)
                    if p.returncode != 0:
                        raise BenchError(f"{script} ({py}) failed (exit {p.returncode}): "
                                         f"{(p.stderr or p.stdout).strip()[-1500:]}")
                    r = json.loads(p.stdout.strip().splitlines()[-1])
                    r["server_cpu_us_per_job"] = (server.cpu() - cpu0) * 1e6 / (r["jobs"] + c["warmup"])
                server.alive()
                metrics = {"jobs_per_s": r["jobs_per_s"], "p50_us": r["p50_us"], "p99_us": r["p99_us"],
                           "cpu_us_per_job": r["server_cpu_us_per_job"]}
                if "client_cpu_us_per_job" in r:
                    metrics["client_cpu_us_per_job"] = r["client_cpu_us_per_job"]
                record(results, 7, name, metrics)
                log(f"  scenario 7 round {rnd + 1} {name}: {r['jobs_per_s']:,.0f} jobs/s")
            except BenchError as e:
                recordFailure(results, 7, name, str(e))
            finally:
                server.stop()


LIB_METRICS = [
    ("jobs_per_s", "jobs/s", "{:,.0f}", True),
    ("p50_us", "p50 latency (us)", "{:,.0f}", False),
    ("p99_us", "p99 latency (us)", "{:,.0f}", False),
    ("cpu_us_per_job", "gearmand CPU per job (us)", "{:,.2f}", False),
    ("client_cpu_us_per_job", "load process CPU per job (us)", "{:,.2f}", False),
]


# ---------------------------------------------------------------- results


def record(results: Dict[str, Any], scen: int, server: str, metrics: Dict[str, float]) -> None:
    results["runs"].setdefault(str(scen), {}).setdefault(server, []).append(metrics)


def recordFailure(results: Dict[str, Any], scen: int, server: str, msg: str) -> None:
    log(f"  FAILED scenario {scen} on {server}: {msg}")
    results["failures"].append({"scenario": scen, "server": server, "error": msg})


def fmtCell(fmt: str, xs: List[float]) -> str:
    if not xs:
        return "n/a"
    m = fmt.format(median(xs))
    if len(xs) > 1:
        return f"{m} ({fmt.format(min(xs))}–{fmt.format(max(xs))})"
    return m


def ratio(a: List[float], b: List[float]) -> str:
    if not a or not b:
        return "n/a"
    ma, mb = median(a), median(b)
    if mb <= 0 or ma < 0:
        return "–"
    return f"{ma / mb:.2f}"


def table(results: Dict[str, Any]) -> str:
    lines: List[str] = []
    runs = results["runs"]
    servers = results["servers"]
    for scen in sorted(runs, key=int):
        byServer = runs[scen]
        if int(scen) == 7:
            title = ("txgear client + worker libraries vs loadgen and gear's, all against gearmand "
                     "(4 workers, 8x8 in flight, 100 B)")
            cols = [s for s in ["loadgen", "txgear-lib", "txgear-lib-pypy", "gear-lib", "gear-lib-pypy"]
                    if s in byServer]
            base = "loadgen"
            metrics = LIB_METRICS
        else:
            title = SCENARIOS[int(scen)][0]
            cols = [s for s in servers if s in byServer]
            base = "gearmand"
            metrics = SCENARIOS[int(scen)][2]
        lines.append(f"\n### Scenario {scen}: {title}\n")
        head = ["metric"]
        for s in cols:
            head.append(s)
            if s != base and base in cols:
                head.append(f"{s}/{base}")
        lines.append("| " + " | ".join(head) + " |")
        lines.append("|" + "---|" * len(head))
        for key, label, fmt, _ in metrics:
            if not any(key in m for s in cols for m in byServer[s]):
                continue
            row = [label]
            baseVals = [m[key] for m in byServer.get(base, []) if key in m]
            for s in cols:
                vals = [m[key] for m in byServer[s] if key in m]
                row.append(fmtCell(fmt, vals))
                if s != base and base in cols:
                    row.append(ratio(vals, baseVals))
            lines.append("| " + " | ".join(row) + " |")
    if results["failures"]:
        lines.append("\n### Failures\n")
        for f in results["failures"]:
            lines.append(f"- scenario {f['scenario']} on {f['server']}: {f['error']}")
    return "\n".join(lines) + "\n"


def machine() -> Dict[str, str]:
    model = "?"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    try:  # read-only: which txgear code was measured
        commit = subprocess.run(["git", "-C", ROOT, "rev-parse", "--short", "HEAD"], capture_output=True,
                                text=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", ROOT, "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True).stdout.strip()
        commit = commit + ("+uncommitted" if dirty else "") if commit else "?"
    except OSError:
        commit = "?"
    return {"cpus": str(os.cpu_count()), "cpu_model": model, "kernel": platform.release(),
            "runner_python": platform.python_version(), "txgear_commit": commit}


def report(paths: List[str]) -> int:
    merged: Dict[str, Any] = {"runs": {}, "failures": [], "servers": [], "versions": {}}
    for path in paths:
        with open(path) as f:
            res = json.load(f)
        for name in res["servers"]:
            if name not in merged["servers"]:
                merged["servers"].append(name)
        merged["versions"].update(res.get("versions", {}))
        merged["failures"] += res["failures"]
        for scen, byServer in res["runs"].items():
            for server, runs in byServer.items():
                merged["runs"].setdefault(scen, {}).setdefault(server, []).extend(runs)
        print(f"- {path}: {res['date']}, txgear {res['machine'].get('txgear_commit', '?')}, "
              f"{res['rounds']} round(s){' (quick)' if res.get('quick') else ''}")
    print("".join(f"- {name}: {label}\n" for name, label in merged["versions"].items()))
    print(table(merged))
    return 0


# ---------------------------------------------------------------- main


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--servers", default="gearmand,txgear",
                    help="comma list of gearmand, txgear, txgear-pypy [default: %(default)s]")
    ap.add_argument("--scenarios", default="1,2,3,4,5,6,7", help="comma list of 1-7 [default: all]")
    ap.add_argument("--rounds", type=int, default=None, help="rounds per scenario [default: 3, quick: 1]")
    ap.add_argument("--memory-rounds", type=int, default=1,
                    help="rounds for scenario 4 (memory is not noisy; 1M-job drains are slow) [default: 1]")
    ap.add_argument("--quick", action="store_true", help="small counts, one round: a smoke test under 2 minutes")
    ap.add_argument("--python", help="CPython with Twisted for the txgear server [default: this one, else python3 on PATH]")
    ap.add_argument("--pypy", help="PyPy with Twisted [default: benchmarks/.venv-pypy, created if missing]")
    ap.add_argument("--gearmand-threads", type=int, default=0, help="gearmand --threads [default: 0]")
    ap.add_argument("--cc", default=os.environ.get("CC", "cc"), help="C compiler for loadgen")
    ap.add_argument("--no-warmup", action="store_true", help="skip the short warm-up load before each measurement")
    ap.add_argument("--output", help="JSON results file [default: benchmarks/results/<timestamp>.json]")
    ap.add_argument("--report", nargs="+", metavar="JSON",
                    help="print the table of earlier results files (merged: rounds pooled per server) and exit")
    args = ap.parse_args()
    if args.report:
        return report(args.report)

    c = dict(QUICK if args.quick else FULL)
    if args.no_warmup:
        c["warmup"] = 0
    args.rounds_explicit = args.rounds is not None
    rounds = args.rounds or (1 if args.quick else 3)
    args.rounds = rounds
    scens = [int(s) for s in args.scenarios.split(",") if s.strip()]
    names = [s.strip() for s in args.servers.split(",") if s.strip()]
    buildLoadgen(args.cc)
    raiseNofile()
    args.tmpdir = tempfile.mkdtemp(prefix="txgear-bench-")
    kinds = serverKinds(names, args)

    started = datetime.datetime.now()
    results: Dict[str, Any] = {
        "date": started.isoformat(timespec="seconds"), "machine": machine(), "quick": args.quick,
        "rounds": rounds, "counts": c, "servers": names,
        "commands": {k.name: " ".join(k.argv(0)) for k in kinds},
        "versions": {k.name: k.label for k in kinds}, "runs": {}, "failures": []}
    broken: Dict[str, str] = {}
    for scen in scens:
        if scen == 7:
            log("scenario 7: txgear client/worker libraries against gearmand")
            scenario7(args, kinds, c, results)
            continue
        title, fn, _ = SCENARIOS[scen]
        log(f"scenario {scen}: {title}")
        n = args.memory_rounds if scen == 4 and not args.rounds_explicit else rounds
        for rnd in range(n):
            for kind in kinds:       # alternate servers within each round
                t0 = time.monotonic()
                if kind.name in broken:
                    continue
                try:
                    server = Server(kind, args.tmpdir)
                except StartupError as e:
                    broken[kind.name] = str(e)
                    recordFailure(results, scen, kind.name, f"{e} -- skipping {kind.name} from now on")
                    log(e.output)
                    continue
                except BenchError as e:
                    recordFailure(results, scen, kind.name, str(e))
                    continue
                try:
                    metrics = fn(server, c)
                    server.alive()
                    record(results, scen, kind.name, metrics)
                    first = SCENARIOS[scen][2][0]
                    log(f"  round {rnd + 1} {kind.name}: {first[1]} = {first[2].format(metrics[first[0]])}"
                        f" ({time.monotonic() - t0:.1f} s)")
                except BenchError as e:
                    recordFailure(results, scen, kind.name, str(e))
                finally:
                    server.stop()
    results["elapsed_s"] = round((datetime.datetime.now() - started).total_seconds(), 1)
    md = table(results)
    header = (f"Results {results['date']} (txgear {results['machine']['txgear_commit']}) on "
              f"{results['machine']['cpus']} x {results['machine']['cpu_model']}"
              f"{' (quick)' if args.quick else ''}: median (min–max) of {rounds} round(s); "
              f"ratios are txgear/gearmand medians.\n\n"
              + "".join(f"- {name}: {label}\n" for name, label in results["versions"].items()))
    print(header + md)
    os.makedirs(RESULTS, exist_ok=True)
    out = args.output or os.path.join(RESULTS, started.strftime("%Y%m%d-%H%M%S") + (".quick" if args.quick else "") + ".json")
    results["markdown"] = header + md
    with open(out, "w") as f:
        json.dump(results, f, indent=1)
    log(f"wrote {out} ({results['elapsed_s']} s)")
    shutil.rmtree(args.tmpdir, ignore_errors=True)
    return 1 if results["failures"] else 0


if __name__ == "__main__":
    sys.exit(main())
