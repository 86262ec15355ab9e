"""
Background-job store throughput: memory vs SQLite vs PostgreSQL vs Redis.

Drives each L{IJobStore} directly with the real reactor, as the job server
would during a burst of background submits, and prints, per store:

  - burst: N single C{add} calls in one reactor turn, time until every
    Deferred fired;
  - many: the same N jobs as C{addMany} calls of C{--chunk} jobs, all in one
    turn;
  - stream: N single adds arriving C{--chunk} per reactor turn (as packets
    from many connections would), total time and ack latency p50/p99;
  - mstream: N jobs as one C{addMany} of C{--chunk} jobs per reactor turn
    (what the job server does: one call per turn), total time and ack
    latency p50/p99;
  - removes: N C{remove} calls in one turn (jobs completing);
  - single: latency of one C{add} on an idle store (median of 200);
  - reload: C{open()} of a fresh store over N stored jobs (server start-up);
  - the ratio of each time to memory's ("x mem").

Usage::

    python benchmarks/store_bench.py [--jobs 100000] [--stores memory,sqlite,postgresql,redis]
        [--postgresql "host=127.0.0.1 dbname=test user=postgres"]
        [--redis redis://127.0.0.1:6379/0] [--payload 64] [--chunk 400] [--sqlite-full]

Each store works in a namespace of its own (a temporary SQLite file, a
PostgreSQL schema, a Redis key prefix) removed at the end.
"""
from __future__ import annotations

import argparse
import gc
import os
import shutil
import statistics
import sys
import tempfile
import time
import uuid
from typing import Any, Callable, Dict, List

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from twisted.internet import defer, task  # noqa: E402

from txgear.jobs import Priority, StoredJob  # noqa: E402
from txgear.store import MemoryJobStore, PostgresJobStore, RedisJobStore, SQLiteJobStore  # noqa: E402


def out(line: str = "") -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


class Target:
    """Makes stores of one kind over one namespace, and removes it at the end."""

    def __init__(self, name: str, make: Callable[[], Any], drop: Callable[[], None]) -> None:
        self.name = name
        self.make = make
        self.drop = drop


def targets(reactor: Any, options: argparse.Namespace) -> List[Target]:
    made: List[Target] = []
    names = options.stores.split(",")
    if "memory" in names:
        shared: Dict[int, StoredJob] = {}
        made.append(Target("memory", lambda: MemoryJobStore(shared), shared.clear))
    if "sqlite" in names:
        directory = tempfile.mkdtemp(prefix="txgear-bench-")
        path = os.path.join(directory, "queue.sqlite")
        made.append(Target("sqlite", lambda: SQLiteJobStore(path, reactor=reactor),
                           lambda: shutil.rmtree(directory)))
        if options.sqlite_full:
            directory2 = tempfile.mkdtemp(prefix="txgear-bench-")
            path2 = os.path.join(directory2, "queue.sqlite")
            made.append(Target("sqlite-full", lambda: SQLiteJobStore(path2, reactor=reactor,
                                                                     synchronous="FULL"),
                               lambda: shutil.rmtree(directory2)))
    if "postgresql" in names:
        schema = "txgear_bench_" + uuid.uuid4().hex[:8]

        def dropSchema() -> None:
            import psycopg
            with psycopg.connect(options.postgresql, autocommit=True) as connection:
                connection.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
        made.append(Target("postgresql", lambda: PostgresJobStore(options.postgresql, reactor=reactor,
                                                                  schema=schema), dropSchema))
    if "redis" in names:
        prefix = "txgear-bench:" + uuid.uuid4().hex[:8] + ":"

        def dropKeys() -> None:
            import redis
            client = redis.Redis.from_url(options.redis)
            keys = list(client.scan_iter(match=prefix + "*"))
            if keys:
                client.delete(*keys)
            client.close()
        made.append(Target("redis", lambda: RedisJobStore(options.redis, reactor=reactor,
                                                          prefix=prefix), dropKeys))
    return made


def makeJobs(count: int, payloadSize: int, first: int) -> List[StoredJob]:
    """C{count} jobs with keys C{first}, C{first + 1}, ..."""
    payload = b"x" * payloadSize
    priorities = (Priority.NORMAL, Priority.NORMAL, Priority.HIGH, Priority.LOW)
    return [StoredJob(first + n, b"bench", b"", payload, priorities[n % 4]) for n in range(count)]


def allFired(deferreds: List[defer.Deferred]) -> defer.Deferred:
    """Fires when every Deferred has fired (fails on the first failure)."""
    return defer.gatherResults(deferreds, consumeErrors=True)


@defer.inlineCallbacks
def burst(store: Any, jobs: List[StoredJob], method: str) -> Any:
    call = getattr(store, method)
    start = time.perf_counter()
    deferreds = [call(j) for j in jobs]
    issued = time.perf_counter() - start
    yield allFired(deferreds)
    return issued, time.perf_counter() - start


@defer.inlineCallbacks
def burstMany(store: Any, jobs: List[StoredJob], chunk: int) -> Any:
    start = time.perf_counter()
    deferreds = [store.addMany(jobs[offset:offset + chunk]) for offset in range(0, len(jobs), chunk)]
    issued = time.perf_counter() - start
    yield allFired(deferreds)
    return issued, time.perf_counter() - start


@defer.inlineCallbacks
def streamMany(reactor: Any, store: Any, jobs: List[StoredJob], chunk: int) -> Any:
    latencies: List[float] = []
    deferreds: List[defer.Deferred] = []

    def acked(_: Any, sent: float, count: int) -> None:
        latencies.extend([time.perf_counter() - sent] * count)

    start = time.perf_counter()
    for offset in range(0, len(jobs), chunk):
        sent = time.perf_counter()
        batch = jobs[offset:offset + chunk]
        deferreds.append(store.addMany(batch).addCallback(acked, sent, len(batch)))
        yield task.deferLater(reactor, 0, lambda: None)
    yield allFired(deferreds)
    total = time.perf_counter() - start
    latencies.sort()
    return total, latencies[len(latencies) // 2], latencies[int(len(latencies) * 0.99)]


@defer.inlineCallbacks
def stream(reactor: Any, store: Any, jobs: List[StoredJob], chunk: int) -> Any:
    latencies: List[float] = []
    deferreds: List[defer.Deferred] = []

    def acked(_: Any, sent: float) -> None:
        latencies.append(time.perf_counter() - sent)

    start = time.perf_counter()
    for offset in range(0, len(jobs), chunk):
        sent = time.perf_counter()
        for j in jobs[offset:offset + chunk]:
            deferreds.append(store.add(j).addCallback(acked, sent))
        yield task.deferLater(reactor, 0, lambda: None)
    yield allFired(deferreds)
    total = time.perf_counter() - start
    latencies.sort()
    return total, latencies[len(latencies) // 2], latencies[int(len(latencies) * 0.99)]


@defer.inlineCallbacks
def single(store: Any, jobs: List[StoredJob]) -> Any:
    latencies = []
    for j in jobs:
        start = time.perf_counter()
        yield store.add(j)
        latencies.append(time.perf_counter() - start)
    for j in jobs:
        yield store.remove(j)
    return statistics.median(latencies)


@defer.inlineCallbacks
def measure(reactor: Any, target: Target, options: argparse.Namespace) -> Any:
    n = options.jobs
    jobs = makeJobs(n, options.payload, 1)
    many = makeJobs(n, options.payload, n + 1)
    streamed = makeJobs(n, options.payload, 2 * n + 1)
    mstreamed = makeJobs(n, options.payload, 3 * n + 1)
    store = target.make()
    yield store.open()
    issued, burstTime = yield burst(store, jobs, "add")
    removeIssued, removeTime = yield burst(store, jobs, "remove")
    manyIssued, manyTime = yield burstMany(store, many, options.chunk)
    yield allFired([store.remove(j) for j in many])
    streamTime, p50, p99 = yield stream(reactor, store, streamed, options.chunk)
    yield allFired([store.remove(j) for j in streamed])
    mstreamTime, mp50, mp99 = yield streamMany(reactor, store, mstreamed, options.chunk)
    singleLatency = yield single(store, makeJobs(200, options.payload, 4 * n + 1))
    yield store.close()
    reloadStore = target.make()
    start = time.perf_counter()
    loaded = yield reloadStore.open()
    reloadTime = time.perf_counter() - start
    assert len(loaded) == len(mstreamed), (len(loaded), len(mstreamed))
    yield allFired([reloadStore.remove(j) for j in mstreamed])
    yield reloadStore.close()
    return dict(issued=issued, burst=burstTime, manyIssued=manyIssued, many=manyTime,
                removes=removeTime, stream=streamTime, p50=p50, p99=p99, mstream=mstreamTime,
                mp50=mp50, mp99=mp99, single=singleLatency, reload=reloadTime)


@defer.inlineCallbacks
def main(reactor: Any, argv: List[str]) -> Any:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=100000)
    parser.add_argument("--payload", type=int, default=64, help="payload bytes per job")
    parser.add_argument("--chunk", type=int, default=400,
                        help="jobs per addMany call, and per reactor turn in the stream tests")
    parser.add_argument("--stores", default="memory,sqlite,postgresql,redis")
    parser.add_argument("--sqlite-full", action="store_true", help="also SQLite with synchronous=FULL")
    parser.add_argument("--postgresql", default=os.environ.get(
        "TXGEAR_TEST_POSTGRESQL", "host=127.0.0.1 dbname=test user=postgres"))
    parser.add_argument("--redis", default=os.environ.get("TXGEAR_TEST_REDIS", "redis://127.0.0.1:6379/0"))
    parser.add_argument("--gc", default="20000,50,100",
                        help="gc thresholds, as the job server sets them ('' keeps Python's)")
    options = parser.parse_args(argv)
    if options.gc:
        gc.set_threshold(*(int(n) for n in options.gc.split(",")))
    out(f"{options.jobs} background jobs, {options.payload}-byte payloads, Python "
        f"{sys.version.split()[0]}, {reactor.__class__.__name__}")
    results: Dict[str, Dict[str, float]] = {}
    for target in targets(reactor, options):
        try:
            results[target.name] = yield measure(reactor, target, options)
        except Exception as e:
            out(f"{target.name}: skipped ({e.__class__.__name__}: {e})")
        finally:
            target.drop()
    base = results.get("memory")

    def ratio(r: Dict[str, float], name: str) -> float:
        return r[name] / base[name] if base else float("nan")

    out()
    out("Single adds (N add() calls) and addMany (N/chunk calls of chunk jobs), seconds; "
        "x mem = time / memory's time")
    out(f"{'store':<12}{'burst s':>9}{'jobs/s':>10}{'x mem':>7}{'many s':>9}{'jobs/s':>10}"
        f"{'x mem':>7}{'stream s':>10}{'x mem':>7}{'mstream s':>10}{'jobs/s':>10}{'x mem':>7}")
    for name, r in results.items():
        out(f"{name:<12}{r['burst']:>9.3f}{options.jobs / r['burst']:>10.0f}{ratio(r, 'burst'):>7.2f}"
            f"{r['many']:>9.3f}{options.jobs / r['many']:>10.0f}{ratio(r, 'many'):>7.2f}"
            f"{r['stream']:>10.3f}{ratio(r, 'stream'):>7.2f}"
            f"{r['mstream']:>10.3f}{options.jobs / r['mstream']:>10.0f}{ratio(r, 'mstream'):>7.2f}")
    out()
    out(f"{'store':<12}{'issue s':>9}{'m-issue s':>10}{'remove s':>9}{'p50 ms':>8}{'p99 ms':>8}"
        f"{'m-p50 ms':>9}{'m-p99 ms':>9}{'1-add ms':>9}{'reload s':>9}")
    for name, r in results.items():
        out(f"{name:<12}{r['issued']:>9.3f}{r['manyIssued']:>10.3f}{r['removes']:>9.3f}"
            f"{r['p50'] * 1000:>8.1f}{r['p99'] * 1000:>8.1f}{r['mp50'] * 1000:>9.1f}"
            f"{r['mp99'] * 1000:>9.1f}{r['single'] * 1000:>9.2f}{r['reload']:>9.3f}")

if __name__ == "__main__":
    task.react(main, [sys.argv[1:]])
