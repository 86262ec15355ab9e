#!/usr/bin/env python3
"""
What the HTTP port costs the job traffic: the txgear server with ``--http``
off, and on with ``/metrics`` scraped every second, in the same run, on fresh
servers, alternating (off, on, then on, off, ...), several rounds.

    .venv/bin/python benchmarks/http_overhead.py                 # 5 rounds
    .venv/bin/python benchmarks/http_overhead.py --rounds 3 --echo-jobs 50000

Loads (benchmarks/loadgen, which checks every job): the 100 B foreground echo
(4 workers, 8 clients x 8 in flight) and the 100 B background submit (4
connections x 100 pipelined, no workers). While the "on" server runs, a
thread of this process GETs ``/metrics`` once a second (and checks it is
Prometheus text). Prints medians, ranges and the ratio on/off of each; the
issue's bar is at most 5% slower (a ratio of 0.95 or more).

``--baseline CHECKOUT`` adds a third server, that checkout's (e.g. a commit
before the metrics counters, made with ``git worktree add``), with the port
off: what the counters themselves cost.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import threading
import time
import urllib.request
from typing import Callable, Dict, List

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import run  # noqa: E402  (benchmarks/run.py: servers, loadgen, /proc readings)


class Scraper:
    """GET /metrics every C{interval} seconds in a thread, until stopped."""

    def __init__(self, port: int, interval: float = 1.0) -> None:
        self.url = f"http://127.0.0.1:{port}/metrics"
        self.interval = interval
        self.count = 0
        self.seconds: List[float] = []
        self.failures: List[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def start(self) -> "Scraper":
        self._thread.start()
        return self

    def _loop(self) -> None:
        while not self._stop.is_set():
            started = time.monotonic()
            try:
                with urllib.request.urlopen(self.url, timeout=10) as response:
                    body = response.read()
                if b"gearman_function_jobs_submitted_total" not in body and self.count:
                    self.failures.append("no gearman_ metrics in the reply")
                self.count += 1
                self.seconds.append(time.monotonic() - started)
            except OSError as e:
                self.failures.append(str(e))
            self._stop.wait(max(0.0, self.interval - (time.monotonic() - started)))

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(15)


def serverKind(python: str, http: bool, ports: Dict[int, int], root: str = run.ROOT) -> run.ServerKind:
    base = run.txgearArgv(python)

    def argv(port: int) -> List[str]:
        args = base(port)
        if http:
            ports[port] = httpPort = run.freePort()
            args += ["--http", f"tcp:{httpPort}:interface=127.0.0.1"]
        return args
    return run.ServerKind("txgear", "txgear --http" if http else "txgear", argv,
                          env={"PYTHONPATH": root})


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--echo-jobs", type=int, default=100000)
    parser.add_argument("--bg-jobs", type=int, default=200000)
    parser.add_argument("--python", default=None, help="the interpreter for the server")
    parser.add_argument("--baseline", default=None,
                        help="another checkout to run with the port off, for comparison")
    args = parser.parse_args()
    run.buildLoadgen(os.environ.get("CC", "cc"))
    python = run.findCPython(args.python)
    httpPorts: Dict[int, int] = {}
    kinds = {"off": serverKind(python, False, httpPorts), "on": serverKind(python, True, httpPorts)}
    if args.baseline:
        kinds["baseline"] = serverKind(python, False, httpPorts, os.path.abspath(args.baseline))
    loads = ["echo", "bgsubmit"]
    results: Dict[str, List[float]] = {f"{load} {mode}": [] for load in loads for mode in kinds}
    cpu: Dict[str, List[float]] = {key: [] for key in results}
    scrapes: List[float] = []
    failures: List[str] = []
    c = dict(warmup=5000)
    with tempfile.TemporaryDirectory(prefix="http-overhead-") as tmpdir:
        for round_ in range(args.rounds):
            order = list(kinds) if round_ % 2 == 0 else list(reversed(kinds))
            for load in loads:
                for mode in order:
                    server = run.Server(kinds[mode], tmpdir)
                    scraper = None
                    try:
                        if mode == "on":
                            scraper = Scraper(httpPorts[server.port]).start()
                        run.warmup(server, c)
                        if load == "echo":
                            r = run.measured(server, "echo", *run.echoArgs(args.echo_jobs, 100))
                        else:
                            r = run.measured(server, "bgsubmit", "--function", "bench_bg",
                                             "--conns", 4, "--depth", 100,
                                             "--jobs", args.bg_jobs, "--size", 100)
                    finally:
                        if scraper is not None:
                            scraper.stop()
                            scrapes.extend(scraper.seconds)
                            failures.extend(scraper.failures)
                        server.stop()
                    key = f"{load} {mode}"
                    results[key].append(r["jobs_per_s"])
                    cpu[key].append(r["server_cpu_us_per_job"])
                    run.log(f"round {round_ + 1} {key}: {r['jobs_per_s']:,.0f} jobs/s, "
                            f"{r['server_cpu_us_per_job']:.1f} us CPU/job"
                            + (f", {scraper.count} scrapes" if scraper is not None else ""))
    fmt: Callable[[List[float], str], str] = lambda xs, f: (
        f"{run.median(xs):{f}} ({min(xs):{f}}–{max(xs):{f}})")
    print(f"\n{args.rounds} rounds, fresh servers, alternating; median (range)\n")
    print("| load | server | jobs/s | server CPU per job (us) | jobs/s / off's | CPU per job / off's |")
    print("|---|---|---|---|---|---|")
    for load in loads:
        off = run.median(results[f"{load} off"])
        offCpu = run.median(cpu[f"{load} off"])
        for mode in kinds:
            key = f"{load} {mode}"
            ratio = f"{run.median(results[key]) / off:.3f}" if mode != "off" else ""
            cpuRatio = f"{run.median(cpu[key]) / offCpu:.3f}" if mode != "off" else ""
            print(f"| {load} 100 B | {mode} | {fmt(results[key], ',.0f')} | "
                  f"{fmt(cpu[key], '.1f')} | {ratio} | {cpuRatio} |")
    if scrapes:
        print(f"\n{len(scrapes)} scrapes, {run.median(scrapes) * 1000:.1f} ms median, "
              f"{max(scrapes) * 1000:.1f} ms max (HTTP round trip, under load)")
    if failures:
        print(f"\nScrape failures: {len(failures)}, first: {failures[0]}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
