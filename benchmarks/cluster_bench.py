#!/usr/bin/env python3
"""
Durable background jobs of a cluster (issue 13): 1, 2 and 3 txgear servers
sharing one PostgreSQL, next to a single server on the PostgreSQL store and
on the SQLite default. One command:

    python3 benchmarks/cluster_bench.py [--jobs 20000] [--rounds 3] [--probes 200]
        [--configs sqlite,postgresql,cluster1,cluster2,cluster3]

Per configuration and round (the configurations alternate within a round,
each on fresh servers and a fresh schema):

  - submit: C{loadgen bgsubmit}, 6 connections spread over the servers, 100
    submissions in flight each, no worker connected: jobs/s and the
    acknowledgement latency p50/p99 (JOB_CREATED comes once the job is
    durable);
  - drain: C{loadgen drain --no-fill}, 6 workers spread over the servers,
    every job seen exactly once: jobs/s;
  - end to end: C{--probes} background jobs one at a time, round-robin over
    the servers, a worker connected to every server: submit to JOB_ASSIGN,
    p50/p99; for 2 and 3 servers also with the only worker on another server
    than the one submitted to (the job crosses servers through the shared
    queue);
  - database work per job: the run has a database of its own (created and
    dropped here), so C{pg_stat_database.xact_commit} counts only its
    transactions (submit and drain phases, leases and polls included), and
    C{pg_stat_user_tables} its row writes.

Prints a Markdown table of medians and ranges. Needs PostgreSQL at
C{--postgresql} (a role that may create databases) and psycopg; builds
benchmarks/loadgen like benchmarks/run.py. Every process started here is
killed by its PID at exit.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from typing import Any, Dict, List, Sequence, Tuple

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import _chaoskit as chaos  # noqa: E402
import run as suite  # noqa: E402
from _hostilekit import (  # noqa: E402
    CAN_DO, JOB_CREATED, SUBMIT_JOB_BG, WORK_COMPLETE, Conn, installSignalHandlers, killStarted)

CONFIGS = ["sqlite", "postgresql", "cluster1", "cluster2", "cluster3"]
FUNCTION = "bench_cluster"


def log(message: str) -> None:
    sys.stderr.write(message + "\n")
    sys.stderr.flush()


class Database:
    """A database of this run's own (so its statistics are this run's), dropped at the end."""

    def __init__(self, dsn: str) -> None:
        import psycopg

        self.adminDsn = dsn
        self.name = "txgear_bench_" + uuid.uuid4().hex[:10]
        with psycopg.connect(dsn, autocommit=True) as connection:
            connection.execute(f'CREATE DATABASE "{self.name}"')
        params = dict(part.split("=", 1) for part in dsn.split())
        params["dbname"] = self.name
        self.dsn = " ".join(f"{k}={v}" for k, v in params.items())

    def query(self, statement: str) -> List[Tuple[Any, ...]]:
        import psycopg

        with psycopg.connect(self.dsn, autocommit=True) as connection:
            cursor = connection.execute(statement)
            return cursor.fetchall() if cursor.description else []

    def counters(self) -> Tuple[int, int]:
        """Transactions committed in this database, and rows written to its tables."""
        time.sleep(1.2)  # backends report their statistics about once a second
        import psycopg

        with psycopg.connect(self.dsn, autocommit=True) as connection:
            connection.execute("SELECT pg_stat_clear_snapshot()")
            commits = connection.execute("SELECT xact_commit FROM pg_stat_database WHERE"
                                         " datname = current_database()").fetchone()[0]
            rows = connection.execute("SELECT coalesce(sum(n_tup_ins + n_tup_upd + n_tup_del), 0)"
                                      " FROM pg_stat_user_tables").fetchone()[0]
        return int(commits), int(rows)

    def drop(self) -> None:
        import psycopg

        with psycopg.connect(self.adminDsn, autocommit=True) as connection:
            connection.execute(f'DROP DATABASE IF EXISTS "{self.name}" WITH (FORCE)')


def startServers(config: str, workdir: str, database: Database) -> Tuple[List[chaos.ServerProc], str]:
    """The servers of one configuration, started; and the schema they use (or "")."""
    schema = ""
    if config == "sqlite":
        optionsList = [["--queue", f"sqlite:{os.path.join(workdir, 'queue.sqlite')}"]]
    else:
        schema = "b" + uuid.uuid4().hex[:10]
        queue = f"postgresql:{database.dsn} schema={schema}"
        if config == "postgresql":
            optionsList = [["--queue", queue]]
        else:
            size = int(config[len("cluster"):])
            optionsList = [["--queue", queue, "--cluster", "bench", "--cluster-id", f"s{i + 1}"]
                           for i in range(size)]
    servers = []
    for number, options in enumerate(optionsList):
        directory = os.path.join(workdir, f"server{number}")
        os.makedirs(directory, exist_ok=True)
        server = chaos.ServerProc(chaos.freePortNumber(), directory, options)
        server.start()
        servers.append(server)
    return servers, schema


def loadgen(*args: Any, timeout: float = 600.0) -> Dict[str, Any]:
    argv = [suite.LOADGEN] + [str(a) for a in args]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed ({done.returncode}): {done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


class ProbeWorker(threading.Thread):
    """A worker on one server recording when each job was assigned (by payload)."""

    def __init__(self, port: int) -> None:
        threading.Thread.__init__(self, daemon=True)
        self.conn = Conn(port, timeout=30)
        self.conn.send(CAN_DO, FUNCTION.encode())
        self.assigned: Dict[bytes, float] = {}
        self.halt = threading.Event()

    def run(self) -> None:
        conn = self.conn
        try:
            while not self.halt.is_set():
                args = chaos.grabNext(conn, 0.2)
                if args is not None:
                    self.assigned[args[3]] = time.monotonic()
                    conn.send(WORK_COMPLETE, args[0], b"")
        except Exception:  # noqa: BLE001 - closed at the end of the probes
            return

    def stop(self) -> None:
        self.halt.set()
        self.join(2)
        self.conn.close()


def probe(submitPorts: Sequence[int], workerPorts: Sequence[int], count: int) -> List[float]:
    """Submit-to-assignment latencies (ms) of C{count} jobs sent one at a time."""
    workers = [ProbeWorker(port) for port in workerPorts]
    for worker in workers:
        worker.start()
    time.sleep(0.5)  # registered and asleep
    clients = [Conn(port, timeout=30) for port in submitPorts]
    latencies: List[float] = []
    try:
        for i in range(count):
            payload = b"probe-%d-%s" % (i, uuid.uuid4().hex.encode())
            sent = time.monotonic()
            client = clients[i % len(clients)]
            client.send(SUBMIT_JOB_BG, FUNCTION.encode(), b"", payload)
            client.expect(JOB_CREATED, 30)
            deadline = sent + 30
            while not any(payload in w.assigned for w in workers):
                if time.monotonic() > deadline:
                    raise RuntimeError("a probe job was never assigned")
                time.sleep(0.0005)
            at = min(w.assigned[payload] for w in workers if payload in w.assigned)
            latencies.append((at - sent) * 1000.0)
    finally:
        for client in clients:
            client.close()
        for worker in workers:
            worker.stop()
    return latencies


def percentile(values: List[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(p * len(ordered)))]


def measure(config: str, jobs: int, probes: int, database: Database) -> Dict[str, float]:
    workdir = tempfile.mkdtemp(prefix=f"txgear-cluster-bench-{config}-")
    servers, schema = startServers(config, workdir, database)
    ports = ",".join(str(s.port) for s in servers)
    out: Dict[str, float] = {}
    try:
        before = database.counters()
        submitted = loadgen("bgsubmit", "--port", ports, "--conns", 6, "--depth", 100,
                            "--jobs", jobs, "--function", FUNCTION, "--no-status",
                            "--expect-total", -1)
        middle = database.counters()
        drained = loadgen("drain", "--no-fill", "--port", ports, "--workers", 6, "--jobs", jobs,
                          "--function", FUNCTION, "--no-status")
        after = database.counters()
        out.update(submit_jobs_s=submitted["jobs_per_s"], ack_p50_ms=submitted["p50_us"] / 1000,
                   ack_p99_ms=submitted["p99_us"] / 1000, drain_jobs_s=drained["jobs_per_s"])
        if config != "sqlite":
            out.update(submit_xact_job=(middle[0] - before[0]) / jobs,
                       drain_xact_job=(after[0] - middle[0]) / jobs,
                       rows_job=(after[1] - before[1]) / jobs)
        serverPorts = [s.port for s in servers]
        local = probe(serverPorts, serverPorts, probes)
        out.update(e2e_p50_ms=percentile(local, 0.5), e2e_p99_ms=percentile(local, 0.99))
        if len(servers) > 1:
            remote = probe(serverPorts[1:], serverPorts[:1], probes)
            out.update(cross_p50_ms=percentile(remote, 0.5), cross_p99_ms=percentile(remote, 0.99))
    finally:
        for server in servers:
            server.stop()
        if schema:
            database.query(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
    return out


COLUMNS = [("submit_jobs_s", "submit jobs/s", "%.0f"), ("ack_p50_ms", "ack p50 ms", "%.1f"),
           ("ack_p99_ms", "ack p99 ms", "%.1f"), ("drain_jobs_s", "drain jobs/s", "%.0f"),
           ("e2e_p50_ms", "end-to-end p50 ms", "%.1f"), ("e2e_p99_ms", "end-to-end p99 ms", "%.1f"),
           ("cross_p50_ms", "other server p50 ms", "%.1f"),
           ("cross_p99_ms", "other server p99 ms", "%.1f"),
           ("submit_xact_job", "xacts/job submit", "%.3f"),
           ("drain_xact_job", "xacts/job drain", "%.3f"), ("rows_job", "rows written/job", "%.2f")]


def table(results: Dict[str, List[Dict[str, float]]]) -> str:
    header = "| config | " + " | ".join(label for _, label, _ in COLUMNS) + " |"
    lines = [header, "|" + "---|" * (len(COLUMNS) + 1)]
    for config, runs in results.items():
        cells = []
        for key, _, form in COLUMNS:
            values = [r[key] for r in runs if key in r]
            if not values:
                cells.append("")
                continue
            cell = form % statistics.median(values)
            if len(values) > 1:
                cell += " (" + form % min(values) + "–" + form % max(values) + ")"
            cells.append(cell)
        lines.append(f"| {config} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=20000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--probes", type=int, default=200)
    parser.add_argument("--configs", default=",".join(CONFIGS))
    parser.add_argument("--postgresql", default="host=127.0.0.1 port=5432 dbname=test user=postgres")
    parser.add_argument("--cc", default="cc")
    args = parser.parse_args()
    installSignalHandlers()
    suite.buildLoadgen(args.cc)
    configs = args.configs.split(",")
    database = Database(args.postgresql)
    results: Dict[str, List[Dict[str, float]]] = {c: [] for c in configs}
    try:
        for round_ in range(args.rounds):
            order = configs if round_ % 2 == 0 else list(reversed(configs))
            for config in order:
                log(f"round {round_ + 1}/{args.rounds}: {config}")
                result = measure(config, args.jobs, args.probes, database)
                log("  " + ", ".join(f"{k} {v:.3f}" for k, v in result.items()))
                results[config].append(result)
    finally:
        killStarted()
        database.drop()
    print(f"{args.jobs} jobs, {args.rounds} rounds, {args.probes} probes; "
          f"{os.cpu_count()} CPUs; medians (min–max)\n")
    print(table(results))


if __name__ == "__main__":
    main()
