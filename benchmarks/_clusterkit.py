"""
The harness of issue 13's cluster tests (tests/test_integration_cluster.py)
and benchmark (benchmarks/cluster_bench.py): several C{twistd -n gearman
--cluster} processes of this tree sharing one fresh PostgreSQL schema, worker
processes per server that log every execution (those of
benchmarks/_chaoskit.py), pipelined submitters, and plain SQL on the shared
tables.

Built on L{_chaoskit} (server processes, worker pools, the store's clean-up);
every process started here is killed by its PID at exit. Needs psycopg (for
the SQL and the clean-up), so CPython only.
"""
from __future__ import annotations

import os
import re
import threading
import time
from typing import Any, Dict, List, Optional, Sequence, Tuple

HERE = os.path.dirname(os.path.abspath(__file__))

import _chaoskit as chaos  # noqa: E402
from _hostilekit import (  # noqa: E402
    CAN_DO, ERROR, JOB_CREATED, SUBMIT_JOB, SUBMIT_JOB_BG, WORK_COMPLETE, Conn, packet)

DSN = os.environ.get("TXGEAR_TEST_POSTGRESQL", "host=127.0.0.1 port=5432 dbname=test user=postgres")
CLUSTER = "c"
FUNCTION = chaos.FUNCTION


def postgresAvailable(dsn: str = DSN) -> bool:
    """Whether psycopg is installed and the database answers."""
    try:
        import psycopg

        psycopg.connect(dsn, connect_timeout=3).close()
        return True
    except Exception:
        return False


class Member:
    """One server of the cluster: its process, id, port, work directory and workers."""

    def __init__(self, serverId: str, port: int, workdir: str, options: List[str]) -> None:
        self.serverId = serverId
        self.port = port
        self.workdir = workdir
        self.process = chaos.ServerProc(port, workdir, options)
        self.pools: List[chaos.WorkerPool] = []

    def startWorkers(self, count: int, seed: int = 1) -> chaos.WorkerPool:
        """C{count} worker processes of L{FUNCTION} on this server, logging to its workdir."""
        directory = os.path.join(self.workdir, "workers%d" % len(self.pools))
        os.makedirs(directory, exist_ok=True)
        pool = chaos.WorkerPool(self.port, directory, count, 0.0, 600000, seed)
        pool.start()
        self.pools.append(pool)
        return pool

    def pauseWorkers(self, pause: bool = True) -> None:
        """SIGSTOP (or SIGCONT) its worker processes: busy workers, as with long jobs."""
        import signal

        for pool in self.pools:
            for process in pool.slots:
                if process is not None and process.poll() is None:
                    os.kill(process.pid, signal.SIGSTOP if pause else signal.SIGCONT)

    def stopWorkers(self) -> None:
        self.pauseWorkers(False)  # a stopped process would not die of SIGKILL until continued
        for pool in self.pools:
            pool.stop()

    def attempts(self) -> List[chaos.Attempt]:
        """Every execution its workers logged (the worker name says which pool)."""
        found: List[chaos.Attempt] = []
        for number in range(len(self.pools)):
            directory = os.path.join(self.workdir, "workers%d" % number)
            found += chaos.readLogs(directory)
        return found


class Cluster:
    """
    C{size} servers of one cluster on one fresh schema (dropped by L{close}).

    @param options: more C{twistd gearman} options for every server
        (C{--cluster-lease}, C{--cluster-poll}, ...).
    @param queueFor: the C{--queue} of a server, from its index and the
        shared one (to put a proxy in between), else the shared one.
    """

    def __init__(self, size: int, workdir: str, options: Sequence[str] = (),
                 queueFor: Any = None, dsn: str = DSN) -> None:
        self.dsn = dsn
        self.queue, self._dropSchema = chaos.storeSpec("postgresql", workdir, dsn=dsn)
        self.schema = self.queue.rsplit("schema=", 1)[1]
        self.members: List[Member] = []
        for index in range(size):
            serverId = "s%d" % (index + 1)
            queue = queueFor(index, self.queue) if queueFor is not None else self.queue
            directory = os.path.join(workdir, serverId)
            os.makedirs(directory, exist_ok=True)
            argv = ["--queue", queue, "--cluster", CLUSTER, "--cluster-id", serverId] + list(options)
            self.members.append(Member(serverId, chaos.freePortNumber(), directory, argv))

    def start(self) -> "Cluster":
        """Start every server at once; returns when all listen."""
        failures: List[BaseException] = []

        def one(member: Member) -> None:
            try:
                member.process.start()
            except BaseException as e:  # noqa: BLE001 - re-raised below
                failures.append(e)
        threads = [threading.Thread(target=one, args=(m,)) for m in self.members]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(120)
        if failures:
            raise failures[0]
        return self

    def close(self) -> None:
        """Stop workers and servers (by PID), then drop the schema."""
        for member in self.members:
            member.stopWorkers()
        for member in self.members:
            member.process.stop()
        self._dropSchema()

    # SQL -------------------------------------------------------------------

    @property
    def table(self) -> str:
        return f'"{self.schema}".txgear_cluster_jobs'

    def sql(self, statement: str, params: Any = None) -> Any:
        """One autocommit statement; its rows, or its row count."""
        import psycopg

        with psycopg.connect(self.dsn, autocommit=True) as connection:
            cursor = connection.execute(statement, params)
            return cursor.fetchall() if cursor.description else cursor.rowcount

    def jobsLeft(self) -> int:
        """Rows of the shared queue (queued or claimed)."""
        return int(self.sql(f"SELECT count(*) FROM {self.table}")[0][0])

    def heldBy(self, serverId: str) -> Dict[int, bool]:
        """The keys of the jobs C{serverId} holds claimed, and whether each was marked started."""
        return {int(key): bool(started) for key, started in self.sql(
            f"SELECT key, started FROM {self.table} WHERE state = 1 AND claimed_by = %s",
            (serverId,))}

    def xactCommits(self) -> int:
        """Transactions committed in the database so far (pg_stat_database)."""
        return int(self.sql("SELECT xact_commit FROM pg_stat_database"
                            " WHERE datname = current_database()")[0][0])

    def attempts(self) -> Dict[str, List[chaos.Attempt]]:
        """Every logged execution, by server id."""
        return {m.serverId: m.attempts() for m in self.members}


class LeaseWatcher(threading.Thread):
    """
    Reads the servers' rows every C{interval} seconds until stopped: the
    longest time each server went without renewing (by the database's
    clock), and every generation each held. A lease lost by a live server
    (its renewals late under load) shows as a gap of a lease or more and a
    new generation.
    """

    def __init__(self, cluster: "Cluster", interval: float = 0.25) -> None:
        threading.Thread.__init__(self, daemon=True)
        self.cluster = cluster
        self.interval = interval
        self.maxGap: Dict[str, float] = {}
        self.generations: Dict[str, List[int]] = {}
        #: (server id, new generation, monotonic time it was first seen), after the first.
        self.changes: List[Tuple[str, int, float]] = []
        self._halt = threading.Event()

    def run(self) -> None:
        import psycopg

        try:
            with psycopg.connect(self.cluster.dsn, autocommit=True) as connection:
                query = (f'SELECT id, generation, extract(epoch FROM now() - renewed_at)'
                         f' FROM "{self.cluster.schema}".txgear_servers')
                while not self._halt.wait(self.interval):
                    try:
                        rows = connection.execute(query).fetchall()
                    except psycopg.errors.UndefinedTable:
                        continue
                    for serverId, generation, age in rows:
                        self.maxGap[serverId] = max(self.maxGap.get(serverId, 0.0), float(age))
                        seen = self.generations.setdefault(serverId, [])
                        if not seen or seen[-1] != generation:
                            if seen:
                                self.changes.append((serverId, int(generation), time.monotonic()))
                            seen.append(int(generation))
        except Exception:  # noqa: BLE001 - an instrument only; the schema may be gone
            return

    def stop(self) -> None:
        self._halt.set()
        self.join(5)

    def text(self) -> str:
        return ", ".join(f"{s}: longest renewal gap {self.maxGap[s]:.2f} s, generations "
                         f"{self.generations.get(s)}" for s in sorted(self.maxGap))


def keyOf(handle: str) -> int:
    """The shared queue's key of a cluster handle C{H:<cluster>:<key>}."""
    return int(handle.rsplit(":", 1)[1])


class Submitter(threading.Thread):
    """
    Pipelines background submissions of C{(unique, payload)} pairs to one
    server, C{window} in flight; C{handles} maps each payload to the handle
    from its JOB_CREATED, C{errors} holds ERROR replies, C{acked} the times.
    """

    def __init__(self, port: int, jobs: Sequence[Tuple[bytes, bytes]], window: int = 100,
                 function: str = FUNCTION, start: Optional[threading.Event] = None,
                 timeout: float = 60.0) -> None:
        threading.Thread.__init__(self, daemon=True)
        self.port = port
        self.jobs = list(jobs)
        self.window = window
        self.function = function.encode()
        self.startSignal = start
        self.timeout = timeout
        self.handles: Dict[bytes, str] = {}
        self.errors: List[Tuple[bytes, bytes]] = []
        self.failure: Optional[BaseException] = None
        #: Set once connected (and waiting for C{start}, if given).
        self.connected = threading.Event()

    def run(self) -> None:
        try:
            conn = Conn(self.port, timeout=self.timeout)
            self.connected.set()
            try:
                if self.startSignal is not None:
                    self.startSignal.wait(30)
                jobs = self.jobs
                for first in range(0, len(jobs), self.window):
                    batch = jobs[first:first + self.window]
                    conn.sendRaw(b"".join(packet(SUBMIT_JOB_BG, self.function, unique, payload)
                                          for unique, payload in batch))
                    for unique, payload in batch:
                        kind, args = conn.recv(self.timeout)
                        if kind == JOB_CREATED:
                            self.handles[payload] = args[0].decode()
                        elif kind == ERROR:
                            self.errors.append((args[0], args[1]))
                        else:
                            raise AssertionError(f"unexpected reply {kind} {args!r}")
            finally:
                conn.close()
        except BaseException as e:  # noqa: BLE001 - reported by the test
            self.failure = e


def submitRoundRobin(ports: Sequence[int], count: int, window: int = 100,
                     prefix: bytes = b"job-") -> List[Submitter]:
    """Job C{i} (payload C{prefix + i}, no unique) to server C{i % len(ports)}, all at once."""
    submitters = [Submitter(port, [(b"", prefix + b"%d" % i)
                                   for i in range(index, count, len(ports))], window)
                  for index, port in enumerate(ports)]
    for submitter in submitters:
        submitter.start()
    return submitters


def foregroundRoundTrip(port: int, function: bytes, timeout: float = 15.0) -> None:
    """
    One foreground job of C{function} through C{port}, run by a worker
    connection of this thread's own: proves foreground work flows.
    """
    from _hostilekit import GRAB_JOB, JOB_ASSIGN
    worker = Conn(port, timeout=timeout)
    client = Conn(port, timeout=timeout)
    try:
        worker.send(CAN_DO, function)
        client.send(SUBMIT_JOB, function, b"", b"ping")
        handle = client.expect(JOB_CREATED, timeout)[0]
        deadline = time.monotonic() + timeout
        while True:
            worker.send(GRAB_JOB)
            kind, args = worker.recv(timeout)
            if kind == JOB_ASSIGN:
                break
            if time.monotonic() > deadline:
                raise AssertionError("the foreground job was never assigned")
            time.sleep(0.05)
        assert args[0] == handle, (args, handle)
        worker.send(WORK_COMPLETE, handle, b"pong")
        assert client.expect(WORK_COMPLETE, timeout) == [handle, b"pong"]
    finally:
        worker.close()
        client.close()


_SHOW_LINE = re.compile(r"^(\S+)\t(\S+)\t([\d.]+)\t(\d+)\t(\d+)\t(\w+)$")


def showServers(port: int) -> Dict[str, Tuple[int, str]]:
    """C{show servers}: id -> (generation, state)."""
    rows: Dict[str, Tuple[int, str]] = {}
    for line in chaos.adminLine(port, "show servers").decode().splitlines():
        found = _SHOW_LINE.match(line)
        if found:
            rows[found.group(1)] = (int(found.group(5)), found.group(6))
    return rows


__all__ = ["CLUSTER", "Cluster", "DSN", "FUNCTION", "Member", "Submitter", "foregroundRoundTrip",
           "keyOf", "postgresAvailable", "showServers", "submitRoundRobin"]
