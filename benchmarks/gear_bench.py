#!/usr/bin/env python3
"""
Measure the client and worker of the C{gear} library (PyPI C{gear}, the
threaded Gearman library of OpenDev) in scenario 7's shape, for comparison
with benchmarks/client_bench.py: --workers C{gear.Worker}s (one connection
each, one thread calling C{getJob}), --clients C{gear.Client}s (one
connection each) with --depth jobs in flight each, all in this one process,
against a job server (gearmand in the suite).

C{gear.Client.submitJob} blocks until C{JOB_CREATED}, so each job in flight
is a thread of its own (clients x depth submitting threads) that submits,
then waits for C{WORK_COMPLETE}; the client's packet handler
(C{handleWorkComplete}, overridden as gear's documentation suggests) wakes
it. The threads of one client take turns in C{submitJob} (a lock per
client): gear queues the request and sends its packet in two steps, so two
threads submitting at once on one connection can pair C{JOB_CREATED}s with
the wrong jobs (seen as swapped results).

gear leaves Nagle's algorithm on: a worker's C{GRAB_JOB_UNIQ}, sent right
after its C{WORK_COMPLETE}, then waits for the server's delayed ACK (40 ms),
and the run crawls at about 90 jobs/s. With --nodelay (run.py passes it)
this script sets C{TCP_NODELAY} on every gear socket once connected, as a
user tuning gear would, so the comparison is with gear at its best. Every job is checked as in client_bench.py (each completes exactly once,
with its payload intact); prints one JSON line like client_bench.py (jobs_per_s,
p50_us, p99_us, client_cpu_us_per_job: this process's CPU time per job);
exits 2 on a correctness error, 3 if C{gear} cannot be imported.

    python benchmarks/gear_bench.py --port 4730 --jobs 20000

Run by benchmarks/run.py as scenario 7 (the gear-lib column).
"""
from __future__ import annotations

import argparse
import json
import socket
import sys
import threading
import time
from typing import Any, Dict, List

from client_bench import Failed, cpuSeconds, loadArguments, makePattern, parseLoadArguments, summary


class _Waiter:
    """One submitting thread's wait for the result of its job in flight."""

    __slots__ = ("event", "result")

    def __init__(self) -> None:
        self.event = threading.Event()
        self.result: Any = None


def makeClientClass(gear: Any) -> Any:
    class BenchClient(gear.Client):
        """A gear client that wakes the submitting thread on each final packet."""

        def _wake(self, job: Any, result: Any) -> None:
            waiter = getattr(job, "waiter", None)
            if waiter is not None:
                waiter.result = result
                waiter.event.set()

        def handleWorkComplete(self, packet: Any) -> Any:
            job = super().handleWorkComplete(packet)
            self._wake(job, b"".join(job.data))
            return job

        def handleWorkFail(self, packet: Any) -> Any:
            job = super().handleWorkFail(packet)
            self._wake(job, Failed(f"job {job.handle!r} failed (WORK_FAIL)"))
            return job

        def handleWorkException(self, packet: Any) -> Any:
            job = super().handleWorkException(packet)
            self._wake(job, Failed(f"job {job.handle!r} raised {job.exception!r}"))
            return job

        def handleDisconnect(self, job: Any) -> Any:
            job = super().handleDisconnect(job)
            self._wake(job, Failed(f"job {job.handle!r}: connection lost"))
            return job

    return BenchClient


def runLoad(gear: Any, clients: List[Any], function: str, jobs: int, depth: int, size: int,
            pattern: bytes, timeout: float) -> Dict[str, Any]:
    lock = threading.Lock()
    state = {"next": 0, "completed": 0, "error": None}
    done = bytearray(jobs)
    latencies: List[float] = []

    def payloadFor(seq: int) -> bytes:
        off = seq % 251
        return seq.to_bytes(8, "little") + pattern[off:off + size - 8]

    def fail(message: str) -> None:
        with lock:
            if state["error"] is None:
                state["error"] = message

    def submitter(client: Any) -> None:
        waiter = _Waiter()
        while True:
            with lock:
                seq = state["next"]
                if seq >= jobs or state["error"] is not None:
                    return
                state["next"] = seq + 1
            payload = payloadFor(seq)
            job = gear.Job(function, payload)
            job.waiter = waiter
            waiter.event.clear()
            t0 = time.perf_counter()
            try:
                with client.submitLock:
                    client.submitJob(job, timeout=timeout)
            except Exception as e:
                fail(f"job {seq}: submitJob raised {e!r}")
                return
            if not waiter.event.wait(timeout):
                fail(f"job {seq}: no result within {timeout} s")
                return
            elapsed = time.perf_counter() - t0
            result = waiter.result
            if isinstance(result, Failed):
                fail(f"job {seq}: {result}")
                return
            if result != payload:
                fail(f"job {seq}: result of {len(result)} bytes differs from its "
                     f"{len(payload)}-byte payload")
                return
            with lock:
                if done[seq]:
                    state["error"] = state["error"] or f"job {seq} completed twice"
                    return
                done[seq] = 1
                state["completed"] += 1
                latencies.append(elapsed)

    threads = [threading.Thread(target=submitter, args=(client,), daemon=True)
               for client in clients for _ in range(depth)]
    cpu0 = cpuSeconds()
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - start
    cpu = cpuSeconds() - cpu0
    if state["error"] is not None:
        raise Failed(str(state["error"]))
    return summary(jobs, elapsed, cpu, done, latencies)


def main(args: argparse.Namespace) -> Dict[str, Any]:
    try:
        import gear
    except ImportError as e:
        sys.stderr.write(f"gear_bench: the gear library is not importable ({e})\n")
        raise SystemExit(3)

    executed = [0]
    counting = threading.Lock()
    stopping = threading.Event()

    def work(worker: Any) -> None:
        while not stopping.is_set():
            try:
                job = worker.getJob()
            except gear.InterruptedError:
                return
            with counting:
                executed[0] += 1
            job.sendWorkComplete(job.arguments)

    def tune(pool: Any) -> None:
        if args.nodelay:
            for connection in pool.active_connections:
                connection.conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    workers = []
    for i in range(args.workers):
        w = gear.Worker(f"gear-bench-worker-{i}")
        w.addServer(args.host, args.port)
        w.waitForServer(timeout=args.timeout)
        w.registerFunction(args.function)
        w.registerFunction(args.function + "_warmup")
        tune(w)
        workers.append(w)
    clientClass = makeClientClass(gear)
    clients = []
    for i in range(args.clients):
        c = clientClass(f"gear-bench-client-{i}")
        c.submitLock = threading.Lock()
        c.addServer(args.host, args.port)
        c.waitForServer(timeout=args.timeout)
        tune(c)
        clients.append(c)
    threads = [threading.Thread(target=work, args=(w,), daemon=True) for w in workers]
    for t in threads:
        t.start()
    try:
        pattern = makePattern(args.size + 256)
        if args.warmup:
            runLoad(gear, clients, args.function + "_warmup", args.warmup, args.depth, args.size,
                    pattern, args.timeout)
        with counting:
            executed[0] = 0
        result = runLoad(gear, clients, args.function, args.jobs, args.depth, args.size, pattern,
                         args.timeout)
        with counting:
            ran = executed[0]
        if ran != args.jobs:
            raise Failed(f"workers ran {ran} jobs for {args.jobs} submissions")
    finally:
        stopping.set()
        for c in clients:
            c.shutdown()
        for w in workers:
            w.shutdown()
    result.update({"mode": "gear-lib", "nodelay": args.nodelay, "gear": getattr(gear, "__version__", None) or _gearVersion(),
                   "size": args.size, "workers": args.workers, "clients": args.clients,
                   "depth": args.depth,
                   "python": f"{sys.implementation.name} {sys.version.split()[0]}", "errors": 0})
    return result


def _gearVersion() -> str:
    try:
        from importlib.metadata import version

        return version("gear")
    except Exception:
        return "?"


def run() -> None:
    ap = loadArguments(__doc__.split("\n\n")[0], "bench_gear")
    ap.add_argument("--nodelay", action="store_true",
                    help="set TCP_NODELAY on gear's sockets (gear leaves Nagle on)")
    args = parseLoadArguments(ap)
    try:
        result = main(args)
    except Failed as e:
        sys.stderr.write(f"gear_bench: ERROR: {e}\n")
        sys.exit(2)
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    run()
