# -*- test-case-name: tests.test_cluster_store -*-
"""
The shared queue of a cluster: background jobs of every server of one
cluster in one PostgreSQL table, C{<schema>.<prefix>cluster_jobs}, claimed by
the servers that run them (see docs/cluster.md).

A row is I{queued} (C{state = 0}: any server may claim it) or I{claimed}
(C{state = 1}) by one server under one lease generation. Every write about a
claimed row checks that this server still holds the lease it claimed the row
under (L{txgear.cluster.fenceCondition}, and the row's own C{claimed_by} and
C{claim_generation}): a server whose lease was lost writes nothing about the
jobs it held, which run again elsewhere (delivery is at least once).

The store keeps the single-server store's batching (one transaction per
reactor turn's writes, in its own thread): new jobs go in by binary C{COPY},
or, with a unique id, by one C{INSERT … ON CONFLICT DO NOTHING} per batch, so
that the same function and unique submitted to two servers is one job (the
table's constraint decides, not a race). The dead set and kept results are the
single-server store's tables of the same schema and prefix, shared by the
cluster's servers.
"""
from __future__ import annotations

import hashlib
import time
from typing import Any, Dict, Iterable, List, Optional, Set, Tuple

from twisted.internet.defer import Deferred
from zope.interface import implementer

from txgear.errors import StoreError, StoreSchemaError
from txgear.interfaces import IJobStore
from txgear.jobs import StoredJob
from txgear.store._batch import BURY, KEEP, Operation
from txgear.store._postgres import JOB_COLUMNS_DDL, PostgresJobStore

#: L{txgear.server._storequeue.StoreState.STORED} (not imported: stores do not depend on the server).
STORED = 2

# The advisory lock that serialises opening the tables.
_OPEN_LOCK = 0x7478_6765_6172_0002

#: Row states.
QUEUED, CLAIMED = 0, 1

#: The kind of the write that marks a claimed job as started (given to a worker).
STARTED = "started"

#: Keys are C{block << KEY_BITS | n}: each server takes a block of 2**32 keys
#: from one sequence, so handles are unique in the cluster without a round trip.
KEY_BITS = 32

_INSERT_COLUMNS = ("key, cluster, priority, function, uniq, payload, run_at, reducer, client_id,"
                   " attempts, retry_at, last_error, unique_key, queued_at, due_at, state,"
                   " claimed_by, claim_generation")
_COPY_TYPES = ["int8", "text", "int2", "bytea", "bytea", "bytea", "int8", "bytea", "bytea",
               "int4", "int8", "bytea", "bytea", "int8", "int8", "int2", "text", "int8"]
_CLAIMED_COLUMNS = ("key, priority, function, uniq, payload, run_at, reducer, client_id,"
                    " attempts, retry_at, last_error, lost")


class ClaimedJob(StoredJob):
    """
    A job this server claimed from the shared queue.

    @ivar lost: the server that ran it before died while it ran: that
        attempt ended as a lost worker's does (counted, retried or dead).
    """

    __slots__ = ("lost",)

    def __init__(self, *args: Any, lost: bool = False) -> None:
        StoredJob.__init__(self, *args)
        self.lost = lost


class RemoteStatus:
    """What the shared queue says of one job (GET_STATUS on another server)."""

    __slots__ = ("known", "running")

    def __init__(self, known: bool, running: bool) -> None:
        self.known = known
        self.running = running


def uniqueKey(unique: bytes, payload: bytes) -> Optional[bytes]:
    """
    The value of the C{unique_key} column: the unique id, C{None} for none,
    and for C{-} (coalesce by payload, as gearmand) a digest of the payload.
    """
    if not unique:
        return None
    if unique == b"-":
        return b"-\0" + hashlib.sha256(payload).digest() if payload else None
    return unique


@implementer(IJobStore)
class ClusterJobStore(PostgresJobStore):
    """
    The background jobs of one cluster, shared in PostgreSQL.

    @param membership: the L{txgear.cluster.Membership} whose lease fences
        every write about claimed jobs.
    @param decideClaim: called in the reactor thread with each new job of a
        batch, just before the batch is written: C{True} writes it claimed
        by this server (it runs here), C{False} queued for any server.
    @ivar keyBlock: the block of keys taken at open (see L{KEY_BITS}).
    @ivar channel: the LISTEN/NOTIFY channel of new queued jobs.
    """

    _threadName = "txgear-cluster-store"

    def __init__(self, conninfo: str, membership: Any, reactor: Any = None,
                 schema: str = "public", prefix: str = "txgear_",
                 connectTimeout: int = 10) -> None:
        PostgresJobStore.__init__(self, conninfo, reactor, schema, prefix, connectTimeout)
        self.membership = membership
        self.cluster: str = membership.cluster
        self.description += f" cluster={self.cluster}"
        self.channel = prefix + "jobs"
        self.keyBlock = 0
        self.decideClaim: Any = lambda job: True
        #: Called once the store is open (the coordinator starts), and when it starts closing.
        self.onOpened: Any = None
        self.onClosing: Any = None
        # Written queued (not run here), by key: read once when their batch is stored.
        self._unclaimed: Set[int] = set()
        # Jobs whose unique another job of the cluster holds: local key -> that key.
        self._coalesced: Dict[int, int] = {}
        # Keys of new jobs whose batch has not been answered yet.
        self._inserting: Set[int] = set()

    # Reactor side ----------------------------------------------------------

    def open(self) -> "Deferred[List[StoredJob]]":
        """
        Join the cluster (a failed join is retried by the membership at
        each renewal time), then open the tables; a cluster's store loads
        no jobs: this server claims them as its workers need them.
        """
        from twisted.internet.defer import maybeDeferred
        joined = maybeDeferred(self.membership.startService)
        joined.addErrback(lambda f: None)  # logged by the membership
        opened = joined.addCallback(lambda _: PostgresJobStore.open(self))

        def started(jobs: List[StoredJob]) -> List[StoredJob]:
            if self.onOpened is not None:
                self.onOpened()
            return jobs
        return opened.addCallback(started)

    def close(self) -> "Deferred[None]":
        """
        Stop claiming, give back the jobs claimed here but not started,
        write what is pending, leave the cluster, release everything.
        """
        if self.onClosing is not None:
            self.onClosing()
        released: Deferred[Any]
        if self._state == "open":
            released = self.releaseUnstarted()
            released.addErrback(lambda f: self._log.warn(
                "Giving back unstarted jobs failed: {error}", error=f.getErrorMessage()))
        else:
            from twisted.internet.defer import succeed
            released = succeed(None)
        released.addCallback(lambda _: PostgresJobStore.close(self))
        released.addCallback(lambda _: self.membership.stopService())
        return released.addCallback(lambda _: None)

    def addMany(self, jobs: Iterable[Any]) -> "Deferred[None]":
        """
        Queue new jobs (or the new retry state of jobs held here) for the
        next batch; each new job is written claimed by this server or
        queued for any, as L{decideClaim} says now.
        """
        records = []
        now = int(time.time() * 1000)
        decide = self.decideClaim
        unclaimed = self._unclaimed
        inserting = self._inserting
        for job in jobs:
            # A retry of a job held here (or whose insert is on its way).
            update = job.storeState == STORED or job.key in inserting
            if update:
                claimed = True
            else:
                claimed = bool(decide(job))
                inserting.add(job.key)
                if not claimed:
                    unclaimed.add(job.key)
            dueAt = max(job.when * 1000, job.retryAt)
            records.append((job.key, job.priority, job.function, job.unique, job.payload,
                            job.when, job.reducer, job.clientId, job.attempts, job.retryAt,
                            job.lastError, update, claimed, now, dueAt))
        return self._enqueue((True, records))

    def jobStarted(self, job: Any) -> "Deferred[None]":
        """Record that C{job} (claimed here) was given to a worker."""
        return self._enqueue((STARTED, job.key))

    def takeOutcome(self, key: int) -> Tuple[bool, Optional[int]]:
        """
        How the new job C{key} was written, once its batch is stored:
        whether it was written claimed by this server, and the key of the
        job of the cluster that holds its unique, if another one does.
        """
        self._inserting.discard(key)
        coalesced = self._coalesced.pop(key, None)
        if key in self._unclaimed:
            self._unclaimed.discard(key)
            return False, coalesced
        return coalesced is None, coalesced

    def forgetOutcome(self, key: int) -> None:
        """The batch of C{key} failed: nothing to read about it."""
        self._inserting.discard(key)
        self._unclaimed.discard(key)
        self._coalesced.pop(key, None)

    def claim(self, wanted: Dict[bytes, int]) -> "Deferred[Tuple[int, List[ClaimedJob]]]":
        """
        Claim up to C{wanted[function]} queued jobs of each function, due
        now, by priority then age, skipping rows other servers are claiming.

        @return: fires with the lease generation they are claimed under, and the jobs.
        """
        return self._deadCall(self._claimInThread, dict(wanted))

    def reclaim(self, deleteServersAfter: float) -> "Deferred[Tuple[int, int]]":
        """
        Return to the queue the claimed jobs of servers whose lease is not
        live (their generation is stale or expired); forget the rows of
        servers expired for more than C{deleteServersAfter} seconds.

        @return: fires with how many jobs came back, and how many of them
            had been started (they count an attempt when claimed again).
        """
        return self._deadCall(self._reclaimInThread, deleteServersAfter)

    def releaseUnstarted(self) -> "Deferred[int]":
        """Give the queued jobs this server claimed but never started back to the cluster."""
        return self._deadCall(self._releaseInThread)

    def remoteStatus(self, key: Optional[int], unique: Optional[bytes]) -> "Deferred[RemoteStatus]":
        """The shared queue's view of a job, by key or by unique."""
        return self._deadCall(self._statusInThread, key, unique)

    def queuedCounts(self) -> "Deferred[List[Tuple[bytes, int, int]]]":
        """Per function: jobs queued for any server, and jobs claimed by some server."""
        return self._deadCall(self._countsInThread)

    def heldCounts(self) -> "Deferred[Dict[str, int]]":
        """Per server id: the jobs it holds claimed."""
        return self._deadCall(self._heldInThread)

    def nextKeyBlock(self) -> "Deferred[int]":
        """Take a new block of keys (see L{KEY_BITS})."""
        return self._deadCall(self._keyBlockInThread)

    # Thread side -----------------------------------------------------------

    def _fence(self) -> Dict[str, Any]:
        generation = self.membership.generation
        if generation is None:
            from txgear.cluster._membership import LeaseLost
            raise LeaseLost(f"{self.description}: this server holds no lease of cluster"
                            f" {self.cluster!r}")
        return {"fence_cluster": self.cluster, "fence_server": self.membership.serverId,
                "fence_generation": generation}

    def _openInThread(self) -> List[StoredJob]:
        # Members starting together would race to create the same tables.
        connection = self._connect()
        connection.execute("SELECT pg_advisory_lock(%s)", (_OPEN_LOCK,))
        connection.commit()
        try:
            return self._openLockedInThread()
        finally:
            if self._connection is not None and not self._connection.closed:
                self._connection.rollback()
                self._connection.execute("SELECT pg_advisory_unlock(%s)", (_OPEN_LOCK,))
                self._connection.commit()

    def _openLockedInThread(self) -> List[StoredJob]:
        from psycopg import sql

        from txgear.cluster._membership import fenceCondition
        single = PostgresJobStore._openInThread(self)
        if single:
            raise StoreSchemaError(
                f"{self.description}: {self.schema}.{self.prefix}jobs holds {len(single)} jobs of"
                f" a single server's queue; give the cluster its own schema or prefix")
        table = sql.Identifier(self.schema, self.prefix + "cluster_jobs")
        servers = sql.Identifier(self.schema, self.prefix + "servers")
        blocks = sql.Identifier(self.schema, self.prefix + "key_block")
        fence = fenceCondition(self.schema, self.prefix)
        mine = sql.SQL("claimed_by = %(fence_server)s AND claim_generation = %(fence_generation)s")

        def name(suffix: str) -> Any:
            return sql.Identifier(self.prefix + suffix)
        statements = [
            sql.SQL("CREATE SEQUENCE IF NOT EXISTS {blocks}").format(blocks=blocks),
            sql.SQL(
                "CREATE TABLE IF NOT EXISTS {table} ("
                " key bigint PRIMARY KEY,"
                " cluster text NOT NULL, " + JOB_COLUMNS_DDL + ","
                " unique_key bytea,"
                " queued_at bigint NOT NULL,"
                " due_at bigint NOT NULL,"
                " state smallint NOT NULL,"
                " claimed_by text,"
                " claim_generation bigint,"
                " started boolean NOT NULL DEFAULT false,"
                " lost boolean NOT NULL DEFAULT false,"
                " UNIQUE (cluster, function, unique_key))").format(table=table),
            sql.SQL("CREATE INDEX IF NOT EXISTS {index} ON {table}"
                    " (cluster, function, priority, queued_at) WHERE state = 0").format(
                        index=name("cluster_jobs_queued"), table=table),
            sql.SQL("CREATE INDEX IF NOT EXISTS {index} ON {table}"
                    " (cluster, claimed_by, claim_generation) WHERE state = 1").format(
                        index=name("cluster_jobs_claimed"), table=table),
            sql.SQL("CREATE INDEX IF NOT EXISTS {index} ON {table}"
                    " (cluster, unique_key) WHERE unique_key IS NOT NULL").format(
                        index=name("cluster_jobs_unique"), table=table),
        ]
        connection = self._connect()
        import psycopg
        try:
            with connection.cursor() as cursor:
                for statement in statements:
                    cursor.execute(statement)
            connection.commit()
        except psycopg.Error as e:
            raise self._failed(e) from e
        self._sql.update({
            "copyCluster": sql.SQL("COPY {table} ({columns}) FROM STDIN (FORMAT BINARY)").format(
                table=table, columns=sql.SQL(_INSERT_COLUMNS)),
            "insertUnique": sql.SQL(
                "INSERT INTO {table} ({columns}) SELECT * FROM unnest("
                "%s::int8[], %s::text[], %s::int2[], %s::bytea[], %s::bytea[], %s::bytea[],"
                " %s::int8[], %s::bytea[], %s::bytea[], %s::int4[], %s::int8[], %s::bytea[],"
                " %s::bytea[], %s::int8[], %s::int8[], %s::int2[], %s::text[], %s::int8[])"
                " ON CONFLICT (cluster, function, unique_key) DO NOTHING RETURNING key").format(
                    table=table, columns=sql.SQL(_INSERT_COLUMNS)),
            "holderOfUnique": sql.SQL(
                "SELECT t.key FROM {table} t WHERE t.cluster = %s AND t.function = %s"
                " AND t.unique_key = %s").format(table=table),
            "notify": sql.SQL("SELECT pg_notify(%s, %s)"),
            # For transactions that change only claimed rows (claims, starts,
            # finishing): losing one in a crash of PostgreSQL runs a job again,
            # which at-least-once delivery allows; new jobs are always synced.
            "lazyCommit": sql.SQL("SET LOCAL synchronous_commit TO off"),
            "finish": sql.SQL("DELETE FROM {table} WHERE key = ANY(%(keys)s::int8[]) AND ").format(
                table=table) + mine + sql.SQL(" AND ") + fence + sql.SQL(" RETURNING key"),
            "started": sql.SQL("UPDATE {table} SET started = true WHERE key = ANY(%(keys)s::int8[])"
                               " AND ").format(table=table) + mine,
            "retried": sql.SQL(
                "UPDATE {table} SET attempts = %(attempts)s, retry_at = %(retry_at)s,"
                " last_error = %(last_error)s, due_at = %(due_at)s, started = false, lost = false"
                " WHERE key = %(key)s AND ").format(table=table) + mine + sql.SQL(" AND ") + fence,
            "claim": sql.SQL(
                "UPDATE {table} SET state = 1, claimed_by = %(fence_server)s,"
                " claim_generation = %(fence_generation)s"
                " WHERE key IN (SELECT key FROM {table} WHERE cluster = %(fence_cluster)s"
                " AND state = 0 AND function = %(function)s AND due_at <= %(now)s"
                " ORDER BY priority, queued_at LIMIT %(limit)s FOR UPDATE SKIP LOCKED) AND ").format(
                    table=table) + fence + sql.SQL(" RETURNING " + _CLAIMED_COLUMNS),
            "reclaim": sql.SQL(
                "UPDATE {table} t SET state = 0, claimed_by = NULL, claim_generation = NULL,"
                " lost = t.lost OR old.started, started = false"
                " FROM (SELECT key, started FROM {table} j WHERE j.cluster = %(cluster)s"
                " AND j.state = 1 AND NOT EXISTS (SELECT 1 FROM {servers} s"
                " WHERE s.cluster = j.cluster AND s.id = j.claimed_by"
                " AND s.generation = j.claim_generation AND s.lease_expires > now())"
                " FOR UPDATE SKIP LOCKED) old WHERE t.key = old.key RETURNING old.started").format(
                    table=table, servers=servers),
            "forgetServers": sql.SQL(
                "DELETE FROM {servers} WHERE cluster = %(cluster)s"
                " AND lease_expires < now() - make_interval(secs => %(after)s)").format(
                    servers=servers),
            "release": sql.SQL(
                "UPDATE {table} SET state = 0, claimed_by = NULL, claim_generation = NULL"
                " WHERE cluster = %(fence_cluster)s AND state = 1 AND NOT started AND ").format(
                    table=table) + mine,
            "statusByKey": sql.SQL("SELECT state, started FROM {table} WHERE key = %s"
                                   " AND cluster = %s").format(table=table),
            "statusByUnique": sql.SQL("SELECT state, started FROM {table} WHERE cluster = %s"
                                      " AND unique_key = %s LIMIT 1").format(table=table),
            "counts": sql.SQL("SELECT function, count(*) FILTER (WHERE state = 0),"
                              " count(*) FILTER (WHERE state = 1) FROM {table}"
                              " WHERE cluster = %s GROUP BY function ORDER BY function").format(
                                  table=table),
            "held": sql.SQL("SELECT claimed_by, count(*) FROM {table} WHERE cluster = %s"
                            " AND state = 1 GROUP BY claimed_by").format(table=table),
            "keyBlock": sql.SQL("SELECT nextval({blocks})").format(
                blocks=sql.Literal(blocks.as_string(connection))),
            "requeueCluster": sql.SQL(
                "INSERT INTO {table} ({columns}) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s,"
                " %s, %s, %s, %s, %s, %s, %s, %s) ON CONFLICT DO NOTHING").format(
                    table=table, columns=sql.SQL(_INSERT_COLUMNS)),
        })
        self.keyBlock = self._keyBlockInThread()
        return []

    def _keyBlockInThread(self) -> int:
        rows = self._query(self._sql["keyBlock"], [])
        block = int(rows[0][0])
        if block >= 1 << (63 - KEY_BITS):
            raise StoreError(f"{self.description}: the key blocks are used up")
        return block

    def _writeInThread(self, operations: List[Operation]) -> None:
        import psycopg
        inserts: List[Any] = []
        retried: Dict[int, Any] = {}
        started: Dict[int, bool] = {}
        finished: Dict[int, Any] = {}  # key -> None (done), DeadJob or KeptResult
        for kind, item in operations:
            if kind is True:
                for record in item:
                    key = record[0]
                    if record[11]:
                        retried[key] = record
                        started[key] = False
                    else:
                        inserts.append(record)
            elif kind is False:
                finished[item] = None
            elif kind == STARTED:
                started[item] = True
            elif kind == BURY or kind == KEEP:
                # A job both buried and kept: the dead set and the kept result are written.
                previous = finished.get(item.key)
                finished[item.key] = item if previous is None else (previous, item)
            else:
                raise AssertionError(f"unexpected operation {kind!r}")
        if self.membership.generation is None and not inserts:
            return  # nothing held here can be written about any more
        fence = self._fence()
        connection = self._connect()
        try:
            with connection.cursor() as cursor:
                if inserts and not self.membership.leaseValid():
                    # New jobs are refused (their submitters hear so) rather than
                    # written under a lease that may no longer be live. The local
                    # clock runs out before the database's, so no round trip is
                    # needed; a claimed row written under a lease that lapsed
                    # meanwhile is reclaimed by any member at once.
                    from txgear.cluster._membership import LeaseLost
                    raise LeaseLost(f"{self.description}: the lease of generation"
                                    f" {fence['fence_generation']} may have lapsed")
                if not inserts:
                    cursor.execute(self._sql["lazyCommit"])
                queuedAny, coalesced = self._insertInThread(cursor, inserts, fence)
                if retried:
                    cursor.executemany(self._sql["retried"], [dict(
                        fence, key=r[0], attempts=r[8], retry_at=r[9], last_error=r[10],
                        due_at=r[14]) for r in retried.values()])
                startedKeys = [key for key, value in started.items()
                               if value and key not in finished]
                if startedKeys:
                    cursor.execute(self._sql["started"], dict(fence, keys=startedKeys))
                if finished:
                    cursor.execute(self._sql["finish"], dict(fence, keys=list(finished)),
                                   binary=True)
                    gone = {row[0] for row in cursor.fetchall()}
                    self._recordFinished(cursor, [finished[key] for key in gone
                                                  if finished[key] is not None])
                if queuedAny:
                    cursor.execute(self._sql["notify"], (self.channel, self.cluster))
            connection.commit()
        except psycopg.Error as e:
            raise self._failed(e) from e
        # Read by the reactor once this batch's Deferred fires.
        self._coalesced.update(coalesced)

    def _insertInThread(self, cursor: Any, inserts: List[Any], fence: Dict[str, Any]
                        ) -> Tuple[bool, Dict[int, int]]:
        """
        Write new jobs; returns whether some were queued for any server, and
        the jobs whose unique another job holds (their key -> its key).
        """
        coalesced: Dict[int, int] = {}
        if not inserts:
            return False, coalesced
        server, generation = fence["fence_server"], fence["fence_generation"]
        cluster = self.cluster
        plain: List[Tuple[Any, ...]] = []
        unique: List[Tuple[Any, ...]] = []
        queuedAny = False
        for (key, priority, function, uniq, payload, when, reducer, clientId, attempts, retryAt,
             lastError, _, claimed, queuedAt, dueAt) in inserts:
            queuedAny = queuedAny or not claimed
            row = (key, cluster, priority, function, uniq, payload, when, reducer, clientId,
                   attempts, retryAt, lastError, uniqueKey(uniq, payload), queuedAt, dueAt,
                   CLAIMED if claimed else QUEUED, server if claimed else None,
                   generation if claimed else None)
            (unique if row[12] is not None else plain).append(row)
        if plain:
            with cursor.copy(self._sql["copyCluster"]) as copy:
                copy.set_types(_COPY_TYPES)
                for row in plain:
                    copy.write_row(row)
        if unique:
            cursor.execute(self._sql["insertUnique"], [list(column) for column in zip(*unique)])
            written = {row[0] for row in cursor.fetchall()}
            for row in unique:
                if row[0] in written:
                    continue
                cursor.execute(self._sql["holderOfUnique"], (cluster, row[3], row[12]))
                holder = cursor.fetchone()
                if holder is None:
                    # The holder finished in between: this job is new after all.
                    cursor.execute(self._sql["insertUnique"], [[value] for value in row])
                    if cursor.fetchone() is not None:
                        continue
                    cursor.execute(self._sql["holderOfUnique"], (cluster, row[3], row[12]))
                    holder = cursor.fetchone()
                    if holder is None:
                        raise StoreError(f"{self.description}: unique {row[4]!r} of"
                                         f" {row[3]!r} could not be settled")
                coalesced[row[0]] = int(holder[0])
        return queuedAny, coalesced

    def _recordFinished(self, cursor: Any, items: List[Any]) -> None:
        """The dead-set and kept-result rows of jobs whose fenced delete went through."""
        dead: List[Any] = []
        kept: List[Any] = []
        for item in items:
            for one in (item if isinstance(item, tuple) else (item,)):
                (dead if hasattr(one, "diedAt") else kept).append(one)
        if dead:
            cursor.executemany(self._sql["bury"], [
                (d.key, d.priority, d.function, d.unique, d.reducer, d.clientId,
                 d.attempts, d.lastError, d.diedAt, d.payload) for d in dead])
        if kept:
            cursor.executemany(self._sql["keep"], [
                (k.key, k.function, k.unique, k.status, k.kept, k.size, k.finishedAt,
                 k.expiresAt, k.result) for k in kept])

    def _claimInThread(self, wanted: Dict[bytes, int]) -> Tuple[int, List[ClaimedJob]]:
        import psycopg
        fence = self._fence()
        now = int(time.time() * 1000)
        claimed: List[ClaimedJob] = []
        connection = self._connect()
        try:
            with connection.cursor() as cursor:
                cursor.execute(self._sql["lazyCommit"])
                for function, limit in wanted.items():
                    if limit <= 0:
                        continue
                    cursor.execute(self._sql["claim"], dict(fence, function=function, now=now,
                                                             limit=limit), binary=True)
                    for (key, priority, fn, unique, payload, when, reducer, clientId, attempts,
                         retryAt, lastError, lost) in cursor.fetchall():
                        claimed.append(ClaimedJob(
                            key, bytes(fn), bytes(unique), bytes(payload), priority, when,
                            bytes(reducer), bytes(clientId), attempts, retryAt, bytes(lastError),
                            lost=lost))
            connection.commit()
        except psycopg.Error as e:
            raise self._failed(e) from e
        claimed.sort(key=lambda job: (job.priority, job.key))
        return fence["fence_generation"], claimed

    def _reclaimInThread(self, deleteServersAfter: float) -> Tuple[int, int]:
        import psycopg
        connection = self._connect()
        try:
            with connection.cursor() as cursor:
                cursor.execute(self._sql["reclaim"], {"cluster": self.cluster})
                rows = cursor.fetchall()
                if rows:
                    cursor.execute(self._sql["notify"], (self.channel, self.cluster))
                cursor.execute(self._sql["forgetServers"], {"cluster": self.cluster,
                                                            "after": deleteServersAfter})
            connection.commit()
        except psycopg.Error as e:
            raise self._failed(e) from e
        return len(rows), sum(1 for (wasStarted,) in rows if wasStarted)

    def _releaseInThread(self) -> int:
        import psycopg
        if self.membership.generation is None:
            return 0
        fence = self._fence()
        connection = self._connect()
        try:
            with connection.cursor() as cursor:
                cursor.execute(self._sql["release"], fence)
                count = cursor.rowcount
                if count:
                    cursor.execute(self._sql["notify"], (self.channel, self.cluster))
            connection.commit()
            return int(count)
        except psycopg.Error as e:
            raise self._failed(e) from e

    def _statusInThread(self, key: Optional[int], unique: Optional[bytes]) -> RemoteStatus:
        if key is not None:
            rows = self._query(self._sql["statusByKey"], [key, self.cluster])
        else:
            rows = self._query(self._sql["statusByUnique"], [self.cluster, unique])
        if not rows:
            return RemoteStatus(False, False)
        state, wasStarted = rows[0]
        return RemoteStatus(True, state == CLAIMED and bool(wasStarted))

    def _countsInThread(self) -> List[Tuple[bytes, int, int]]:
        return [(bytes(function), int(queued), int(claimed)) for function, queued, claimed
                in self._query(self._sql["counts"], [self.cluster])]

    def _heldInThread(self) -> Dict[str, int]:
        return {str(server): int(count)
                for server, count in self._query(self._sql["held"], [self.cluster])}

    def _requeue(self, cursor: Any, revived: List[StoredJob]) -> None:
        """Dead jobs come back claimed here: the server that retried them runs them."""
        fence = self._fence()
        now = int(time.time() * 1000)
        cursor.executemany(self._sql["requeueCluster"], [
            (job.key, self.cluster, job.priority, job.function, job.unique,
             job.payload, 0, job.reducer, job.clientId, 0, 0, b"",
             uniqueKey(job.unique, job.payload), now, 0, CLAIMED,
             fence["fence_server"], fence["fence_generation"]) for job in revived])


__all__ = ["ClaimedJob", "ClusterJobStore", "KEY_BITS", "RemoteStatus", "STARTED", "uniqueKey"]
