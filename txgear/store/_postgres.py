# -*- test-case-name: tests.test_store_contract -*-
"""
The PostgreSQL job store (C{--queue postgresql:<dsn>}), with psycopg 3 in the
store's own thread.

A batch is one transaction: one C{DELETE} of the keys it removes (by arrays of
keys), then one binary C{COPY} of the added rows straight into the jobs table.
A batch that is one statement alone (only adds: the C{COPY}; only removes: the
C{DELETE}) runs in autocommit mode, a transaction of its own without the
round trips of C{BEGIN} and C{COMMIT}: a burst of submits costs two round
trips, a burst of finished jobs one. An add of a key that is
already stored (a retried add) makes the C{COPY} fail on the primary key:
the batch is then written again, deleting the keys it adds first. A lost connection fails the
batch in flight with L{StoreError}; the next batch reconnects.

Schema version 4: C{<prefix>jobs(key bigint PRIMARY KEY, priority smallint,
function bytea, uniq bytea, payload bytea, run_at bigint, reducer bytea,
client_id bytea, attempts integer, retry_at bigint, last_error bytea)}, one
readable column per field (C{retry_at} in Unix milliseconds), and the dead
set C{<prefix>dead(key bigint PRIMARY KEY, priority, function, uniq,
reducer, client_id, attempts, last_error, died_at bigint (Unix ms), payload)},
indexed by C{(died_at, key)} and C{(function, died_at, key)}. A job moved
to the dead set is deleted from the jobs table and inserted into the dead
one in its batch's transaction; a retry moves it back in one transaction.
Schema version 5 adds kept results (C{keep:TTL} policies): C{<prefix>kept(key
bigint PRIMARY KEY, function, uniq, status text, kept boolean, size bigint,
finished_at bigint, expires_at bigint (Unix ms), result bytea)}, indexed by
C{(expires_at)} (expiry deletes a range of it); a kept result is inserted in
the transaction that deletes its job from the jobs table.
A version 2, 3 or 4 queue is migrated when opened, in one transaction: version
2 gets the three last columns of the jobs table (0, 0 and empty for the jobs
it holds), the tables it lacks (dead, kept) are created, and the version is set to 5.
"""
from __future__ import annotations

import re
from typing import Any, Dict, List, Optional, Tuple

from zope.interface import implementer

from txgear.errors import StoreError, StoreSchemaError
from txgear.interfaces import IJobStore
from txgear.jobs import DeadJob, KeptResult, StoredJob
from txgear.store._batch import Operation, ThreadedBatchStore, splitFinished
from txgear.store._record import Record, collapse, lastOfEachKey
from txgear.store._url import takeQueryOptions

SCHEMA_NAME = "txgear-queue"
SCHEMA_VERSION = 5

#: Older schema versions L{PostgresJobStore.open} migrates to L{SCHEMA_VERSION}.
MIGRATED_VERSIONS = ("2", "3", "4")

#: Options of a C{postgresql:} description that are txgear's, not libpq's.
STORE_OPTIONS = ("schema", "prefix")

_CHUNK_ROWS = 10000
#: The COPY types of a record's fields, in L{txgear.store._record.Record} order.
_COPY_TYPES = ["int8", "int2", "bytea", "bytea", "bytea", "int8", "bytea", "bytea", "int4", "int8",
               "bytea"]
_COLUMNS = ("key, priority, function, uniq, payload, run_at, reducer, client_id, attempts, "
            "retry_at, last_error")

_DEAD_COLUMNS = ("key, priority, function, uniq, reducer, client_id, attempts, last_error, "
                 "died_at, payload")
_DEAD_LISTED = ("key, function, uniq, priority, reducer, client_id, attempts, last_error, "
                "died_at, octet_length(payload)")

_KEPT_COLUMNS = "key, function, uniq, status, kept, size, finished_at, expires_at"

#: The columns of a job's record, after its key, as a table of jobs declares them.
JOB_COLUMNS_DDL = (
    "priority smallint NOT NULL, function bytea NOT NULL, uniq bytea NOT NULL,"
    " payload bytea NOT NULL, run_at bigint NOT NULL, reducer bytea NOT NULL,"
    " client_id bytea NOT NULL, attempts integer NOT NULL DEFAULT 0,"
    " retry_at bigint NOT NULL DEFAULT 0, last_error bytea NOT NULL DEFAULT ''::bytea")

_PAIR = re.compile(r"""\s*([A-Za-z_][A-Za-z0-9_]*)\s*=\s*('(?:[^'\\]|\\.)*'|[^\s']*)""")


def splitPostgresOptions(dsn: str) -> Tuple[str, Dict[str, str]]:
    """
    Take txgear's own options (C{schema}, C{prefix}) out of a libpq connection
    string, given as C{key=value} pairs or as a C{postgresql://} URL (where
    they are query parameters).

    @return: the connection string for libpq, and txgear's options.
    @raise ValueError: if C{dsn} cannot be parsed.
    """
    options: Dict[str, str] = {}
    if re.match(r"^postgres(ql)?://", dsn):
        return takeQueryOptions(dsn, STORE_OPTIONS)
    kept = []
    position = 0
    dsn = dsn.strip()
    while position < len(dsn):
        match = _PAIR.match(dsn, position)
        if match is None or match.end() == position:
            raise ValueError(f"cannot parse the PostgreSQL connection string at {dsn[position:]!r}")
        name, value = match.group(1), match.group(2)
        if name in STORE_OPTIONS:
            if value.startswith("'"):
                value = re.sub(r"\\(.)", r"\1", value[1:-1])
            options[name] = value
        else:
            kept.append(match.group(0).strip())
        position = match.end()
    return " ".join(kept), options


def connectionParams(conninfo: str, connectTimeout: int, applicationName: str) -> Dict[str, Any]:
    """
    The libpq parameters of C{conninfo}, with a connection timeout and an
    application name unless it sets them.

    @raise ValueError: if C{conninfo} is invalid.
    """
    import psycopg.conninfo
    try:
        params = psycopg.conninfo.conninfo_to_dict(conninfo)
    except psycopg.Error as e:
        raise ValueError(f"invalid PostgreSQL connection string: {e}") from e
    params.setdefault("connect_timeout", connectTimeout)
    params.setdefault("application_name", applicationName)
    return params


def dumpByteaAsBytes(connection: Any) -> None:
    """
    Have C{connection} dump C{bytea} values, where it looks them up by type
    (the C{COPY}'s C{set_types}), with its dumper of C{bytes}.

    psycopg registers the dumper of its DB-API C{Binary} wrapper for the
    C{bytea} type last, so that is the one a lookup by type finds: Python
    code that unwraps each value before calling the C{bytes} dumper. The
    payloads are C{bytes}; dumped directly (in C, with psycopg's binary
    build) a row of the job table costs about a quarter of the CPU.
    """
    from psycopg.adapt import PyFormat
    adapters = connection.adapters
    adapters.register_dumper(bytes, adapters.get_dumper(bytes, PyFormat.BINARY))


@implementer(IJobStore)
class PostgresJobStore(ThreadedBatchStore):
    """
    Background jobs in two tables of a PostgreSQL database:
    C{<schema>.<prefix>jobs} and C{<schema>.<prefix>meta}.

    Give each job server its own schema or prefix: every server loads all the
    jobs of its tables at start-up.
    """

    _threadName = "txgear-store-postgresql"

    def __init__(self, conninfo: str, reactor: Any = None, schema: str = "public",
                 prefix: str = "txgear_", connectTimeout: int = 10) -> None:
        """
        @param conninfo: a libpq connection string (C{host=... dbname=...}) or
            URL (C{postgresql://user@host/db}).
        @param reactor: the reactor; the global one by default.
        @param schema: the schema holding the tables, created if missing.
        @param prefix: the prefix of the table names.
        @param connectTimeout: seconds to wait for a connection, unless
            C{conninfo} sets C{connect_timeout}.
        @raise ValueError: if C{conninfo} is invalid.
        """
        ThreadedBatchStore.__init__(self, reactor)
        import psycopg.conninfo
        params = connectionParams(conninfo, connectTimeout, "txgear")
        self._conninfo = psycopg.conninfo.make_conninfo("", **params)
        self.schema = schema
        self.prefix = prefix
        shown = {k: ("***" if k == "password" else v) for k, v in params.items()
                 if k not in ("connect_timeout", "application_name")}
        self.description = "postgresql:" + psycopg.conninfo.make_conninfo("", **shown) + (
            f" schema={schema} prefix={prefix}")
        self._connection: Any = None
        self._sql: Dict[str, Any] = {}

    # Connection ------------------------------------------------------------

    def _connect(self) -> Any:
        import psycopg
        if self._connection is not None and not self._connection.closed:
            return self._connection
        self._connection = None
        try:
            connection = psycopg.connect(self._conninfo)
        except psycopg.Error as e:
            raise StoreError(f"{self.description}: cannot connect: {e}".strip()) from e
        dumpByteaAsBytes(connection)
        self._connection = connection
        return connection

    def _failed(self, e: Exception) -> StoreError:
        """
        Forget a broken connection (the next batch reconnects), roll back a
        usable one, and describe C{e}.
        """
        connection = self._connection
        if connection is not None:
            if getattr(connection, "broken", False) or connection.closed:
                self._connection = None
                try:
                    connection.close()
                except Exception:
                    pass
            else:
                try:
                    connection.rollback()
                except Exception:
                    self._connection = None
                    connection.close()
        return StoreError(f"{self.description}: {e.__class__.__name__}: {e}".strip())

    # Thread side ----------------------------------------------------------

    def _openInThread(self) -> List[StoredJob]:
        import psycopg
        from psycopg import sql
        jobs = sql.Identifier(self.schema, self.prefix + "jobs")
        meta = sql.Identifier(self.schema, self.prefix + "meta")
        dead = sql.Identifier(self.schema, self.prefix + "dead")
        kept = sql.Identifier(self.schema, self.prefix + "kept")
        columns = sql.SQL(_COLUMNS)
        deadColumns = sql.SQL(_DEAD_COLUMNS)
        self._sql = {
            "copy": sql.SQL("COPY {jobs} ({columns}) FROM STDIN (FORMAT BINARY)").format(
                jobs=jobs, columns=columns),
            "delete": sql.SQL("DELETE FROM {jobs} WHERE key = ANY(%s::int8[])").format(jobs=jobs),
            "bury": sql.SQL(
                "INSERT INTO {dead} ({columns}) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s)"
                " ON CONFLICT (key) DO UPDATE SET priority = EXCLUDED.priority,"
                " function = EXCLUDED.function, uniq = EXCLUDED.uniq,"
                " reducer = EXCLUDED.reducer, client_id = EXCLUDED.client_id,"
                " attempts = EXCLUDED.attempts, last_error = EXCLUDED.last_error,"
                " died_at = EXCLUDED.died_at, payload = EXCLUDED.payload").format(
                    dead=dead, columns=deadColumns),
            "list": sql.SQL("SELECT {columns} FROM {dead}").format(
                columns=sql.SQL(_DEAD_LISTED), dead=dead),
            "revive": sql.SQL(
                "DELETE FROM {dead} WHERE key = ANY(%s::int8[]) RETURNING key, function, uniq,"
                " payload, priority, reducer, client_id").format(dead=dead),
            "requeue": sql.SQL(
                "INSERT INTO {jobs} ({columns}) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)"
                " ON CONFLICT (key) DO NOTHING").format(jobs=jobs, columns=columns),
            "purge": sql.SQL("DELETE FROM {dead} WHERE key = ANY(%s::int8[])").format(dead=dead),
            "count": sql.SQL("SELECT count(*) FROM {dead}").format(dead=dead),
            "keep": sql.SQL(
                "INSERT INTO {kept} ({columns}) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s)"
                " ON CONFLICT (key) DO UPDATE SET function = EXCLUDED.function,"
                " uniq = EXCLUDED.uniq, status = EXCLUDED.status, kept = EXCLUDED.kept,"
                " size = EXCLUDED.size, finished_at = EXCLUDED.finished_at,"
                " expires_at = EXCLUDED.expires_at, result = EXCLUDED.result").format(
                    kept=kept, columns=sql.SQL(_KEPT_COLUMNS + ", result")),
            "listKept": sql.SQL("SELECT {columns} FROM {kept} ORDER BY finished_at DESC, key DESC"
                                ).format(columns=sql.SQL(_KEPT_COLUMNS), kept=kept),
            "getKept": sql.SQL("SELECT {columns}, result FROM {kept} WHERE key = %s").format(
                columns=sql.SQL(_KEPT_COLUMNS), kept=kept),
            "expireKept": sql.SQL("DELETE FROM {kept} WHERE expires_at <= %s").format(kept=kept),
            "purgeKept": sql.SQL("DELETE FROM {kept} WHERE key = ANY(%s::int8[])").format(
                kept=kept),
        }
        createKept = [sql.SQL(
            "CREATE TABLE IF NOT EXISTS {kept} ("
            " key bigint PRIMARY KEY,"
            " function bytea NOT NULL,"
            " uniq bytea NOT NULL,"
            " status text NOT NULL,"
            " kept boolean NOT NULL,"
            " size bigint NOT NULL,"
            " finished_at bigint NOT NULL,"
            " expires_at bigint NOT NULL,"
            " result bytea NOT NULL)").format(kept=kept),
            sql.SQL("CREATE INDEX IF NOT EXISTS {name} ON {kept} (expires_at)").format(
                name=sql.Identifier(self.prefix + "kept_by_expiry"), kept=kept)]
        createDead = [sql.SQL(
            "CREATE TABLE IF NOT EXISTS {dead} ("
            " key bigint PRIMARY KEY,"
            " priority smallint NOT NULL,"
            " function bytea NOT NULL,"
            " uniq bytea NOT NULL,"
            " reducer bytea NOT NULL,"
            " client_id bytea NOT NULL,"
            " attempts integer NOT NULL,"
            " last_error bytea NOT NULL,"
            " died_at bigint NOT NULL,"
            " payload bytea NOT NULL)").format(dead=dead),
            sql.SQL("CREATE INDEX IF NOT EXISTS {name} ON {dead} (died_at, key)").format(
                name=sql.Identifier(self.prefix + "dead_by_time"), dead=dead),
            sql.SQL("CREATE INDEX IF NOT EXISTS {name} ON {dead} (function, died_at, key)").format(
                name=sql.Identifier(self.prefix + "dead_by_function"), dead=dead)]
        connection = self._connect()
        try:
            with connection.cursor() as cursor:
                cursor.execute(
                    "SELECT table_name FROM information_schema.tables"
                    " WHERE table_schema = %s AND table_name IN (%s, %s)",
                    (self.schema, self.prefix + "meta", self.prefix + "jobs"))
                tables = {row[0] for row in cursor.fetchall()}
                if not tables:
                    cursor.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(
                        sql.Identifier(self.schema)))
                    cursor.execute(sql.SQL(
                        "CREATE TABLE {meta} (name text PRIMARY KEY, value text NOT NULL)"
                    ).format(meta=meta))
                    cursor.execute(sql.SQL(
                        "CREATE TABLE {jobs} (key bigint PRIMARY KEY, " + JOB_COLUMNS_DDL + ")"
                    ).format(jobs=jobs))
                    for statement in createDead + createKept:
                        cursor.execute(statement)
                    cursor.execute(sql.SQL("INSERT INTO {meta} (name, value) VALUES (%s, %s), (%s, %s)")
                                   .format(meta=meta),
                                   ("schema", SCHEMA_NAME, "version", str(SCHEMA_VERSION)))
                    connection.commit()
                elif self.prefix + "meta" not in tables:
                    raise StoreSchemaError(
                        f"{self.description}: the table {self.prefix}jobs exists without "
                        f"{self.prefix}meta: not a txgear queue; left untouched")
                cursor.execute(sql.SQL("SELECT name, value FROM {meta}").format(meta=meta))
                values = dict(cursor.fetchall())
                if values.get("schema") == SCHEMA_NAME and values.get("version") in MIGRATED_VERSIONS:
                    cursor.execute(sql.SQL(
                        "ALTER TABLE {jobs}"
                        " ADD COLUMN IF NOT EXISTS attempts integer NOT NULL DEFAULT 0,"
                        " ADD COLUMN IF NOT EXISTS retry_at bigint NOT NULL DEFAULT 0,"
                        " ADD COLUMN IF NOT EXISTS last_error bytea NOT NULL DEFAULT ''::bytea"
                    ).format(jobs=jobs))
                    for statement in createDead + createKept:
                        cursor.execute(statement)
                    cursor.execute(sql.SQL("UPDATE {meta} SET value = %s WHERE name = 'version'")
                                   .format(meta=meta), (str(SCHEMA_VERSION),))
                    connection.commit()
                    self._reactor.callFromThread(
                        self._log.info, "Job store {store}: schema migrated to version {version}",
                        store=self.description, version=SCHEMA_VERSION)
                    values["version"] = str(SCHEMA_VERSION)
                if values.get("schema") != SCHEMA_NAME or values.get("version") != str(SCHEMA_VERSION):
                    raise StoreSchemaError(
                        f"{self.description}: the queue has schema {values.get('schema')!r} "
                        f"version {values.get('version')}, this txgear reads {SCHEMA_NAME!r} "
                        f"version {SCHEMA_VERSION}; left untouched")
                cursor.execute(sql.SQL("SELECT {columns} FROM {jobs} ORDER BY priority, key").format(
                    columns=columns, jobs=jobs), binary=True)
                loaded = [StoredJob(key, bytes(function), bytes(unique), bytes(payload), priority,
                                    when, bytes(reducer), bytes(clientId), attempts, retryAt,
                                    bytes(lastError))
                          for (key, priority, function, unique, payload, when, reducer, clientId,
                               attempts, retryAt, lastError) in cursor]
            connection.commit()
            return loaded
        except StoreSchemaError:
            self._failed(Exception())
            raise
        except psycopg.Error as e:
            raise self._failed(e) from e

    def _writeInThread(self, operations: List[Operation]) -> None:
        import psycopg
        operations, dead, kept = splitFinished(operations)
        records, removed = collapse(operations)
        records = lastOfEachKey(records)
        connection = self._connect()
        try:
            replace = False
            if not (dead or kept or (records and removed)) and len(removed) <= _CHUNK_ROWS:
                # One statement (a COPY, or a DELETE): it commits on its own,
                # without the round trips of BEGIN and COMMIT.
                replace = not self._writeAlone(connection, records, removed)
                if not replace:
                    return
            try:
                self._writeBatch(connection, records, removed, replace=replace)
            except psycopg.errors.UniqueViolation:
                # An add of a key already stored (a retried add): write the
                # batch again, deleting the keys it adds first.
                connection.rollback()
                self._writeBatch(connection, records, removed, replace=True)
            if dead:
                with connection.cursor() as cursor:
                    cursor.executemany(self._sql["bury"], [
                        (d.key, d.priority, d.function, d.unique, d.reducer, d.clientId,
                         d.attempts, d.lastError, d.diedAt, d.payload) for d in dead])
            if kept:
                with connection.cursor() as cursor:
                    cursor.executemany(self._sql["keep"], [
                        (k.key, k.function, k.unique, k.status, k.kept, k.size, k.finishedAt,
                         k.expiresAt, k.result) for k in kept])
            connection.commit()
        except psycopg.Error as e:
            raise self._failed(e) from e

    def _writeAlone(self, connection: Any, records: List[Record], removed: List[int]) -> bool:
        """
        Write a batch that is one statement in autocommit mode.

        @return: C{False} if an added key is already stored (nothing was
            written: the batch must be written with C{replace}).
        """
        import psycopg
        connection.autocommit = True
        try:
            self._writeBatch(connection, records, removed, replace=False)
        except psycopg.errors.UniqueViolation:
            return False
        finally:
            if not connection.closed and not getattr(connection, "broken", False):
                connection.autocommit = False
        return True

    def _writeBatch(self, connection: Any, records: List[Record], removed: List[int],
                    replace: bool) -> None:
        """
        Delete C{removed} (and, if C{replace}, the keys of C{records}), then
        C{COPY} C{records} in; the caller commits.
        """
        keys = removed + [record[0] for record in records] if replace else removed
        with connection.cursor() as cursor:
            for start in range(0, len(keys), _CHUNK_ROWS):
                cursor.execute(self._sql["delete"], [keys[start:start + _CHUNK_ROWS]], binary=True)
            if records:
                with cursor.copy(self._sql["copy"]) as copy:
                    copy.set_types(_COPY_TYPES)
                    for record in records:
                        copy.write_row(record)

    def _closeInThread(self) -> None:
        connection, self._connection = self._connection, None
        if connection is not None:
            connection.close()

    # The dead set, in the store's thread -------------------------------------

    def _listDeadInThread(self, function: Optional[bytes],
                          limit: Optional[int]) -> List[DeadJob]:
        import psycopg
        from psycopg import sql
        query = self._sql["list"]
        args: List[Any] = []
        if function is not None:
            query = sql.SQL("{} WHERE function = %s").format(query)
            args.append(function)
        query = sql.SQL("{} ORDER BY died_at DESC, key DESC").format(query)
        if limit is not None:
            query = sql.SQL("{} LIMIT %s").format(query)
            args.append(limit)
        connection = self._connect()
        try:
            with connection.cursor() as cursor:
                cursor.execute(query, args, binary=True)
                listed = [DeadJob(key, bytes(fn), bytes(unique), b"", priority, bytes(reducer),
                                  bytes(clientId), attempts, bytes(lastError), diedAt, size)
                          for (key, fn, unique, priority, reducer, clientId, attempts, lastError,
                               diedAt, size) in cursor]
            connection.commit()
            return listed
        except psycopg.Error as e:
            raise self._failed(e) from e

    def _requeue(self, cursor: Any, revived: List[StoredJob]) -> None:
        """Queue dead jobs again, with fresh attempts, in the retry's transaction."""
        cursor.executemany(self._sql["requeue"], [
            (job.key, job.priority, job.function, job.unique, job.payload, 0,
             job.reducer, job.clientId, 0, 0, b"") for job in revived])

    def _retryDeadInThread(self, keys: List[int]) -> List[StoredJob]:
        import psycopg
        connection = self._connect()
        try:
            with connection.cursor() as cursor:
                cursor.execute(self._sql["revive"], [keys], binary=True)
                byKey = {key: StoredJob(key, bytes(fn), bytes(unique), bytes(payload), priority, 0,
                                        bytes(reducer), bytes(clientId))
                         for (key, fn, unique, payload, priority, reducer, clientId) in cursor}
                revived = [byKey[key] for key in keys if key in byKey]
                if revived:
                    self._requeue(cursor, revived)
            connection.commit()
            return revived
        except psycopg.Error as e:
            raise self._failed(e) from e

    def _purgeDeadInThread(self, keys: List[int]) -> int:
        import psycopg
        connection = self._connect()
        try:
            with connection.cursor() as cursor:
                cursor.execute(self._sql["purge"], [keys], binary=True)
                count = cursor.rowcount
            connection.commit()
            return int(count)
        except psycopg.Error as e:
            raise self._failed(e) from e

    def _countDeadInThread(self) -> int:
        import psycopg
        connection = self._connect()
        try:
            with connection.cursor() as cursor:
                cursor.execute(self._sql["count"])
                row = cursor.fetchone()
            connection.commit()
            return int(row[0])
        except psycopg.Error as e:
            raise self._failed(e) from e

    # Kept results, in the store's thread -----------------------------------------

    def _listKeptInThread(self, limit: Optional[int]) -> List[KeptResult]:
        from psycopg import sql
        query = self._sql["listKept"]
        args: List[Any] = []
        if limit is not None:
            query = sql.SQL("{} LIMIT %s").format(query)
            args.append(limit)
        rows = self._query(query, args)
        return [KeptResult(key, bytes(fn), bytes(unique), status, b"", finishedAt, expiresAt,
                           kept, size)
                for (key, fn, unique, status, kept, size, finishedAt, expiresAt) in rows]

    def _getKeptInThread(self, key: int) -> Optional[KeptResult]:
        rows = self._query(self._sql["getKept"], [key])
        if not rows:
            return None
        key, fn, unique, status, kept, size, finishedAt, expiresAt, result = rows[0]
        return KeptResult(key, bytes(fn), bytes(unique), status, bytes(result), finishedAt,
                          expiresAt, kept, size)

    def _expireKeptInThread(self, now: int) -> int:
        return self._delete(self._sql["expireKept"], [now])

    def _purgeKeptInThread(self, keys: List[int]) -> int:
        return self._delete(self._sql["purgeKept"], [keys])

    def _query(self, query: Any, args: List[Any]) -> List[Any]:
        import psycopg
        connection = self._connect()
        try:
            with connection.cursor() as cursor:
                cursor.execute(query, args, binary=True)
                rows = cursor.fetchall()
            connection.commit()
            return rows
        except psycopg.Error as e:
            raise self._failed(e) from e

    def _delete(self, query: Any, args: List[Any]) -> int:
        import psycopg
        connection = self._connect()
        try:
            with connection.cursor() as cursor:
                cursor.execute(query, args, binary=True)
                count = cursor.rowcount
            connection.commit()
            return int(count)
        except psycopg.Error as e:
            raise self._failed(e) from e
