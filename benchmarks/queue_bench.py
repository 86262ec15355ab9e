#!/usr/bin/env python3
"""
Background-submit throughput of the txgear server with each job store,
against ``--queue memory``, on fresh servers, alternating, several rounds.

    .venv/bin/python benchmarks/queue_bench.py         # memory, sqlite, postgresql, redis; 5 rounds
    .venv/bin/python benchmarks/queue_bench.py --queues memory,sqlite --rounds 3 --depth 1000
    .venv/bin/python benchmarks/queue_bench.py --drain    # then 4 workers drain those jobs

The load is benchmarks/loadgen's ``bgsubmit`` scenario (4 connections each
pipelining ``--depth`` SUBMIT_JOB_BG, 100,000 jobs of 100 bytes by default),
which checks that every job was acknowledged; with ``--drain``, loadgen's
``drain`` then has 4 workers empty the queue (each finished job is a store
removal), timed on its own. PostgreSQL (127.0.0.1:5432,
database test) and Redis (127.0.0.1:6379) get a schema or key prefix of their
own, removed afterwards. Prints medians, ranges and the ratio to memory.
Run it with the interpreter txgear is installed in: the PostgreSQL and Redis
clean-up uses their drivers.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import uuid
from typing import Callable, Dict, List

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import run  # noqa: E402  (benchmarks/run.py: servers, loadgen, /proc readings)


def queueDescription(kind: str, tmpdir: str, tag: str) -> str:
    if kind == "memory":
        return "memory"
    if kind == "sqlite":
        return f"sqlite:{os.path.join(tmpdir, tag + '.sqlite')}"
    if kind == "postgresql":
        return f"postgresql:host=127.0.0.1 port=5432 dbname=test user=postgres schema={tag}"
    if kind == "redis":
        return f"redis:redis://127.0.0.1:6379/0?prefix={tag}:"
    raise SystemExit(f"unknown queue {kind!r}")


def cleanUp(kind: str, tag: str) -> None:
    if kind == "postgresql":
        import psycopg

        with psycopg.connect("host=127.0.0.1 dbname=test user=postgres", autocommit=True) as c:
            c.execute(f'DROP SCHEMA IF EXISTS "{tag}" CASCADE')
    elif kind == "redis":
        import redis

        client = redis.Redis(host="127.0.0.1", port=6379)
        keys = list(client.scan_iter(match=f"{tag}:*"))
        if keys:
            client.delete(*keys)


def serverKind(python: str, queue: str) -> run.ServerKind:
    def argv(port: int) -> List[str]:
        return [python, "-m", "twisted", "--log-file=/dev/null", "gearman",
                f"--port=tcp:{port}:interface=127.0.0.1", "--queue", queue]
    return run.ServerKind("txgear", f"txgear --queue {queue.split(':')[0]}", argv,
                          env={"PYTHONPATH": run.ROOT})


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--queues", default="memory,sqlite,postgresql,redis")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--jobs", type=int, default=100000)
    parser.add_argument("--depth", type=int, default=100)
    parser.add_argument("--python", default=None, help="the interpreter for the server")
    parser.add_argument("--drain", action="store_true",
                        help="also time 4 workers draining the submitted jobs")
    args = parser.parse_args()
    run.buildLoadgen(os.environ.get("CC", "cc"))
    python = run.findCPython(args.python)
    kinds = args.queues.split(",")
    results: Dict[str, Dict[str, List[float]]] = {
        k: {"jobs/s": [], "cpu": [], "drain jobs/s": [], "drain cpu": []} for k in kinds}
    with tempfile.TemporaryDirectory(prefix="queue-bench-") as tmpdir:
        for round_ in range(args.rounds):
            for kind in kinds:
                tag = "qb" + uuid.uuid4().hex[:10]
                server = run.Server(serverKind(python, queueDescription(kind, tmpdir, tag)), tmpdir)
                try:
                    r = run.measured(server, "bgsubmit", "--conns", 4, "--depth", args.depth,
                                     "--jobs", args.jobs, "--size", 100)
                    if args.drain:
                        d = run.measured(server, "drain", "--no-fill", "--function",
                                         "bench_bgsubmit", "--jobs", args.jobs, "--workers", 4)
                finally:
                    server.stop()
                    cleanUp(kind, tag)
                results[kind]["jobs/s"].append(r["jobs_per_s"])
                results[kind]["cpu"].append(r["server_cpu_us_per_job"])
                run.log(f"round {round_ + 1} {kind}: {r['jobs_per_s']:,.0f} jobs/s, "
                        f"{r['server_cpu_us_per_job']:.1f} us CPU/job")
                if args.drain:
                    results[kind]["drain jobs/s"].append(d["jobs_per_s"])
                    results[kind]["drain cpu"].append(d["server_cpu_us_per_job"])
                    run.log(f"round {round_ + 1} {kind} drain: {d['jobs_per_s']:,.0f} jobs/s, "
                            f"{d['server_cpu_us_per_job']:.1f} us CPU/job")
    memory = run.median(results["memory"]["jobs/s"]) if "memory" in results else None
    print(f"\nbgsubmit: {args.jobs:,} jobs of 100 B, 4 connections x {args.depth} pipelined, "
          f"{args.rounds} rounds, median (range)\n")
    print("| queue | jobs/s | server CPU per job (us) | memory / this |")
    print("|---|---|---|---|")
    fmt: Callable[[List[float], str], str] = lambda xs, f: (
        f"{run.median(xs):{f}} ({min(xs):{f}}–{max(xs):{f}})")
    for kind in kinds:
        rate = results[kind]["jobs/s"]
        slower = f"{memory / run.median(rate):.2f}" if memory else "–"
        print(f"| {kind} | {fmt(rate, ',.0f')} | {fmt(results[kind]['cpu'], '.1f')} | {slower} |")
    if args.drain:
        memory = run.median(results["memory"]["drain jobs/s"]) if "memory" in results else None
        print(f"\ndrain: the same jobs, 4 workers\n")
        print("| queue | jobs/s | server CPU per job (us) | memory / this |")
        print("|---|---|---|---|")
        for kind in kinds:
            rate = results[kind]["drain jobs/s"]
            slower = f"{memory / run.median(rate):.2f}" if memory else "–"
            print(f"| {kind} | {fmt(rate, ',.0f')} | {fmt(results[kind]['drain cpu'], '.1f')} "
                  f"| {slower} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
