#!/usr/bin/env python3
"""
Alternating A/B (or A/B/C...) runs of benchmarks/client_bench.py from several
checkouts, a fresh gearmand for each run; prints each run, then per variant
the median and range of the Python process's CPU per job and of jobs/s.
CPU per job is the steadier figure on a shared machine.

    python3 benchmarks/client_ab.py --python /path/to/python --rounds 6 \\
        before=/tmp/old-checkout after=. after-no-grab-ahead=.:--no-grab-ahead

A variant is LABEL=DIR[:EXTRA,ARGS] (arguments for client_bench.py, comma
separated). The order of the variants is reversed every other round.
Stdlib only.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import tempfile
import time
from typing import Dict, List, Tuple

GEARMAND = shutil.which("gearmand") or "/usr/sbin/gearmand"


def freePort() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def runOnce(python: str, directory: str, extra: List[str], jobs: int, warmup: int,
            tmpdir: str) -> Dict:
    port = freePort()
    server = subprocess.Popen([GEARMAND, "--listen=127.0.0.1", f"--port={port}", "--threads=0",
                               "--log-file=none", f"--pid-file={os.path.join(tmpdir, f'{port}.pid')}"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(200):
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                time.sleep(0.05)
        p = subprocess.run([python, os.path.join("benchmarks", "client_bench.py"), "--port", str(port),
                            "--jobs", str(jobs), "--warmup", str(warmup)] + extra,
                           cwd=directory, env=dict(os.environ, PYTHONPATH="."), capture_output=True,
                           text=True, timeout=900)
        if p.returncode != 0:
            raise SystemExit(f"client_bench.py in {directory} failed: {p.stderr.strip()[-1000:]}")
        return json.loads(p.stdout.strip().splitlines()[-1])
    finally:
        server.terminate()
        server.wait()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--python", required=True, help="the interpreter that runs client_bench.py")
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--jobs", type=int, default=40000)
    ap.add_argument("--warmup", type=int, default=5000)
    ap.add_argument("variants", nargs="+", metavar="LABEL=DIR[:EXTRA,ARGS]")
    args = ap.parse_args()
    if os.sep in args.python:
        args.python = os.path.abspath(args.python)  # the runs' working directories differ
    variants: List[Tuple[str, str, List[str]]] = []
    for spec in args.variants:
        label, _, rest = spec.partition("=")
        directory, _, extra = rest.partition(":")
        variants.append((label, directory, [e for e in extra.split(",") if e]))
    results: Dict[str, List[Dict]] = {label: [] for label, _, _ in variants}
    tmpdir = tempfile.mkdtemp(prefix="client-ab-")
    try:
        for rnd in range(args.rounds):
            for label, directory, extra in (variants if rnd % 2 == 0 else variants[::-1]):
                r = runOnce(args.python, directory, extra, args.jobs, args.warmup, tmpdir)
                results[label].append(r)
                print(f"round {rnd + 1} {label}: {r['jobs_per_s']:,.0f} jobs/s, "
                      f"{r['client_cpu_us_per_job']:.2f} us of CPU per job", flush=True)
    finally:
        shutil.rmtree(tmpdir, ignore_errors=True)
    for label, _, _ in variants:
        cpu = [r["client_cpu_us_per_job"] for r in results[label]]
        rate = [r["jobs_per_s"] for r in results[label]]
        print(f"{label}: CPU per job {statistics.median(cpu):.1f} us ({min(cpu):.1f}-{max(cpu):.1f}), "
              f"{statistics.median(rate):,.0f} jobs/s ({min(rate):,.0f}-{max(rate):,.0f}), {len(cpu)} runs")


if __name__ == "__main__":
    main()
