"""
Do idle connections cost a job anything?  Counted, not timed: the 100 B echo
of scenario 5 with and without 5,000 sleeping workers of another function, on
one server run under valgrind's callgrind, which counts the instructions the
server executes (user space: its Python path, the interpreter, libc).  A
count does not move with the other work on a shared machine, where the
job rates of scenario 5 move by 20% between two runs of the same server.

    python3 benchmarks/idle_icount.py                         # txgear, 3 rounds
    python3 benchmarks/idle_icount.py --servers txgear,gearmand,txgear-pypy

For each server: start it under callgrind, warm it up, then per round
(callgrind's counters are dumped, so each figure is what happened between two
dumps): an echo of --jobs jobs without idle workers; --conns idle workers
connect and register (not counted); the same echo with them; they leave (not
counted).  Prints instructions per job without and with them and their ratio
per round.  What the kernel does is not counted (its epoll calls ask for at
most one event per registered connection, and return only the ready ones).

Needs valgrind (Debian package ``valgrind``), loadgen (built as by run.py)
and what run.py needs for the servers.  Slow: valgrind runs the server about
50 times slower; the default counts take a few minutes per server.
"""
from __future__ import annotations

import argparse
import glob
import os
import shutil
import subprocess
import sys
import tempfile
import time
from typing import Dict, List, Tuple

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from run import (  # noqa: E402
    IdleWorkers, Server, ServerKind, buildLoadgen, echoArgs, loadgen, log, median, procCpu, serverKinds)


class CountedServer(Server):
    """A server started under callgrind (slow to start: a longer wait)."""

    def _waitReady(self, timeout: float = 600.0) -> None:
        super()._waitReady(timeout)


def underCallgrind(kind: ServerKind, outDir: str) -> ServerKind:
    valgrind = shutil.which("valgrind")
    if not valgrind:
        raise SystemExit("valgrind not found (Debian package valgrind)")
    # --smc-check: PyPy writes the machine code its JIT makes to the heap.
    prefix = [valgrind, "--tool=callgrind", "--dump-instr=no", "--compress-strings=no",
              "--smc-check=all-non-file", f"--callgrind-out-file={os.path.join(outDir, kind.name + '.%p')}"]
    return ServerKind(kind.name, kind.label, lambda port: prefix + kind.argv(port), kind.env)


class Counter:
    """Instructions executed by a callgrind process between two calls of L{since}."""

    def __init__(self, server: Server, outDir: str) -> None:
        self.server = server
        self.pattern = os.path.join(outDir, f"{server.kind.name}.{server.pid}.*")
        self.since()

    def since(self) -> int:
        before = set(glob.glob(self.pattern))
        subprocess.run(["callgrind_control", "--dump", str(self.server.pid)], check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=600)
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline:
            new = set(glob.glob(self.pattern)) - before
            for path in new:
                total = _totalOf(path)
                if total is not None:
                    os.unlink(path)
                    return total
            time.sleep(0.2)
        raise SystemExit(f"callgrind did not dump {self.server.kind.name}'s counters")


def _totalOf(path: str) -> "int | None":
    """The instruction total of a finished callgrind dump, or None while it is being written."""
    try:
        with open(path) as f:
            for line in f:
                if line.startswith(("summary:", "totals:")):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def waitQuiet(server: Server, still: float = 2.0, limit: float = 600.0) -> None:
    """Wait until the server has used less than 2% of a core over C{still} seconds."""
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        before = procCpu(server.pid)
        time.sleep(still)
        if procCpu(server.pid) - before < 0.02 * still:
            return
    raise SystemExit(f"{server.kind.name} did not settle within {limit} s")


def measureServer(kind: ServerKind, args: argparse.Namespace, outDir: str) -> List[Tuple[float, float]]:
    server = CountedServer(underCallgrind(kind, outDir), args.tmpdir)
    try:
        echo = echoArgs(args.jobs, 100)
        loadgen(server, "echo", *echo, "--timeout", 600)   # warm-up
        waitQuiet(server)
        counter = Counter(server, outDir)
        rounds = []
        for number in range(args.rounds):
            seq = (number + 1) * 1_000_000
            loadgen(server, "echo", *echo, "--seq-base", seq, "--timeout", 600)
            without = counter.since() / args.jobs
            with IdleWorkers(server, args.conns) as idle:
                waitQuiet(server)
                counter.since()
                loadgen(server, "echo", *echo, "--seq-base", seq + 500_000, "--timeout", 600)
                withIdle = counter.since() / args.jobs
                idle.check()
            waitQuiet(server)
            counter.since()
            rounds.append((without, withIdle))
            log(f"  {kind.name} round {number + 1}: {without:,.0f} instructions per job without, "
                f"{withIdle:,.0f} with {args.conns:,} idle workers ({withIdle / without:.3f})")
        return rounds
    finally:
        server.stop()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--servers", default="txgear", help="comma list of txgear, txgear-pypy, gearmand [txgear]")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--jobs", type=int, default=2000, help="echo jobs per measurement [2000]")
    ap.add_argument("--conns", type=int, default=5000, help="idle worker connections [5000]")
    ap.add_argument("--python", default=None, help="CPython with Twisted for txgear (as run.py)")
    ap.add_argument("--pypy", default=None, help="PyPy with Twisted for txgear-pypy (as run.py)")
    ap.add_argument("--gearmand-threads", type=int, default=0)
    ap.add_argument("--cc", default=os.environ.get("CC", "cc"))
    args = ap.parse_args()
    buildLoadgen(args.cc)
    results: Dict[str, List[Tuple[float, float]]] = {}
    with tempfile.TemporaryDirectory(prefix="txgear-icount-") as tmpdir:
        args.tmpdir = tmpdir
        for kind in serverKinds([s.strip() for s in args.servers.split(",") if s.strip()], args):
            log(f"{kind.name} ({kind.label}) under callgrind")
            results[kind.name] = measureServer(kind, args, tmpdir)
    print(f"\nInstructions per 100 B echo job (user space, callgrind), without and with "
          f"{args.conns:,} idle workers, {args.jobs:,} jobs per measurement:\n")
    print("| server | without (median) | with (median) | with / without, each round |")
    print("|---|---|---|---|")
    for name, rounds in results.items():
        ratios = ", ".join(f"{w / wo:.3f}" for wo, w in rounds)
        print(f"| {name} | {median([wo for wo, _ in rounds]):,.0f} | {median([w for _, w in rounds]):,.0f} "
              f"| {ratios} |")


if __name__ == "__main__":
    main()
