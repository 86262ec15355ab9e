# -*- test-case-name: tests.test_cluster_membership -*-
"""
A server's membership of a cluster: its row in C{<schema>.<prefix>servers},
a lease it renews, and the generation that fences it.

Leases are judged by the database's clock only (C{now()} in every statement):
servers on several machines never compare their own clocks, so clock skew
between them cannot make a live server look dead or a dead one live. The
injected local clock only says I{when} to renew, and how long this server may
trust its last renewal while the database cannot be reached (L{Membership.
leaseValid}: counted from before the renewal was sent, so it never outlasts
the lease the database granted).

Every join takes a new generation from one sequence (never reused, also after
a leave deleted the row). A renewal succeeds only for the current generation
of a lease that has not expired; otherwise the server is fenced (L{LeaseLost})
and must rejoin with a new generation, after dropping every job it held. Job
writes of part 2 carry L{fenceCondition}, so a stale generation writes nothing.

The psycopg calls run in a one-thread pool of the membership's own, on an
autocommit connection (each statement its own transaction: no session is
ever left idle in a transaction).
"""
from __future__ import annotations

from typing import Any, Callable, Dict, Iterable, List, NamedTuple, Optional, TypeVar

from twisted.application.service import Service
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.task import LoopingCall
from twisted.internet.threads import deferToThreadPool
from twisted.python.failure import Failure
from twisted.python.threadpool import ThreadPool

from txgear._admintext import END, escape
from txgear._log import logger
from txgear.errors import StoreError

_T = TypeVar("_T")

#: Seconds a lease lasts after each renewal, by default.
DEFAULT_LEASE = 6.0
#: Seconds between renewals, by default (three tries within one lease).
DEFAULT_RENEW_INTERVAL = 2.0

# Serialises the creation of the tables by members starting together.
_SCHEMA_LOCK = 0x7478_6765_6172_0001


class LeaseLost(StoreError):
    """
    This server's lease expired or was taken over: its generation is stale,
    and it holds nothing any more until it rejoins.
    """


class ServerIdInUse(StoreError):
    """
    Another server, at another address, holds a live lease under this id.
    """


class ServerInfo(NamedTuple):
    """One row of C{show servers}."""

    #: The server's id in its cluster.
    id: str
    #: The address it gives its clients and workers.
    address: str
    #: The generation of its current lease.
    generation: int
    #: Seconds since its last renewal, by the database's clock.
    leaseAge: float
    #: True if its lease has expired.
    expired: bool
    #: Background jobs it has claimed (0 until jobs are shared: part 2).
    jobsHeld: int


class Fence(NamedTuple):
    """
    What a job write of this server must prove: the server C{serverId} of
    C{cluster} still holds a live lease of C{generation}.
    """

    cluster: str
    serverId: str
    generation: int

    def params(self) -> Dict[str, Any]:
        """The named parameters of L{fenceCondition}."""
        return {"fence_cluster": self.cluster, "fence_server": self.serverId,
                "fence_generation": self.generation}


def _sqlNames(schema: str, prefix: str) -> Dict[str, Any]:
    from psycopg import sql
    return {"servers": sql.Identifier(schema, prefix + "servers"),
            "generations": sql.Identifier(schema, prefix + "lease_generation"),
            "schema": sql.Identifier(schema)}


def fenceCondition(schema: str = "public", prefix: str = "txgear_") -> Any:
    """
    The SQL condition a claimed job's write adds to its C{WHERE}: true only
    while the writer's lease (named parameters C{fence_cluster},
    C{fence_server}, C{fence_generation}: L{Fence.params}) is the current
    one and has not expired. A job write also checks the job's own
    C{claimed_by}/C{claim_generation} against the same values.

    @return: a C{psycopg.sql.Composed}.
    """
    from psycopg import sql
    return sql.SQL(
        "EXISTS (SELECT 1 FROM {servers} AS fence WHERE fence.cluster = %(fence_cluster)s"
        " AND fence.id = %(fence_server)s AND fence.generation = %(fence_generation)s"
        " AND fence.lease_expires > now())").format(**_sqlNames(schema, prefix))


def formatShowServers(rows: Iterable[ServerInfo]) -> bytes:
    """
    The reply to the admin command C{show servers}: per server
    C{ID\\tADDRESS\\tLEASE_AGE\\tJOBS_HELD\\tGENERATION\\tSTATE} (lease age
    in seconds with one decimal, state C{live} or C{expired}), then C{.}.
    Ids and addresses are escaped as every peer-given admin field.
    """
    lines = [b"%s\t%s\t%.1f\t%d\t%d\t%s\n" % (
        escape(row.id.encode("utf-8")), escape(row.address.encode("utf-8")),
        max(row.leaseAge, 0.0), row.jobsHeld, row.generation,
        b"expired" if row.expired else b"live") for row in rows]
    lines.append(END)
    return b"".join(lines)


def _settled(d: Deferred[Any]) -> Deferred[None]:
    """A Deferred that fires with C{None} once C{d} has fired, leaving C{d}'s result alone."""
    waiter: Deferred[None] = Deferred()

    def settled(result: Any) -> Any:
        waiter.callback(None)
        return result
    d.addBoth(settled)
    return waiter


class Membership(Service):
    """
    One server's membership of a cluster, as a service: C{startService}
    joins and starts renewing, C{stopService} stops renewing and leaves.

    @ivar generation: the generation of the lease held, or C{None} while
        not a member (before joining, after leaving or being fenced).
    @ivar onLeaseLost: called with the stale generation when a renewal finds
        the lease lost, before the membership rejoins: whoever holds jobs
        under that generation drops them there.
    """

    _log = logger()
    _threadName = "txgear-cluster"

    def __init__(self, conninfo: str, cluster: str, serverId: str, address: str,
                 reactor: Any = None, clock: Any = None, schema: str = "public",
                 prefix: str = "txgear_", lease: float = DEFAULT_LEASE,
                 renewInterval: float = DEFAULT_RENEW_INTERVAL,
                 connectTimeout: int = 10) -> None:
        """
        @param conninfo: a libpq connection string or URL.
        @param cluster: the cluster's name (servers of other clusters in the
            same tables are not seen).
        @param serverId: this server's stable id in the cluster.
        @param address: the address clients and workers use for it.
        @param reactor: runs the thread's results; the global one by default.
        @param clock: schedules renewals and measures local lease validity;
            C{reactor} by default.
        @param schema: the schema of the tables (created if missing).
        @param prefix: the prefix of the table names.
        @param lease: seconds a lease lasts after each renewal.
        @param renewInterval: seconds between renewals (less than C{lease}).
        @param connectTimeout: seconds to wait for a connection.
        @raise ValueError: on an invalid connection string, or a renewal
            interval not shorter than the lease.
        """
        if not 0 < renewInterval < lease:
            raise ValueError(f"the renewal interval ({renewInterval} s) must be shorter "
                             f"than the lease ({lease} s)")
        if reactor is None:
            from twisted.internet import reactor as globalReactor
            reactor = globalReactor
        import psycopg.conninfo

        from txgear.store._postgres import connectionParams
        self._conninfo = psycopg.conninfo.make_conninfo(
            "", **connectionParams(conninfo, connectTimeout, "txgear-cluster"))
        self._reactor = reactor
        self._clock = clock if clock is not None else reactor
        self.cluster = cluster
        self.serverId = serverId
        self.address = address
        self.schema = schema
        self.prefix = prefix
        self.lease = lease
        self.renewInterval = renewInterval
        self.generation: Optional[int] = None
        self.onLeaseLost: Optional[Callable[[int], None]] = None
        #: The most recent renewal (or rejoin) started by the timer.
        self.lastRenewal: Deferred[None] = succeed(None)
        self._validUntil = 0.0
        # Fires when the lease runs out by the local clock, unless renewed before.
        self._expiryCall: Any = None
        # The last generation reported lost (onLeaseLost is called once per generation).
        self._lostGeneration: Optional[int] = None
        self._connection: Any = None
        self._pool: Optional[ThreadPool] = None
        self._renewer: Optional[LoopingCall] = None
        self._sql: Dict[str, Any] = {}
        self._joining: Deferred[None] = succeed(None)

    # Public API ------------------------------------------------------------

    def fence(self) -> Fence:
        """
        The fence of the lease held now, for L{fenceCondition}.

        @raise LeaseLost: if this server holds no lease.
        """
        if self.generation is None:
            raise LeaseLost(f"server {self.serverId!r} of cluster {self.cluster!r} holds no lease")
        return Fence(self.cluster, self.serverId, self.generation)

    def leaseValid(self) -> bool:
        """
        Whether this server may still act on its lease by its own clock:
        true until C{lease} seconds after its last successful renewal was
        sent. Conservative: the database granted the lease later than that.
        """
        return self.generation is not None and self._clock.seconds() < self._validUntil

    def join(self) -> Deferred[int]:
        """
        Create the tables if missing and take a new lease generation for
        this server (a new row, or its old row taken over).

        @return: fires with the new generation; fails with L{ServerIdInUse}
            if a server at another address holds a live lease under this id,
            or L{StoreError} if the database cannot be reached.
        """
        sent = self._clock.seconds()
        d = self._inThread(self._joinInThread)

        def joined(generation: int) -> int:
            old, self.generation = self.generation, generation
            self._validUntil = sent + self.lease
            self._armExpiry()
            self._log.info("Joined cluster {cluster!r} as {server!r} (generation {generation},"
                           " previously {old})", cluster=self.cluster, server=self.serverId,
                           generation=generation, old=old)
            return generation
        return d.addCallback(joined)

    def renew(self) -> Deferred[None]:
        """
        Extend the lease by C{lease} seconds from the database's now.

        @return: fires once renewed; fails with L{LeaseLost} (and forgets the
            generation) if the lease had expired or was taken over, or with
            L{StoreError} if the database cannot be reached.
        """
        if self.generation is None:
            return fail(LeaseLost(f"server {self.serverId!r} holds no lease"))
        generation = self.generation
        sent = self._clock.seconds()
        d = self._inThread(self._renewInThread, generation)

        def renewed(granted: bool) -> None:
            if granted:
                if self.generation == generation:
                    self._validUntil = sent + self.lease
                    self._armExpiry()
                return
            if self.generation == generation:
                self.generation = None
                self._validUntil = 0.0
            raise LeaseLost(f"server {self.serverId!r} of cluster {self.cluster!r} lost its"
                            f" lease of generation {generation}")
        return d.addCallback(renewed)

    def leave(self) -> Deferred[None]:
        """
        Delete this server's row, if it still holds the lease of its
        generation (a stale process never deletes its successor's row).
        """
        generation, self.generation = self.generation, None
        self._validUntil = 0.0
        self._disarmExpiry()
        if generation is None or self._pool is None:
            return succeed(None)
        return self._inThread(self._leaveInThread, generation)

    def listServers(self) -> Deferred[List[ServerInfo]]:
        """
        The servers of this cluster, by id, with their lease age by the
        database's clock, expired ones included (a reaper of part 2 returns
        their jobs to the queue).
        """
        return self._inThread(self._listInThread, False)

    def expiredPeers(self) -> Deferred[List[ServerInfo]]:
        """The servers of this cluster whose lease has expired."""
        return self._inThread(self._listInThread, True)

    def showServers(self) -> Deferred[bytes]:
        """The admin reply to C{show servers} (L{formatShowServers})."""
        return self.listServers().addCallback(formatShowServers)

    def holdsLease(self, fence: Fence) -> Deferred[bool]:
        """Whether C{fence} passes L{fenceCondition} now."""
        return self._inThread(self._holdsInThread, fence)

    # IService --------------------------------------------------------------

    def startService(self) -> Deferred[Optional[int]]:  # type: ignore[override]
        """
        Join, then renew every C{renewInterval} seconds (a failed join is
        logged and tried again at each renewal time).

        @return: fires with the generation, or C{None} if joining failed.
        """
        Service.startService(self)
        d: Deferred[Optional[int]] = self.join()  # type: ignore[assignment]
        self._joining = _settled(d)

        def renewing(generation: Optional[int]) -> Optional[int]:
            if self.running:
                renewer = LoopingCall(self._tick)
                renewer.clock = self._clock
                self._renewer = renewer
                renewer.start(self.renewInterval, now=False)
            return generation
        d.addErrback(self._rejoinFailed)
        return d.addCallback(renewing)

    def stopService(self) -> Deferred[None]:  # type: ignore[override]
        """Stop renewing, leave, and release the connection and thread."""
        Service.stopService(self)
        self._disarmExpiry()
        if self._renewer is not None and self._renewer.running:
            self._renewer.stop()
        self._renewer = None
        d, self._joining = _settled(self._joining), succeed(None)
        d.addCallback(lambda _: _settled(self.lastRenewal))
        d.addCallback(lambda _: self.leave())
        d.addErrback(lambda f: self._log.failure(
            "Leaving cluster {cluster!r} failed", f, cluster=self.cluster))
        d.addBoth(lambda _: self._release())
        return d

    # Internals -------------------------------------------------------------

    def _tick(self) -> None:
        # Never returns the Deferred: a failed renewal must not stop the loop.
        if not self.lastRenewal.called:
            return
        if self.generation is None:
            self.lastRenewal = self.join().addCallbacks(lambda _: None, self._rejoinFailed)
            return
        generation = self.generation
        renewal: Deferred[Any] = self.renew()
        self.lastRenewal = renewal.addErrback(self._renewFailed, generation)

    def _armExpiry(self) -> None:
        self._disarmExpiry()
        self._expiryCall = self._clock.callLater(
            max(0.0, self._validUntil - self._clock.seconds()), self._expired)

    def _disarmExpiry(self) -> None:
        call, self._expiryCall = self._expiryCall, None
        if call is not None and call.active():
            call.cancel()

    def _expired(self) -> None:
        """
        No renewal went through for a whole lease (by the local clock, which
        runs out first): peers may be reclaiming this server's jobs already.
        The lease is given up as lost, never revived: what was held under it
        is dropped now, and the next tick rejoins with a new generation.
        """
        self._expiryCall = None
        generation = self.generation
        if generation is None or self.leaseValid():
            return
        self.generation = None
        self._validUntil = 0.0
        self._lost(generation, "not renewed in time")

    def _lost(self, generation: int, why: str) -> None:
        if generation == self._lostGeneration:
            return
        self._lostGeneration = generation
        self._log.warn("Lease of {server!r} (generation {generation}) lost ({why}): dropping what"
                       " it held and rejoining", server=self.serverId, generation=generation,
                       why=why)
        if self.onLeaseLost is not None:
            self.onLeaseLost(generation)

    def _renewFailed(self, reason: Failure, generation: int) -> Deferred[None]:
        if reason.check(LeaseLost):
            self._lost(generation, "expired or taken over")
            if self.running:
                # Chained: lastRenewal fires once the rejoin is through.
                return self.join().addCallbacks(lambda _: None, self._rejoinFailed)
            return succeed(None)
        self._log.warn("Renewing the lease of {server!r} failed: {error}",
                       server=self.serverId, error=reason.getErrorMessage())
        return succeed(None)

    def _rejoinFailed(self, reason: Failure) -> None:
        self._log.warn("Rejoining cluster {cluster!r} failed: {error}",
                       cluster=self.cluster, error=reason.getErrorMessage())

    def _inThread(self, function: Callable[..., _T], *args: Any) -> Deferred[_T]:
        if self._pool is None:
            pool = ThreadPool(minthreads=1, maxthreads=1, name=self._threadName)
            pool.start()
            self._pool = pool
        return deferToThreadPool(self._reactor, self._pool, self._guard, function, *args)

    def _release(self) -> Deferred[None]:
        pool, self._pool = self._pool, None
        if pool is None:
            return succeed(None)
        d = deferToThreadPool(self._reactor, pool, self._closeInThread)
        d.addBoth(lambda _: pool.stop())
        return d

    def _guard(self, function: Callable[..., _T], *args: Any) -> _T:
        try:
            return function(*args)
        except StoreError:
            raise
        except Exception as e:
            connection, self._connection = self._connection, None
            if connection is not None:
                try:
                    connection.close()
                except Exception:
                    pass
            raise StoreError(f"cluster {self.cluster!r}: {e.__class__.__name__}: {e}") from e

    # Thread side -----------------------------------------------------------

    def _connect(self) -> Any:
        import psycopg
        if self._connection is not None and not self._connection.closed:
            return self._connection
        self._connection = psycopg.connect(self._conninfo, autocommit=True)
        if not self._sql:
            self._prepareInThread(self._connection)
        return self._connection

    def _prepareInThread(self, connection: Any) -> None:
        from psycopg import sql
        names = _sqlNames(self.schema, self.prefix)
        with connection.transaction():
            connection.execute("SELECT pg_advisory_xact_lock(%s)", (_SCHEMA_LOCK,))
            connection.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {schema}").format(**names))
            connection.execute(sql.SQL("CREATE SEQUENCE IF NOT EXISTS {generations}")
                               .format(**names))
            connection.execute(sql.SQL(
                "CREATE TABLE IF NOT EXISTS {servers} ("
                " cluster text NOT NULL,"
                " id text NOT NULL,"
                " address text NOT NULL,"
                " generation bigint NOT NULL,"
                " joined_at timestamptz NOT NULL,"
                " renewed_at timestamptz NOT NULL,"
                " lease_expires timestamptz NOT NULL,"
                " PRIMARY KEY (cluster, id))").format(**names))
        columns = ("id, address, generation, extract(epoch FROM now() - renewed_at)::float8,"
                   " lease_expires <= now()")
        self._sql = {
            # Takes over the row of a restarted server (same address) or of an
            # expired lease; a live lease at another address is someone else.
            "join": sql.SQL(
                "INSERT INTO {servers} AS s (cluster, id, address, generation, joined_at,"
                " renewed_at, lease_expires) VALUES (%(cluster)s, %(id)s, %(address)s,"
                " nextval({seq}), now(), now(), now() + make_interval(secs => %(lease)s))"
                " ON CONFLICT (cluster, id) DO UPDATE SET address = EXCLUDED.address,"
                " generation = EXCLUDED.generation, joined_at = EXCLUDED.joined_at,"
                " renewed_at = EXCLUDED.renewed_at, lease_expires = EXCLUDED.lease_expires"
                " WHERE s.lease_expires <= now() OR s.address = EXCLUDED.address"
                " RETURNING generation").format(
                    servers=names["servers"],
                    seq=sql.Literal(names["generations"].as_string(connection))),
            "holder": sql.SQL("SELECT address, generation FROM {servers}"
                              " WHERE cluster = %s AND id = %s").format(**names),
            "renew": sql.SQL(
                "UPDATE {servers} SET renewed_at = now(),"
                " lease_expires = now() + make_interval(secs => %(lease)s)"
                " WHERE cluster = %(cluster)s AND id = %(id)s AND generation = %(generation)s"
                " AND lease_expires > now()").format(**names),
            "leave": sql.SQL("DELETE FROM {servers} WHERE cluster = %s AND id = %s"
                             " AND generation = %s").format(**names),
            "list": sql.SQL("SELECT " + columns + " FROM {servers} WHERE cluster = %s"
                            " ORDER BY id").format(**names),
            "expired": sql.SQL("SELECT " + columns + " FROM {servers} WHERE cluster = %s"
                               " AND lease_expires <= now() ORDER BY id").format(**names),
            "holds": sql.SQL("SELECT ") + fenceCondition(self.schema, self.prefix),
        }

    def _joinInThread(self) -> int:
        connection = self._connect()
        row = connection.execute(self._sql["join"], {
            "cluster": self.cluster, "id": self.serverId, "address": self.address,
            "lease": self.lease}).fetchone()
        if row is None:
            holder = connection.execute(self._sql["holder"], (self.cluster, self.serverId)
                                        ).fetchone()
            raise ServerIdInUse(
                f"cluster {self.cluster!r}: server id {self.serverId!r} is held by a live lease"
                f" at {holder[0] if holder else '?'!r} (generation"
                f" {holder[1] if holder else '?'}); give this server another id")
        return int(row[0])

    def _renewInThread(self, generation: int) -> bool:
        cursor = self._connect().execute(self._sql["renew"], {
            "cluster": self.cluster, "id": self.serverId, "generation": generation,
            "lease": self.lease})
        return bool(cursor.rowcount == 1)

    def _leaveInThread(self, generation: int) -> None:
        self._connect().execute(self._sql["leave"], (self.cluster, self.serverId, generation))

    def _listInThread(self, expiredOnly: bool) -> List[ServerInfo]:
        rows = self._connect().execute(self._sql["expired" if expiredOnly else "list"],
                                       (self.cluster,)).fetchall()
        return [ServerInfo(row[0], row[1], int(row[2]), float(row[3]), bool(row[4]), 0)
                for row in rows]

    def _holdsInThread(self, fence: Fence) -> bool:
        row = self._connect().execute(self._sql["holds"], fence.params()).fetchone()
        return bool(row[0])

    def _closeInThread(self) -> None:
        connection, self._connection = self._connection, None
        if connection is not None:
            connection.close()
