#!/usr/bin/env python3
"""
Measure the txgear client and worker libraries: pipelined foreground echo
jobs through L{txgear.client.GearmanClient}s and L{txgear.worker.GearmanWorker}s
in this one process, against a job server (gearmand in the suite), in the
same shape as C{loadgen echo}: --workers workers (one connection each),
--clients clients (one connection each) with --depth jobs in flight each.

Every job is checked (each completes exactly once, with its payload intact);
prints one JSON line like loadgen (jobs_per_s, p50_us, p99_us) plus this
process's CPU time per job; exits 2 on a correctness error, 3 if txgear's
client/worker modules cannot be imported.

    PYTHONPATH=. python benchmarks/client_bench.py --port 4730 --jobs 20000

Run by benchmarks/run.py as scenario 7.
"""
from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from typing import Any, Dict, List

PATTERN_SEED = 0x9E3779B97F4A7C15


def makePattern(n: int) -> bytes:
    """The same pseudo-random pattern as loadgen.c (xorshift64)."""
    x = PATTERN_SEED
    out = bytearray(n)
    mask = (1 << 64) - 1
    for i in range(n):
        x ^= (x << 13) & mask
        x ^= x >> 7
        x ^= (x << 17) & mask
        out[i] = x & 0xFF
    return bytes(out)


class Failed(Exception):
    pass


def cpuSeconds() -> float:
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


async def runLoad(reactor: Any, clients: List[Any], function: str, jobs: int, depth: int,
                  size: int, pattern: bytes, timeout: float) -> dict:
    from twisted.internet.defer import Deferred

    state = {"next": 0, "completed": 0, "last": time.monotonic()}
    done = bytearray(jobs)
    latencies: List[float] = []
    finished: Deferred = Deferred()

    def payloadFor(seq: int) -> bytes:
        off = seq % 251
        return seq.to_bytes(8, "little") + pattern[off:off + size - 8]

    def fail(msg: str) -> None:
        if not finished.called:
            finished.errback(Failed(msg))

    def submitOne(client: Any) -> None:
        if state["next"] >= jobs or finished.called:
            return
        seq = state["next"]
        state["next"] += 1
        payload = payloadFor(seq)
        t0 = time.perf_counter()
        d = client.submit(function, payload)
        d.addCallbacks(ok, err, callbackArgs=(client, seq, t0, payload), errbackArgs=(seq,))

    def ok(result: bytes, client: Any, seq: int, t0: float, payload: bytes) -> None:
        latencies.append(time.perf_counter() - t0)
        state["last"] = time.monotonic()
        if result != payload:
            fail(f"job {seq}: result of {len(result)} bytes differs from its {len(payload)}-byte payload")
            return
        if done[seq]:
            fail(f"job {seq} completed twice")
            return
        done[seq] = 1
        state["completed"] += 1
        if state["completed"] == jobs:
            if not finished.called:
                finished.callback(None)
        else:
            submitOne(client)

    def err(failure: Any, seq: int) -> None:
        fail(f"job {seq} failed: {failure.getErrorMessage()} ({failure.type.__name__})")

    def watchdog() -> None:
        if finished.called:
            return
        if time.monotonic() - state["last"] > timeout:
            fail(f"stalled: {state['completed']} of {jobs} jobs completed, no result for {timeout} s")
        else:
            reactor.callLater(1, watchdog)

    cpu0 = cpuSeconds()
    start = time.perf_counter()
    for client in clients:
        for _ in range(depth):
            submitOne(client)
    reactor.callLater(1, watchdog)
    await finished
    return summary(jobs, time.perf_counter() - start, cpuSeconds() - cpu0, done, latencies)


def summary(jobs: int, elapsed: float, cpu: float, done: List[int],
            latencies: List[float]) -> Dict[str, Any]:
    """A measured run's figures (shared with gear_bench.py); fails if a job never completed."""
    missing = done.count(0)
    if missing:
        raise Failed(f"{missing} jobs never completed")
    latencies.sort()
    n = len(latencies)
    return {"jobs": jobs, "seconds": round(elapsed, 4), "jobs_per_s": round(jobs / elapsed, 1),
            "p50_us": round(latencies[(n - 1) * 50 // 100] * 1e6),
            "p99_us": round(latencies[(n - 1) * 99 // 100] * 1e6),
            "max_us": round(latencies[-1] * 1e6),
            "client_cpu_us_per_job": round(cpu * 1e6 / jobs, 2)}


async def main(reactor: Any, args: argparse.Namespace) -> None:
    try:
        from txgear.client import GearmanClient
        from txgear.worker import GearmanWorker
    except ImportError as e:
        sys.stderr.write(f"client_bench: txgear.client / txgear.worker not importable yet ({e})\n")
        raise SystemExit(3)

    address = f"{args.host}:{args.port}"
    executed = [0]
    # grabAhead is a keyword of GearmanWorker since issue 14; older code has none.
    workerOptions = {"grabAhead": False} if args.no_grab_ahead else {}

    def echo(job: Any) -> bytes:
        executed[0] += 1
        return job.payload

    workers = []
    for _ in range(args.workers):
        w = GearmanWorker([address], concurrency=1, **workerOptions)
        w.register(args.function, echo)
        w.register(args.function + "_warmup", echo)
        workers.append(w)
    clients = [GearmanClient([address]) for _ in range(args.clients)]
    for s in workers + clients:
        await s.connect()
    pattern = makePattern(args.size + 256)
    if args.warmup:
        await runLoad(reactor, clients, args.function + "_warmup", args.warmup, args.depth,
                      args.size, pattern, args.timeout)
    executed[0] = 0
    result = await runLoad(reactor, clients, args.function, args.jobs, args.depth, args.size,
                           pattern, args.timeout)
    if executed[0] != args.jobs:
        raise Failed(f"workers ran {executed[0]} jobs for {args.jobs} submissions")
    result.update({"mode": "txgear-lib", "grab_ahead": not args.no_grab_ahead, "size": args.size, "workers": args.workers,
                   "clients": args.clients, "depth": args.depth,
                   "python": f"{sys.implementation.name} {sys.version.split()[0]}", "errors": 0})
    for s in clients + workers:
        await s.close()
    print(json.dumps(result), flush=True)


def loadArguments(description: str, function: str) -> argparse.ArgumentParser:
    """The options of scenario 7's shape, shared by this script and gear_bench.py."""
    ap = argparse.ArgumentParser(description=description)
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=4730)
    ap.add_argument("--function", default=function)
    ap.add_argument("--jobs", type=int, default=20000)
    ap.add_argument("--warmup", type=int, default=2000, help="jobs run first and not measured")
    ap.add_argument("--workers", type=int, default=4)
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--depth", type=int, default=8)
    ap.add_argument("--size", type=int, default=100)
    ap.add_argument("--timeout", type=float, default=60.0)
    return ap


def parseLoadArguments(ap: argparse.ArgumentParser) -> argparse.Namespace:
    """Parse C{ap} (from L{loadArguments}); payloads carry an 8-byte sequence number."""
    args = ap.parse_args()
    if args.size < 8:
        ap.error("--size must be at least 8")
    return args


def run() -> None:
    ap = loadArguments(__doc__.split("\n\n")[0], "bench_lib")
    ap.add_argument("--no-grab-ahead", action="store_true",
                    help="workers with grabAhead=False (one GRAB outstanding per connection)")
    args = parseLoadArguments(ap)

    from twisted.internet import task
    from twisted.internet.defer import Deferred

    status = [0]

    async def wrapped(reactor: Any) -> None:
        try:
            await main(reactor, args)
        except Failed as e:
            sys.stderr.write(f"client_bench: ERROR: {e}\n")
            status[0] = 2

    try:
        task.react(lambda reactor: Deferred.fromCoroutine(wrapped(reactor)))
    except SystemExit as e:
        if e.code not in (0, None):
            raise
    sys.exit(status[0])


if __name__ == "__main__":
    run()
