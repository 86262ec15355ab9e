# -*- test-case-name: tests.test_store_sqlite,tests.test_store_contract -*-
"""
The SQLite job store: the embedded default (C{--queue sqlite:PATH}).

Python's C{sqlite3} runs in the store's own thread. The file is in WAL mode
with C{synchronous=NORMAL}: a committed batch is in the write-ahead log before
C{add} fires, so it survives a crash or C{kill -9} of the server process; a
power failure or kernel crash may lose the last batches unless the store is
opened with C{synchronous="FULL"} (one C{fsync} per batch). The file is locked
exclusively while the store is open, so two servers cannot share one queue.

Schema version 4, a log: C{meta(name, value)} and C{log(seq INTEGER PRIMARY
KEY, kind INTEGER, data BLOB)}. A batch is one transaction appending at most
one row of removed keys (kind 1, L{txgear.store._record.packKeys}) and one
row of added records (kind 0, L{txgear.store._record.packBatch}); the two
are disjoint (L{txgear.store._record.collapse}), so their order within the
batch does not matter. Writing one row per batch instead of one per job
halves the store's cost per job: SQLite's B-tree insert and record encoding
ran once per job and were most of it.

Schema version 5 adds the dead set, a table of its own beside the log:
C{dead(key INTEGER PRIMARY KEY, priority, function BLOB, uniq BLOB, reducer
BLOB, client_id BLOB, attempts, last_error BLOB, died_at INTEGER (Unix ms),
payload_size, payload BLOB)}, indexed by C{(died_at, key)} and C{(function,
died_at, key)}; the payload is the last column, so listings never read it. A
job moved to the dead set is one batch: the log's removes row holds its key,
and its dead row is inserted in the same transaction. A retry deletes the
dead rows and appends an adds row to the log, in one transaction.

Schema version 6 adds kept results (C{keep:TTL} policies): C{kept(key
INTEGER PRIMARY KEY, function BLOB, uniq BLOB, status TEXT, kept INTEGER,
size INTEGER, finished_at INTEGER, expires_at INTEGER (Unix ms), result
BLOB)}, indexed by C{(expires_at, key)} (expiry deletes a range of it) and
C{(finished_at, key)}. A job whose result is kept is one batch: the log's
removes row holds its key, its kept row is inserted in the same transaction.
A version 5 file is migrated by creating the kept table.

Version 4 differs from 3 only in the records it writes (format 2: attempts,
retry time and last error). A version 3, 4 or 5 file is migrated when opened,
in one transaction: the tables it lacks (dead, kept) are created and the
version set to 6 (its format 1 records stay as they are and are still read). Nothing else is
rewritten; an older txgear then refuses the file instead of misreading it.

L{SQLiteJobStore.open} replays the log in C{seq} order (adds set a key,
removes delete it; the later of two adds of one key wins). Completed jobs
stay in the log until it is I{compacted}: once the dead entries (records
removed or replaced, and the removes themselves) outnumber both the live jobs
and C{compactThreshold}, the store rewrites the log, between two batches, in
one transaction: it replays the log from the file, deletes every row and
writes the live jobs back as rows of at most 1,000 records or 4 MiB. The
store only keeps counts for this (entries logged, jobs live: estimates between
compactions, exact after each), never the records.
"""
from __future__ import annotations

import errno
import os
import sqlite3
import time
from typing import Any, Callable, Dict, List, Optional, Tuple, TypeVar

from twisted.python.failure import Failure
from zope.interface import implementer

from txgear.errors import StoreError, StoreSchemaError
from txgear.interfaces import IJobStore
from txgear.jobs import DeadJob, KeptResult, StoredJob
from txgear.store._batch import Operation, ThreadedBatchStore, splitFinished
from txgear.store._record import (collapse, packBatch, packBatches, packKeys, recordOf,
                                  unpackBatch, unpackKeys)

_T = TypeVar("_T")

#: The name recorded in the C{meta} table, telling a txgear queue from any
#: other SQLite file.
SCHEMA_NAME = "txgear-queue"

#: The schema version this code reads and writes.
SCHEMA_VERSION = 6

#: Older schema versions L{SQLiteJobStore.open} migrates to L{SCHEMA_VERSION}.
MIGRATED_VERSIONS = ("3", "4", "5")

#: The C{kind} of a log row of added records.
ADDS = 0

#: The C{kind} of a log row of removed keys.
REMOVES = 1

#: Dead log entries (beyond the live jobs) that make compaction worthwhile.
COMPACT_THRESHOLD = 20000

_CREATE_DEAD = [
    "CREATE TABLE dead (key INTEGER PRIMARY KEY, priority INTEGER NOT NULL,"
    " function BLOB NOT NULL, uniq BLOB NOT NULL, reducer BLOB NOT NULL,"
    " client_id BLOB NOT NULL, attempts INTEGER NOT NULL, last_error BLOB NOT NULL,"
    " died_at INTEGER NOT NULL, payload_size INTEGER NOT NULL, payload BLOB NOT NULL)",
    "CREATE INDEX dead_by_time ON dead (died_at, key)",
    "CREATE INDEX dead_by_function ON dead (function, died_at, key)",
]
_CREATE_KEPT = [
    "CREATE TABLE kept (key INTEGER PRIMARY KEY, function BLOB NOT NULL, uniq BLOB NOT NULL,"
    " status TEXT NOT NULL, kept INTEGER NOT NULL, size INTEGER NOT NULL,"
    " finished_at INTEGER NOT NULL, expires_at INTEGER NOT NULL, result BLOB NOT NULL)",
    "CREATE INDEX kept_by_expiry ON kept (expires_at, key)",
    "CREATE INDEX kept_by_time ON kept (finished_at, key)",
]
_CREATE = [
    "CREATE TABLE meta (name TEXT PRIMARY KEY, value TEXT NOT NULL)",
    "CREATE TABLE log (seq INTEGER PRIMARY KEY, kind INTEGER NOT NULL, data BLOB NOT NULL)",
] + _CREATE_DEAD + _CREATE_KEPT
_INSERT_KEPT = "INSERT OR REPLACE INTO kept VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"
_KEPT_LISTED = "key, function, uniq, status, kept, size, finished_at, expires_at"
_INSERT_DEAD = "INSERT OR REPLACE INTO dead VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
_DEAD_LISTED = ("key, function, uniq, priority, reducer, client_id, attempts, last_error, "
                "died_at, payload_size")
_APPEND = "INSERT INTO log (kind, data) VALUES (?, ?)"
_READ = "SELECT seq, kind, data FROM log ORDER BY seq"

#: A batch's adds go in one row unless they pack to more than this (a burst
#: of large payloads in one turn), then in rows of about this size: SQLite
#: refuses values of more than 1e9 bytes.
_BATCH_ROW_BYTES = 64 * 1024 * 1024

#: The rows compaction writes.
_COMPACT_ROW_RECORDS = 1000
_COMPACT_ROW_BYTES = 4 * 1024 * 1024

_SYNCHRONOUS = ("NORMAL", "FULL")


def _deniedPath(path: str) -> Optional[Tuple[str, str]]:
    """
    The file SQLite needs (the database, and its write-ahead log beside it)
    that this process may not open for writing, with why; C{None} if both
    can be written. A probe file it creates is removed at once.
    """
    for candidate in (path, path + "-wal"):
        exists = os.path.exists(candidate)
        try:
            fd = os.open(candidate, os.O_RDWR | (0 if exists else os.O_CREAT | os.O_EXCL), 0o600)
        except OSError as e:
            if e.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
                return candidate, e.strerror or "permission denied"
            continue
        os.close(fd)
        if not exists:
            os.unlink(candidate)
    return None


def _loadOrder(job: StoredJob) -> Tuple[int, int]:
    return (job.priority, job.key)


@implementer(IJobStore)
class SQLiteJobStore(ThreadedBatchStore):
    """
    Background jobs in a SQLite file.

    @ivar path: the absolute path of the database file.
    """

    _threadName = "txgear-store-sqlite"

    def __init__(self, path: str, reactor: Any = None, synchronous: str = "NORMAL",
                 busyTimeout: float = 5.0, compactThreshold: int = COMPACT_THRESHOLD) -> None:
        """
        @param path: the database file, created if missing (its directory must
            exist); relative to the current directory.
        @param reactor: the reactor; the global one by default.
        @param synchronous: C{"NORMAL"} (survives a process crash) or
            C{"FULL"} (also survives a power failure; one C{fsync} per batch).
        @param busyTimeout: seconds to wait for a file another process holds.
        @param compactThreshold: the log is compacted once its dead entries
            outnumber both the live jobs and this.
        """
        ThreadedBatchStore.__init__(self, reactor)
        synchronous = synchronous.upper()
        if synchronous not in _SYNCHRONOUS:
            raise ValueError(f"synchronous must be NORMAL or FULL, not {synchronous!r}")
        self.path = os.path.abspath(path)
        self.description = f"sqlite:{self.path}"
        self._synchronous = synchronous
        self._busyTimeout = busyTimeout
        self._compactThreshold = compactThreshold
        self._connection: Optional[sqlite3.Connection] = None
        # Only the store's thread changes these (the reactor thread reads
        # and clears _compactionDue once the batch that set it is answered).
        self._logged = 0  # entries in the log: records added, keys removed
        self._live = 0  # jobs stored: exact after open or compaction, else estimated
        self._retryCompactionAt = 0  # after a failed compaction: wait for more entries
        self._compactionDue = False

    # In the store's thread -------------------------------------------------

    def _openInThread(self) -> List[StoredJob]:
        if sqlite3.sqlite_version_info < (3, 24, 0):
            raise StoreError(f"{self.description}: SQLite {sqlite3.sqlite_version} is too old (3.24+ needed)")
        directory = os.path.dirname(self.path)
        if not os.path.isdir(directory):
            raise StoreError(f"{self.description}: the directory {directory} does not exist")
        try:
            connection = sqlite3.connect(self.path, timeout=self._busyTimeout,
                                         isolation_level=None, check_same_thread=False)
        except sqlite3.Error as e:
            self._raiseIfPermissionDenied(e)
            raise StoreError(f"{self.description}: cannot open the file: {e}") from e
        self._connection = connection
        try:
            # Both only change this connection, never the file: everything is
            # checked and read before anything is written.
            connection.execute("PRAGMA locking_mode = EXCLUSIVE")
            connection.execute("PRAGMA query_only = ON")
            tables = {row[0] for row in connection.execute(
                "SELECT name FROM sqlite_master WHERE type = 'table'")}
            live: Dict[int, StoredJob] = {}
            logged = 0
            migrate = False
            if tables:
                migrate = self._checkSchema(connection, tables)
                try:
                    live, logged = _replay(connection)
                except StoreSchemaError as e:
                    raise StoreSchemaError(f"{self.description}: {e}; the file was left untouched") from e
            connection.execute("PRAGMA query_only = OFF")
            mode = connection.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            if mode.lower() != "wal":
                raise StoreError(f"{self.description}: cannot switch to WAL mode (got {mode!r})")
            connection.execute(f"PRAGMA synchronous = {self._synchronous}")
            if not tables:
                self._createSchema(connection)
            elif migrate:
                connection.execute("BEGIN IMMEDIATE")
                try:
                    if "dead" not in tables:
                        for statement in _CREATE_DEAD:
                            connection.execute(statement)
                    if "kept" not in tables:
                        for statement in _CREATE_KEPT:
                            connection.execute(statement)
                    connection.execute("UPDATE meta SET value = ? WHERE name = 'version'",
                                       (str(SCHEMA_VERSION),))
                    connection.execute("COMMIT")
                except BaseException:
                    if connection.in_transaction:
                        connection.execute("ROLLBACK")
                    raise
                self._reactor.callFromThread(
                    self._log.info, "Job store {store}: schema migrated to version {version}",
                    store=self.description, version=SCHEMA_VERSION)
            # Take the exclusive lock now, so a second server fails at start-up.
            connection.execute("BEGIN IMMEDIATE")
            connection.execute("COMMIT")
        except sqlite3.DatabaseError as e:
            message = str(e)
            self._raiseIfPermissionDenied(e)
            if isinstance(e, sqlite3.OperationalError) and "locked" in message:
                raise StoreError(f"{self.description}: the file is in use by another process "
                                 f"(another job server?): {message}") from e
            if isinstance(e, sqlite3.OperationalError) or "full" in message:
                raise StoreError(f"{self.description}: {message}") from e
            raise StoreSchemaError(f"{self.description}: not a readable txgear queue "
                                   f"(corrupt?): {message}; the file was left untouched") from e
        jobs = sorted(live.values(), key=_loadOrder)
        self._logged = logged
        self._live = len(jobs)
        if self._compactionWorthwhile():
            try:
                self._compact(connection, jobs)
            except StoreError as e:
                # The jobs were read; the log is only longer than it could be.
                self._reactor.callFromThread(
                    self._log.warn, "Compacting job store {store} failed (it stays as it was): "
                    "{error}", store=self.description, error=str(e))
        return jobs

    def _raiseIfPermissionDenied(self, error: Exception) -> None:
        """
        SQLite reports a file or directory it may not write as C{unable to
        open database file}, C{disk I/O error} or C{readonly database}: find
        out whether that is the cause, and say so with the path.

        @raise StoreError: permission is denied.
        """
        denied = _deniedPath(self.path)
        if denied is None:
            return
        where, reason = denied
        directory = os.path.dirname(self.path)
        raise StoreError(
            f"{self.description}: permission denied: cannot write {where} ({reason}); the queue "
            f"needs a file it may write in a directory it may write ({directory} here). Choose "
            f"another place with --queue sqlite:/a/writable/directory/queue.sqlite (a relative "
            f"path, and the default, are in the working directory)") from error

    def _checkSchema(self, connection: sqlite3.Connection, tables: set) -> bool:
        """
        Refuse a file that is not a readable txgear queue.

        @return: whether its schema version is an older one to migrate.
        """
        if "meta" not in tables:
            raise StoreSchemaError(
                f"{self.description}: this SQLite file is not a txgear queue (no meta table; "
                f"tables: {', '.join(sorted(tables))}); it was left untouched")
        meta = dict(connection.execute("SELECT name, value FROM meta"))
        if meta.get("schema") != SCHEMA_NAME:
            raise StoreSchemaError(
                f"{self.description}: this SQLite file is not a txgear queue "
                f"(schema {meta.get('schema')!r}); it was left untouched")
        version = meta.get("version")
        if version != str(SCHEMA_VERSION) and version not in MIGRATED_VERSIONS:
            raise StoreSchemaError(
                f"{self.description}: the queue has schema version {version}, this txgear "
                f"reads version {SCHEMA_VERSION}; the file was left untouched (run the txgear "
                f"version that wrote it, or move the file aside)")
        current = version == str(SCHEMA_VERSION)
        missing = next((name for name in ("log", "dead", "kept") if name not in tables
                        and (name == "log" or current)), None)
        if missing is not None:
            raise StoreSchemaError(
                f"{self.description}: the queue has no {missing} "
                f"table (tables: {', '.join(sorted(tables))}); the file was left untouched")
        check = [row[0] for row in connection.execute("PRAGMA quick_check")]
        if check != ["ok"]:
            raise StoreSchemaError(f"{self.description}: the file is corrupt ({'; '.join(check[:5])}); "
                                   f"it was left untouched")
        return version != str(SCHEMA_VERSION)

    def _createSchema(self, connection: sqlite3.Connection) -> None:
        connection.execute("BEGIN IMMEDIATE")
        try:
            for statement in _CREATE:
                connection.execute(statement)
            connection.executemany("INSERT INTO meta (name, value) VALUES (?, ?)",
                                   [("schema", SCHEMA_NAME), ("version", str(SCHEMA_VERSION))])
            connection.execute("COMMIT")
        except BaseException:
            connection.execute("ROLLBACK")
            raise

    def _writeInThread(self, operations: List[Operation]) -> None:
        # Disjoint sets when there is a remove; else every record in order
        # (a key twice: the later wins on replay, as it comes later).
        operations, dead, kept = splitFinished(operations)
        records, removed = collapse(operations)
        rows: List[Tuple[int, bytes]] = []
        if removed:
            rows.append((REMOVES, packKeys(removed)))
        if records:
            data = packBatch(records)
            if len(data) <= _BATCH_ROW_BYTES:
                rows.append((ADDS, data))
            else:
                del data
                rows.extend((ADDS, chunk) for chunk in
                            packBatches(records, len(records), _BATCH_ROW_BYTES))
        if not rows and not dead and not kept:
            return

        def write(connection: sqlite3.Connection) -> None:
            for row in rows:
                connection.execute(_APPEND, row)
            if dead:
                connection.executemany(_INSERT_DEAD, [
                    (d.key, d.priority, d.function, d.unique, d.reducer, d.clientId,
                     d.attempts, d.lastError, d.diedAt, d.payloadSize, d.payload)
                    for d in dead])
            if kept:
                connection.executemany(_INSERT_KEPT, [
                    (k.key, k.function, k.unique, k.status, int(k.kept), k.size,
                     k.finishedAt, k.expiresAt, k.result) for k in kept])

        self._transaction(write)
        self._logged += len(records) + len(removed)
        # An estimate: a remove of an unknown key or an add of a stored one
        # (the server does neither) makes it drift until the next compaction.
        self._live = max(0, self._live + len(records) - len(removed))
        if self._compactionWorthwhile():
            self._compactionDue = True

    def _compactionWorthwhile(self) -> bool:
        dead = self._logged - self._live
        return (dead > self._live and dead > self._compactThreshold
                and self._logged >= self._retryCompactionAt)

    def _compactInThread(self) -> Tuple[int, int, float]:
        """
        Rewrite the log as its live jobs, as replayed from the file.

        @return: the entries before, the entries after, the seconds taken.
        """
        connection = self._connection
        if connection is None:
            return (0, 0, 0.0)
        started = time.monotonic()
        before = self._logged
        try:
            connection.execute("BEGIN IMMEDIATE")
        except sqlite3.Error as e:
            self._retryCompactionAt = self._logged + self._compactThreshold
            raise StoreError(f"{self.description}: {e}") from e
        try:
            live, _ = _replay(connection)
            jobs = sorted(live.values(), key=_loadOrder)
        except BaseException:
            self._retryCompactionAt = self._logged + self._compactThreshold
            if connection.in_transaction:
                connection.execute("ROLLBACK")
            raise
        self._compact(connection, jobs, inTransaction=True)
        return (before, len(jobs), time.monotonic() - started)

    def _compact(self, connection: sqlite3.Connection, jobs: List[StoredJob],
                 inTransaction: bool = False) -> None:
        """
        Replace every row of the log with C{jobs}, the live set, in one
        transaction (begun already if C{inTransaction}).

        @raise StoreError: if it could not be written; then the log is as it
            was and compaction waits for C{compactThreshold} more entries.
        """
        try:
            try:
                if not inTransaction:
                    connection.execute("BEGIN IMMEDIATE")
                connection.execute("DELETE FROM log")
                records = [recordOf(job) for job in jobs]
                for data in packBatches(records, _COMPACT_ROW_RECORDS, _COMPACT_ROW_BYTES):
                    connection.execute(_APPEND, (ADDS, data))
                connection.execute("COMMIT")
            except BaseException:
                if connection.in_transaction:
                    connection.execute("ROLLBACK")
                raise
        except sqlite3.Error as e:
            self._retryCompactionAt = self._logged + self._compactThreshold
            raise StoreError(f"{self.description}: {e}") from e
        self._logged = self._live = len(jobs)
        self._retryCompactionAt = 0

    def _closeInThread(self) -> None:
        connection, self._connection = self._connection, None
        if connection is not None:
            connection.close()

    # The dead set, in the store's thread -------------------------------------

    def _openConnection(self) -> sqlite3.Connection:
        if self._connection is None:
            raise StoreError(f"{self.description}: the store is not open")
        return self._connection

    def _listDeadInThread(self, function: Optional[bytes],
                          limit: Optional[int]) -> List[DeadJob]:
        connection = self._openConnection()
        args: List[Any] = [function] if function is not None else []
        where = "WHERE function = ? " if function is not None else ""
        query = (f"SELECT {_DEAD_LISTED} FROM dead {where}ORDER BY died_at DESC, key DESC"
                 + (" LIMIT ?" if limit is not None else ""))
        if limit is not None:
            args.append(limit)
        try:
            return [DeadJob(key, bytes(fn), bytes(unique), b"", priority, bytes(reducer),
                            bytes(clientId), attempts, bytes(lastError), diedAt, size)
                    for (key, fn, unique, priority, reducer, clientId, attempts, lastError,
                         diedAt, size) in connection.execute(query, args)]
        except sqlite3.Error as e:
            raise StoreError(f"{self.description}: {e}") from e

    def _retryDeadInThread(self, keys: List[int]) -> List[StoredJob]:
        def revive(connection: sqlite3.Connection) -> List[StoredJob]:
            revived = []
            for key in keys:
                row = connection.execute(
                    "SELECT key, function, uniq, payload, priority, reducer, client_id"
                    " FROM dead WHERE key = ?", (key,)).fetchone()
                if row is None:
                    continue
                connection.execute("DELETE FROM dead WHERE key = ?", (key,))
                key, fn, unique, payload, priority, reducer, clientId = row
                revived.append(StoredJob(key, bytes(fn), bytes(unique), bytes(payload),
                                         priority, 0, bytes(reducer), bytes(clientId)))
            if revived:
                records = [recordOf(job) for job in revived]
                for data in packBatches(records, len(records), _BATCH_ROW_BYTES):
                    connection.execute(_APPEND, (ADDS, data))
            return revived

        revived = self._transaction(revive)
        self._logged += len(revived)
        self._live += len(revived)
        return revived

    def _purgeDeadInThread(self, keys: List[int]) -> int:
        def purge(connection: sqlite3.Connection) -> int:
            count = 0
            for start in range(0, len(keys), 500):
                chunk = keys[start:start + 500]
                count += connection.execute(
                    f"DELETE FROM dead WHERE key IN ({','.join('?' * len(chunk))})",
                    chunk).rowcount
            return count

        return self._transaction(purge)

    def _countDeadInThread(self) -> int:
        try:
            return int(self._openConnection().execute("SELECT count(*) FROM dead").fetchone()[0])
        except sqlite3.Error as e:
            raise StoreError(f"{self.description}: {e}") from e

    # Kept results, in the store's thread ---------------------------------------

    def _listKeptInThread(self, limit: Optional[int]) -> List[KeptResult]:
        query = (f"SELECT {_KEPT_LISTED} FROM kept ORDER BY finished_at DESC, key DESC"
                 + (" LIMIT ?" if limit is not None else ""))
        try:
            return [KeptResult(key, bytes(fn), bytes(unique), status, b"", finishedAt, expiresAt,
                               bool(kept), size)
                    for (key, fn, unique, status, kept, size, finishedAt, expiresAt)
                    in self._openConnection().execute(query, [] if limit is None else [limit])]
        except sqlite3.Error as e:
            raise StoreError(f"{self.description}: {e}") from e

    def _getKeptInThread(self, key: int) -> Optional[KeptResult]:
        try:
            row = self._openConnection().execute(
                f"SELECT {_KEPT_LISTED}, result FROM kept WHERE key = ?", (key,)).fetchone()
        except sqlite3.Error as e:
            raise StoreError(f"{self.description}: {e}") from e
        if row is None:
            return None
        key, fn, unique, status, kept, size, finishedAt, expiresAt, result = row
        return KeptResult(key, bytes(fn), bytes(unique), status, bytes(result), finishedAt,
                          expiresAt, bool(kept), size)

    def _expireKeptInThread(self, now: int) -> int:
        return self._deleteKept("DELETE FROM kept WHERE expires_at <= ?", [(now,)])

    def _purgeKeptInThread(self, keys: List[int]) -> int:
        return self._deleteKept("DELETE FROM kept WHERE key = ?", [(key,) for key in keys])

    def _deleteKept(self, statement: str, argsList: List[Tuple[int]]) -> int:
        return self._transaction(lambda connection: sum(
            connection.execute(statement, args).rowcount for args in argsList))

    def _transaction(self, work: Callable[[sqlite3.Connection], _T]) -> _T:
        """C{work(connection)} in one immediate transaction, rolled back if it raises."""
        connection = self._openConnection()
        try:
            connection.execute("BEGIN IMMEDIATE")
            try:
                result = work(connection)
                connection.execute("COMMIT")
            except BaseException:
                if connection.in_transaction:
                    connection.execute("ROLLBACK")
                raise
        except sqlite3.Error as e:
            raise StoreError(f"{self.description}: {e}") from e
        return result

    # In the reactor thread -------------------------------------------------

    def _keepWriting(self) -> bool:
        # In the store's thread: a compaction, once due, goes before the next batch.
        return not self._compactionDue

    def _written(self, result: Any, batch: List[Tuple[Operation, Any]], last: bool) -> None:
        # The pool has one thread, so compaction queued here runs after this
        # batch and before the next one (or the close), never beside a write;
        # the thread stops after the batch that made it due (_keepWriting), so
        # that batch is its last.
        if last and self._compactionDue:
            self._compactionDue = False
            d = self._callInThread(self._compactInThread)
            d.addCallbacks(self._compacted, self._compactionFailed)
        ThreadedBatchStore._written(self, result, batch, last)

    def _compacted(self, result: Tuple[int, int, float]) -> None:
        before, after, seconds = result
        self._log.debug("Compacted job store {store}: {before} log entries to {after} in "
                        "{seconds:.3f} s", store=self.description, before=before, after=after,
                        seconds=seconds)

    def _compactionFailed(self, reason: Failure) -> None:
        if reason.check(StoreSchemaError):
            self._log.failure("Compacting job store {store} found a damaged log", reason,
                              store=self.description)
        else:
            self._log.warn("Compacting job store {store} failed (it stays as it was): {error}",
                           store=self.description, error=reason.getErrorMessage())


def _replay(connection: sqlite3.Connection) -> Tuple[Dict[int, StoredJob], int]:
    """
    Read the log in order and apply it.

    @return: the live jobs by key, and the number of entries in the log.
    @raise StoreSchemaError: if a row does not decode (naming its C{seq}).
    """
    live: Dict[int, StoredJob] = {}
    logged = 0
    pop = live.pop
    for seq, kind, data in connection.execute(_READ):
        if kind == ADDS:
            jobs = unpackBatch(seq, data)
            logged += len(jobs)
            for job in jobs:
                live[job.key] = job
        elif kind == REMOVES:
            keys = unpackKeys(seq, data)
            logged += len(keys)
            for key in keys:
                pop(key, None)
        else:
            raise StoreSchemaError(f"log row {seq}: unknown kind {kind!r}")
    return live, logged
